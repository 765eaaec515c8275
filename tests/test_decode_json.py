"""Every JSON line form of DESIGN §3, on hand-written lines and on the real recorded samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.decode import DecodeError, decode_block, decode_line, parse_time
from auditor.model import (
    DIRECTION_NAMES,
    FLOW_TYPE_NAMES,
    OBSERVATION_POINT_NAMES,
    TCP_ACK,
    TCP_SYN,
    TRACE_REASON_NAMES,
    VERDICT_NAMES,
    Direction,
    EventType,
    Flow,
    FlowType,
    LostEvents,
    NodeStatus,
    ObservationPoint,
    OtherRecord,
    Record,
    Verdict,
    Workload,
)

SAMPLES = Path(__file__).parent / "data" / "hubble-samples"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "airflow"

FLOW = {
    "time": "2026-11-23T09:00:01.123456789Z",
    "verdict": "DROPPED",
    "drop_reason": 133,
    "IP": {"source": "10.244.1.5", "destination": "10.244.2.7", "ipVersion": "IPv4"},
    "l4": {"TCP": {"source_port": 41234, "destination_port": 5432, "flags": {"SYN": True}}},
    "source": {
        "ID": 12,
        "identity": 4242,
        "namespace": "default",
        "labels": ["k8s:run=debug-shell", "k8s:io.kubernetes.pod.namespace=default"],
        "pod_name": "debug-shell",
        "workloads": [{"name": "debug", "kind": "Deployment"}],
    },
    "destination": {
        "identity": 5151,
        "namespace": "airflow",
        "labels": ["k8s:app.kubernetes.io/name=postgresql"],
        "pod_name": "airflow-postgresql-0",
        "cluster_name": "prod",
    },
    "Type": "L3_L4",
    "node_name": "kind-worker2",
    "event_type": {"type": 1, "sub_type": 133},
    "traffic_direction": "INGRESS",
    "drop_reason_desc": "POLICY_DENIED",
    "is_reply": False,
    "Summary": "TCP Flags: SYN",
    "some_future_field": {"nested": [1, 2, 3]},
}


def _camel(obj: object) -> object:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            head, *rest = k.split("_")
            out[head + "".join(p[:1].upper() + p[1:] for p in rest)] = _camel(v)
        return out
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def _check(flow: object) -> Flow:
    assert isinstance(flow, Flow)
    assert flow.verdict == Verdict.DROPPED
    assert flow.drop_reason == "POLICY_DENIED"
    assert flow.source.identity == 4242 and flow.source.namespace == "default"
    assert flow.source.pod_name == "debug-shell" and flow.source.pod == "default/debug-shell"
    assert flow.source.workloads == (Workload("Deployment", "debug"),)
    assert flow.destination.pod == "airflow/airflow-postgresql-0" and flow.destination.cluster_name == "prod"
    assert (flow.source_ip, flow.destination_ip) == ("10.244.1.5", "10.244.2.7")
    assert (flow.protocol, flow.source_port, flow.destination_port) == ("TCP", 41234, 5432)
    assert flow.tcp_flags == TCP_SYN
    assert flow.is_reply is False
    assert flow.flow_type == FlowType.L3_L4 and flow.event_type == EventType.DROP
    assert flow.traffic_direction == Direction.INGRESS
    assert flow.node_name == "kind-worker2"
    assert flow.time == pytest.approx(1795424401.123457, abs=1e-6)
    return flow


FORMS = {
    "jsonpb envelope": {"flow": FLOW, "node_name": "kind-worker2", "time": FLOW["time"]},
    "exporter envelope with node_labels": {
        "flow": FLOW,
        "node_name": "kind-worker2",
        "time": FLOW["time"],
        "node_labels": ["a=b"],
    },
    "bare flow": FLOW,
    "camelCase envelope": _camel({"flow": FLOW, "node_name": "kind-worker2", "time": FLOW["time"]}),
    "camelCase bare flow": _camel(FLOW),
}


@pytest.mark.parametrize("line", FORMS.values(), ids=FORMS.keys())
def test_json_line_forms(line: dict[str, object]) -> None:
    _check(decode_line(json.dumps(line).encode()))


def test_enums_as_numbers() -> None:
    f = dict(FLOW, verdict=2, Type=1, traffic_direction=1, drop_reason_desc=133, trace_observation_point=101)
    flow = _check(decode_line(json.dumps({"flow": f}).encode()))
    assert flow.observation_point == ObservationPoint.TO_ENDPOINT


@pytest.mark.parametrize(
    ("field", "attribute", "names"),
    [
        ("verdict", "verdict", VERDICT_NAMES),
        ("Type", "flow_type", FLOW_TYPE_NAMES),
        ("traffic_direction", "traffic_direction", DIRECTION_NAMES),
        ("trace_observation_point", "observation_point", OBSERVATION_POINT_NAMES),
        ("trace_reason", "trace_reason", TRACE_REASON_NAMES),
    ],
)
def test_every_enum_name_decodes_to_its_number(field: str, attribute: str, names: dict[int, str]) -> None:
    """Each name of the published enums, the commonest ones (compared before the table lookup) included."""
    for number, name in names.items():
        flow = decode_line(json.dumps({"flow": dict(FLOW, **{field: name})}).encode())
        assert isinstance(flow, Flow) and getattr(flow, attribute) == number, (field, name)


def test_unknown_enum_names_and_numbers() -> None:
    flow = decode_line(
        json.dumps({"flow": dict(FLOW, verdict="SOMETHING_NEW", traffic_direction=9)}).encode()
    )
    assert isinstance(flow, Flow)
    assert flow.verdict == 0 and flow.traffic_direction == 9


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"trace_reason": "RELATED"}, 4),
        ({"trace_reason": 4}, 4),
        ({"trace_reason": "SOMETHING_NEW"}, 0),
        ({}, 0),  # older Hubble: not said
    ],
)
def test_trace_reason_by_name_or_number(fields: dict[str, object], expected: int) -> None:
    flow = decode_line(json.dumps({"flow": {**FLOW, **fields}}).encode())
    assert isinstance(flow, Flow) and flow.trace_reason == expected
    camel = decode_line(json.dumps(_camel({"flow": {**FLOW, **fields}})).encode())  # protobuf JSON spelling
    assert isinstance(camel, Flow) and camel.trace_reason == expected


def test_deprecated_drop_reason_number_only() -> None:
    f = {k: v for k, v in FLOW.items() if k != "drop_reason_desc"}
    flow = decode_line(json.dumps({"flow": f}).encode())
    assert isinstance(flow, Flow) and flow.drop_reason == "POLICY_DENIED"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"is_reply": True}, True),
        ({"is_reply": False}, False),
        ({"reply": True}, True),
        ({"reply": True, "is_reply": False}, False),
    ],
)
def test_is_reply_absent_true_false_and_legacy(fields: dict[str, bool], expected: bool | None) -> None:
    f = {k: v for k, v in FLOW.items() if k != "is_reply"} | fields
    flow = decode_line(json.dumps({"flow": f}).encode())
    assert isinstance(flow, Flow) and flow.is_reply is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T09:00:01Z", 1795424401.0),
        ("2026-11-23T09:00:01.5Z", 1795424401.5),
        ("2026-11-23T09:00:01.123Z", 1795424401.123),
        ("2026-11-23T09:00:01.123456Z", 1795424401.123456),
        ("2026-11-23T09:00:01.123456789Z", 1795424401.123456789),
        ("2026-11-23T10:00:01.25+01:00", 1795424401.25),
        ("2026-11-23T04:30:01-04:30", 1795424401.0),
    ],
)
def test_timestamps_with_0_to_9_fraction_digits_and_offsets(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected, abs=1e-6)
    assert parse_time(text) == pytest.approx(expected, abs=1e-6)  # second call: cached path


@pytest.mark.parametrize("text", ["yesterday", "2026-13-45T00:00:00Z", "2026-11-23 09:00", ""])
def test_bad_timestamps_are_decode_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        decode_line(json.dumps({"flow": dict(FLOW, time=text or "x")}).encode())


def test_icmp_and_udp() -> None:
    icmp = decode_line(json.dumps({"flow": dict(FLOW, l4={"ICMPv4": {"type": 8, "code": 0}})}).encode())
    assert isinstance(icmp, Flow) and (icmp.protocol, icmp.icmp_type, icmp.destination_port) == (
        "ICMPv4",
        8,
        0,
    )
    udp = decode_line(
        json.dumps({"flow": dict(FLOW, l4={"UDP": {"source_port": 5353, "destination_port": 53}})}).encode()
    )
    assert isinstance(udp, Flow) and (udp.protocol, udp.source_port, udp.destination_port) == (
        "UDP",
        5353,
        53,
    )


def test_lost_events_and_node_status_are_records_not_flows() -> None:
    lost = decode_line(
        b'{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"17"},"node_name":"n1"}'
    )
    assert lost == LostEvents("HUBBLE_RING_BUFFER", 17, "n1")
    lost2 = decode_line(b'{"lostEvents":{"source":1,"numEventsLost":"3"}}')
    assert lost2 == LostEvents("PERF_EVENT_RING_BUFFER", 3, "")
    status = decode_line(b'{"node_status":{"state":"NODE_UNAVAILABLE","node_names":["a","b"],"message":"x"}}')
    assert status == NodeStatus("NODE_UNAVAILABLE", ("a", "b"), "x")
    assert decode_line(b'{"agent_event":{"type":"AGENT_STARTED"},"node_name":"n1"}') == OtherRecord(
        "agent_event"
    )
    assert decode_line(b'{"node_name":"n1","time":"2026-11-23T09:00:01Z"}') == OtherRecord("unknown")


@pytest.mark.parametrize(
    "line",
    [
        b'{"flow": {"time": "2026-11-23T09:00:01Z", "verdict": "FORW',
        b"garbage",
        b"[1, 2]",
        b'{"flow": {"l4": {"TCP": {"source_port": "eighty"}}}}',
        b'{"flow": {"source": {"labels": "k8s:a=b"}}}',
        b'{"flow": {"source": {"identity": "x"}}}',
    ],
    ids=["truncated", "garbage", "array", "port as text", "labels not a list", "identity not a number"],
)
def test_undecodable_lines_raise_decode_error(line: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_line(line)


def test_a_block_decodes_as_its_lines_do_errors_in_line_order() -> None:
    """``decode_block`` parses every line, then turns every parsed line into its record: a line the second
    pass refuses (a time past 9999 in UTC) is still reported before a later line the first pass refused
    (broken JSON), each with the index of the record it comes before, and every line gets what
    ``decode_line`` gives it."""
    flows = (EXAMPLE / "flows.jsonl").read_bytes().splitlines(keepends=True)[:3]
    lines = [
        b"\n",
        flows[0],
        b'{"flow": {"time": "9999-12-31T23:59:59-23:00"}}\n',  # refused by the second pass (year 10000)
        b'{"flow": {"verdict": \n',  # refused by the first pass
        b"   \n",
        flows[1],
        b'{"lost_events": {"num_events_lost": "many"}}\n',  # the second pass again
        flows[2],
    ]
    expected: list[object] = []
    expected_errors: list[tuple[int, str]] = []
    for number, line in enumerate(lines[1:], 11):  # decode from the second line, numbered from 11
        if line.strip():
            try:
                expected.append(decode_line(line))
            except DecodeError as e:
                expected_errors.append((number, str(e)))
    before = OtherRecord("unknown")  # a record of an earlier block, still in the list
    records: list[Record] = [before]
    errors: list[tuple[int, int, str]] = []
    assert decode_block(lines, 1, len(lines), 11, records, errors) == 6  # lines not blank
    assert [(n, reason) for _, n, reason in errors] == expected_errors
    assert [(position, n) for position, n, _ in errors] == [(2, 12), (2, 13), (3, 16)]  # before records 2, 3
    assert records == [before, *expected]
    assert len(expected) == 3 and all(isinstance(r, Flow) for r in expected)


SAMPLE_FILES = sorted(p for p in SAMPLES.glob("**/*.json*") if p.is_file())


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.name for p in SAMPLE_FILES])
def test_every_real_sample_line_decodes(path: Path) -> None:
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = decode_line(line)
        assert isinstance(record, Flow)
        raw = json.loads(line)["flow"]
        assert record.time > 1.6e9
        assert record.source_ip == raw.get("IP", {}).get("source", "")
        assert record.node_name == raw.get("node_name", "")


def test_real_sample_legacy_reply_field() -> None:
    path = SAMPLES / "hubble-otel" / "basic-sample-10-flows.json"
    flows = [decode_line(line) for line in path.read_bytes().splitlines()]
    raw = [json.loads(line)["flow"] for line in path.read_bytes().splitlines()]
    for flow, r in zip(flows, raw, strict=True):
        assert isinstance(flow, Flow)
        assert flow.is_reply is (True if r.get("reply") else r.get("is_reply"))


def test_real_exporter_sample_with_empty_source() -> None:
    flows = [
        decode_line(line) for line in (SAMPLES / "cilium-docs-export-rst.jsonl").read_bytes().splitlines()
    ]
    first, second = flows
    assert isinstance(first, Flow) and first.source.identity == 0 and first.protocol == "ICMPv6"
    assert first.drop_reason == "INVALID_SOURCE_IP"
    assert isinstance(second, Flow) and second.source.pod == "default/xwing"
    assert second.tcp_flags == TCP_SYN and not second.tcp_flags & TCP_ACK


def test_a_schema_whose_field_order_changed_is_refused_at_import() -> None:
    """decode reads each schema struct's values by position (one astuple call); reordering the schema must
    stop the import, not shift every value into the wrong field."""
    script = """
import msgspec
import auditor.decode_schema as schema
swapped = msgspec.defstruct("Flags", [("SYN", bool, False), ("FIN", bool, False), ("RST", bool, False),
                                       ("PSH", bool, False), ("ACK", bool, False)], frozen=True, gc=False)
schema.Flags = swapped
schema.TWINS[swapped] = swapped
import auditor.decode
"""
    env = {**os.environ, "FLOW_AUDITOR_PURE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0
    assert "ImportError: auditor.decode: Flags fields are not in the order read" in done.stderr
