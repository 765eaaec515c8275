"""Decoding Hubble protobuf messages (``auditor.decode_pb``) into the flow model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from protowire import lfield, vfield

from auditor import model
from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2
from auditor.decode import decode_line
from auditor.decode_pb import flow_from_pb, record_from_response

SAMPLES = Path(__file__).parent / "data" / "hubble-samples"
SAMPLE_FILES = [*sorted((SAMPLES / "hubble-otel").glob("*.json")), SAMPLES / "cilium-docs-export-rst.jsonl"]


def _full_flow() -> flow_pb2.Flow:
    """A TCP flow with every field the decoder reads set to a distinctive value."""
    msg = flow_pb2.Flow(
        uuid="7f1c",
        verdict=flow_pb2.DROPPED,
        drop_reason_desc=flow_pb2.POLICY_DENIED,
        IP=flow_pb2.IP(source="10.0.1.5", destination="10.0.2.7", ipVersion=flow_pb2.IPv4),
        l4=flow_pb2.Layer4(
            TCP=flow_pb2.TCP(source_port=43210, destination_port=5432, flags=flow_pb2.TCPFlags(SYN=True))
        ),
        source=flow_pb2.Endpoint(
            ID=12,
            identity=4321,
            cluster_name="prod",
            namespace="airflow",
            labels=["k8s:component=worker", "k8s:io.kubernetes.pod.namespace=airflow"],
            pod_name="airflow-worker-0",
            workloads=[flow_pb2.Workload(name="airflow-worker", kind="StatefulSet")],
        ),
        destination=flow_pb2.Endpoint(
            identity=5555,
            namespace="airflow",
            labels=["k8s:app.kubernetes.io/name=postgresql"],
            pod_name="airflow-postgresql-0",
        ),
        Type=flow_pb2.L3_L4,
        node_name="kind-worker",
        node_labels=["kubernetes.io/hostname=kind-worker"],
        source_names=["worker.example"],
        destination_names=["db.example", "postgres.example"],
        event_type=flow_pb2.CiliumEventType(type=model.EventType.DROP, sub_type=133),
        traffic_direction=flow_pb2.INGRESS,
        trace_observation_point=flow_pb2.TO_ENDPOINT,
        trace_reason=flow_pb2.NEW,
        policy_match_type=1,
        proxy_port=0,
        Summary="TCP Flags: SYN",
    )
    msg.time.FromNanoseconds(1_636_540_856_465_597_700)
    msg.is_reply.value = False
    return msg


EXPECTED_FULL = model.Flow(
    time=1_636_540_856.4655977,
    verdict=model.Verdict.DROPPED,
    drop_reason="POLICY_DENIED",
    source=model.Endpoint(
        identity=4321,
        namespace="airflow",
        labels=("k8s:component=worker", "k8s:io.kubernetes.pod.namespace=airflow"),
        pod_name="airflow-worker-0",
        workloads=(model.Workload(kind="StatefulSet", name="airflow-worker"),),
        cluster_name="prod",
    ),
    destination=model.Endpoint(
        identity=5555,
        namespace="airflow",
        labels=("k8s:app.kubernetes.io/name=postgresql",),
        pod_name="airflow-postgresql-0",
    ),
    source_ip="10.0.1.5",
    destination_ip="10.0.2.7",
    protocol=model.Protocol.TCP,
    source_port=43210,
    destination_port=5432,
    icmp_type=0,
    tcp_flags=model.TCP_SYN,
    is_reply=False,
    flow_type=model.FlowType.L3_L4,
    event_type=model.EventType.DROP,
    traffic_direction=model.Direction.INGRESS,
    observation_point=model.ObservationPoint.TO_ENDPOINT,
    node_name="kind-worker",
    source_names=("worker.example",),
    destination_names=("db.example", "postgres.example"),
    trace_reason=model.TraceReason.NEW,
)


def test_every_mapped_field_of_a_full_flow() -> None:
    got = flow_from_pb(_full_flow())
    assert got == EXPECTED_FULL
    assert got.time == pytest.approx(1_636_540_856.4655977, abs=1e-6)
    assert got.source.pod == "airflow/airflow-worker-0"


def test_flow_survives_the_wire() -> None:
    wire = _full_flow().SerializeToString()
    assert flow_from_pb(flow_pb2.Flow.FromString(wire)) == EXPECTED_FULL


def test_unknown_fields_on_the_wire_are_tolerated() -> None:
    wire = (
        _full_flow().SerializeToString()
        + vfield(9999, 7)
        + lfield(4242, b"newer hubble")
        + lfield(200_000, vfield(1, 1))
    )
    assert flow_from_pb(flow_pb2.Flow.FromString(wire)) == EXPECTED_FULL


def test_unknown_enum_numbers_survive_as_ints() -> None:
    # Distinct values for every int field, so that no two can be swapped unnoticed.
    msg = flow_pb2.Flow(node_name="n", event_type=flow_pb2.CiliumEventType(type=13))
    wire = msg.SerializeToString() + b"".join(
        [
            vfield(2, 42),  # verdict
            vfield(10, 9),  # Type
            vfield(22, 7),  # traffic_direction
            vfield(24, 250),  # trace_observation_point
            vfield(25, 999),  # drop_reason_desc
            vfield(36, 77),  # trace_reason
        ]
    )
    got = flow_from_pb(flow_pb2.Flow.FromString(wire))
    ints = (got.verdict, got.flow_type, got.event_type, got.traffic_direction, got.observation_point)
    assert ints == (42, 9, 13, 7, 250) and got.trace_reason == 77
    assert got.drop_reason == "999"


def test_empty_flow_decodes_to_zero_values() -> None:
    got = flow_from_pb(flow_pb2.Flow())
    assert got == model.Flow(
        time=0.0,
        verdict=model.Verdict.UNKNOWN,
        drop_reason="",
        source=model.EMPTY_ENDPOINT,
        destination=model.EMPTY_ENDPOINT,
        source_ip="",
        destination_ip="",
        protocol=model.Protocol.NONE,
        source_port=0,
        destination_port=0,
        icmp_type=0,
        tcp_flags=0,
        is_reply=None,
        flow_type=model.FlowType.UNKNOWN,
        event_type=model.EventType.UNSPEC,
        traffic_direction=model.Direction.UNKNOWN,
        observation_point=model.ObservationPoint.UNKNOWN,
        node_name="",
    )
    assert got.source is model.EMPTY_ENDPOINT


@pytest.mark.parametrize(
    ("drop_reason_desc", "legacy_drop_reason", "expected"),
    [
        (0, 0, ""),
        (flow_pb2.POLICY_DENIED, 0, "POLICY_DENIED"),
        (flow_pb2.DROP_EP_NOT_READY, 0, "DROP_EP_NOT_READY"),
        (0, 133, "POLICY_DENIED"),  # Hubble before drop_reason_desc existed
        (flow_pb2.POLICY_DENY, 133, "POLICY_DENY"),  # the named field wins
    ],
)
def test_drop_reason_is_the_enum_name(drop_reason_desc: int, legacy_drop_reason: int, expected: str) -> None:
    msg = flow_pb2.Flow(drop_reason_desc=drop_reason_desc, drop_reason=legacy_drop_reason)  # type: ignore[arg-type]
    assert flow_from_pb(msg).drop_reason == expected


@pytest.mark.parametrize(
    ("is_reply", "legacy_reply", "expected"),
    [
        (None, False, None),
        (True, False, True),
        (False, False, False),
        (None, True, True),
        (False, True, False),  # is_reply, when present, is the truth
    ],
)
def test_is_reply(is_reply: bool | None, legacy_reply: bool, expected: bool | None) -> None:
    msg = flow_pb2.Flow(reply=legacy_reply)
    if is_reply is not None:
        msg.is_reply.value = is_reply
    assert flow_from_pb(msg).is_reply is expected


@pytest.mark.parametrize(
    ("l4", "expected"),
    [
        (flow_pb2.Layer4(), ("", 0, 0, 0, 0)),
        (
            flow_pb2.Layer4(TCP=flow_pb2.TCP(source_port=1, destination_port=2)),
            ("TCP", 1, 2, 0, 0),
        ),
        (flow_pb2.Layer4(UDP=flow_pb2.UDP(source_port=53000, destination_port=53)), ("UDP", 53000, 53, 0, 0)),
        (flow_pb2.Layer4(SCTP=flow_pb2.SCTP(source_port=5, destination_port=6)), ("SCTP", 5, 6, 0, 0)),
        (flow_pb2.Layer4(ICMPv4=flow_pb2.ICMPv4(type=8, code=0)), ("ICMPv4", 0, 0, 8, 0)),
        (flow_pb2.Layer4(ICMPv6=flow_pb2.ICMPv6(type=128, code=0)), ("ICMPv6", 0, 0, 128, 0)),
        (flow_pb2.Layer4(VRRP=flow_pb2.VRRP(type=1, vrid=2)), ("", 0, 0, 0, 0)),
    ],
)
def test_layer4(l4: flow_pb2.Layer4, expected: tuple[str, int, int, int, int]) -> None:
    got = flow_from_pb(flow_pb2.Flow(l4=l4))
    assert (got.protocol, got.source_port, got.destination_port, got.icmp_type, got.tcp_flags) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (flow_pb2.TCPFlags(), 0),
        (flow_pb2.TCPFlags(FIN=True), model.TCP_FIN),
        (flow_pb2.TCPFlags(SYN=True, ACK=True), model.TCP_SYN | model.TCP_ACK),
        (flow_pb2.TCPFlags(RST=True), model.TCP_RST),
        (flow_pb2.TCPFlags(PSH=True, ACK=True), model.TCP_PSH | model.TCP_ACK),
        (flow_pb2.TCPFlags(FIN=True, SYN=True, RST=True, PSH=True, ACK=True), 31),
        (flow_pb2.TCPFlags(URG=True, ECE=True, CWR=True, NS=True), 0),  # not mapped
    ],
)
def test_tcp_flags_bitmask(flags: flow_pb2.TCPFlags, expected: int) -> None:
    msg = flow_pb2.Flow(l4=flow_pb2.Layer4(TCP=flow_pb2.TCP(flags=flags)))
    assert flow_from_pb(msg).tcp_flags == expected


def test_equal_endpoints_decode_to_one_shared_object() -> None:
    first, second = flow_from_pb(_full_flow()), flow_from_pb(_full_flow())
    assert first.source is second.source
    assert first.destination is second.destination
    assert first.source is not first.destination


def test_endpoint_without_namespace_takes_it_from_its_labels() -> None:
    labels = ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"]
    msg = flow_pb2.Flow(
        source=flow_pb2.Endpoint(identity=9, labels=labels),
        destination=flow_pb2.Endpoint(identity=9, namespace="given", labels=labels),
    )
    got = flow_from_pb(msg)
    assert (got.source.namespace, got.destination.namespace) == ("shop", "given")


def test_present_but_empty_endpoint_equals_the_empty_endpoint() -> None:
    msg = flow_pb2.Flow(source=flow_pb2.Endpoint(), destination=flow_pb2.Endpoint(identity=2))
    got = flow_from_pb(msg)
    assert got.source == model.EMPTY_ENDPOINT
    assert got.destination == model.Endpoint(identity=2)


def _response(**fields: object) -> observer_pb2.GetFlowsResponse:
    resp = observer_pb2.GetFlowsResponse(**fields)  # type: ignore[arg-type]
    resp.time.FromNanoseconds(1_692_619_933_517_394_084)
    return resp


def test_response_with_a_flow() -> None:
    resp = _response(flow=_full_flow(), node_name="relay-node")
    assert record_from_response(resp) == EXPECTED_FULL


def test_flow_without_time_or_node_takes_the_envelopes() -> None:
    resp = _response(flow=flow_pb2.Flow(verdict=flow_pb2.FORWARDED), node_name="kind-kind/kind-worker")
    got = record_from_response(resp)
    assert isinstance(got, model.Flow)
    assert got.time == pytest.approx(1_692_619_933.517394084, abs=1e-6)
    assert got.node_name == "kind-kind/kind-worker"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        (flow_pb2.PERF_EVENT_RING_BUFFER, "PERF_EVENT_RING_BUFFER"),
        (flow_pb2.OBSERVER_EVENTS_QUEUE, "OBSERVER_EVENTS_QUEUE"),
        (flow_pb2.HUBBLE_RING_BUFFER, "HUBBLE_RING_BUFFER"),
        (flow_pb2.UNKNOWN_LOST_EVENT_SOURCE, "UNKNOWN_LOST_EVENT_SOURCE"),
        (77, "UNKNOWN_LOST_EVENT_SOURCE"),
    ],
)
def test_lost_events(source: int, name: str) -> None:
    lost = flow_pb2.LostEvent(source=source, num_events_lost=1234)  # type: ignore[arg-type]
    resp = _response(lost_events=lost, node_name="kind-worker")
    assert record_from_response(resp) == model.LostEvents(
        source=name, num_events=1234, node_name="kind-worker"
    )


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (observer_pb2.NODE_CONNECTED, "NODE_CONNECTED"),
        (observer_pb2.NODE_UNAVAILABLE, "NODE_UNAVAILABLE"),
        (observer_pb2.NODE_GONE, "NODE_GONE"),
        (observer_pb2.NODE_ERROR, "NODE_ERROR"),
        (observer_pb2.UNKNOWN_NODE_STATE, "UNKNOWN_NODE_STATE"),
        (9, "UNKNOWN_NODE_STATE"),
    ],
)
def test_node_status(state: int, name: str) -> None:
    status = observer_pb2.NodeStatusEvent(
        state_change=state,  # type: ignore[arg-type]
        node_names=["kind-worker", "kind-worker2"],
        message="connection refused",
    )
    assert record_from_response(_response(node_status=status)) == model.NodeStatus(
        state=name, node_names=("kind-worker", "kind-worker2"), message="connection refused"
    )


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"", "unknown"),
        (lfield(4, vfield(1, 2)), "agent_event"),  # AgentEvent{type: AGENT_STARTED}
        (lfield(5, lfield(7, b"debug")), "debug_event"),
        (lfield(77, b"future payload"), "unknown"),
    ],
)
def test_response_without_a_known_payload_is_another_record(payload: bytes, kind: str) -> None:
    wire = observer_pb2.GetFlowsResponse(node_name="kind-worker").SerializeToString() + payload
    resp = observer_pb2.GetFlowsResponse.FromString(wire)
    assert record_from_response(resp) == model.OtherRecord(kind=kind)


def _lines() -> list[tuple[str, int, str]]:
    out = []
    for path in SAMPLE_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            out.append((path.name, number, line))
    return out


def test_every_recorded_sample_line_parses_strictly_and_decodes_like_the_json_decoder() -> None:
    lines = _lines()
    assert len(lines) == 1918
    for name, number, line in lines:
        resp = json_format.Parse(line, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=False)
        got = record_from_response(resp)
        raw = json.loads(line)
        where = f"{name}:{number}"
        assert isinstance(got, model.Flow), where
        from_json = decode_line(line)
        assert isinstance(from_json, model.Flow), where
        assert got.time == pytest.approx(from_json.time, abs=1e-6), where
        assert got.replace(time=0.0) == from_json.replace(time=0.0), where
        assert got.node_name == raw["flow"]["node_name"], where
        assert got.verdict == flow_pb2.Verdict.Value(raw["flow"]["verdict"]), where
        assert got.source_ip == raw["flow"].get("IP", {}).get("source", ""), where


def test_recorded_drops_keep_their_reason() -> None:
    lines = (SAMPLES / "cilium-docs-export-rst.jsonl").read_text(encoding="utf-8").splitlines()
    flows = [record_from_response(json_format.Parse(line, observer_pb2.GetFlowsResponse())) for line in lines]
    assert [(f.verdict, f.drop_reason, f.protocol) for f in flows if isinstance(f, model.Flow)] == [
        (model.Verdict.DROPPED, "INVALID_SOURCE_IP", "ICMPv6"),
        (model.Verdict.DROPPED, "POLICY_DENIED", "TCP"),
    ]
    policy_denied = flows[1]
    assert isinstance(policy_denied, model.Flow)
    assert policy_denied.source.pod == "default/xwing"
    assert (policy_denied.destination_port, policy_denied.tcp_flags) == (80, model.TCP_SYN)


def test_recorded_legacy_reply_field_marks_replies() -> None:
    sample = SAMPLES / "hubble-otel" / "basic-sample-10-flows.json"
    line = sample.read_text(encoding="utf-8").splitlines()[0]
    assert '"reply":true' in line and "is_reply" not in line
    got = record_from_response(json_format.Parse(line, observer_pb2.GetFlowsResponse()))
    assert isinstance(got, model.Flow)
    assert got.is_reply is True
    assert (got.protocol, got.source_port, got.destination_port) == ("TCP", 15020, 42044)
    assert got.tcp_flags == model.TCP_FIN | model.TCP_ACK
    assert got.observation_point == model.ObservationPoint.TO_STACK
    assert got.event_type == model.EventType.TRACE


def test_the_live_schema_decodes_every_sample_and_scenario_message_like_the_full_one() -> None:
    from datetime import UTC, datetime

    from auditor._proto.live import live_pb2
    from auditor.demo import response_from_event
    from auditor.scenario import airflow_scenario

    messages = [
        json_format.Parse(line, observer_pb2.GetFlowsResponse()).SerializeToString()
        for _, _, line in _lines()
    ]
    scenario = airflow_scenario(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    messages += [response_from_event(e).SerializeToString() for e in scenario.events]
    assert len(messages) > 2500
    for data in messages:
        full = record_from_response(observer_pb2.GetFlowsResponse.FromString(data))
        lean = record_from_response(live_pb2.GetFlowsResponse.FromString(data))
        assert lean == full
