"""Decoding recorded Hubble JSON lines into the flow model (DESIGN §3).

Stage: decode (JSON edge; the protobuf edge is ``auditor.decode_pb``). Input: one line of bytes. Output:
one :data:`auditor.model.Record` — a :class:`~auditor.model.Flow`, :class:`~auditor.model.LostEvents`,
:class:`~auditor.model.NodeStatus`, or :class:`~auditor.model.OtherRecord`.

Accepted forms, all in one pass: ``hubble observe -o jsonpb``/``-o json`` and Hubble exporter lines
(``{"flow": {...}, "node_name": ..., "time": ...}``), bare Flow objects, proto field names and protobuf
JSON camelCase names (``pod_name``/``podName``), enums as names or numbers (unknown names become the
proto's 0 value, unknown numbers stay), uint64 as strings, timestamps with 0-9 fractional digits and any
UTC offset, ``is_reply`` absent/true/false and the deprecated ``reply``. Unknown fields are skipped.

The schema below is a *typed* msgspec schema that declares only the fields the auditor reads, in both
spellings, so decoding skips everything else at C speed.

Values outside their domain are invalid, not edges: the schema bounds ports (0-65535), ICMP types
(0-255), identities (uint32, in the model's ``Endpoint``), enum numbers (int32), ``drop_reason`` (uint32) and
``num_events_lost`` (uint64) with msgspec constraints, checked in C while decoding; a timestamp must fall in
0001-01-01..9999-12-31 UTC (what protobuf's ``Timestamp`` and Python's ``datetime`` hold) after its UTC offset
is applied; a line nested deeper than the decoder's recursion limit (no real line comes close) is invalid.

Error policy: a line that is not JSON, whose fields have impossible types, or whose values are outside their
domain raises :class:`DecodeError` with a short reason naming the field (``Expected `int` <= 65535 - at
`$.flow.l4.TCP.destination_port```); the caller counts it as ``invalid`` and goes on.
"""

from __future__ import annotations

import functools
import operator
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, get_args, get_origin

import msgspec

from auditor.model import (
    DIRECTION_NAMES,
    EMPTY_ENDPOINT,
    END_TIME,
    FLOW_TYPE_NAMES,
    MIN_TIME,
    OBSERVATION_POINT_NAMES,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    VERDICT_NAMES,
    Endpoint,
    Flow,
    LostEvents,
    NodeStatus,
    OtherRecord,
    Protocol,
    Record,
    Workload,
    namespace_from_labels,
)
from auditor.names import drop_reason_name, lost_event_source_name, node_state_name


class DecodeError(ValueError):
    """A line that cannot be decoded; the message is a short reason."""


# --------------------------------------------------------------------------------------------------
# Enum tables (upstream numeric values; names as protojson writes them)

_VERDICTS: Final = {name: number for number, name in VERDICT_NAMES.items()}
_FLOW_TYPES: Final = {name: number for number, name in FLOW_TYPE_NAMES.items()}
_DIRECTIONS: Final = {name: number for number, name in DIRECTION_NAMES.items()}
_POINTS: Final = {name: number for number, name in OBSERVATION_POINT_NAMES.items()}

# Domains of the numbers the auditor reads (protobuf types of flow.proto), checked by msgspec in C.
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
IcmpType = Annotated[int, msgspec.Meta(ge=0, le=255)]
Uint32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]  # uint64: msgspec bounds stop at int64; _lost checks the top
Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
Enum = str | Int32
"""An enum as protojson writes it (its name) or as a number (int32)."""


def _enum(value: Enum, table: dict[str, int]) -> int:
    if isinstance(value, int):
        return value
    return table.get(value, 0)


# --------------------------------------------------------------------------------------------------
# Typed schema: only what we read. Endpoints and workloads decode straight into the model.
#
# Proto field names are the fast path. protobuf JSON's camelCase spelling differs only in multi-word
# keys; such lines are recognised (no snake_case node name, a camelCase marker present) and decoded
# again with the camelCase twin of the schema.

_STRUCT: Final = {"frozen": True, "gc": False}


class _Flags(msgspec.Struct, **_STRUCT):
    FIN: bool = False
    SYN: bool = False
    RST: bool = False
    PSH: bool = False
    ACK: bool = False


class _Ports(msgspec.Struct, **_STRUCT):
    source_port: Port = 0
    destination_port: Port = 0
    flags: _Flags | None = None


class _ICMP(msgspec.Struct, **_STRUCT):
    type: IcmpType = 0


class _L4(msgspec.Struct, **_STRUCT):
    TCP: _Ports | None = None
    UDP: _Ports | None = None
    SCTP: _Ports | None = None
    ICMPv4: _ICMP | None = None
    ICMPv6: _ICMP | None = None


class _IP(msgspec.Struct, **_STRUCT):
    source: str = ""
    destination: str = ""


class _EventType(msgspec.Struct, **_STRUCT):
    type: Int32 = 0


class _Flow(msgspec.Struct, **_STRUCT):
    time: datetime | None = None
    verdict: Enum = 0
    drop_reason: Uint32 = 0
    drop_reason_desc: Enum = 0
    IP: _IP | None = None
    l4: _L4 | None = None
    source: Endpoint | None = None
    destination: Endpoint | None = None
    Type: Enum = 0
    node_name: str = ""
    source_names: tuple[str, ...] = ()
    destination_names: tuple[str, ...] = ()
    reply: bool = False
    event_type: _EventType | None = None
    traffic_direction: Enum = 0
    trace_observation_point: Enum = 0
    is_reply: bool | None = None


class _Lost(msgspec.Struct, **_STRUCT):
    source: Enum = 0
    num_events_lost: NonNegative | str = 0


class _NodeStatus(msgspec.Struct, **_STRUCT):
    state: Enum = 0
    node_names: tuple[str, ...] = ()
    message: str = ""


class _Line(_Flow, **_STRUCT):
    """A whole line: the envelope fields, plus the Flow fields for bare Flow objects."""

    flow: _Flow | None = None
    lost_events: _Lost | None = None
    node_status: _NodeStatus | None = None
    agent_event: msgspec.Raw = msgspec.Raw()
    debug_event: msgspec.Raw = msgspec.Raw()


def _camel_twin(tp: Any, made: dict[type, type]) -> Any:
    """The same schema type with protobuf JSON (lowerCamelCase) field names, built once at import.

    msgspec applies ``rename`` only to a struct's own fields, so every struct on the path is rebuilt.
    """
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if tp not in made:
            fields = [(f.name, _camel_twin(f.type, made), f.default) for f in msgspec.structs.fields(tp)]
            made[tp] = msgspec.defstruct(f"Camel{tp.__name__}", fields, rename="camel", frozen=True, gc=False)
        return made[tp]
    args = get_args(tp)
    if not args or get_origin(tp) is Annotated:  # a constrained scalar: nothing to rename
        return tp
    mapped = tuple(_camel_twin(a, made) for a in args)
    if get_origin(tp) is tuple:
        return tuple[mapped]  # type: ignore[valid-type]
    return functools.reduce(operator.or_, mapped)


_TWINS: Final[dict[type, type]] = {}
_CLine: Final = _camel_twin(_Line, _TWINS)
_CEndpoint: Final = _TWINS[Endpoint]
_decoder: Final = msgspec.json.Decoder(_Line)
LINE_DECODER: Final = _decoder
"""The typed decoder of one line, as :func:`decode_line` runs it first (the benchmarks' floor)."""
_camel_decoder: Final = msgspec.json.Decoder(_CLine)
_CAMEL_MARKER: Final = re.compile(
    rb'"(?:nodeName|podName|sourcePort|destinationPort|isReply|eventType|trafficDirection|dropReasonDesc|'
    rb'traceObservationPoint|lostEvents|nodeStatus|numEventsLost|nodeNames|agentEvent|debugEvent)"'
)
_BARE_FLOW_HINTS: Final = ("verdict", "IP", "l4", "source", "destination", "event_type", "Type")


def decode_line(line: bytes | str) -> Record:
    """Decode one JSON line. Raises :class:`DecodeError`."""
    try:
        raw: _Line = _decoder.decode(line)
        if not (raw.node_name or (raw.flow is not None and raw.flow.node_name)) and _CAMEL_MARKER.search(
            line.encode() if isinstance(line, str) else line
        ):
            raw = _camel_decoder.decode(line)
    except msgspec.DecodeError as e:
        raise DecodeError(_short(e)) from None
    except RecursionError:
        raise DecodeError("nested too deeply to be a Hubble event") from None
    if raw.flow is not None:
        return _flow(raw.flow, raw.node_name, raw.time)
    if raw.lost_events is not None:
        return _lost(raw.lost_events, raw.node_name)
    if raw.node_status is not None:
        return _node_status(raw.node_status)
    if raw.agent_event:
        return OtherRecord("agent_event")
    if raw.debug_event:
        return OtherRecord("debug_event")
    if any(getattr(raw, f) for f in _BARE_FLOW_HINTS):
        return _flow(raw, raw.node_name, raw.time)
    return OtherRecord("unknown")


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 120 else text[:117] + "..."


def _flow(f: _Flow, envelope_node: str, envelope_time: datetime | None) -> Flow:
    l4 = f.l4
    protocol, sport, dport, icmp_type, flags = Protocol.NONE, 0, 0, 0, 0
    if l4 is not None:
        ports = l4.TCP
        if ports is not None:
            protocol = Protocol.TCP
            fl = ports.flags
            if fl is not None:
                flags = (
                    (TCP_FIN if fl.FIN else 0)
                    | (TCP_SYN if fl.SYN else 0)
                    | (TCP_RST if fl.RST else 0)
                    | (TCP_PSH if fl.PSH else 0)
                    | (TCP_ACK if fl.ACK else 0)
                )
        elif (ports := l4.UDP) is not None:
            protocol = Protocol.UDP
        elif (ports := l4.SCTP) is not None:
            protocol = Protocol.SCTP
        elif (icmp := l4.ICMPv4) is not None:
            protocol, icmp_type = Protocol.ICMPV4, icmp.type
        elif (icmp := l4.ICMPv6) is not None:
            protocol, icmp_type = Protocol.ICMPV6, icmp.type
        if ports is not None:
            sport, dport = ports.source_port, ports.destination_port
    ip = f.IP
    is_reply = f.is_reply
    if is_reply is None and f.reply:
        is_reply = True
    event = f.event_type
    verdict, ftype, direction, point = f.verdict, f.Type, f.traffic_direction, f.trace_observation_point
    drop = f.drop_reason_desc or f.drop_reason
    t = f.time or envelope_time
    seconds = 0.0
    if t is not None:
        # Hot path inlined: an aware time inside the model's range; _timestamp handles the rest.
        seconds = t.timestamp() if t.tzinfo is not None else _timestamp(t)
        if not MIN_TIME <= seconds < END_TIME:
            _timestamp(t)  # raises DecodeError naming the time
    src, dst = f.source, f.destination
    # An endpoint decoded into the model's own type with its namespace set is used as it is.
    if src is None or src.__class__ is not Endpoint or not src.namespace:
        src = _endpoint(src)
    if dst is None or dst.__class__ is not Endpoint or not dst.namespace:
        dst = _endpoint(dst)
    return Flow(
        seconds,
        verdict if verdict.__class__ is int else _VERDICTS.get(verdict, 0),  # type: ignore[arg-type]
        drop_reason_name(drop) if drop else "",
        src,
        dst,
        ip.source if ip is not None else "",
        ip.destination if ip is not None else "",
        protocol,
        sport,
        dport,
        icmp_type,
        flags,
        is_reply,
        ftype if ftype.__class__ is int else _FLOW_TYPES.get(ftype, 0),  # type: ignore[arg-type]
        event.type if event is not None else 0,
        direction if direction.__class__ is int else _DIRECTIONS.get(direction, 0),  # type: ignore[arg-type]
        point if point.__class__ is int else _POINTS.get(point, 0),  # type: ignore[arg-type]
        f.node_name or envelope_node,
        f.source_names,
        f.destination_names,
    )


def _timestamp(t: datetime) -> float:
    if t.tzinfo is None:  # RFC 3339 requires an offset; read a bare local time as UTC
        t = t.replace(tzinfo=UTC)
    seconds = t.timestamp()
    if not MIN_TIME <= seconds < END_TIME:  # 9999-12-31T23:59:59-23:00 is in year 10000 in UTC
        raise DecodeError(f"time {t.isoformat()} is outside 0001-01-01..9999-12-31 UTC")
    return seconds


def _endpoint(e: Endpoint | None) -> Endpoint:
    if e is None:
        return EMPTY_ENDPOINT
    if e.__class__ is _CEndpoint:  # camelCase twin → the model's own type
        e = Endpoint(e.identity, e.namespace, e.labels, e.pod_name, _workloads(e.workloads), e.cluster_name)
    if not e.namespace and e.labels:
        namespace = namespace_from_labels(e.labels)
        if namespace:
            e = msgspec.structs.replace(e, namespace=namespace)
    return e


def _workloads(workloads: tuple[Workload, ...]) -> tuple[Workload, ...]:
    return tuple(Workload(w.kind, w.name) for w in workloads)


def _lost(lost: _Lost, node: str) -> LostEvents:
    num = lost.num_events_lost
    try:
        count = int(num)  # uint64 fields may be strings in protobuf JSON
    except ValueError:
        raise DecodeError(f"lost_events.num_events_lost is not a number: {_clip(num)}") from None
    if not 0 <= count < 2**64:
        raise DecodeError(f"lost_events.num_events_lost is out of range (uint64): {_clip(num)}")
    src = lost.source
    return LostEvents(lost_event_source_name(src), count, node)


def _node_status(status: _NodeStatus) -> NodeStatus:
    state = status.state
    return NodeStatus(node_state_name(state), status.node_names, status.message)


def parse_time(text: str) -> float:
    """RFC 3339 timestamp (0-9 fractional digits, ``Z`` or offset) → seconds since the epoch.

    Raises :class:`DecodeError`.
    """
    try:
        t = msgspec.json.decode(b'"' + text.encode() + b'"', type=datetime)
    except msgspec.DecodeError:
        raise DecodeError(f"invalid timestamp {text!r}") from None
    return _timestamp(t)
