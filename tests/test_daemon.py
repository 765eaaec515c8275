"""The daemon against a real Hubble-compatible gRPC server on 127.0.0.1 (DESIGN §3, §5, §6).

Every server and daemon binds loopback with an ephemeral port; subprocesses are stopped by PID; every wait
is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from certs import TestPki, make_pki
from daemon_helpers import (
    FLOW_EVENTS,
    FLOWS,
    MATRIX,
    connections,
    count_through_sentinel,
    free_port,
    http_status,
    received,
    replay_cli,
    scrape,
    start_daemon,
    value,
    wait_for,
)
from events_api import EventsServer

from auditor import __version__, native
from auditor._proto.observer import observer_pb2
from auditor.daemon import Daemon
from auditor.demo import FlowLog, HubbleServer, ServerTls, lost_events_response
from auditor.sources import RECEIVERS

# -- helpers ----------------------------------------------------------------------------------------


def replay_connections() -> dict[tuple[str, str, str, str, str], float]:
    report = json.loads(replay_cli(FLOWS))
    return {
        (
            e["source"],
            e["destination"],
            "" if e["port"] is None else str(e["port"]),
            e["protocol"],
            e["class"],
        ): float(e["connections"])
        for e in report["edges"]
    }


# -- counts -----------------------------------------------------------------------------------------


def test_live_counts_per_edge_equal_the_replay_of_the_same_events(
    example_server: HubbleServer, daemons: list[Daemon]
) -> None:
    d = start_daemon(example_server.address)
    daemons.append(d)
    wait_for(lambda: received(scrape(d.listen_address)) >= FLOW_EVENTS, what="all flows")
    samples = scrape(d.listen_address)
    assert received(samples) == FLOW_EVENTS
    assert connections(samples) == replay_connections()
    assert value(samples, "flow_auditor_hubble_up") == 1.0
    assert value(samples, "flow_auditor_hubble_lost_events_total", source="PERF_EVENT_RING_BUFFER") == 3.0
    assert value(samples, "flow_auditor_matrix_rules") == 13.0
    assert http_status(f"http://{d.listen_address}/readyz") == 200
    assert http_status(f"http://{d.listen_address}/healthz") == 200


def test_lost_events_and_garbage_on_the_wire_are_counted_not_fatal(
    example_server: HubbleServer, example_log: FlowLog, daemons: list[Daemon]
) -> None:
    d = start_daemon(example_server.address)
    daemons.append(d)
    wait_for(lambda: received(scrape(d.listen_address)) >= FLOW_EVENTS, what="the example")
    example_log.append(lost_events_response(7, source="HUBBLE_RING_BUFFER", node_name="kind-worker"))
    example_log.append_raw(b"\x0a\xff\xff\xff garbage that is no protobuf")
    # A flow from a newer Hubble: an unknown verdict value and an unknown field number on the wire.
    future = observer_pb2.GetFlowsResponse(node_name="kind-worker")
    future.flow.verdict = 42  # type: ignore[assignment]
    future.flow.time.GetCurrentTime()
    future.flow.source.namespace = "airflow"
    example_log.append_raw(future.SerializeToString() + b"\xa2\x06\x03abc", time_ns=time.time_ns())
    wait_for(
        lambda: value(scrape(d.listen_address), "flow_auditor_flows_total", outcome="invalid") == 1,
        what="the invalid message",
    )
    wait_for(lambda: received(scrape(d.listen_address)) == FLOW_EVENTS + 2, what="the newer flow")
    samples = scrape(d.listen_address)
    assert value(samples, "flow_auditor_hubble_lost_events_total", source="HUBBLE_RING_BUFFER") == 7.0
    assert value(samples, "flow_auditor_flows_total", outcome="invalid") == 1.0
    assert value(samples, "flow_auditor_hubble_up") == 1.0  # the stream survived both


# -- resilience --------------------------------------------------------------------------------------


def start_server_process(port: int, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditor.demo.server", "--listen", f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read() if proc.stderr else line
    return proc


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_server_killed_mid_stream_and_restarted_resumes_exactly_once(daemons: list[Daemon]) -> None:
    port = free_port()
    first = start_server_process(port, "--jsonl", str(FLOWS), "--rate", "300")
    try:
        d = start_daemon(f"127.0.0.1:{port}")
        daemons.append(d)
        wait_for(lambda: received(scrape(d.listen_address)) >= 150, what="the first part of the stream")
    finally:
        stop_process(first)  # SIGKILL mid-stream
    partial = received(scrape(d.listen_address))
    assert 150 <= partial < FLOW_EVENTS
    wait_for(lambda: value(scrape(d.listen_address), "flow_auditor_hubble_up") == 0.0, what="stream down")
    second = start_server_process(port, "--jsonl", str(FLOWS))  # all events, as Relay's buffer would have
    try:
        # The second server sends every flow again: each is either counted now or recognised as re-sent.
        def second_stream_done() -> bool:
            samples = scrape(d.listen_address)
            skipped = value(samples, "flow_auditor_hubble_resent_events_skipped_total")
            return received(samples) - partial + skipped >= FLOW_EVENTS

        wait_for(second_stream_done, timeout=30, what="the resumed stream")
        samples = scrape(d.listen_address)
    finally:
        stop_process(second)
    assert received(samples) == FLOW_EVENTS
    assert connections(samples) == replay_connections()
    assert value(samples, "flow_auditor_hubble_reconnects_total") >= 1
    resumed = d.source.requests[-1]  # the newest events Hubble holds, whatever their time; no since
    assert not resumed.HasField("since") and resumed.number == d.config.hubble.resume_backlog
    assert value(samples, "flow_auditor_hubble_resent_events_skipped_total") >= 150


def test_unreachable_server_is_retried_and_not_ready(daemons: list[Daemon]) -> None:
    d = start_daemon(f"127.0.0.1:{free_port()}")
    daemons.append(d)
    wait_for(
        lambda: value(scrape(d.listen_address), "flow_auditor_hubble_reconnects_total") >= 2,
        what="reconnect attempts",
    )
    assert value(scrape(d.listen_address), "flow_auditor_hubble_up") == 0.0
    assert http_status(f"http://{d.listen_address}/readyz") == 503
    assert http_status(f"http://{d.listen_address}/healthz") == 200


# -- TLS ----------------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_pki(tmp_path / "pki")


def tls_server(log: FlowLog, pki: TestPki, mutual: bool) -> HubbleServer:
    srv = HubbleServer(log, tls=ServerTls(pki.server_cert, pki.server_key, pki.ca_cert if mutual else None))
    srv.start()
    return srv


def test_tls_with_server_name(example_log: FlowLog, pki: TestPki, daemons: list[Daemon]) -> None:
    srv = tls_server(example_log, pki, mutual=False)
    try:
        d = start_daemon(
            srv.address, tls=True, tls_ca_cert_files=(str(pki.ca_cert),), tls_server_name=pki.server_name
        )
        daemons.append(d)
        wait_for(lambda: received(scrape(d.listen_address)) >= FLOW_EVENTS, what="flows over TLS")
    finally:
        srv.stop(0)


def test_mtls_accepts_a_client_certificate_and_refuses_none(
    example_log: FlowLog, pki: TestPki, daemons: list[Daemon]
) -> None:
    srv = tls_server(example_log, pki, mutual=True)
    try:
        without = start_daemon(
            srv.address, tls=True, tls_ca_cert_files=(str(pki.ca_cert),), tls_server_name=pki.server_name
        )
        daemons.append(without)
        with_cert = start_daemon(srv.address, **pki.mtls())
        daemons.append(with_cert)
        wait_for(lambda: received(scrape(with_cert.listen_address)) >= FLOW_EVENTS, what="flows over mTLS")
        wait_for(
            lambda: value(scrape(without.listen_address), "flow_auditor_hubble_reconnects_total") >= 1,
            what="the refused client to retry",
        )
        refused = scrape(without.listen_address)
        assert received(refused) == 0 and value(refused, "flow_auditor_hubble_up") == 0.0
    finally:
        srv.stop(0)


@pytest.mark.parametrize("receiver", RECEIVERS)
def test_rotated_client_certificate_is_picked_up(
    example_log: FlowLog, pki: TestPki, tmp_path: Path, daemons: list[Daemon], receiver: str
) -> None:
    srv = tls_server(example_log, pki, mutual=True)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.client_cert, cert)
    shutil.copy(pki.client_key, key)
    try:
        d = start_daemon(
            srv.address,
            tls=True,
            tls_ca_cert_files=(str(pki.ca_cert),),
            tls_server_name=pki.server_name,
            tls_client_cert_file=str(cert),
            tls_client_key_file=str(key),
            cert_poll_interval=0.1,
            receiver=receiver,  # the receiver process reads the files again at the new stream
        )
        daemons.append(d)
        wait_for(lambda: received(scrape(d.listen_address)) >= FLOW_EVENTS, what="flows over mTLS")
        shutil.copy(pki.rotated_client_cert, cert)
        shutil.copy(pki.rotated_client_key, key)
        wait_for(
            lambda: d.source.reconnects >= 1 and d.source.connected, what="a reconnection with the new files"
        )
        assert received(scrape(d.listen_address)) == FLOW_EVENTS  # resumed without counting anything twice
    finally:
        srv.stop(0)


# -- hot reload ---------------------------------------------------------------------------------------


def test_matrix_reload_good_then_bad_keeps_the_good_one(
    example_server: HubbleServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX.read_text())
    d = start_daemon(example_server.address, matrix=matrix)
    daemons.append(d)
    wait_for(lambda: received(scrape(d.listen_address)) >= FLOW_EVENTS, what="all flows")
    before = connections(scrape(d.listen_address))
    # Good: drop the Redis exporter rule (13 → 12 rules), swapped in like a ConfigMap update (rename).
    fewer = tmp_path / "new.yaml"
    fewer.write_text(
        "\n".join(line for line in MATRIX.read_text().splitlines() if "Redis exporter" not in line)
    )
    fewer.replace(matrix)
    wait_for(
        lambda: value(scrape(d.listen_address), "flow_auditor_matrix_reloads_total", result="success") == 1,
        what="the good reload",
    )
    assert value(scrape(d.listen_address), "flow_auditor_matrix_rules") == 12.0
    # Bad: an unknown component. The old matrix stays, the error is counted. Swapped in whole (a rename),
    # so the reload thread never reads a half-written file (which would count an error of its own).
    bad = tmp_path / "bad.yaml"
    bad.write_text(MATRIX.read_text().replace("to: webserver, ports: [8080]", "to: websrv, ports: [8080]", 1))
    bad.replace(matrix)
    wait_for(
        lambda: value(scrape(d.listen_address), "flow_auditor_matrix_reloads_total", result="error") == 1,
        what="the failed reload",
    )
    samples = scrape(d.listen_address)
    assert value(samples, "flow_auditor_matrix_rules") == 12.0
    assert d.matrix.name == "airflow" and len(d.matrix.rules) == 12
    assert connections(samples) == before  # counters survive reloads


# -- process lifecycle ---------------------------------------------------------------------------------


def run_daemon_process(*args: str) -> tuple[subprocess.Popen[str], str]:
    """The daemon as a process; its log goes to a file (a pipe nobody reads would block it when full),
    readable with :func:`process_log`."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="flow-auditor-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditor", *args, "--listen-address", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.close()
    _PROCESS_LOGS[proc.pid] = Path(log.name)
    address = f"127.0.0.1:{port}"

    def up() -> bool:
        try:
            return http_status(f"http://{address}/healthz") == 200
        except OSError:
            return False

    wait_for(up, what="the daemon's HTTP server")
    return proc, address


_PROCESS_LOGS: dict[int, Path] = {}


def process_log(proc: subprocess.Popen[str]) -> str:
    return _PROCESS_LOGS[proc.pid].read_text()


def test_a_tls_handshake_failure_is_named_and_every_log_line_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    # TLS towards a plaintext server: the reason says why the connection failed (gRPC's own account), not
    # only that it timed out; gRPC's C core writes none of its plain-text lines into the JSON log.
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    plain = HubbleServer(FlowLog())
    plain.start()
    proc, _ = run_daemon_process(
        "run",
        "--tls",
        "--server",
        plain.address,
        "--matrix",
        str(MATRIX),
        "--timeout",
        "1s",
        "--log-format",
        "json",
    )
    try:
        wait_for(lambda: "hubble stream down" in process_log(proc), what="the failed connection")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        lines = [line for line in process_log(proc).splitlines() if line.strip()]
        assert all(line.startswith("{") for line in lines), [x for x in lines if not x.startswith("{")][:3]
        [reason, *_] = [json.loads(x)["reason"] for x in lines if '"hubble stream down"' in x]
        assert (
            reason.startswith(f"cannot connect to {plain.address} within 1s: ")
            and "handshake" in reason.lower()
        )
    finally:
        stop_process(proc)
        plain.stop(0)


def test_sigterm_stops_the_daemon_with_exit_0(example_server: HubbleServer) -> None:
    proc, address = run_daemon_process(
        "run",
        "--server",
        example_server.address,
        "--matrix",
        str(MATRIX),
        "--since",
        "1h",
        "--log-format",
        "json",
    )
    try:
        wait_for(lambda: value(scrape(address), "flow_auditor_hubble_up") == 1.0, what="the stream")
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        logs = [json.loads(line) for line in process_log(proc).splitlines() if line.startswith("{")]
        events = [entry["event"] for entry in logs]
        assert "connected to hubble" in events and "flow-auditor stopped" in events
        started_lines = [entry for entry in logs if entry["event"] == "flow-auditor started"]
        assert len(started_lines) == 1  # once, with the version and whether the judging core is compiled
        assert (started_lines[0]["version"], started_lines[0]["core"]) == (__version__, native.describe())
        assert len(logs) < 60  # state changes and violation edges, never one line per flow
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_bad_matrix_at_start_exits_2_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: flow-auditor/v1alpha1\nkind: CommunicationMatrix\n")
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "run", "--server", "127.0.0.1:1", "--matrix", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "metadata: required field is missing" in proc.stderr


def test_promtool_finds_nothing_on_a_scrape_of_the_demo() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run scripts/install-test-deps.sh (make test does)"
    proc, address = run_daemon_process("demo", "--speed", "60", "--log-format", "json")
    try:
        wait_for(
            lambda: value(scrape(address), "flow_auditor_flows_total", outcome="judged") > 20,
            what="judged flows in the demo",
        )
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
            text = resp.read()
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
        assert check.returncode == 0 and check.stdout == b"" and check.stderr == b"", check
        assert b"flow_auditor_connections_total{" in text
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_server_side_filter_asks_for_the_scope_namespaces_only(
    example_server: HubbleServer, daemons: list[Daemon]
) -> None:
    d = start_daemon(example_server.address, options={"server_side_filter": True})
    daemons.append(d)
    wait_for(lambda: value(scrape(d.listen_address), "flow_auditor_hubble_up") == 1.0, what="the stream")
    wait_for(
        lambda: connections(scrape(d.listen_address)) == replay_connections(), what="the same connections"
    )
    request = d.source.requests[0]
    assert [
        list(f.source_pod) + list(f.destination_pod) + list(f.source_label) + list(f.destination_label)
        for f in request.whitelist
    ] == [
        ["airflow/"],
        ["airflow/"],
        ["k8s:io.kubernetes.pod.namespace=airflow"],
        ["k8s:io.kubernetes.pod.namespace=airflow"],
    ]
    samples = count_through_sentinel(d, example_server.log)  # the counts are final: nothing out of scope came
    assert value(samples, "flow_auditor_flows_total", outcome="out_of_scope") == 0.0


def test_kube_events_are_posted_for_violation_edges(
    example_server: HubbleServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemons: list[Daemon]
) -> None:
    api = EventsServer()
    api.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        f"clusters: [{{name: t, cluster: {{server: '{api.url}'}}}}]\n"
        "users: [{name: t, user: {token: test}}]\n"
        "contexts: [{name: t, context: {cluster: t, user: t}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        d = start_daemon(example_server.address, options={"kube_events": True})
        daemons.append(d)
        wait_for(lambda: received(scrape(d.listen_address)) >= FLOW_EVENTS, what="all flows")

        def reasons() -> set[tuple[str, str]]:
            with api.lock:
                return {(ns, ev["reason"]) for (ns, _), ev in api.events.items()}

        wait_for(
            lambda: (
                {("airflow", "NetworkPolicyViolation"), ("airflow", "LegitimateTrafficDropped")} <= reasons()
            ),
            what="the Events",
        )
        with api.lock:
            debug = [ev for ev in api.events.values() if "debug-shell" in ev["message"]]
        assert len(debug) == 1
        involved = debug[0]["involvedObject"]
        assert (involved["kind"], involved["namespace"], involved["name"]) == (
            "Pod",
            "airflow",
            "airflow-redis-0",
        )
        assert debug[0]["type"] == "Warning" and debug[0]["reason"] == "NetworkPolicyViolation"
    finally:
        api.stop()


def test_sigterm_while_the_server_is_unreachable_stops_quickly() -> None:
    proc, _ = run_daemon_process(
        "run", "--server", f"127.0.0.1:{free_port()}", "--matrix", str(MATRIX), "--timeout", "30s"
    )
    try:
        wait_for(lambda: "flow-auditor started" in process_log(proc), what="the stream thread started")
        time.sleep(0.5)  # pacing only: very likely inside the connection attempt (30 s); proves nothing
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 2.0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
