"""``GetFlows`` of the embedded Hubble-compatible server (``auditor.demo``), driven by a real gRPC client on
loopback: the backlog byte for byte, ``number``, ``first``, ``since`` and ``until``, follow mode, Hubble's
whitelist/blacklist filter semantics, lost-event and node-status notices, a follower overtaken by the ring.

Every call carries a deadline, every stream is cancelled or drained."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
from demo_helpers import DEADLINE, NS, T0, Request, Response, collect, flow, ids, serving, take, timed_log, ts

from auditor._proto.flow import flow_pb2
from auditor.demo import (
    FlowLog,
    log_from_responses,
    lost_events_response,
    node_status_response,
    response_from_event,
)
from auditor.scenario import airflow_scenario


@pytest.fixture(scope="module")
def scenario_responses() -> list[Response]:
    return [response_from_event(e) for e in airflow_scenario().events]


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
