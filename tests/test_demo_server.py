"""The embedded Hubble-compatible server (``auditor.demo``), driven by a real gRPC client on loopback.

Every call carries a deadline, every stream is cancelled or drained, every subprocess is killed by PID.
"""

from __future__ import annotations

import gzip
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import SERVER_NAME, TestPki, make_pki
from google.protobuf import json_format

from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2, observer_pb2_grpc
from auditor.demo import (
    FlowLog,
    HubbleServer,
    LiveScenario,
    Player,
    ServerTls,
    load_jsonl,
    log_from_responses,
    lost_events_response,
    node_status_response,
    response_from_event,
    start_demo,
)
from auditor.scenario import airflow_scenario, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 10.0  # seconds, for every RPC
NS = 1_000_000_000
T0 = 1_795_424_400 * NS  # 2026-11-23T09:00:00Z

Request = observer_pb2.GetFlowsRequest
Response = observer_pb2.GetFlowsResponse


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def flow(
    uid: str,
    *,
    src: str = "airflow/airflow-worker-0",
    dst: str = "airflow/airflow-postgresql-0",
    verdict: str = "FORWARDED",
    node: str = "kind-worker",
    t: int = T0,
) -> Response:
    """A flow response whose endpoints are ``"namespace/pod"`` (``""`` for no namespace)."""

    def endpoint(key: str) -> flow_pb2.Endpoint:
        namespace, _, pod = key.partition("/")
        return flow_pb2.Endpoint(namespace=namespace, pod_name=pod)

    msg = flow_pb2.Flow(
        uuid=uid,
        verdict=flow_pb2.Verdict.Value(verdict),
        source=endpoint(src),
        destination=endpoint(dst),
        node_name=node,
    )
    msg.time.FromNanoseconds(t)
    resp = Response(flow=msg, node_name=node)
    resp.time.FromNanoseconds(t)
    return resp


def ids(responses: Sequence[Response]) -> list[str]:
    """Flow UUIDs, with ``lost:N`` / ``node:STATE`` for the notices, in stream order."""
    out = []
    for r in responses:
        kind = r.WhichOneof("response_types")
        if kind == "flow":
            out.append(r.flow.uuid)
        elif kind == "lost_events":
            out.append(f"lost:{r.lost_events.num_events_lost}")
        else:
            out.append(f"node:{observer_pb2.NodeState.Name(r.node_status.state_change)}")
    return out


def timed_log(count: int = 10, capacity: int = 1000) -> FlowLog:
    """Flows f0…f{count-1}, one second apart from T0."""
    log = FlowLog(capacity)
    log.extend(flow(f"f{i}", t=T0 + i * NS) for i in range(count))
    return log


def ts(ns: int) -> Any:
    r = Response()
    r.time.FromNanoseconds(ns)
    return r.time


@contextmanager
def serving(log: FlowLog, **kwargs: Any) -> Iterator[tuple[HubbleServer, observer_pb2_grpc.ObserverStub]]:
    server = HubbleServer(log, **kwargs)
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        yield server, observer_pb2_grpc.ObserverStub(channel)
    finally:
        channel.close()
        server.stop(None)


def collect(stub: observer_pb2_grpc.ObserverStub, **request: Any) -> list[Response]:
    return list(stub.GetFlows(Request(**request), timeout=DEADLINE))


def take(call: Any, n: int) -> list[Response]:
    return [next(call) for _ in range(n)]


@pytest.fixture(scope="module")
def scenario_responses() -> list[Response]:
    return [response_from_event(e) for e in airflow_scenario().events]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------------------------------------------
# GetFlows: backlog, follow, number, time bounds
# ------------------------------------------------------------------------------------------------


def test_without_follow_the_whole_backlog_is_sent_byte_for_byte_then_the_stream_ends(
    scenario_responses: list[Response],
) -> None:
    log = log_from_responses(scenario_responses)
    with serving(log) as (server, _):
        channel = grpc.insecure_channel(server.address)
        raw: Any = channel.unary_stream(
            "/observer.Observer/GetFlows",
            request_serializer=Request.SerializeToString,
            response_deserializer=None,
        )
        received = list(raw(Request(), timeout=DEADLINE))
        channel.close()
    assert received == [r.SerializeToString() for r in scenario_responses]
    assert len(received) == 876


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"number": 3}, ["f7", "f8", "f9"]),
        ({"number": 3, "first": True}, ["f0", "f1", "f2"]),
        ({"number": 50}, [f"f{i}" for i in range(10)]),
        ({"since": T0 + 6 * NS}, ["f6", "f7", "f8", "f9"]),
        ({"until": T0 + 2 * NS}, ["f0", "f1", "f2"]),
        ({"since": T0 + 3 * NS, "until": T0 + 5 * NS}, ["f3", "f4", "f5"]),
        ({"since": T0 + 3 * NS, "number": 2}, ["f8", "f9"]),
        ({"since": T0 + 3 * NS, "number": 2, "first": True}, ["f3", "f4"]),
    ],
)
def test_backlog_honours_number_first_since_and_until(
    request_fields: dict[str, Any], expected: list[str]
) -> None:
    fields = {k: ts(v) if k in ("since", "until") else v for k, v in request_fields.items()}
    with serving(timed_log()) as (_, stub):
        assert ids(collect(stub, **fields)) == expected


def test_follow_sends_the_last_number_then_every_append_made_while_the_stream_is_open() -> None:
    log = timed_log()
    with serving(log) as (_, stub):
        call = stub.GetFlows(Request(follow=True, number=2), timeout=DEADLINE)
        assert ids(take(call, 2)) == ["f8", "f9"]  # the server has taken its snapshot
        log.append(flow("live1", t=T0 + 20 * NS))
        log.extend([flow("live2"), flow("live3")])
        assert ids(take(call, 3)) == ["live1", "live2", "live3"]
        call.cancel()


def test_follow_without_number_or_since_starts_at_the_current_end() -> None:
    log = timed_log()
    with serving(log) as (_, stub):
        call = stub.GetFlows(Request(follow=True), timeout=DEADLINE)
        # Keep appending until the stream shows something: only appends made after it opened may arrive.
        stop = threading.Event()

        def feed() -> None:
            i = 0
            while not stop.wait(0.02):
                log.append(flow(f"new{i}"))
                i += 1

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            first = ids(take(call, 3))
        finally:
            stop.set()
            feeder.join(5)
            call.cancel()
    assert all(uid.startswith("new") for uid in first)
    assert first == sorted(first, key=lambda u: int(u[3:]))


def test_follow_with_since_sends_the_backlog_from_since_then_live_flows() -> None:
    log = timed_log()
    with serving(log) as (_, stub):
        call = stub.GetFlows(Request(follow=True, since=ts(T0 + 7 * NS)), timeout=DEADLINE)
        assert ids(take(call, 3)) == ["f7", "f8", "f9"]
        log.append(flow("live", t=T0 + 30 * NS))
        assert ids(take(call, 1)) == ["live"]
        call.cancel()


def test_follow_with_since_drops_live_flows_stamped_before_since_as_hubble_does() -> None:
    log = timed_log()
    with serving(log) as (_, stub):
        call = stub.GetFlows(Request(follow=True, since=ts(T0 + 9 * NS)), timeout=DEADLINE)
        assert ids(take(call, 1)) == ["f9"]
        # A clock behind (or a node behind another): stamped before since, so never sent.
        log.extend([flow("behind", t=T0 + 8 * NS), flow("untimed", t=0), flow("on-time", t=T0 + 9 * NS)])
        assert ids(take(call, 2)) == ["untimed", "on-time"]
        call.cancel()


def test_follow_ends_the_stream_at_the_first_live_flow_after_until() -> None:
    log = timed_log()
    with serving(log) as (_, stub):
        call = stub.GetFlows(Request(follow=True, number=1, until=ts(T0 + 15 * NS)), timeout=DEADLINE)
        assert ids(take(call, 1)) == ["f9"]
        log.extend([flow("in", t=T0 + 15 * NS), flow("after", t=T0 + 16 * NS), flow("x", t=T0 + 1)])
        assert ids(list(call)) == ["in"]
        assert call.code() == grpc.StatusCode.OK


def test_first_with_follow_and_unimplemented_filter_fields_are_refused_with_invalid_argument() -> None:
    with serving(timed_log()) as (_, stub):
        with pytest.raises(grpc.RpcError) as refused:
            collect(stub, follow=True, first=True, number=1)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "first" in (refused.value.details() or "")
        with pytest.raises(grpc.RpcError) as refused:
            collect(stub, whitelist=[flow_pb2.FlowFilter(source_pod=["a/"], source_ip=["10.0.0.1"])])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "source_ip" in (refused.value.details() or "")


# ------------------------------------------------------------------------------------------------
# GetFlows: filters
# ------------------------------------------------------------------------------------------------


def filter_log(t: int = T0) -> list[Response]:
    return [
        flow("worker-pg", src="airflow/airflow-worker-0", dst="airflow/airflow-postgresql-0", t=t),
        flow(
            "sched-pg",
            src="airflow/airflow-scheduler-1",
            dst="airflow/airflow-postgresql-0",
            node="kind-worker2",
            t=t,
        ),
        flow("debug-redis", src="default/debug-shell", dst="airflow/airflow-redis-0", t=t),
        flow(
            "attacker-pg",
            src="default/attacker-7",
            dst="airflow/airflow-postgresql-0",
            verdict="DROPPED",
            t=t,
        ),
        flow(
            "prom-pg", src="monitoring/prometheus-0", dst="airflow/airflow-postgresql-0", verdict="AUDIT", t=t
        ),
        flow("world", src="airflow/airflow-worker-0", dst="", node="kind-control-plane", t=t),
        flow("airflowx", src="airflow-x/pod", dst="airflow-x/other", t=t),
    ]


FILTER_LOG = filter_log()
ALL_FILTER_IDS = [r.flow.uuid for r in FILTER_LOG]
F = flow_pb2.FlowFilter
DROPPED = flow_pb2.DROPPED
AUDIT = flow_pb2.AUDIT


@pytest.mark.parametrize(
    ("whitelist", "blacklist", "expected"),
    [
        ([], [], ALL_FILTER_IDS),
        ([F(source_pod=["default/"])], [], ["debug-redis", "attacker-pg"]),
        ([F(source_pod=["airflow/"])], [], ["worker-pg", "sched-pg", "world"]),  # not airflow-x/
        ([F(source_pod=["airflow/airflow-worker"])], [], ["worker-pg", "world"]),
        (
            [F(destination_pod=["airflow/airflow-postgresql-0"], verdict=[DROPPED, AUDIT])],
            [],
            ["attacker-pg", "prom-pg"],
        ),
        ([F(source_pod=["default/"]), F(verdict=[AUDIT])], [], ["debug-redis", "attacker-pg", "prom-pg"]),
        ([F(node_name=["kind-worker2", "kind-control"])], [], ["sched-pg", "world"]),
        ([], [F(source_pod=["airflow/"])], ["debug-redis", "attacker-pg", "prom-pg", "airflowx"]),
        ([], [F(destination_pod=["airflow/"]), F(node_name=["kind-control-plane"])], ["airflowx"]),
        (
            [F(destination_pod=["airflow/"])],
            [F(verdict=[DROPPED, AUDIT])],
            ["worker-pg", "sched-pg", "debug-redis"],
        ),
        (
            [F(destination_pod=[""])],
            [],
            ["worker-pg", "sched-pg", "debug-redis", "attacker-pg", "prom-pg", "airflowx"],
        ),
    ],
)
def test_whitelist_and_blacklist_follow_hubble_semantics(
    whitelist: list[flow_pb2.FlowFilter], blacklist: list[flow_pb2.FlowFilter], expected: list[str]
) -> None:
    log = FlowLog(100)
    log.extend(FILTER_LOG)
    with serving(log) as (_, stub):
        assert ids(collect(stub, whitelist=whitelist, blacklist=blacklist)) == expected
        # The same filters on a followed stream: whenever its handler takes its snapshot, the flows from
        # `since` on arrive exactly once, from the backlog or live.
        live = T0 + 100 * NS
        request = Request(follow=True, since=ts(live), whitelist=whitelist, blacklist=blacklist)
        call = stub.GetFlows(request, timeout=DEADLINE)
        log.extend([*filter_log(live), lost_events_response(1, node_name="kind-worker", time_ns=live)])
        assert ids(take(call, len(expected) + 1)) == [*expected, "lost:1"]
        call.cancel()


def test_lost_events_and_node_status_pass_every_filter_and_number_counts_them() -> None:
    log = FlowLog(100)
    log.extend(
        [
            flow("a", src="default/x"),
            lost_events_response(7, node_name="kind-worker", time_ns=T0 + 1),
            node_status_response("NODE_UNAVAILABLE", ["kind-worker2"], "connection refused", time_ns=T0 + 2),
            flow("b", src="airflow/y", t=T0 + 3),
        ]
    )
    whitelist = [F(source_pod=["nothing/"])]
    with serving(log) as (_, stub):
        assert ids(collect(stub, whitelist=whitelist)) == ["lost:7", "node:NODE_UNAVAILABLE"]
        assert ids(collect(stub, number=2)) == ["node:NODE_UNAVAILABLE", "b"]
        got = collect(stub, blacklist=[F(verdict=[flow_pb2.FORWARDED])])
    assert got[0].lost_events.source == flow_pb2.PERF_EVENT_RING_BUFFER
    assert got[0].node_name == "kind-worker"
    assert list(got[1].node_status.node_names) == ["kind-worker2"]


def test_a_follower_overtaken_by_the_ring_gets_a_hubble_ring_buffer_lost_events_notice() -> None:
    log = timed_log(count=5, capacity=10)
    with serving(log) as (_, stub):
        call = stub.GetFlows(Request(follow=True, number=1), timeout=DEADLINE)
        assert ids(take(call, 1)) == ["f4"]
        log.extend(flow(f"n{i}") for i in range(25))  # one lock: the reader cannot run in between
        got = take(call, 11)
        call.cancel()
    assert ids(got) == ["lost:15", *(f"n{i}" for i in range(15, 25))]
    assert got[0].lost_events.source == flow_pb2.HUBBLE_RING_BUFFER


def test_raw_entries_are_sent_unchanged_for_error_path_tests() -> None:
    log = timed_log(count=1)
    log.append_raw(b"\xff\xff\xff")
    with serving(log) as (server, _):
        channel = grpc.insecure_channel(server.address)
        raw: Any = channel.unary_stream(
            "/observer.Observer/GetFlows", request_serializer=Request.SerializeToString
        )
        received = list(raw(Request(), timeout=DEADLINE))
        channel.close()
    assert received[1] == b"\xff\xff\xff"
    assert Response.FromString(received[0]).flow.uuid == "f0"


# ------------------------------------------------------------------------------------------------
# ServerStatus, GetNodes, life cycle
# ------------------------------------------------------------------------------------------------


def test_server_status_counts_retained_and_seen_flows_and_relay_nodes() -> None:
    log = FlowLog(5)
    log.extend(flow(f"f{i}", node="kind-worker" if i % 2 else "kind-worker2") for i in range(8))
    log.append(lost_events_response(3))
    log.append(node_status_response("NODE_UNAVAILABLE", ["kind-worker2"]))
    with serving(log) as (_, stub):
        status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=DEADLINE)
        nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=DEADLINE)
    assert (status.num_flows, status.max_flows, status.seen_flows) == (3, 5, 8)
    assert status.num_connected_nodes.value == 1
    assert status.num_unavailable_nodes.value == 1
    assert list(status.unavailable_nodes) == ["kind-worker2"]
    assert status.uptime_ns > 0
    assert status.version.startswith("flow-auditor-demo/")
    assert [(n.name, n.state) for n in nodes.nodes] == [
        ("kind-worker", observer_pb2.NODE_CONNECTED),
        ("kind-worker2", observer_pb2.NODE_UNAVAILABLE),
    ]


def test_server_status_without_relay_leaves_node_counts_unset() -> None:
    with serving(timed_log(3), relay=False) as (_, stub):
        status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=DEADLINE)
    assert status.seen_flows == 3
    assert not status.HasField("num_connected_nodes")


def test_cancelled_streams_release_their_worker_threads() -> None:
    with serving(timed_log(), max_workers=2) as (_, stub):
        for _ in range(6):
            call = stub.GetFlows(Request(follow=True, number=1), timeout=DEADLINE)
            take(call, 1)
            call.cancel()
        # with two workers, six leaked streams would leave none for this call
        assert stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=DEADLINE).seen_flows == 10


def test_stopping_the_server_fails_open_streams_promptly() -> None:
    log = timed_log()
    server = HubbleServer(log)
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        call = observer_pb2_grpc.ObserverStub(channel).GetFlows(
            Request(follow=True, number=1), timeout=DEADLINE
        )
        take(call, 1)
        started = time.monotonic()
        server.stop(None)
        with pytest.raises(grpc.RpcError) as failed:
            next(call)
        assert time.monotonic() - started < 5
        assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    finally:
        channel.close()
        server.stop(None)


def test_a_second_server_cannot_take_a_port_already_served() -> None:
    with serving(timed_log(1)) as (server, _):
        clash = HubbleServer(FlowLog(1), address=server.address)
        with pytest.raises(RuntimeError):
            clash.start()


# ------------------------------------------------------------------------------------------------
# TLS and mTLS
# ------------------------------------------------------------------------------------------------


def tls_status(
    address: str, ca: Path, cert: Path | None = None, key: Path | None = None, name: str | None = SERVER_NAME
) -> observer_pb2.ServerStatusResponse:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    options = [("grpc.ssl_target_name_override", name)] if name else []
    channel = grpc.secure_channel(address, credentials, options=options)
    try:
        return observer_pb2_grpc.ObserverStub(channel).ServerStatus(
            observer_pb2.ServerStatusRequest(), timeout=DEADLINE
        )
    finally:
        channel.close()


def test_tls_serves_clients_that_trust_the_ca_under_a_relay_server_name(pki: TestPki) -> None:
    tls = ServerTls(pki.server_cert, pki.server_key)
    with serving(timed_log(2), tls=tls) as (server, _):
        assert tls_status(server.address, pki.ca_cert).seen_flows == 2
        assert tls_status(server.address, pki.ca_cert, name=None).seen_flows == 2  # IP SAN 127.0.0.1
        with pytest.raises(grpc.RpcError) as refused:
            tls_status(server.address, pki.other_ca_cert)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as refused:
            tls_status(server.address, pki.ca_cert, name="relay.example.com")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_clients_without_a_certificate_signed_by_the_client_ca(pki: TestPki) -> None:
    tls = ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca_cert)
    with serving(timed_log(2), tls=tls) as (server, _):
        assert tls_status(server.address, pki.ca_cert, pki.client_cert, pki.client_key).seen_flows == 2
        with pytest.raises(grpc.RpcError) as refused:
            tls_status(server.address, pki.ca_cert)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as refused:
            tls_status(server.address, pki.ca_cert, pki.untrusted_client_cert, pki.untrusted_client_key)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


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
