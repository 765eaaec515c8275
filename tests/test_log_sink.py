"""The daemon's log: one line per new violation edge, then at most one per edge per interval; a global
rate limit with counted suppression; a periodic summary; a bounded-rate retry line; no empty fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import DEBUG, REDIS, flow, pod
from structlog.testing import capture_logs

from auditor.classify import Auditor, Judgement
from auditor.matrix import load_matrix
from auditor.model import EventType, Verdict
from auditor.sinks.log import LogSink, drop_empty

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
    sink = LogSink(interval=300, clock=clock)
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
    sink = LogSink(interval=300, clock=Clock())
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


def churn(auditor: Auditor, n: int) -> list[Judgement]:
    """``n`` new connections from ``n`` new namespaces (new pods, so new edges): the churn case."""
    out = []
    for i in range(n):
        source = pod(f"churn-{i}", f"shell-{i}", 50_000 + i, "run=shell")
        result = auditor.process(
            flow(source=source, destination=REDIS, destination_port=6379, source_port=30_000 + i % 30_000)
        )
        assert isinstance(result, Judgement) and result.new_connection
        out.append(result)
    return out


def test_churn_cannot_write_more_lines_than_the_global_rate_allows() -> None:
    """Before: every new edge wrote a line (300k churning flows wrote 150,252 lines)."""
    clock = Clock()
    sink = LogSink(interval=300, clock=clock, rate=1.0, burst=50)
    judgements = churn(Auditor(MATRIX), 2000)
    with capture_logs() as logs:
        for j in judgements:
            clock.now += 0.01  # 2,000 new edges in 20 s
            sink.on_judgement(j)
    violations = [e for e in logs if e["event"] == "violation"]
    assert 50 <= len(violations) <= 50 + 20 + 1  # the burst, then one per second
    assert sink.suppressed == 2000 - len(violations)
    with capture_logs() as logs:
        fields = sink.summary()
    assert fields["suppressed_lines"] == sink.suppressed
    assert fields["violation_edges_active"] == 2000 and fields["flows"] == 2000
    assert [e["event"] for e in logs] == ["summary"]


def test_summary_reports_rate_active_edges_stream_state_per_period() -> None:
    clock = Clock()
    sink = LogSink(interval=300, clock=clock, summary_interval=60)
    auditor = Auditor(MATRIX)
    sink.stream_up()
    for port in range(40000, 40120):
        sink.on_judgement(judgement(auditor, port))  # one violation edge
    for _ in range(60):
        sink.on_outcome("reply")
    with capture_logs() as logs:
        sink.tick()  # not due yet
        clock.now += 60
        sink.tick()
        clock.now += 30
        sink.summary()  # a quiet period
    first, second = logs
    assert first == {
        "event": "summary",
        "log_level": "info",
        "flows": 180,
        "flows_per_second": 3.0,
        "violation_edges_active": 1,
        "stream": "connected",
        "suppressed_lines": 0,
    }
    assert second["flows"] == 0 and second["violation_edges_active"] == 0


def test_unreachable_hubble_logs_attempt_next_retry_and_error_at_a_bounded_rate() -> None:
    clock = Clock()
    sink = LogSink(interval=300, clock=clock, retry_log_interval=30)
    with capture_logs() as logs:
        for attempt in range(1, 101):  # 100 failed attempts, one every 2 s
            sink.stream_down(f"UNAVAILABLE: connection refused ({attempt})")
            sink.stream_retry(2.0)
            clock.now += 2
        sink.stream_up()
        sink.stream_down("UNAVAILABLE: reset")
        sink.stream_retry(0.5)
    retries = [e for e in logs if e["event"] == "hubble unreachable, retrying"]
    assert len(retries) == 1 + 200 // 30 + 1  # every 30 s while down, at once after a new outage
    assert retries[0] == {
        "event": "hubble unreachable, retrying",
        "log_level": "warning",
        "attempt": 1,
        "next_retry_seconds": 2.0,
        "last_error": "UNAVAILABLE: connection refused (1)",
    }
    assert retries[1]["attempt"] == 16
    assert retries[-1]["attempt"] == 1 and retries[-1]["last_error"] == "UNAVAILABLE: reset"


def test_empty_fields_are_left_out() -> None:
    sink = LogSink(interval=300, clock=Clock())
    auditor = Auditor(MATRIX)
    with capture_logs() as logs:
        sink.on_judgement(judgement(auditor, 40000))  # no drop reason, no rule
    (line,) = logs
    assert "drop_reason" not in line and "rule" not in line
    assert line["connections_since_last_log"] == 0  # zero is a value, not an empty field
    event = {"event": "x", "a": None, "b": "", "c": [], "d": 0, "e": False, "f": "v"}
    assert drop_empty(None, "info", event) == {"event": "x", "d": 0, "e": False, "f": "v"}


def test_the_daemon_logs_its_retries_while_hubble_is_unreachable() -> None:
    """Before: one "hubble stream down" line, then silence for as long as the outage lasted."""
    import time

    from auditor.daemon import Daemon, DaemonConfig
    from auditor.sources.hubble import HubbleConfig

    config = DaemonConfig(
        matrix=str(Path(__file__).parent.parent / "examples" / "airflow" / "matrix.yaml"),
        hubble=HubbleConfig(server="127.0.0.1:1", timeout=0.5, backoff_initial=0.05, backoff_max=0.1),
        listen_address="127.0.0.1:0",
    )
    with capture_logs() as logs:
        daemon = Daemon(config)
        daemon.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and daemon.log_sink.attempt < 5:
                time.sleep(0.05)
        finally:
            daemon.stop()
    retries = [e for e in logs if e["event"] == "hubble unreachable, retrying"]
    assert daemon.log_sink.attempt >= 5
    assert len(retries) == 1  # at once, then not before 30 s
    assert retries[0]["attempt"] == 1 and 0 < retries[0]["next_retry_seconds"] <= 0.1
    assert "127.0.0.1:1" in retries[0]["last_error"]


def test_the_daemon_log_format_leaves_empty_fields_out(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import structlog

    from auditor.daemon import configure_logging

    configure_logging("json")
    try:
        structlog.get_logger("flow-auditor").warning("x", empty=None, blank="", none=[], zero=0, kept="v")
    finally:
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert {k: v for k, v in line.items() if k != "timestamp"} == {
        "event": "x",
        "zero": 0,
        "kept": "v",
        "level": "warning",
    }
