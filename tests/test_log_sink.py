"""The daemon's log: one line per new violation edge, then at most one per edge per interval; a global
rate limit with counted suppression; a periodic summary; a bounded-rate retry line; no empty fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import DEBUG, REDIS, denied_scrape, flow, judged, pod
from structlog.testing import capture_logs

from auditor.classify import Auditor, Judgement
from auditor.matrix import load_matrix
from auditor.model import EventType, Verdict
from auditor.sinks.log import LogSink, drop_empty

MATRIX_FILE = Path(__file__).parent.parent / "examples" / "airflow" / "matrix.yaml"
MATRIX = load_matrix(MATRIX_FILE)


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


# -- suggestions on violation lines (issue 10 item 3) ------------------------------------------------

PROM_LABELS = ("app.kubernetes.io/name=prometheus",)
PROMETHEUS = pod("monitoring", "prometheus-0", 3001, *PROM_LABELS)
# The same pod once its namespace carries a `name` label (what a hand-written policy may select on).
PROMETHEUS_LABELLED = pod(
    "monitoring", "prometheus-0", 3002, *PROM_LABELS, "io.cilium.k8s.namespace.labels.name=monitoring"
)
WEBSERVER = pod("airflow", "airflow-webserver-1", 1005, "tier=airflow", "component=webserver")
DEBUG_SUGGESTION = (
    "add component debug-shell: {namespace: default, labels: {run: debug-shell}}; "
    'rule {from: debug-shell, to: redis, ports: ["6379/TCP"]}'
)


def scrape_dropped(auditor: Auditor, port: int) -> Judgement:
    result = auditor.process(denied_scrape(PROMETHEUS, port))
    assert isinstance(result, Judgement)
    return result


def test_an_unexpected_allowed_line_carries_the_rule_that_would_allow_it() -> None:
    sink = LogSink(interval=300, clock=Clock(), matrix=MATRIX)
    auditor = Auditor(MATRIX)
    with capture_logs() as logs:
        sink.on_judgement(judgement(auditor, 40000))
    assert logs[0]["suggestion"] == DEBUG_SUGGESTION
    assert "policy_change" not in logs[0]


def test_suggestions_are_computed_only_for_lines_actually_written(monkeypatch: pytest.MonkeyPatch) -> None:
    import auditor.sinks.log as log_module

    calls: list[int] = []
    real = log_module.suggestions

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(log_module, "suggestions", counting)
    sink = LogSink(interval=300, clock=Clock(), matrix=MATRIX, rate=0.0, burst=3)
    auditor = Auditor(MATRIX)
    with capture_logs() as logs:
        for j in churn(auditor, 50):  # 50 new edges, 3 lines allowed
            sink.on_judgement(j)
    assert len(logs) == 3 and sink.suppressed == 47
    assert all(entry["suggestion"].startswith("add component shell") for entry in logs)
    assert len(calls) == 3


def test_a_failing_suggestion_becomes_a_field_never_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    import auditor.sinks.log as log_module

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(log_module, "suggestions", broken)
    sink = LogSink(interval=300, clock=Clock(), matrix=MATRIX)
    auditor = Auditor(MATRIX)
    with capture_logs() as logs:
        sink.on_judgement(judgement(auditor, 40000))
    assert logs[0]["event"] == "violation" and logs[0]["suggestion_error"] == "RuntimeError: boom"


def test_suggestions_follow_a_matrix_reload_through_the_pipeline(tmp_path: Path) -> None:
    from auditor.pipeline import Pipeline

    sink = LogSink(interval=0, clock=Clock(), matrix=MATRIX)
    pipeline = Pipeline(Auditor(MATRIX), [sink])
    with capture_logs() as logs:
        pipeline.feed(flow(source=DEBUG, destination=REDIS, destination_port=6379, source_port=40000))
        # The reloaded matrix names the debug shell (but still allows it nothing): only the rule is missing.
        text = MATRIX_FILE.read_text().replace(
            "  kubelet:", "  debug-shell: {namespace: default, labels: {run: debug-shell}}\n  kubelet:"
        )
        path = tmp_path / "matrix.yaml"
        path.write_text(text)
        pipeline.set_matrix(load_matrix(path))
        pipeline.feed(flow(source=DEBUG, destination=REDIS, destination_port=6379, source_port=40001))
    assert [entry["source"] for entry in logs] == ["ns:default", "debug-shell"]
    assert logs[0]["suggestion"] == DEBUG_SUGGESTION
    assert logs[1]["suggestion"] == 'add rule {from: debug-shell, to: redis, ports: ["6379/TCP"]}'


def test_an_expected_dropped_line_names_the_generated_policy_and_the_lost_namespace_label() -> None:
    sink = LogSink(interval=300, clock=Clock(), matrix=MATRIX, matrix_file="matrix.yaml")
    auditor = Auditor(MATRIX)
    with capture_logs() as logs:
        # Prometheus scrapes the webserver while its namespace still has the label ...
        sink.on_judgement(
            judged(auditor, source=PROMETHEUS_LABELLED, destination=WEBSERVER, destination_port=8080)
        )
        # ... then its namespace loses it and the PostgreSQL exporter scrape is dropped.
        sink.on_judgement(scrape_dropped(auditor, 40001))
    assert [entry["class"] for entry in logs] == ["expected_dropped"]
    text = logs[0]["policy_change"]
    assert text.startswith(
        "matrix rule 12: apply NetworkPolicy airflow/airflow-postgresql (ingress from prometheus on "
        "9187/TCP) from "
        "`flow-auditor policies generate --matrix matrix.yaml`, or CiliumNetworkPolicy "
        "airflow/airflow-postgresql (ingress from prometheus on 9187/TCP) with `--flavor cilium`; both admit "
        "these pods; "
    )
    assert "likely cause: namespace monitoring lost label name=monitoring since earlier delivered " in text
    assert "suggestion" not in logs[0]


def test_without_label_history_the_cause_is_the_policy_in_force() -> None:
    sink = LogSink(interval=300, clock=Clock(), matrix=MATRIX)
    with capture_logs() as logs:
        sink.on_judgement(scrape_dropped(Auditor(MATRIX), 40001))
    assert "--matrix MATRIX`" in logs[0]["policy_change"]
    assert logs[0]["policy_change"].endswith(
        "likely cause: a policy in force lacks this allowance while the generated policies admit these very "
        "pods (`flow-auditor policies diff` shows what differs)"
    )


def test_the_daemon_hands_its_matrix_and_reloads_to_the_log(tmp_path: Path) -> None:
    from auditor.daemon import Daemon, DaemonConfig
    from auditor.sources.hubble import HubbleConfig

    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX_FILE.read_text())
    config = DaemonConfig(
        matrix=str(path), hubble=HubbleConfig(server="127.0.0.1:1"), listen_address="127.0.0.1:0"
    )
    daemon = Daemon(config)  # not started: its pipeline is fed directly

    def debug_to_redis(port: int) -> list[dict[str, object]]:
        with capture_logs() as logs:
            daemon.pipeline.feed(
                flow(source=DEBUG, destination=REDIS, destination_port=6379, source_port=port)
            )
        return [entry for entry in logs if entry["event"] == "violation"]

    def dropped_scrape(port: int) -> list[dict[str, object]]:
        with capture_logs() as logs:
            daemon.pipeline.feed(denied_scrape(PROMETHEUS, port))
        return [entry for entry in logs if entry["event"] == "violation"]

    assert debug_to_redis(40000)[0]["suggestion"] == DEBUG_SUGGESTION
    line = dropped_scrape(40001)[0]
    assert f"from `flow-auditor policies generate --matrix {path}`" in str(line["policy_change"])
    assert "NetworkPolicy airflow/airflow-postgresql (ingress from prometheus on 9187/TCP)" in str(
        line["policy_change"]
    )
    # Reload: another matrix name (so other policy names), and the debug shell is a component.
    path.write_text(
        MATRIX_FILE.read_text()
        .replace("  name: airflow\n", "  name: airflow-v2\n")
        .replace("  kubelet:", "  debug-shell: {namespace: default, labels: {run: debug-shell}}\n  kubelet:")
    )
    assert daemon.check_reload() is True
    daemon.log_sink.interval = 0  # a line per connection, to see the new suggestion at once
    assert (
        debug_to_redis(40002)[0]["suggestion"]
        == 'add rule {from: debug-shell, to: redis, ports: ["6379/TCP"]}'
    )
    assert "NetworkPolicy airflow/airflow-v2-postgresql (ingress from prometheus" in str(
        dropped_scrape(40003)[0]["policy_change"]
    )


def test_the_live_daemon_logs_both_hints_for_the_airflow_stream() -> None:
    """End to end: the embedded Hubble server streams the Airflow example over loopback gRPC; the
    daemon's violation lines carry the suggestion and the policy changes (the lost namespace label)."""
    import time

    from auditor.daemon import Daemon, DaemonConfig
    from auditor.demo import FlowLog, HubbleServer, load_jsonl
    from auditor.sources.hubble import HubbleConfig

    flows = FlowLog()
    flows.extend(load_jsonl(MATRIX_FILE.parent / "flows.jsonl"))
    server = HubbleServer(flows)
    server.start()
    config = DaemonConfig(
        matrix=str(MATRIX_FILE),
        hubble=HubbleConfig(server=server.address, since=0.0, timeout=2.0),
        listen_address="127.0.0.1:0",
    )
    try:
        with capture_logs() as logs:
            daemon = Daemon(config)
            daemon.start()
            try:
                deadline = time.monotonic() + 20

                def lines() -> dict[tuple[object, object, object], dict[str, object]]:
                    return {
                        (e["source"], e["destination"], e["port"]): e
                        for e in logs
                        if e["event"] == "violation"
                    }

                while time.monotonic() < deadline and len(lines()) < 5:
                    time.sleep(0.05)
            finally:
                daemon.stop()
    finally:
        server.stop(0)
    seen = lines()
    assert seen[("ns:default", "redis", 6379)]["suggestion"] == DEBUG_SUGGESTION
    scrape = str(seen[("prometheus", "postgresql", 9187)]["policy_change"])
    assert (
        "apply NetworkPolicy airflow/airflow-postgresql (ingress from prometheus on 9187/TCP) from " in scrape
    )
    assert "namespace monitoring lost label name=monitoring since earlier delivered" in scrape
    assert "policy under audit lacks" in str(seen[("triggerer", "postgresql", 5432)]["policy_change"])
