"""Decoding recorded Hubble JSON lines into the flow model (DESIGN §3).

Stage: decode (JSON edge; the protobuf edge is ``auditor.decode_pb``). Input: one line of bytes. Output:
one :data:`auditor.model.Record` — a :class:`~auditor.model.Flow`, :class:`~auditor.model.LostEvents`,
:class:`~auditor.model.NodeStatus`, or :class:`~auditor.model.OtherRecord`.

Accepted forms, all in one pass: ``hubble observe -o jsonpb``/``-o json`` and Hubble exporter lines
(``{"flow": {...}, "node_name": ..., "time": ...}``), bare Flow objects, proto field names and protobuf
JSON camelCase names (``pod_name``/``podName``), enums as names or numbers (unknown names become the
proto's 0 value, unknown numbers stay), uint64 as strings, timestamps with 0-9 fractional digits and any
UTC offset, ``is_reply`` absent/true/false and the deprecated ``reply``. Unknown fields are skipped.

The *typed* msgspec schema that declares only the fields the auditor reads, in both spellings, is
:mod:`auditor.decode_schema` (plain Python even when this module is compiled, see ``make native``); this
module runs its decoders and turns the result into the model.

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

from datetime import UTC, datetime

import msgspec

from auditor.decode_schema import (
    BARE_FLOW_HINTS,
    CAMEL_DECODER,
    CAMEL_ENDPOINT,
    CAMEL_MARKER,
    DIRECTIONS,
    FLOW_TYPES,
    LINE_DECODER,
    POINTS,
    TRACE_REASONS,
    VERDICTS,
    FlowFields,
    Line,
    Lost,
    NodeStatusFields,
)
from auditor.model import (
    EMPTY_ENDPOINT,
    END_TIME,
    MIN_TIME,
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
from auditor.names import drop_reason_name, lost_event_source_name, node_state_name

__all__ = ["LINE_DECODER", "DecodeError", "decode_line", "drop_reason_name", "parse_time"]


class DecodeError(ValueError):
    """A line that cannot be decoded; the message is a short reason."""


def decode_line(line: bytes | str) -> Record:
    """Decode one JSON line. Raises :class:`DecodeError`."""
    try:
        raw: Line = LINE_DECODER.decode(line)
        if not (raw.node_name or (raw.flow is not None and raw.flow.node_name)) and CAMEL_MARKER.search(
            line.encode() if isinstance(line, str) else line
        ):
            raw = CAMEL_DECODER.decode(line)
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
    if any(getattr(raw, f) for f in BARE_FLOW_HINTS):
        return _flow(raw, raw.node_name, raw.time)
    return OtherRecord("unknown")


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 120 else text[:117] + "..."


def _flow(f: FlowFields, envelope_node: str, envelope_time: datetime | None) -> Flow:
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
        verdict if verdict.__class__ is int else VERDICTS.get(verdict, 0),  # type: ignore[arg-type]
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
        ftype if ftype.__class__ is int else FLOW_TYPES.get(ftype, 0),  # type: ignore[arg-type]
        event.type if event is not None else 0,
        direction if direction.__class__ is int else DIRECTIONS.get(direction, 0),  # type: ignore[arg-type]
        point if point.__class__ is int else POINTS.get(point, 0),  # type: ignore[arg-type]
        f.node_name or envelope_node,
        f.source_names,
        f.destination_names,
        reason if (reason := f.trace_reason).__class__ is int else TRACE_REASONS.get(reason, 0),  # type: ignore[arg-type]
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
    if e.__class__ is CAMEL_ENDPOINT:  # camelCase twin → the model's own type
        e = Endpoint(e.identity, e.namespace, e.labels, e.pod_name, _workloads(e.workloads), e.cluster_name)
    if not e.namespace and e.labels:
        namespace = namespace_from_labels(e.labels)
        if namespace:
            e = msgspec.structs.replace(e, namespace=namespace)
    return e


def _workloads(workloads: tuple[Workload, ...]) -> tuple[Workload, ...]:
    return tuple(Workload(w.kind, w.name) for w in workloads)


def _lost(lost: Lost, node: str) -> LostEvents:
    num = lost.num_events_lost
    try:
        count = int(num)  # uint64 fields may be strings in protobuf JSON
    except ValueError:
        raise DecodeError(f"lost_events.num_events_lost is not a number: {_clip(num)}") from None
    if not 0 <= count < 2**64:
        raise DecodeError(f"lost_events.num_events_lost is out of range (uint64): {_clip(num)}")
    src = lost.source
    return LostEvents(lost_event_source_name(src), count, node)


def _node_status(status: NodeStatusFields) -> NodeStatus:
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
