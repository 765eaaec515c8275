"""The public hooks the benchmarks read instead of private attributes: ``HubbleSource.consume`` and
``HubbleSource.received`` (the live path without gRPC), ``MetricsSink.cache_info`` and
``LogSink.cache_info`` (the sizes of their bounded per-edge state)."""

from __future__ import annotations

from pathlib import Path

from factory import REDIS, flow, pod
from structlog.testing import capture_logs

from auditor._proto.live import live_pb2
from auditor.classify import Auditor, Judgement
from auditor.decode_pb import record_from_response
from auditor.demo import load_jsonl
from auditor.matrix import load_matrix
from auditor.pipeline import Pipeline
from auditor.sinks.log import LogSink
from auditor.sinks.metrics import MetricsSink
from auditor.sources.hubble import HubbleConfig, HubbleSource

EXAMPLE = Path(__file__).parent.parent / "examples" / "airflow"
MATRIX = load_matrix(EXAMPLE / "matrix.yaml")


def outcomes(sink: MetricsSink) -> dict[str, float]:
    """``flow_auditor_flows_total`` by outcome, as a scrape would read it."""
    samples = (sample for family in sink.collect() for sample in family.samples)
    return {s.labels["outcome"]: s.value for s in samples if s.name == "flow_auditor_flows_total"}


def violations(n: int) -> list[Judgement]:
    """``n`` unexpected_allowed connections, each from a namespace of its own: ``n`` edges."""
    auditor = Auditor(MATRIX)
    out = []
    for i in range(n):
        source = pod(f"churn-{i}", f"shell-{i}", 50_000 + i, "run=shell")
        result = auditor.process(
            flow(source=source, destination=REDIS, destination_port=6379, source_port=30_000 + i)
        )
        assert isinstance(result, Judgement)
        out.append(result)
    return out


def test_consume_takes_raw_messages_through_the_live_path_and_counts_them() -> None:
    messages = [r.SerializeToString() for r in load_jsonl(EXAMPLE / "flows.jsonl")]
    live = MetricsSink(MATRIX)
    source = HubbleSource(HubbleConfig(server="127.0.0.1:9"), Pipeline(Auditor(MATRIX), [live]))
    assert source.received == 0
    ended = source.consume([*messages[:10], b"\xff\xff\xff", *messages[10:]])  # one undecodable
    assert ended == "stream ended by the server"
    assert source.received == len(messages) + 1
    direct = MetricsSink(MATRIX)  # the same records fed straight into a pipeline: the same outcomes
    pipeline = Pipeline(Auditor(MATRIX), [direct])
    for raw in messages:
        pipeline.feed(record_from_response(live_pb2.GetFlowsResponse.FromString(raw)))
    expected = outcomes(direct)
    expected["invalid"] += 1
    assert outcomes(live) == expected
    assert expected["judged"] > 0  # the comparison is not one of empty counters


def test_metrics_cache_info_counts_edge_series_and_the_edge_cache() -> None:
    sink = MetricsSink(MATRIX)
    assert sink.cache_info() == {"series": 0, "edge_slots": 0}
    judgements = violations(5)
    for j in [*judgements, judgements[0]]:  # a second connection of an edge adds nothing
        sink.on_judgement(j)
    assert sink.cache_info() == {"series": 5, "edge_slots": 5}
    sink.set_matrix(MATRIX)  # a reload empties the edge cache; the series stay
    assert sink.cache_info() == {"series": 5, "edge_slots": 0}


def test_log_cache_info_counts_the_edges_it_remembers_within_its_bound() -> None:
    sink = LogSink(interval=300)
    with capture_logs():
        for j in violations(4):
            sink.on_judgement(j)
        sink.summary()  # a new summary period: the edges' last line times are kept
    assert sink.cache_info() == {"edges": 4}
    bounded = LogSink(interval=300, max_edges=3)
    with capture_logs():
        for j in violations(4):
            bounded.on_judgement(j)
    assert bounded.cache_info()["edges"] <= 3
