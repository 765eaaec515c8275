"""Inputs that cannot be judged are said to be so: events a field mask left without the fields judging needs.

Cilium's exporter documentation (``export.rst``, recorded in ``tests/data/hubble-samples/``) shows lines cut
by a field mask: no ``event_type``, ``traffic_direction``, ``trace_observation_point``, ``Type`` or
``is_reply``. Its two recorded lines are drops; the forwarded lines here are built from them and from the
example capture by removing the same fields (Hubble field semantics, not a recording).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from auditor.classify import Auditor, Judgement, Unproven
from auditor.decode import DecodeError, decode_line
from auditor.matrix import load_matrix, parse_matrix
from auditor.model import LostEvents
from auditor.pipeline import Pipeline, QuietSink
from auditor.replay_input import UnjudgeableCheck, feed_file, no_events_reason
from auditor.scenario import synthetic_events
from auditor.sinks.report import ReportSink
from auditor.sources.files import FlowFile

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "examples" / "airflow" / "flows.jsonl"
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"
SAMPLES = Path(__file__).parent / "data" / "hubble-samples"
EXPORT_SAMPLE = SAMPLES / "cilium-docs-export-rst.jsonl"
MASKED_OUT = ("event_type", "traffic_direction", "trace_observation_point", "Type", "is_reply")
# Scope: every namespace (a matrix whose only component is an entity), so nothing is out of scope.
ALL_NAMESPACES = (
    "apiVersion: flow-auditor/v1alpha1\nkind: CommunicationMatrix\nmetadata: {name: all}\n"
    "components:\n  internet: {entities: [world]}\nallow: []\n"
)


def masked(lines: list[str], drop: tuple[str, ...] = MASKED_OUT) -> str:
    out = []
    for line in lines:
        doc = json.loads(line)
        for name in drop:
            doc.get("flow", {}).pop(name, None)
        out.append(json.dumps(doc) + "\n")
    return "".join(out)


def replay(path: Path, matrix: Path = MATRIX) -> tuple[int, dict[str, Any], list[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOW_AUDITOR_")}
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "replay", str(path), "--matrix", str(matrix), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=clean,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stderr.splitlines()


def test_a_field_masked_capture_is_said_to_be_unjudgeable(tmp_path: Path) -> None:
    path = tmp_path / "exported.jsonl"
    path.write_text(masked(FLOWS.read_text().splitlines()))
    code, report, stderr = replay(path)
    ignored = report["flows"]["ignored"]
    assert ignored > 500  # every forwarded event: judging saw nothing it could prove
    assert len(stderr) == 2, stderr
    assert stderr[0] == (
        f"flow-auditor: warning: {ignored} forwarded events could not be judged (counted as ignored): "
        f"they lack event_type ({ignored}), traffic_direction ({ignored}), "
        f"trace_observation_point ({ignored})"
    )
    assert "field mask" in stderr[1] and "hubble observe -o jsonpb" in stderr[1]
    assert code == 1  # the drops are still judged: the warning does not change the exit code


def test_the_exporter_docs_lines_forwarded_instead_of_dropped_are_unjudgeable(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    lines = EXPORT_SAMPLE.read_text().splitlines()
    forwarded = [json.loads(line) for line in lines]
    for doc in forwarded:
        doc["flow"]["verdict"] = "FORWARDED"
        doc["flow"].pop("drop_reason_desc")
    path.write_text("".join(json.dumps(d) + "\n" for d in forwarded))
    matrix = tmp_path / "all.yaml"
    matrix.write_text(ALL_NAMESPACES)
    code, report, stderr = replay(path, matrix)
    assert report["flows"]["ignored"] == 2 and code == 0
    assert "2 forwarded events could not be judged" in stderr[0]


def test_only_a_missing_direction_on_a_policy_verdict_is_reported_too(tmp_path: Path) -> None:
    """A mask that keeps event_type but drops traffic_direction (policy verdicts carry no point)."""
    doc = json.loads(FLOWS.read_text().splitlines()[0])
    flow = doc["flow"]
    flow.update({"verdict": "FORWARDED", "event_type": {"type": 5}, "is_reply": False})
    for name in ("traffic_direction", "trace_observation_point", "drop_reason_desc", "drop_reason"):
        flow.pop(name, None)
    path = tmp_path / "verdicts.jsonl"
    path.write_text(json.dumps(doc) + "\n")
    _, report, stderr = replay(path)
    assert report["flows"]["ignored"] == 1
    assert "lack traffic_direction (1), trace_observation_point (1)" in stderr[0], stderr


@pytest.mark.parametrize(
    "path", [FLOWS, *sorted((SAMPLES / "hubble-otel").glob("*.json"))], ids=lambda p: p.name
)
def test_real_and_complete_captures_give_no_warning(tmp_path: Path, path: Path) -> None:
    matrix = tmp_path / "all.yaml"
    matrix.write_text(ALL_NAMESPACES)
    _, report, stderr = replay(path, MATRIX if path == FLOWS else matrix)
    assert stderr == []
    assert report["flows"]["invalid"] == 0


def test_masked_events_out_of_scope_do_not_matter() -> None:
    pipeline = Pipeline(Auditor(load_matrix(MATRIX)), [ReportSink(load_matrix(MATRIX))])
    check = UnjudgeableCheck(load_matrix(MATRIX))
    lines = masked(EXPORT_SAMPLE.read_text().replace('"DROPPED"', '"FORWARDED"').splitlines())
    summary = feed_file(pipeline, "x", [lines.encode().splitlines()], check)
    assert summary.events == 2 and check.events == 0 and check.warning() == []


def test_replies_and_l7_records_are_not_counted() -> None:
    matrix = parse_matrix(ALL_NAMESPACES)
    check = UnjudgeableCheck(matrix)
    sink = ReportSink(matrix)
    line = json.loads(FLOWS.read_text().splitlines()[0])
    flow = line["flow"]
    for name in MASKED_OUT:
        flow.pop(name, None)
    flow["verdict"] = "FORWARDED"
    reply = dict(line, flow=dict(flow, is_reply=True))
    l7 = dict(line, flow=dict(flow, Type="L7"))
    counted = dict(line, flow=dict(flow))
    data = [json.dumps(d).encode() for d in (reply, l7, counted)]
    feed_file(Pipeline(Auditor(matrix), [sink]), "x", [data], check)
    assert check.events == 1, sink.outcomes


def test_no_events_reason_names_the_file_and_the_first_error() -> None:
    from auditor.replay_input import InputSummary

    assert no_events_reason(InputSummary("f", lines=3, events=1)) is None
    reason = no_events_reason(InputSummary("f", lines=3, events=0, first_error=(2, "bad")))
    assert (
        reason == "f: none of its 3 lines is a Hubble event (line 2: bad); "
        "record flows with `hubble observe -o jsonpb`"
    )


class Recorder(QuietSink):
    """Every call a sink receives, in order (judgements by their flow's time and edge)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def on_outcome(self, outcome: str) -> None:
        self.calls.append(("outcome", outcome))

    def on_judgement(self, judgement: Judgement) -> None:
        self.calls.append(("judgement", judgement.flow.time, judgement.edge, judgement.new_connection))

    def on_unproven(self, connection: Unproven) -> None:
        self.calls.append(("unproven", connection.key, connection.flow.time))

    def on_lost(self, record: LostEvents) -> None:
        self.calls.append(("lost", record.num_events))

    def on_invalid(self, where: str, reason: str) -> None:
        self.calls.append(("invalid", where, reason))


def proof_cut(flow: dict[str, Any]) -> bool:
    """Whether a generated event is cut, to leave its connection unproven: every event but the egress-side
    one of a connection whose client port is a multiple of 4 (its delivery, policy verdict and replies)."""
    ports = next(iter((flow.get("l4") or {"-": {}}).values()))
    client = ports.get("destination_port", 0) if flow.get("is_reply") else ports.get("source_port", 0)
    egress_side = flow.get("traffic_direction") == "EGRESS" and not flow.get("is_reply")
    return client % 4 == 0 and not (egress_side and flow.get("trace_observation_point") != "TO_ENDPOINT")


def test_sinks_see_a_file_in_blocks_as_they_see_it_line_by_line(tmp_path: Path) -> None:
    """``feed_file`` decodes a block whole, judges its flows, then hands the results over: the sinks must
    receive the very calls, in the very order, of feeding the same lines one by one through ``Pipeline.feed``
    (the truth here). Small blocks put undecodable lines, lost events and connections that expire unproven
    (generated traffic whose proofs are cut for one connection in four, a 1 ms window) inside and across
    blocks."""
    lines = [json.dumps(e) for e in synthetic_events(3000, distinct_pods=50) if not proof_cut(e["flow"])]
    for at, extra in ((7, '{"flow": '), (40, '{"lost_events": {"num_events_lost": 3}}'), (41, "")):
        lines.insert(at, extra)
    lines.insert(90, '{"flow": {"time": "9999-12-31T23:59:59-23:00"}}')
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    matrix = load_matrix(MATRIX)

    expected = Recorder()
    pipeline = Pipeline(Auditor(matrix, 0.001), [expected])
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = decode_line(line)
        except DecodeError as e:
            pipeline.invalid(f"{path}:{number}", str(e))
            continue
        pipeline.feed(record)

    got = Recorder()
    with FlowFile(str(path)) as f:
        blocks = f.blocks(16384)
        summary = feed_file(
            Pipeline(Auditor(matrix, 0.001), [got]), str(path), blocks, UnjudgeableCheck(matrix)
        )
    kinds = [c[0] for c in expected.calls]
    assert kinds.count("unproven") > 20 and kinds.count("invalid") == 2 and kinds.count("lost") == 1
    assert got.calls == expected.calls
    assert summary.first_error is not None and summary.first_error[0] == 8


def test_replay_makes_no_reference_cycles(tmp_path: Path) -> None:
    """What lets a batch run collect the young generation every 10,000 allocations instead of 700
    (``batch_collector``): judging a file and building its report leave no cyclic garbage, so the collector
    finds nothing to free — here with it off, over generated traffic with unproven connections, undecodable
    lines (whose errors are exceptions) and lost events."""
    lines = [json.dumps(e) for e in synthetic_events(2000, distinct_pods=50) if not proof_cut(e["flow"])]
    lines += ['{"flow": ', '{"flow": {"time": "9999-12-31T23:59:59-23:00"}}', '{"lost_events": {}}'] * 20
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    gc.collect()
    gc.disable()
    try:
        matrix = load_matrix(MATRIX)
        sink = ReportSink(matrix)
        pipeline = Pipeline(Auditor(matrix, 0.001), [sink])
        with FlowFile(str(path)) as f:
            feed_file(pipeline, str(path), f.blocks(16384), UnjudgeableCheck(matrix))
        pipeline.finish()
        report = sink.report()
        assert report["flows"]["invalid"] == 40 and report["provisional"]
        del pipeline, sink, report
        assert gc.collect() == 0
    finally:
        gc.enable()
