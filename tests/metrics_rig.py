"""The rig the metrics sink tests drive: a metrics sink and a report sink fed by one real pipeline on the
Airflow example's matrix (or another), read back from a real ``CollectorRegistry``; the documented metric
names, an edge's labels, the rule last-seen series, the example matrix with its allow list replaced, and a
scrape in the exposition format."""

from collections.abc import Callable
from itertools import count
from pathlib import Path

from factory import flow
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.samples import Sample

from auditor.classify import Auditor
from auditor.matrix import Matrix, load_matrix, parse_matrix
from auditor.pipeline import Pipeline
from auditor.sinks.metrics import MetricsSink
from auditor.sinks.report import ReportSink
from auditor.sources.files import FlowFile

EXAMPLE = Path(__file__).parent.parent / "examples" / "airflow"
MATRIX = load_matrix(EXAMPLE / "matrix.yaml")
MATRIX_TEXT = (EXAMPLE / "matrix.yaml").read_text()

METRIC_NAMES = {
    "flow_auditor_connections",
    "flow_auditor_dropped_connections",
    "flow_auditor_flows",
    "flow_auditor_provisional_connections",
    "flow_auditor_edge_last_seen_timestamp_seconds",
    "flow_auditor_rule_last_seen_timestamp_seconds",
    "flow_auditor_hubble_up",
    "flow_auditor_hubble_reconnects",
    "flow_auditor_hubble_lost_events",
    "flow_auditor_last_flow_timestamp_seconds",
    "flow_auditor_hubble_nodes",
    "flow_auditor_matrix_rules",
    "flow_auditor_matrix_reloads",
    "flow_auditor_label_overflow",
    "flow_auditor_series_overflow",
    "flow_auditor_build_info",
    "flow_auditor_hubble_resent_events_skipped",
    "flow_auditor_hubble_stream_gaps",
    "flow_auditor_hubble_clock_anomalies",
}

_ports = count(41000)
NOW = 2_100_000_000.0  # the auditor's clock in the rig: after every flow time the tests use (2036)


class Rig:
    """A metrics sink and a report sink fed by one pipeline."""

    def __init__(
        self, matrix: Matrix = MATRIX, clock: Callable[[], float] = lambda: NOW, **limits: int
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = MetricsSink(matrix, self.registry, clock=clock, **limits)
        self.report = ReportSink(matrix)
        self.auditor = Auditor(matrix)
        self.pipeline = Pipeline(self.auditor, [self.metrics, self.report])

    def replay_example(self) -> None:
        source = FlowFile(str(EXAMPLE / "flows.jsonl"))
        try:
            self.pipeline.feed_blocks(source.name, source.blocks())
        finally:
            source.close()

    def connect(self, **overrides: object) -> None:
        """Feed one flow of a new connection (fresh source port unless given)."""
        self.pipeline.feed(flow(**{"source_port": next(_ports), **overrides}))

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def connections(self, source: str, destination: str, port: str, protocol: str, cls: str) -> float:
        """Sum of connections_total over verdicts for one edge's labels."""
        edge = {
            "source": source,
            "destination": destination,
            "port": port,
            "protocol": protocol,
            "class": cls,
        }
        return sum(
            s.value
            for s in self.samples("flow_auditor_connections_total")
            if {k: s.labels[k] for k in edge} == edge
        )

    def samples(self, name: str) -> list[Sample]:
        return [s for family in self.registry.collect() for s in family.samples if s.name == name]


def edge_labels(source: str, destination: str, port: int | None, protocol: str, cls: str) -> dict[str, str]:
    port_label = "" if port is None else str(port)
    return {
        "source": source,
        "destination": destination,
        "port": port_label,
        "protocol": protocol,
        "class": cls,
    }


def matrix_with(rules: str) -> Matrix:
    """The example matrix with its allow list replaced."""
    head = MATRIX_TEXT[: MATRIX_TEXT.index("allow:")]
    return parse_matrix(head + "allow:\n" + rules, "reloaded.yaml")


def rule_series(rig: Rig) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["rule"], s.labels["from"], s.labels["to"]): s.value
        for s in rig.samples("flow_auditor_rule_last_seen_timestamp_seconds")
    }


def rule_last_seen(rig: Rig, rule: int, source: str, destination: str) -> float | None:
    labels = {"rule": str(rule), "from": source, "to": destination}
    return rig.registry.get_sample_value("flow_auditor_rule_last_seen_timestamp_seconds", labels)


def scrape(rig: Rig) -> str:
    return generate_latest(rig.registry).decode()
