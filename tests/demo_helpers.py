"""Helpers for the embedded Hubble server tests: flow responses between ``namespace/pod`` endpoints, their
UUIDs in stream order, a timed flow log, a server on loopback with a client stub (stopped on exit), and
``GetFlows`` calls that always carry a deadline."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2, observer_pb2_grpc
from auditor.demo import FlowLog, HubbleServer

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
