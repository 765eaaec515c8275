"""Server-side scope: the live source asks Hubble only for flows from/to the matrix's scope, by default.

Real parts: the embedded demo server on 127.0.0.1 (ephemeral port) with Hubble's filter semantics for pod
and label filters, the real daemon and the real command-line parser. Every wait is bounded.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from daemon_helpers import MATRIX, scrape, value, wait_for

from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2
from auditor.cli import build_parser
from auditor.commands.common import UsageError
from auditor.commands.common import hubble_config as _hubble_config
from auditor.commands.run import daemon_config as _daemon_config
from auditor.daemon import Daemon, DaemonConfig
from auditor.demo import FlowLog, HubbleServer
from auditor.demo.labels import compile_selector, selects_any
from auditor.sources.hubble import GET_FLOWS, HubbleConfig, scope_filters

NS_LABEL = "k8s:io.kubernetes.pod.namespace"


def flow(
    source: flow_pb2.Endpoint, destination: flow_pb2.Endpoint, port: int
) -> observer_pb2.GetFlowsResponse:
    f = flow_pb2.Flow(
        verdict=flow_pb2.FORWARDED,
        source=source,
        destination=destination,
        l4=flow_pb2.Layer4(TCP=flow_pb2.TCP(source_port=40000, destination_port=port)),
        node_name="n1",
    )
    f.time.FromNanoseconds(1_700_000_000_000_000_000 + port)
    return observer_pb2.GetFlowsResponse(flow=f, node_name="n1", time=f.time)


POD = flow_pb2.Endpoint(identity=100, namespace="airflow", pod_name="web-0", labels=[f"{NS_LABEL}=airflow"])
# Known by identity only (e.g. a pod of another cluster): no namespace, no pod name, but its labels.
IDENTITY_ONLY = flow_pb2.Endpoint(identity=200, labels=[f"{NS_LABEL}=airflow", "k8s:app=worker"])
OTHER = flow_pb2.Endpoint(identity=300, namespace="shop", pod_name="cart-0", labels=[f"{NS_LABEL}=shop"])
WORLD = flow_pb2.Endpoint(identity=2, labels=["reserved:world"])
CASES = {
    1: (POD, WORLD, True),
    2: (WORLD, POD, True),
    3: (IDENTITY_ONLY, WORLD, True),
    4: (OTHER, IDENTITY_ONLY, True),
    5: (OTHER, WORLD, False),
    6: (WORLD, WORLD, False),
}


@pytest.fixture
def server() -> Iterator[HubbleServer]:
    log = FlowLog()
    log.extend(flow(src, dst, port) for port, (src, dst, _) in CASES.items())
    srv = HubbleServer(log)
    srv.start()
    yield srv
    srv.stop(0)


def ports(address: str, whitelist: list[flow_pb2.FlowFilter]) -> list[int]:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_stream(
            GET_FLOWS,
            request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
            response_deserializer=observer_pb2.GetFlowsResponse.FromString,
        )
        return [
            r.flow.l4.TCP.destination_port for r in call(observer_pb2.GetFlowsRequest(whitelist=whitelist))
        ]


def test_scope_filters_keep_flows_with_either_end_in_scope_also_by_identity_labels(
    server: HubbleServer,
) -> None:
    assert ports(server.address, scope_filters(("airflow",))) == [p for p, c in CASES.items() if c[2]]
    # pod filters alone miss the endpoints known only by their identity
    assert ports(server.address, scope_filters(("airflow",))[:2]) == [1, 2]
    assert ports(server.address, scope_filters(("airflow", "shop"))) == [1, 2, 3, 4, 5]
    assert scope_filters(()) == []


def test_label_selectors_as_hubble_reads_them() -> None:
    labels = ["k8s:app=web", "reserved:host", f"{NS_LABEL}=airflow"]
    assert selects_any([compile_selector("k8s:app=web")], labels)
    assert selects_any([compile_selector("app=web")], labels)  # no source: any source
    assert not selects_any([compile_selector("container:app=web")], labels)
    assert selects_any([compile_selector("k8s:app!=db,reserved:host")], labels)
    assert not selects_any([compile_selector("!reserved:host")], labels)
    assert selects_any([compile_selector("k8s:app=db"), compile_selector("k8s:app==web")], labels)
    with pytest.raises(ValueError, match="set-based"):
        compile_selector("k8s:app in (web, db)")


def test_an_unsupported_selector_is_refused_by_the_demo_server(server: HubbleServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        ports(server.address, [flow_pb2.FlowFilter(source_label=["k8s:app notin (a)"])])
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def _run(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", "--matrix", str(MATRIX), *extra])


def _config(args: argparse.Namespace) -> DaemonConfig:
    return _daemon_config(args, args.matrix, _hubble_config(args))


def test_run_scopes_server_side_by_default_and_flags_turn_it_and_the_mask_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("FLOW_AUDITOR_SERVER_SIDE_FILTER", "FLOW_AUDITOR_NO_SERVER_SIDE_FILTER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("FLOW_AUDITOR_NO_FIELD_MASK", raising=False)
    default = _config(_run())
    assert default.server_side_filter and default.hubble.field_mask
    assert _config(_run("--server-side-filter")).server_side_filter  # the old opt-in still works
    assert not _config(_run("--no-server-side-filter")).server_side_filter
    assert not _config(_run("--no-field-mask")).hubble.field_mask
    with pytest.raises(UsageError, match="contradict"):
        _config(_run("--server-side-filter", "--no-server-side-filter"))


def test_env_twins_of_the_stream_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.options import env_bool

    monkeypatch.setenv("FLOW_AUDITOR_NO_FIELD_MASK", "yes")
    monkeypatch.setenv("FLOW_AUDITOR_NO_SERVER_SIDE_FILTER", "on")
    args = _run()
    args.no_field_mask = env_bool(args.no_field_mask)
    args.no_server_side_filter = env_bool(args.no_server_side_filter)
    args.server_side_filter = env_bool(args.server_side_filter)
    config = _config(args)
    assert not config.hubble.field_mask and not config.server_side_filter
    with pytest.raises(argparse.ArgumentTypeError, match="FLOW_AUDITOR_NO_FIELD_MASK"):
        monkeypatch.setenv("FLOW_AUDITOR_NO_FIELD_MASK", "maybe")
        env_bool(_run().no_field_mask)


def test_a_reload_that_changes_the_scope_reopens_the_stream_with_the_new_filters(
    tmp_path: Path, server: HubbleServer
) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX.read_text())
    config = DaemonConfig(
        matrix=str(matrix),
        hubble=HubbleConfig(server=server.address, since=0.0, timeout=2.0, backoff_initial=0.1),
        listen_address="127.0.0.1:0",
        reload_interval=0.1,
        server_side_filter=True,
    )
    d = Daemon(config)
    d.start()
    try:
        wait_for(lambda: value(scrape(d.listen_address), "flow_auditor_hubble_up") == 1.0, what="the stream")
        assert list(d.source.requests[0].whitelist) == scope_filters(("airflow",))
        wider = tmp_path / "new.yaml"
        wider.write_text(
            MATRIX.read_text().replace("namespaces: [airflow]", "namespaces: [airflow, shop]", 1)
        )
        wider.replace(matrix)
        wait_for(lambda: len(d.source.requests) >= 2, what="the re-opened stream")
        assert list(d.source.requests[-1].whitelist) == scope_filters(("airflow", "shop"))
    finally:
        d.stop()
