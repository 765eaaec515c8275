"""Values outside their domain are invalid, not edges: both decoders, the replay CLI and the live source.

The lines and messages here are built from Hubble's field semantics (``flow.proto``: ports and ICMP types
are ``uint32`` on the wire, identities ``uint32``, enums ``int32``, ``time`` a ``google.protobuf.Timestamp``
with its 0001-01-01..9999-12-31 range), not taken from a recording: no real producer writes such values,
which is the point.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import MATRIX, replay_cli

from auditor._proto.flow import flow_pb2
from auditor._proto.live import live_pb2
from auditor._proto.observer import observer_pb2
from auditor.classify import Auditor, Judgement
from auditor.decode import DecodeError, decode_line
from auditor.decode_pb import DomainError, record_from_response
from auditor.demo import FlowLog, HubbleServer
from auditor.matrix import load_matrix
from auditor.model import Flow, LostEvents, NodeStatus
from auditor.pipeline import Pipeline
from auditor.sources.hubble import HubbleConfig, HubbleSource

LINE: dict[str, Any] = {
    "flow": {
        "time": "2026-11-23T09:00:01.5Z",
        "verdict": "FORWARDED",
        "IP": {"source": "10.244.1.5", "destination": "10.244.2.7"},
        "l4": {"TCP": {"source_port": 41234, "destination_port": 5432}},
        "source": {"identity": 4242, "namespace": "airflow", "pod_name": "airflow-worker-0"},
        "destination": {"identity": 5151, "namespace": "airflow", "pod_name": "airflow-postgresql-0"},
        "Type": "L3_L4",
        "event_type": {"type": 4},
        "traffic_direction": "INGRESS",
        "trace_observation_point": "TO_ENDPOINT",
        "is_reply": False,
    },
    "node_name": "kind-worker",
    "time": "2026-11-23T09:00:01.5Z",
}


def line_with(path: tuple[str, ...], value: object, base: dict[str, Any] = LINE) -> bytes:
    """``LINE`` with the field at ``path`` set to ``value`` (a new sub-object is created as needed)."""
    doc = copy.deepcopy(base)
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return json.dumps(doc).encode()


def udp(port_field: str, value: int) -> bytes:
    return line_with(("flow", "l4"), {"UDP": {"source_port": 53, "destination_port": 53, port_field: value}})


def deep(depth: int, open_: str = '{"a":', close: str = "}") -> bytes:
    return b'{"flow":{"x":' + (open_ * depth + "1" + close * depth).encode() + b"}}"


# -- JSON -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (line_with(("flow", "l4", "TCP", "destination_port"), 65536), "destination_port"),
        (line_with(("flow", "l4", "TCP", "destination_port"), 2**32), "destination_port"),
        (line_with(("flow", "l4", "TCP", "source_port"), -1), "source_port"),
        (udp("destination_port", 70000), "destination_port"),
        (udp("source_port", -53), "source_port"),
        (line_with(("flow", "l4"), {"SCTP": {"destination_port": 65536}}), "destination_port"),
        (line_with(("flow", "l4"), {"ICMPv4": {"type": 256}}), "type"),
        (line_with(("flow", "l4"), {"ICMPv6": {"type": -1}}), "type"),
        (line_with(("flow", "source", "identity"), -1), "source.identity"),
        (line_with(("flow", "destination", "identity"), 2**32), "destination.identity"),
        (line_with(("flow", "verdict"), 2**31), "verdict"),
        (line_with(("flow", "drop_reason"), -1), "drop_reason"),
        (line_with(("flow", "event_type", "type"), 2**40), "event_type.type"),
        # year 10000 cannot be written in RFC 3339; an offset carries 9999-12-31 into it
        (line_with(("flow", "time"), "10000-01-01T00:00:00Z"), "time"),
        (line_with(("flow", "time"), "9999-12-31T23:59:59-01:00"), "time"),
        (line_with(("flow", "time"), "9999-12-31T23:59:59.9999999Z"), "time"),  # rounds to year 10000
        (line_with(("flow", "time"), "9999-12-31T23:59:59.999999Z"), "time"),  # a float of year 10000
        (line_with(("flow", "time"), "0001-01-01T00:00:00+00:01"), "time"),  # before year 1 in UTC
        (line_with(("time",), "9999-12-31T23:59:59-23:59", {"flow": {"verdict": 1}}), "time"),
        (b'{"lost_events": {"num_events_lost": -1}}', "num_events_lost"),
        (b'{"lost_events": {"num_events_lost": "-1"}}', "num_events_lost"),
        (b'{"lost_events": {"num_events_lost": "18446744073709551616"}}', "num_events_lost"),
    ],
)
def test_json_values_outside_their_domain_are_decode_errors_naming_the_field(line: bytes, field: str) -> None:
    with pytest.raises(DecodeError, match="time" if field == "time" else field):
        decode_line(line)


def test_json_camel_case_lines_are_bounded_too() -> None:
    camel = b'{"flow": {"l4": {"TCP": {"sourcePort": 1, "destinationPort": 65536}}, "nodeName": "n"}}'
    with pytest.raises(DecodeError, match="destinationPort"):
        decode_line(camel)


@pytest.mark.parametrize(
    ("path", "value", "read"),
    [
        (("flow", "l4", "TCP", "destination_port"), 65535, lambda f: f.destination_port),
        (("flow", "l4", "TCP", "source_port"), 0, lambda f: f.source_port),
        (("flow", "source", "identity"), 2**32 - 1, lambda f: f.source.identity),
        (("flow", "time"), "9999-12-31T23:59:59.999Z", lambda f: f.time),
        (("flow", "time"), "0001-01-01T00:00:00Z", lambda f: f.time),
    ],
)
def test_json_values_at_the_edge_of_their_domain_decode(
    path: tuple[str, ...], value: object, read: Any
) -> None:
    flow = decode_line(line_with(path, value))
    assert isinstance(flow, Flow)
    if path[-1] == "time":
        assert read(flow) == {"9": 253402300799.999, "0": -62135596800.0}[str(value)[0]]
    else:
        assert read(flow) == value


def test_json_largest_lost_event_count_decodes() -> None:
    record = decode_line(b'{"lost_events": {"num_events_lost": "18446744073709551615"}}')
    assert isinstance(record, LostEvents) and record.num_events == 2**64 - 1


@pytest.mark.parametrize("shape", [('{"a":', "}"), ("[", "]")])
def test_json_nesting_deeper_than_any_real_line_is_a_decode_error(shape: tuple[str, str]) -> None:
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode_line(deep(100_000, *shape))


def test_replay_counts_out_of_domain_and_deep_lines_as_invalid_with_file_and_line(tmp_path: Path) -> None:
    good = json.dumps(LINE).encode()
    lines = [
        good,
        line_with(("flow", "l4", "TCP", "destination_port"), 70000),
        line_with(("flow", "source", "identity"), -7),
        deep(1000),
        line_with(("flow", "time"), "9999-12-31T23:59:59-12:00"),
        good,
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = json.loads(replay_cli(path))
    assert report["flows"]["invalid"] == 4
    assert [(s["file"], s["line"]) for s in report["invalid_samples"]] == [
        (str(path), n) for n in (2, 3, 4, 5)
    ]
    assert "destination_port" in report["invalid_samples"][0]["error"]
    assert "identity" in report["invalid_samples"][1]["error"]
    assert all(e["port"] != 70000 for e in report["edges"])


# -- protobuf ---------------------------------------------------------------------------------------


def response(**flow: Any) -> observer_pb2.GetFlowsResponse:
    resp = observer_pb2.GetFlowsResponse(node_name="kind-worker", flow=flow_pb2.Flow(verdict=1, **flow))
    resp.time.seconds = resp.flow.time.seconds = 1_795_000_000
    return resp


def with_time(seconds: int, nanos: int = 0, *, envelope: bool = False) -> observer_pb2.GetFlowsResponse:
    resp = response()
    if envelope:
        resp.flow.ClearField("time")
        resp.time.seconds, resp.time.nanos = seconds, nanos
    else:
        resp.flow.time.seconds, resp.flow.time.nanos = seconds, nanos
    return resp


def tcp(source_port: int = 40000, destination_port: int = 5432) -> flow_pb2.Layer4:
    return flow_pb2.Layer4(TCP=flow_pb2.TCP(source_port=source_port, destination_port=destination_port))


def decode_both(resp: observer_pb2.GetFlowsResponse) -> list[object]:
    """Decode the wire bytes with the full schema and with the lean live one; each result or exception."""
    data = resp.SerializeToString()
    out: list[object] = []
    for parse in (observer_pb2.GetFlowsResponse.FromString, live_pb2.GetFlowsResponse.FromString):
        try:
            out.append(record_from_response(parse(data)))
        except DomainError as e:
            out.append(e)
    return out


@pytest.mark.parametrize(
    ("resp", "field"),
    [
        (response(l4=tcp(destination_port=65536)), "destination_port 65536"),
        (response(l4=tcp(source_port=2**32 - 1)), "source_port 4294967295"),
        (response(l4=flow_pb2.Layer4(UDP=flow_pb2.UDP(destination_port=70000))), "UDP.destination_port"),
        (response(l4=flow_pb2.Layer4(SCTP=flow_pb2.SCTP(source_port=65536))), "SCTP.source_port"),
        (response(l4=flow_pb2.Layer4(ICMPv4=flow_pb2.ICMPv4(type=256))), "ICMPv4.type 256"),
        (response(l4=flow_pb2.Layer4(ICMPv6=flow_pb2.ICMPv6(type=1000))), "ICMPv6.type"),
        (with_time(2**40), "time"),
        (with_time(253402300800), "time"),  # 10000-01-01T00:00:00Z
        (with_time(253402300799, 999_999_999), "time"),  # rounds to year 10000 in a float
        (with_time(-62135596801), "time"),  # before 0001-01-01
        (with_time(1_795_000_000, -1), "time"),
        (with_time(1_795_000_000, 1_000_000_000), "time"),
        (with_time(2**40, envelope=True), "time"),  # the envelope's time stands in for a missing one
    ],
)
def test_protobuf_values_outside_their_domain_raise_domain_error(
    resp: observer_pb2.GetFlowsResponse, field: str
) -> None:
    for result in decode_both(resp):
        assert isinstance(result, DomainError), result
        assert field in str(result)


@pytest.mark.parametrize(
    "resp",
    [
        response(l4=tcp(source_port=65535, destination_port=65535)),
        response(l4=flow_pb2.Layer4(ICMPv4=flow_pb2.ICMPv4(type=255))),
        with_time(253402300799, 999_000_000),
        with_time(-62135596800),
        with_time(0, 0, envelope=True),  # no time at all: 0.0, as before
    ],
)
def test_protobuf_values_at_the_edge_of_their_domain_decode(resp: observer_pb2.GetFlowsResponse) -> None:
    full, live = decode_both(resp)
    assert isinstance(full, Flow) and full == live


class Recorder:
    """A sink that keeps the outcome of every record (the report sink expects file:line places)."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []
        self.reasons: list[str] = []

    def on_outcome(self, outcome: str) -> None:
        self.outcomes.append(outcome)

    def on_judgement(self, judgement: Judgement) -> None:
        self.outcomes.append("judged")

    def on_lost(self, record: LostEvents) -> None:
        self.outcomes.append("lost")

    def on_node_status(self, record: NodeStatus) -> None:
        pass

    def on_invalid(self, where: str, reason: str) -> None:
        self.reasons.append(reason)


def test_live_source_counts_an_out_of_domain_message_as_invalid_and_goes_on() -> None:
    """A real gRPC server on loopback streams: a port of 70000, a time of 2**40 s, then a good flow."""
    now = time.time_ns()
    bad_port = response(l4=tcp(destination_port=70000))
    far_future = with_time(2**40)
    good = response(l4=tcp())
    for resp in (bad_port, far_future, good):
        resp.time.FromNanoseconds(now)
    bad_port.flow.time.FromNanoseconds(now)
    good.flow.time.FromNanoseconds(now)
    log = FlowLog()
    for resp in (bad_port, far_future, good):
        log.append_raw(resp.SerializeToString(), time_ns=now)
    server = HubbleServer(log)
    server.start()
    sink = Recorder()
    source = HubbleSource(
        HubbleConfig(server=server.address, since=0.0, timeout=5.0, backoff_initial=0.1, backoff_max=0.5),
        Pipeline(Auditor(load_matrix(MATRIX)), [sink]),
    )
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(sink.outcomes) < 3 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.02)
    finally:
        source.stop()
        thread.join(timeout=10)
        server.stop(0)
    assert not thread.is_alive()
    assert sink.outcomes[:2] == ["invalid", "invalid"] and sink.outcomes[2] != "invalid", sink.outcomes
    assert "destination_port 70000" in sink.reasons[0] and "time" in sink.reasons[1]
    assert source.reconnects == 0  # the stream survived both
