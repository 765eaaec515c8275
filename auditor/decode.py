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

Error policy: a line that is not JSON, or whose fields have impossible types, raises :class:`DecodeError`
with a short reason; the caller counts it as ``invalid`` and goes on.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime
from functools import lru_cache
from typing import Final

import msgspec

from auditor.model import (
    EMPTY_ENDPOINT,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
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


class DecodeError(ValueError):
    """A line that cannot be decoded; the message is a short reason."""


# --------------------------------------------------------------------------------------------------
# Enum tables (upstream numeric values; names as protojson writes them)

_VERDICTS: Final = {
    "VERDICT_UNKNOWN": 0,
    "FORWARDED": 1,
    "DROPPED": 2,
    "ERROR": 3,
    "AUDIT": 4,
    "REDIRECTED": 5,
    "TRACED": 6,
    "TRANSLATED": 7,
}
_FLOW_TYPES: Final = {"UNKNOWN_TYPE": 0, "L3_L4": 1, "L7": 2, "SOCK": 3}
_DIRECTIONS: Final = {"TRAFFIC_DIRECTION_UNKNOWN": 0, "INGRESS": 1, "EGRESS": 2}
_POINTS: Final = {
    "UNKNOWN_POINT": 0,
    "TO_PROXY": 1,
    "TO_HOST": 2,
    "TO_STACK": 3,
    "TO_OVERLAY": 4,
    "TO_ENDPOINT": 101,
    "FROM_ENDPOINT": 5,
    "FROM_PROXY": 6,
    "FROM_HOST": 7,
    "FROM_STACK": 8,
    "FROM_OVERLAY": 9,
    "FROM_NETWORK": 10,
    "TO_NETWORK": 11,
    "FROM_CRYPTO": 12,
    "TO_CRYPTO": 13,
}
_LOST_SOURCES: Final = {
    0: "UNKNOWN_LOST_EVENT_SOURCE",
    1: "PERF_EVENT_RING_BUFFER",
    2: "OBSERVER_EVENTS_QUEUE",
    3: "HUBBLE_RING_BUFFER",
}
_NODE_STATES: Final = {
    0: "UNKNOWN_NODE_STATE",
    1: "NODE_CONNECTED",
    2: "NODE_UNAVAILABLE",
    3: "NODE_GONE",
    4: "NODE_ERROR",
}

Enum = str | int


def _enum(value: Enum, table: dict[str, int]) -> int:
    if isinstance(value, int):
        return value
    return table.get(value, 0)


@lru_cache(maxsize=512)
def drop_reason_name(value: Enum) -> str:
    """``DropReason`` name for a number (or the name itself); ``""`` for 0/unknown."""
    if isinstance(value, str):
        return "" if value in ("DROP_REASON_UNKNOWN", "0", "") else value
    if value == 0:
        return ""
    try:
        from auditor._proto.flow import flow_pb2

        return str(flow_pb2.DropReason.Name(value))  # type: ignore[arg-type]
    except (ImportError, ValueError):
        return str(value)


# --------------------------------------------------------------------------------------------------
# Typed schema: only what we read, in both spellings

_STRUCT: Final = {"frozen": True, "gc": False, "omit_defaults": True}


class _Flags(msgspec.Struct, **_STRUCT):
    FIN: bool = False
    SYN: bool = False
    RST: bool = False
    PSH: bool = False
    ACK: bool = False


class _Ports(msgspec.Struct, **_STRUCT):
    source_port: int = 0
    destination_port: int = 0
    sourcePort: int = 0
    destinationPort: int = 0
    flags: _Flags | None = None


class _ICMP(msgspec.Struct, **_STRUCT):
    type: int = 0
    code: int = 0


class _L4(msgspec.Struct, **_STRUCT):
    TCP: _Ports | None = None
    UDP: _Ports | None = None
    SCTP: _Ports | None = None
    ICMPv4: _ICMP | None = None
    ICMPv6: _ICMP | None = None


class _IP(msgspec.Struct, **_STRUCT):
    source: str = ""
    destination: str = ""


class _Workload(msgspec.Struct, **_STRUCT):
    name: str = ""
    kind: str = ""


class _Endpoint(msgspec.Struct, **_STRUCT):
    identity: int | str = 0
    namespace: str = ""
    labels: tuple[str, ...] = ()
    pod_name: str = ""
    podName: str = ""
    workloads: tuple[_Workload, ...] = ()
    cluster_name: str = ""
    clusterName: str = ""


class _EventType(msgspec.Struct, **_STRUCT):
    type: int = 0


class _Flow(msgspec.Struct, **_STRUCT):
    time: str = ""
    verdict: Enum = 0
    drop_reason: int = 0
    dropReason: int = 0
    drop_reason_desc: Enum = 0
    dropReasonDesc: Enum = 0
    IP: _IP | None = None
    l4: _L4 | None = None
    source: _Endpoint | None = None
    destination: _Endpoint | None = None
    Type: Enum = 0
    node_name: str = ""
    nodeName: str = ""
    source_names: tuple[str, ...] = ()
    sourceNames: tuple[str, ...] = ()
    destination_names: tuple[str, ...] = ()
    destinationNames: tuple[str, ...] = ()
    reply: bool = False
    event_type: _EventType | None = None
    eventType: _EventType | None = None
    traffic_direction: Enum = 0
    trafficDirection: Enum = 0
    trace_observation_point: Enum = 0
    traceObservationPoint: Enum = 0
    is_reply: bool | None = None
    isReply: bool | None = None


class _Lost(msgspec.Struct, **_STRUCT):
    source: Enum = 0
    num_events_lost: int | str = 0
    numEventsLost: int | str = 0


class _NodeStatus(msgspec.Struct, **_STRUCT):
    state: Enum = 0
    node_names: tuple[str, ...] = ()
    nodeNames: tuple[str, ...] = ()
    message: str = ""


class _Line(_Flow, **_STRUCT):
    """A whole line: the envelope fields, plus the Flow fields for bare Flow objects."""

    flow: _Flow | None = None
    lost_events: _Lost | None = None
    lostEvents: _Lost | None = None
    node_status: _NodeStatus | None = None
    nodeStatus: _NodeStatus | None = None


_decoder: Final = msgspec.json.Decoder(_Line)
_BARE_FLOW_HINTS: Final = ("verdict", "IP", "l4", "source", "destination", "event_type", "eventType", "Type")


def decode_line(line: bytes | str) -> Record:
    """Decode one JSON line. Raises :class:`DecodeError`."""
    try:
        raw = _decoder.decode(line)
    except msgspec.DecodeError as e:
        raise DecodeError(_short(e)) from None
    envelope_node = raw.node_name or raw.nodeName
    if raw.flow is not None:
        return _flow(raw.flow, envelope_node, raw.time)
    lost = raw.lost_events or raw.lostEvents
    if lost is not None:
        return _lost(lost, envelope_node)
    status = raw.node_status or raw.nodeStatus
    if status is not None:
        return _node_status(status)
    if any(getattr(raw, f) for f in _BARE_FLOW_HINTS):
        return _flow(raw, envelope_node, raw.time)
    return OtherRecord("other")


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 120 else text[:117] + "..."


def _flow(f: _Flow, envelope_node: str, envelope_time: str) -> Flow:
    time_text = f.time or envelope_time
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
            sport = ports.source_port or ports.sourcePort
            dport = ports.destination_port or ports.destinationPort
    ip = f.IP
    is_reply = f.is_reply if f.is_reply is not None else f.isReply
    if is_reply is None and f.reply:
        is_reply = True
    event = f.event_type or f.eventType
    verdict = f.verdict
    drop = f.drop_reason_desc or f.dropReasonDesc or f.drop_reason or f.dropReason
    return Flow(
        parse_time(time_text) if time_text else 0.0,
        time_text,
        verdict if isinstance(verdict, int) else _VERDICTS.get(verdict, 0),
        drop_reason_name(drop) if drop else "",
        _endpoint(f.source),
        _endpoint(f.destination),
        ip.source if ip is not None else "",
        ip.destination if ip is not None else "",
        protocol,
        sport,
        dport,
        icmp_type,
        flags,
        is_reply,
        _enum(f.Type, _FLOW_TYPES),
        event.type if event is not None else 0,
        _enum(f.traffic_direction or f.trafficDirection, _DIRECTIONS),
        _enum(f.trace_observation_point or f.traceObservationPoint, _POINTS),
        f.node_name or f.nodeName or envelope_node,
        f.source_names or f.sourceNames,
        f.destination_names or f.destinationNames,
    )


def _endpoint(e: _Endpoint | None) -> Endpoint:
    if e is None:
        return EMPTY_ENDPOINT
    ident = e.identity
    if isinstance(ident, str):
        try:
            ident = int(ident)
        except ValueError:
            raise DecodeError(f"endpoint identity is not a number: {ident!r}") from None
    return Endpoint(
        ident,
        e.namespace or (namespace_from_labels(e.labels) if e.labels else ""),
        e.labels,
        e.pod_name or e.podName,
        tuple(Workload(w.kind, w.name) for w in e.workloads) if e.workloads else (),
        e.cluster_name or e.clusterName,
    )


def _lost(lost: _Lost, node: str) -> LostEvents:
    num = lost.num_events_lost or lost.numEventsLost
    try:
        count = int(num)
    except ValueError:
        raise DecodeError(f"lost_events.num_events_lost is not a number: {num!r}") from None
    src = lost.source
    name = _LOST_SOURCES.get(src, str(src)) if isinstance(src, int) else src
    return LostEvents(name, count, node)


def _node_status(status: _NodeStatus) -> NodeStatus:
    state = status.state
    name = _NODE_STATES.get(state, str(state)) if isinstance(state, int) else state
    return NodeStatus(name, status.node_names or status.nodeNames, status.message)


# --------------------------------------------------------------------------------------------------
# Timestamps

_second_cache: dict[str, int] = {}
_RFC3339: Final = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$"
)


def parse_time(text: str) -> float:
    """RFC 3339 timestamp (0-9 fractional digits, ``Z`` or offset) → seconds since the epoch.

    Fast path for Hubble's own ``YYYY-MM-DDTHH:MM:SS[.fffffffff]Z``: the whole-seconds part is cached, so
    consecutive flows cost one dict lookup and one int conversion. Raises :class:`DecodeError`.
    """
    if text[-1:] == "Z" and len(text) >= 20 and (len(text) == 20 or text[19] == "."):
        base = _second_cache.get(text[:19])
        if base is not None:
            frac = text[20:-1]
            if not frac:
                return float(base)
            if frac.isdigit():
                return float(base + int(frac) / 10 ** len(frac))
    return _parse_time_slow(text)


def _parse_time_slow(text: str) -> float:
    m = _RFC3339.match(text)
    if not m:
        raise DecodeError(f"invalid timestamp {text!r}")
    day, clock, frac, zone = m.groups()
    try:
        dt = datetime.fromisoformat(f"{day}T{clock}+00:00")
    except ValueError:
        raise DecodeError(f"invalid timestamp {text!r}") from None
    base: int = calendar.timegm(dt.utctimetuple())
    if zone in ("Z", "z"):
        if len(_second_cache) > 4096:
            _second_cache.clear()
        _second_cache[f"{day}T{clock}"] = base
    else:
        sign = 1 if zone[0] == "+" else -1
        base -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return base + (int(frac) / 10 ** len(frac) if frac else 0.0)
