"""The daemon's violation log: one line per new violation edge, then at most one per edge per interval."""

from __future__ import annotations

from pathlib import Path

from factory import DEBUG, REDIS, flow
from structlog.testing import capture_logs

from auditor.classify import Auditor, Judgement
from auditor.daemon import ViolationLogSink
from auditor.matrix import load_matrix
from auditor.model import EventType, Verdict

MATRIX = load_matrix(Path(__file__).parent.parent / "examples" / "airflow" / "matrix.yaml")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def judgement(auditor: Auditor, port: int, **overrides: object) -> Judgement:
    result = auditor.process(
        flow(source=DEBUG, destination=REDIS, destination_port=6379, source_port=port, **overrides)
    )
    assert isinstance(result, Judgement)
    return result


def test_one_line_per_new_violation_edge_then_one_per_interval_with_a_count() -> None:
    clock = Clock()
    sink = ViolationLogSink(interval=300, clock=clock)
    auditor = Auditor(MATRIX)
    with capture_logs() as logs:
        for port in range(40000, 40010):  # ten connections of the same edge
            sink.on_judgement(judgement(auditor, port))
        clock.now += 301
        sink.on_judgement(judgement(auditor, 41000))
    assert [entry["event"] for entry in logs] == ["violation", "violation"]
    first, second = logs
    assert first["class"] == "unexpected_allowed" and first["new_edge"] is True
    assert (first["source"], first["destination"], first["port"]) == ("ns:default", "redis", 6379)
    assert (
        first["source_pod"] == "default/debug-shell" and first["destination_pod"] == "airflow/airflow-redis-0"
    )
    assert second["new_edge"] is False and second["connections_since_last_log"] == 9


def test_expected_traffic_and_repeated_events_of_one_connection_are_not_logged() -> None:
    sink = ViolationLogSink(interval=300, clock=Clock())
    auditor = Auditor(MATRIX)
    with capture_logs() as logs:
        sink.on_judgement(judgement(auditor, 40000))
        sink.on_judgement(judgement(auditor, 40000))  # same connection: not new
        allowed = auditor.process(flow())
        assert isinstance(allowed, Judgement)
        sink.on_judgement(allowed)
        dropped = judgement(
            auditor, 40001, verdict=Verdict.DROPPED, event_type=EventType.DROP, drop_reason="POLICY_DENIED"
        )
        sink.on_judgement(dropped)  # unexpected_dropped is not a violation
    assert len(logs) == 1
