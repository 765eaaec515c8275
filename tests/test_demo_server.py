"""The embedded Hubble-compatible server (``auditor.demo``) as a service, driven by a real gRPC client on
loopback: ``ServerStatus`` and ``GetNodes``, its life cycle (cancelled streams release their threads, stopping
fails open streams promptly, a served port cannot be taken twice), TLS and mTLS with certificates made in the
test. ``GetFlows`` is pinned in ``tests/test_demo_getflows.py``, feeding and the entry point in
``tests/test_demo_feeding.py``.

Every call carries a deadline, every stream is cancelled or drained."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from certs import SERVER_NAME, TestPki
from demo_helpers import DEADLINE, Request, flow, serving, take, timed_log

from auditor._proto.observer import observer_pb2, observer_pb2_grpc
from auditor.demo import FlowLog, HubbleServer, ServerTls, lost_events_response, node_status_response

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
