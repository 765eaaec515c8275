"""Reading flows straight from the wire (``auditor.decode_wire``) gives protobuf's results, or defers.

The truth is protobuf: every message is also parsed with ``live_pb2.GetFlowsResponse.FromString`` and
decoded by ``record_from_response``. The wire reader must return the same ``Flow`` or ``None`` (and then
the live source takes the protobuf path); it must not defer on the messages Hubble sends.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf import field_mask_pb2, json_format
from google.protobuf.message import DecodeError
from protowire import key, lfield, overlong, varint, vfield

from auditor import model
from auditor._proto.flow import flow_pb2
from auditor._proto.live import live_pb2
from auditor._proto.observer import observer_pb2
from auditor.decode_pb import DomainError, record_from_response
from auditor.decode_wire import flow_from_wire
from auditor.demo import load_jsonl, response_from_event
from auditor.demo.fieldmask import FlowMask
from auditor.scenario import airflow_scenario, synthetic_events
from auditor.sources.hubble import FIELD_MASK_PATHS

SAMPLES = Path(__file__).parent / "data" / "hubble-samples"
SAMPLE_FILES = [*sorted((SAMPLES / "hubble-otel").glob("*.json")), SAMPLES / "cilium-docs-export-rst.jsonl"]
DEMO_FLOWS = Path(__file__).parent.parent / "examples" / "airflow" / "flows.jsonl"


def protobuf(data: bytes) -> model.Record | type[Exception]:
    """What the protobuf path gives: the record, or the class of what it raised."""
    try:
        return record_from_response(live_pb2.GetFlowsResponse.FromString(data))
    except (DecodeError, DomainError) as e:
        return type(e)


def same_or_deferred(data: bytes) -> bool:
    """The invariant: the wire reader's flow equals protobuf's, or it deferred."""
    fast = flow_from_wire(data)
    return fast is None or fast == protobuf(data)


def corpus() -> list[bytes]:
    """Recorded captures, the Airflow scenario, the demo traffic and synthetic traffic: whole and masked."""
    responses = [
        json_format.Parse(line, observer_pb2.GetFlowsResponse())
        for path in SAMPLE_FILES
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    scenario = airflow_scenario(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    responses += [response_from_event(e) for e in scenario.events]
    responses += load_jsonl(DEMO_FLOWS)
    responses += [response_from_event(e) for e in synthetic_events(600, distinct_pods=50)]
    whole = [r.SerializeToString() for r in responses]
    mask = FlowMask(field_mask_pb2.FieldMask(paths=FIELD_MASK_PATHS))
    return whole + [mask.response(m) for m in whole]


CORPUS = corpus()


def test_every_message_hubble_sends_reads_from_the_wire_exactly_as_protobuf_reads_it() -> None:
    assert len(CORPUS) > 6000
    deferred = 0
    for index, data in enumerate(CORPUS):
        expected = protobuf(data)
        fast = flow_from_wire(data)
        if fast is None:
            deferred += 1
            assert not isinstance(expected, model.Flow), f"message {index}: a flow was left to protobuf"
            continue
        assert fast == expected, f"message {index}"
    flows = sum(isinstance(protobuf(d), model.Flow) for d in CORPUS)
    assert deferred == len(CORPUS) - flows  # every flow is read; the rest (lost events…) is deferred
    assert flows > 6000


# -- hand-made messages: the wire format spelled out (field numbers of proto/live/live.proto) ----------
def timestamp(seconds: int, nanos: int = 0) -> bytes:
    return vfield(1, seconds) + vfield(2, nanos)


ENDPOINT = flow_pb2.Endpoint(
    identity=4321, namespace="airflow", labels=["k8s:app=worker"], pod_name="worker-0"
).SerializeToString()
TCP_SYN = lfield(1, vfield(1, 43210) + vfield(2, 5432) + lfield(3, vfield(2, 1)))
IP = lfield(1, "10.0.1.5") + lfield(2, "10.0.2.7") + vfield(3, 1)
TIME = lfield(1, timestamp(1_764_000_000, 123_000_000))
NODE = lfield(11, "node-a")
BODY = (
    vfield(2, 2)  # verdict DROPPED
    + lfield(5, IP)
    + lfield(6, TCP_SYN)
    + lfield(8, ENDPOINT)
    + lfield(9, ENDPOINT)
    + vfield(10, 1)
    + lfield(19, vfield(1, 4))
    + vfield(22, 1)
    + vfield(24, 3)
    + vfield(25, 133)
)
FLOW = TIME + BODY + NODE


TCP_UNKNOWN = lfield(1, vfield(1, 4) + vfield(7, 1) + lfield(3, vfield(2, 1) + vfield(12, 1)))
FLAGS = b"".join(vfield(n, 1) for n in (1, 2, 3, 4, 5, 6, 9)) + vfield(2, 0)  # SYN set, then cleared


def response(flow: bytes, *envelope: bytes) -> bytes:
    return lfield(1, flow) + b"".join(envelope)


def test_the_hand_made_flow_reads_every_field() -> None:
    got = flow_from_wire(response(FLOW))
    assert isinstance(got, model.Flow)
    assert got == protobuf(response(FLOW))
    assert (got.time, got.verdict, got.drop_reason) == (1_764_000_000.123, 2, "POLICY_DENIED")
    assert (got.source_ip, got.destination_ip, got.protocol) == ("10.0.1.5", "10.0.2.7", "TCP")
    assert (got.source_port, got.destination_port, got.tcp_flags) == (43210, 5432, model.TCP_SYN)
    assert (got.source.pod, got.destination.namespace) == ("airflow/worker-0", "airflow")
    assert got.node_name == "node-a"
    assert (got.flow_type, got.event_type, got.traffic_direction, got.observation_point) == (1, 4, 1, 3)


READ: list[tuple[str, bytes]] = [
    # protobuf semantics the reader follows itself
    ("envelope time and node", response(BODY, lfield(1000, "node-e"), lfield(1001, timestamp(1_700_000, 5)))),
    (
        "a flow time of 5 ns wins",
        response(lfield(1, vfield(2, 5)) + BODY, lfield(1001, timestamp(1_700_000))),
    ),
    ("envelope node twice: the last wins", response(BODY, lfield(1000, "node-x"), lfield(1000, "node-y"))),
    ("the flow's time and node win", response(FLOW, lfield(1000, "e"), lfield(1001, timestamp(7)))),
    (
        "unknown fields everywhere",
        vfield(7, 9)
        + response(
            FLOW.replace(lfield(5, IP), lfield(5, IP + lfield(9, "x") + vfield(4, 1)))
            .replace(lfield(6, TCP_SYN), lfield(6, TCP_UNKNOWN))
            .replace(lfield(19, vfield(1, 4)), lfield(19, vfield(1, 4) + vfield(2, 3) + lfield(3, "")))
            + key(100, 5)
            + b"\0\0\0\0"
            + key(101, 1)
            + b"\0" * 8
            + lfield(102, b"\xff\xfe")
            + lfield(17, b"")
        )
        + lfield(1002, b"zz"),
    ),
    ("a scalar twice: the last wins", response(FLOW + vfield(2, 1) + lfield(11, "node-b") + vfield(25, 0))),
    ("names lists", response(FLOW + lfield(13, "a.example") + lfield(13, "b.example") + lfield(14, "c"))),
    ("is_reply false", response(FLOW + lfield(26, vfield(1, 0)))),
    ("is_reply empty", response(FLOW + lfield(26, b""))),
    ("is_reply true", response(FLOW + lfield(26, vfield(1, 1)))),
    ("legacy reply", response(FLOW + vfield(16, 1))),
    ("is_reply false beats legacy reply", response(FLOW + vfield(16, 1) + lfield(26, vfield(1, 0)))),
    ("drop_reason without desc", response(FLOW.replace(vfield(25, 133), b"") + vfield(3, 181))),
    ("unknown drop reason", response(FLOW.replace(vfield(25, 133), vfield(25, 999)))),
    ("unknown enum numbers", response(FLOW + vfield(2, 77) + vfield(10, 9) + vfield(24, 99))),
    ("udp", response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(2, vfield(1, 53) + vfield(2, 99)))))),
    ("sctp", response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(5, vfield(2, 9)))))),
    ("icmpv4", response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(3, vfield(1, 8) + vfield(2, 0)))))),
    ("icmpv6", response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(4, vfield(1, 128)))))),
    ("no l4", response(FLOW.replace(lfield(6, TCP_SYN), b""))),
    (
        "tcp flags set and cleared",
        response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(1, vfield(2, 1) + lfield(3, FLAGS))))),
    ),
    ("no endpoints", response(FLOW.replace(lfield(8, ENDPOINT), b"").replace(lfield(9, ENDPOINT), b""))),
    ("empty flow", response(b"")),
    ("negative time (1969)", response(lfield(1, timestamp(-86_400, 5)))),
    ("first valid second", response(lfield(1, timestamp(-62135596800)) + lfield(11, "n"))),
    ("last valid second", response(lfield(1, timestamp(253402300799, 999_000)))),
    ("port 65535", response(lfield(6, lfield(2, vfield(1, 65535) + vfield(2, 65535))))),
]


@pytest.mark.parametrize(("name", "data"), READ, ids=[name for name, _ in READ])
def test_the_reader_follows_protobuf(name: str, data: bytes) -> None:
    expected = protobuf(data)
    assert isinstance(expected, model.Flow), name
    assert flow_from_wire(data) == expected


Outcome = Callable[[model.Record | type[Exception]], bool]


def is_flow(r: model.Record | type[Exception]) -> bool:
    return isinstance(r, model.Flow)


def anything(r: model.Record | type[Exception]) -> bool:
    return True


def raised(cls: type[Exception]) -> Outcome:
    return lambda r: r is cls


DEFERRED: list[tuple[str, bytes, Outcome]] = [
    ("lost events", lfield(3, vfield(1, 1) + vfield(2, 7)), lambda r: isinstance(r, model.LostEvents)),
    ("node status", lfield(2, vfield(1, 1)), lambda r: isinstance(r, model.NodeStatus)),
    ("agent event", lfield(4, b""), lambda r: isinstance(r, model.OtherRecord)),
    ("flow, then node status", response(FLOW) + lfield(2, b""), lambda r: isinstance(r, model.NodeStatus)),
    ("flow twice (merged)", response(FLOW) + response(vfield(2, 1)), is_flow),
    ("IP twice (merged)", response(FLOW + lfield(5, lfield(2, "10.9.9.9"))), is_flow),
    ("time twice (merged)", response(FLOW + lfield(1, vfield(2, 7))), is_flow),
    ("envelope time twice (merged)", response(BODY, lfield(1001, vfield(1, 5)) * 2), is_flow),
    ("endpoint twice", response(FLOW + lfield(8, b"")), is_flow),
    ("l4 case twice", response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, TCP_SYN + TCP_SYN))), is_flow),
    (
        "tcp flags twice",
        response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(1, lfield(3, b"") * 2)))),
        is_flow,
    ),
    ("event type twice", response(FLOW + lfield(19, b"")), is_flow),
    ("negative verdict", response(FLOW + vfield(2, -1)), is_flow),
    ("drop_reason beyond 32 bits", response(vfield(3, (1 << 32) + 5)), is_flow),
    ("verdict as bytes", response(FLOW + lfield(2, b"\x01")), is_flow),
    ("node_name as varint", response(FLOW + vfield(11, 3)), anything),
    ("fixed32 on a known field", response(FLOW + key(22, 5) + b"\1\0\0\0"), anything),
    ("a group", response(FLOW + key(40, 3) + key(40, 4)), anything),
    ("invalid UTF-8", response(FLOW + lfield(11, b"\xff")), raised(DecodeError)),
    ("invalid UTF-8 in the envelope", response(FLOW, lfield(1000, b"\xc3")), raised(DecodeError)),
    ("invalid UTF-8 in source_xlated", response(lfield(5, lfield(5, b"\xff"))), raised(DecodeError)),
    ("port above 65535", response(lfield(6, lfield(1, vfield(2, 65536)))), raised(DomainError)),
    ("icmp type above 255", response(lfield(6, lfield(3, vfield(1, 256)))), raised(DomainError)),
    ("year 10000", response(lfield(1, timestamp(253402300800))), raised(DomainError)),
    ("negative nanos", response(lfield(1, timestamp(5, -1))), raised(DomainError)),
    ("truncated varint", response(FLOW)[:-1] + b"\x80", raised(DecodeError)),
    ("length past the end", lfield(1, FLOW)[:-3], raised(DecodeError)),
    ("inner length past its message", response(lfield(5, lfield(1, "10.0.0.1"))[:-1]), raised(DecodeError)),
    (
        "vrrp (protobuf checks its fields)",
        response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(6, vfield(1, 1))))),
        is_flow,
    ),
    (
        "igmp (protobuf checks its address)",
        response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(7, vfield(1, 0x11))))),
        is_flow,
    ),
    (
        "corrupt vrrp",
        response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(6, b"\xe7\x35")))),
        raised(DecodeError),
    ),
    (
        "a flow's varint past the flow",
        response(FLOW + key(2, 0) + b"\x80", lfield(1000, "n")),
        raised(DecodeError),
    ),
    (
        "a varint past its message",
        response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, key(9, 0) + b"\x80"))),
        raised(DecodeError),
    ),
    ("field number 0", response(FLOW + b"\x00\x01"), raised(DecodeError)),
    ("field number 0 in the envelope", response(FLOW) + b"\x00\x01", raised(DecodeError)),
    (
        "field number 0 in a port",
        response(FLOW.replace(lfield(6, TCP_SYN), lfield(6, lfield(2, b"\0\1")))),
        raised(DecodeError),
    ),
    ("field number 2**29", response(FLOW + varint(1 << 32) + b"\x01"), raised(DecodeError)),
    ("eleven-byte varint", response(FLOW + key(2, 0) + b"\xff" * 10 + b"\x01"), raised(DecodeError)),
]


@pytest.mark.parametrize(("name", "data", "expected"), DEFERRED, ids=[name for name, _, _ in DEFERRED])
def test_the_reader_leaves_the_unusual_to_protobuf(name: str, data: bytes, expected: Outcome) -> None:
    assert expected(protobuf(data)), name  # the case is what its name says
    assert flow_from_wire(data) is None


@pytest.mark.parametrize("size", range(1, 12))
def test_overlong_varints_are_read_as_protobuf_reads_them(size: int) -> None:
    """Protobuf reads values from up to ten bytes, but keys and lengths from at most five."""
    forms = {
        "value": (response(FLOW + key(2, 0) + overlong(1, size)), 10),
        "key": (response(FLOW + overlong(2 << 3, size) + b"\x01"), 5),
        "length": (response(FLOW + key(11, 2) + overlong(1, size) + b"x"), 5),
        "flow length": (b"\x0a" + overlong(len(FLOW), size) + FLOW, 5),
    }
    if size == 1:
        del forms["flow length"]  # the flow's length needs two bytes
    for name, (data, limit) in forms.items():
        expected = protobuf(data)
        assert isinstance(expected, model.Flow) is (size <= limit), name
        assert flow_from_wire(data) == (expected if size <= limit else None), name


FIELD_NUMBERS = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 19, 22, 24, 25, 26, 99, 1000, 1001, 19000]
FIELD_NUMBERS += [(1 << 29) - 1, 1 << 29]
VARINTS = [0, 1, 127, 128, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 63, (1 << 64) - 1]
PAYLOADS = [b"", b"\xff", "é".encode(), b"\x08\x01", b"\x10\x05", b"\x12\x00"]


def random_field(rng: random.Random) -> bytes:
    """A field of any number and wire type (valid or not), its key sometimes overlong."""
    number, wire_type = rng.choice(FIELD_NUMBERS), rng.randrange(8)
    tag = number << 3 | wire_type
    head = overlong(tag, rng.randrange(1, 8)) if rng.random() < 0.1 else varint(tag)
    if wire_type == 0:
        return head + varint(rng.choice(VARINTS))
    if wire_type in (1, 5):
        return head + rng.randbytes(8 if wire_type == 1 else 4)
    if wire_type == 2:
        body = rng.choice(PAYLOADS) if rng.random() < 0.5 else rng.randbytes(rng.randrange(6))
        return head + varint(len(body)) + body
    return head  # groups, and the invalid wire types 6 and 7


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """One to three random corruptions: a byte changed, flipped, inserted or deleted, a cut, a slice
    repeated, or a random field inserted."""
    mutant = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        if not mutant:
            break
        at = rng.randrange(len(mutant))
        how = rng.randrange(7)
        if how == 0:
            mutant[at] = rng.randrange(256)
        elif how == 1:
            mutant[at] ^= 1 << rng.randrange(8)
        elif how == 2:
            mutant.insert(at, rng.randrange(256))
        elif how == 3:
            del mutant[at : at + rng.randrange(1, 8)]
        elif how == 4:
            del mutant[at:]
        elif how == 5:
            mutant[at:at] = mutant[at : at + rng.randrange(1, 40)]
        else:
            mutant[at:at] = random_field(rng)
    return bytes(mutant)


def test_corrupted_messages_read_the_same_or_are_deferred() -> None:
    """6,000 corrupted messages; ``FLOW_AUDITOR_FUZZ_SECONDS=600`` runs as many as fit in that time."""
    rng = random.Random(int(os.environ.get("FLOW_AUDITOR_FUZZ_SEED", "12")))
    seconds = float(os.environ.get("FLOW_AUDITOR_FUZZ_SECONDS", "0"))
    deadline = time.monotonic() + seconds
    read = checked = 0
    while checked < 6000 or time.monotonic() < deadline:
        corrupted = corrupt(rng.choice(CORPUS), rng)
        checked += 1
        fast = flow_from_wire(corrupted)
        if fast is not None:
            read += 1
            assert fast == protobuf(corrupted), f"mutant {checked}: {corrupted.hex()}"
    assert read > 300  # many corruptions still make a valid message: the reader reads those itself
