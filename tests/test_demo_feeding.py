"""How flows reach the embedded Hubble server: jsonpb files (envelopes, bare flows, camelCase, gzip; a bad
record named by file and line), players, the looping live scenario, ``start_demo``, and the
``python -m auditor.demo.server`` entry point run as a subprocess (its port line, restart on the same port,
mTLS, exit 0 on SIGTERM, exit 2 on bad input).

Every call carries a deadline, every stream is cancelled or drained, every subprocess is killed by PID."""

from __future__ import annotations

import gzip
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from certs import SERVER_NAME, TestPki
from demo_helpers import DEADLINE, NS, ROOT, Request, Response, collect, flow, ids, take
from google.protobuf import json_format

from auditor._proto.observer import observer_pb2_grpc
from auditor.demo import FlowLog, LiveScenario, Player, load_jsonl, response_from_event, start_demo
from auditor.scenario import airflow_scenario, write_jsonl

# ------------------------------------------------------------------------------------------------
# Feeding: jsonpb loading, players, the live scenario
# ------------------------------------------------------------------------------------------------


def test_load_jsonl_accepts_envelopes_bare_flows_camel_case_and_gzip(tmp_path: Path) -> None:
    envelope = json_format.MessageToDict(flow("env"), preserving_proto_field_name=True)
    bare = json_format.MessageToDict(flow("bare").flow)  # camelCase spelling
    lines = [json.dumps(envelope), "", json.dumps({**bare, "someFutureField": 1})]
    plain, packed = tmp_path / "f.jsonl", tmp_path / "f.jsonl.gz"
    plain.write_text("\n".join(lines) + "\n")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        loaded = load_jsonl(path)
        assert ids(loaded) == ["env", "bare"]
        assert loaded[1].flow.source.pod_name == "airflow-worker-0"


def test_load_jsonl_names_the_file_and_line_of_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"flow": {"uuid": "ok"}}\n{"flow": {"time": "yesterday"}}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: "):
        load_jsonl(path)


def test_player_appends_templates_on_schedule_without_looping() -> None:
    log = FlowLog(100)
    player = Player(log, [(i * NS // 100, flow(f"p{i}")) for i in range(20)], speed=1.0)
    player.start()
    assert player.join(5)
    _, entries = log.snapshot()
    assert [Response.FromString(e.data).flow.uuid for e in entries] == [f"p{i}" for i in range(20)]


def test_live_scenario_loops_with_fresh_times_and_fresh_uuids() -> None:
    scenario_responses = [response_from_event(e) for e in airflow_scenario().events]
    log = FlowLog(10_000)
    player = LiveScenario(log, speed=2400.0)  # ten minutes of flow time in 0.25 s
    before = time.time_ns()
    player.start()
    deadline = time.monotonic() + 15
    while player.passes < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    player.stop()
    after = time.time_ns()
    assert not player.running
    assert player.passes >= 2
    _, entries = log.snapshot()
    times = [e.time_ns for e in entries]
    assert times == sorted(times)
    assert before <= times[0] and times[-1] <= after + NS
    first, second = entries[:877], entries[877:1754]

    # each pass opens with the nodes Relay is connected to, then is the scenario itself, but for the
    # time stamps and (after the first pass) the UUIDs
    for passed in (first, second):
        status = Response.FromString(passed[0].data)
        assert status.WhichOneof("response_types") == "node_status"
        assert list(status.node_status.node_names) == sorted(
            {r.flow.node_name for r in scenario_responses if r.HasField("flow")} - {""}
        )
    first, second = first[1:], second[1:]

    def normalized(responses: Sequence[Response]) -> list[Response]:
        out = []
        for original in responses:
            r = Response()
            r.CopyFrom(original)
            r.ClearField("time")
            if r.HasField("flow"):
                r.flow.ClearField("time")
                r.flow.uuid = r.flow.uuid[8:]
            out.append(r)
        return out

    expected = normalized(scenario_responses)
    for passed in (first, second):
        assert normalized([Response.FromString(e.data) for e in passed]) == expected
    first_ids = {Response.FromString(e.data).flow.uuid for e in first} - {""}
    second_ids = {Response.FromString(e.data).flow.uuid for e in second} - {""}
    assert len(first_ids) == 875
    assert not first_ids & second_ids


def test_start_demo_serves_the_live_scenario_until_stopped() -> None:
    demo = start_demo(speed=600.0)
    try:
        channel = grpc.insecure_channel(demo.address)
        call = observer_pb2_grpc.ObserverStub(channel).GetFlows(Request(follow=True), timeout=DEADLINE)
        assert all(r.HasField("flow") or r.HasField("lost_events") for r in take(call, 10))
        call.cancel()
        channel.close()
    finally:
        demo.stop(None)
    assert not demo.player.running


# ------------------------------------------------------------------------------------------------
# Subprocess mode
# ------------------------------------------------------------------------------------------------


def start_subprocess(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditor.demo.server", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    if not ready:
        proc.kill()
        proc.wait(10)
        pytest.fail("the server printed nothing within 20 s")
    line = proc.stdout.readline()
    if not line.startswith("listening on 127.0.0.1:"):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"unexpected first line {line!r}; stderr: {err}")
    return proc, line.split()[-1]


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_subprocess_prints_its_port_serves_the_file_and_restarts_on_the_same_port_after_sigkill(
    tmp_path: Path,
) -> None:
    data = tmp_path / "flows.jsonl"
    write_jsonl(airflow_scenario().events, data)
    proc, address = start_subprocess("--listen", "127.0.0.1:0", "--jsonl", str(data))
    try:
        channel = grpc.insecure_channel(address)
        stub = observer_pb2_grpc.ObserverStub(channel)
        assert len(collect(stub)) == 876
        call = stub.GetFlows(Request(follow=True, number=1), timeout=DEADLINE)
        take(call, 1)
        kill(proc)
        with pytest.raises(grpc.RpcError) as failed:
            next(call)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        kill(proc)

    proc, again = start_subprocess("--listen", address, "--jsonl", str(data), "--jsonl", str(data))
    try:
        assert again == address
        channel = grpc.insecure_channel(address)
        assert len(collect(observer_pb2_grpc.ObserverStub(channel))) == 2 * 876
        channel.close()
    finally:
        kill(proc)


def test_subprocess_loop_streams_the_live_scenario_over_mtls_and_exits_0_on_sigterm(pki: TestPki) -> None:
    proc, address = start_subprocess(
        "--loop",
        "--speed",
        "600",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca_cert),
    )
    try:
        credentials = grpc.ssl_channel_credentials(
            pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        channel = grpc.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        )
        call = observer_pb2_grpc.ObserverStub(channel).GetFlows(Request(follow=True), timeout=DEADLINE)
        got = take(call, 20)
        call.cancel()
        channel.close()
        now = time.time_ns()
        assert all(abs(r.time.ToNanoseconds() - now) < 30 * NS for r in got)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        kill(proc)


def test_subprocess_rejects_bad_input_with_exit_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    proc = subprocess.run(
        [sys.executable, "-m", "auditor.demo.server", "--jsonl", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert f"{bad}:1:" in proc.stderr
