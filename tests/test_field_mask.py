"""GetFlowsRequest.field_mask: what the live source asks for, and the demo server honouring it as Hubble does.

Real parts: the embedded demo server on 127.0.0.1 (ephemeral port), raw gRPC clients and the real daemon.
Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from daemon_helpers import FLOWS, connections, scrape, start_daemon, total, value, wait_for
from google.protobuf import field_mask_pb2

from auditor._proto.flow import flow_pb2
from auditor._proto.live import live_pb2
from auditor._proto.observer import observer_pb2
from auditor.daemon import Daemon
from auditor.decode_pb import record_from_response
from auditor.demo import FlowLog, HubbleServer, load_jsonl
from auditor.demo.fieldmask import FlowMask, InvalidFieldMask
from auditor.sources.hubble import FIELD_MASK_PATHS, GET_FLOWS, HubbleConfig

RESPONSES = load_jsonl(FLOWS)
RECORDS = len(RESPONSES)


@pytest.fixture
def server() -> Iterator[HubbleServer]:
    log = FlowLog()
    log.extend(RESPONSES)
    srv = HubbleServer(log)
    srv.start()
    yield srv
    srv.stop(0)


def stream(address: str, request: observer_pb2.GetFlowsRequest) -> list[bytes]:
    """Every response of a non-follow GetFlows call, as raw bytes."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_stream(
            GET_FLOWS,
            request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
            response_deserializer=None,
        )
        return list(call(request, timeout=20))


def masked(paths: tuple[str, ...] | list[str], **request: object) -> observer_pb2.GetFlowsRequest:
    return observer_pb2.GetFlowsRequest(field_mask=field_mask_pb2.FieldMask(paths=paths), **request)  # type: ignore[arg-type]


# -- the live source's mask ----------------------------------------------------------------------------


def full_flows() -> list[flow_pb2.Flow]:
    """Flows setting every field the decoder can read, each read field mattering for at least one of them
    (the deprecated drop_reason and reply only count when their successors are unset)."""
    endpoint = flow_pb2.Endpoint(
        ID=7,
        identity=4242,
        cluster_name="c1",
        namespace="airflow",
        labels=["k8s:app=web", "k8s:tier=front"],
        pod_name="web-0",
        workloads=[flow_pb2.Workload(name="web", kind="StatefulSet")],
    )
    peer = flow_pb2.Endpoint(
        identity=9,
        cluster_name="c2",
        namespace="db",
        labels=["k8s:app=pg"],
        pod_name="pg-0",
        workloads=[flow_pb2.Workload(name="pg", kind="StatefulSet")],
    )
    first = flow_pb2.Flow(
        verdict=flow_pb2.DROPPED,
        drop_reason_desc=flow_pb2.POLICY_DENIED,
        IP=flow_pb2.IP(source="10.0.0.1", destination="10.0.0.2", ipVersion=flow_pb2.IPv4),
        l4=flow_pb2.Layer4(TCP=flow_pb2.TCP(source_port=40000, destination_port=5432)),
        source=endpoint,
        destination=peer,
        Type=flow_pb2.L3_L4,
        node_name="kind-worker",
        source_names=["web.example"],
        destination_names=["pg.example"],
        event_type=flow_pb2.CiliumEventType(type=1, sub_type=133),
        traffic_direction=flow_pb2.EGRESS,
        trace_observation_point=flow_pb2.TO_ENDPOINT,
        trace_reason=flow_pb2.NEW,
        uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        Summary="TCP Flags: SYN",
    )
    first.time.FromNanoseconds(1_700_000_000_123_456_789)
    first.is_reply.value = False
    second = flow_pb2.Flow()
    second.CopyFrom(first)
    second.ClearField("drop_reason_desc")
    second.drop_reason = 181
    second.ClearField("is_reply")
    second.reply = True
    return [first, second]


def decoded(flow: flow_pb2.Flow, mask: FlowMask | None) -> object:
    data = observer_pb2.GetFlowsResponse(flow=flow, node_name=flow.node_name, time=flow.time)
    raw = data.SerializeToString()
    return record_from_response(live_pb2.GetFlowsResponse.FromString(mask.response(raw) if mask else raw))


def test_the_mask_is_valid_for_hubble_and_covers_every_field_the_live_decoder_reads() -> None:
    mask = field_mask_pb2.FieldMask(paths=FIELD_MASK_PATHS)
    assert mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR)
    assert {p.split(".")[0] for p in FIELD_MASK_PATHS} == {f.name for f in live_pb2.Flow.DESCRIPTOR.fields}
    flows = full_flows()
    for flow in flows:
        assert decoded(flow, FlowMask(mask)) == decoded(flow, None)
    # and nothing in it is superfluous: without any one path, some flow decodes differently
    for path in FIELD_MASK_PATHS:
        fewer = FlowMask(field_mask_pb2.FieldMask(paths=[p for p in FIELD_MASK_PATHS if p != path]))
        assert any(decoded(f, fewer) != decoded(f, None) for f in flows), path


def test_every_example_flow_decodes_the_same_masked_and_the_bytes_shrink() -> None:
    mask = FlowMask(field_mask_pb2.FieldMask(paths=FIELD_MASK_PATHS))
    full_bytes = masked_bytes = 0
    for response in RESPONSES:
        raw = response.SerializeToString()
        small = mask.response(raw)
        full_bytes += len(raw)
        masked_bytes += len(small)
        parse = live_pb2.GetFlowsResponse.FromString
        assert record_from_response(parse(small)) == record_from_response(parse(raw))
    assert masked_bytes < 0.8 * full_bytes, (masked_bytes, full_bytes)


# -- the demo server honours masks as Hubble does ---------------------------------------------------------


def test_only_the_masked_fields_are_sent_and_the_envelope_follows_the_masked_flow(
    server: HubbleServer,
) -> None:
    got = [observer_pb2.GetFlowsResponse.FromString(b) for b in stream(server.address, masked(["verdict"]))]
    flows = [r for r in got if r.HasField("flow")]
    assert len(flows) == sum(1 for r in RESPONSES if r.HasField("flow")) > 0
    assert {f.name for r in flows for f, _ in r.flow.ListFields()} <= {"verdict"}
    assert all(not r.node_name and not r.HasField("time") for r in flows)  # as Hubble: from the masked flow
    others = [r for r in got if not r.HasField("flow")]  # lost events, node status: never masked
    assert others == [r for r in RESPONSES if not r.HasField("flow")]

    with_time = [
        observer_pb2.GetFlowsResponse.FromString(b) for b in stream(server.address, masked(["time"]))
    ]
    want = [r.flow.time for r in RESPONSES if r.HasField("flow")]
    assert [r.time for r in with_time if r.HasField("flow")] == want


def test_a_path_into_a_message_keeps_the_message_present_even_when_the_flow_had_none(
    server: HubbleServer,
) -> None:
    mask = FlowMask(field_mask_pb2.FieldMask(paths=["IP.source", "l4"]))
    flow = mask.flow(flow_pb2.Flow(verdict=flow_pb2.FORWARDED))
    assert flow.HasField("IP") and not flow.HasField("l4")  # allocated container; absent whole field
    got = stream(server.address, masked(["IP.source"], number=1))
    assert observer_pb2.GetFlowsResponse.FromString(got[-1]).flow.IP.destination == ""


def test_filters_see_the_whole_flow_before_it_is_masked(server: HubbleServer) -> None:
    scope = flow_pb2.FlowFilter(source_pod=["airflow/"])
    plain = stream(server.address, observer_pb2.GetFlowsRequest(whitelist=[scope]))
    small = stream(server.address, masked(["verdict"], whitelist=[scope]))
    assert len(small) == len(plain) < RECORDS


@pytest.mark.parametrize("paths", [["no_such_field"], ["source_names.x"], ["verdict", "l4.TCP.nope"]])
def test_an_invalid_mask_fails_the_call_as_hubble_does(server: HubbleServer, paths: list[str]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stream(server.address, masked(paths))
    assert caught.value.code() is grpc.StatusCode.UNKNOWN
    assert caught.value.details() == "invalid fieldmask"
    with pytest.raises(InvalidFieldMask):
        FlowMask(field_mask_pb2.FieldMask(paths=paths))


def test_an_empty_mask_sends_whole_flows(server: HubbleServer) -> None:
    assert stream(server.address, masked([])) == [r.SerializeToString() for r in RESPONSES]


# -- the daemon: same judgements, fewer bytes -------------------------------------------------------------


def test_the_daemon_judges_the_same_with_and_without_the_mask(server: HubbleServer) -> None:
    daemons: list[Daemon] = []
    try:
        for field_mask in (True, False):
            daemons.append(start_daemon(server.address, field_mask=field_mask))
        for d in daemons:
            wait_for(
                lambda d=d: (
                    total(scrape(d.listen_address), "flow_auditor_flows_total")  # type: ignore[misc]
                    >= sum(1 for r in RESPONSES if r.HasField("flow"))
                ),
                what="every flow judged",
            )
        with_mask, without = (scrape(d.listen_address) for d in daemons)
        assert connections(with_mask) == connections(without) != {}
        for outcome in ("judged", "reply", "provisional", "ignored", "out_of_scope"):
            a = value(with_mask, "flow_auditor_flows_total", outcome=outcome)
            assert a == value(without, "flow_auditor_flows_total", outcome=outcome), outcome
        assert list(daemons[0].source.requests[0].field_mask.paths) == list(FIELD_MASK_PATHS)
        assert not daemons[1].source.requests[0].HasField("field_mask")
    finally:
        for d in daemons:
            d.stop()


def test_the_mask_shrinks_what_travels_per_message(server: HubbleServer) -> None:
    full = stream(server.address, observer_pb2.GetFlowsRequest())
    small = stream(server.address, masked(FIELD_MASK_PATHS))
    assert len(full) == len(small) == RECORDS
    assert sum(map(len, small)) < 0.8 * sum(map(len, full))
    config = HubbleConfig(server=server.address)
    assert config.field_mask  # on by default
