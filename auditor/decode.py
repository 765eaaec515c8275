"""Decoding recorded Hubble JSON lines into the flow model (DESIGN §3).

Stage: decode (JSON edge; the protobuf edge is ``auditor.decode_pb``). Input: one line of bytes
(:func:`decode_line`), or a block of lines (:func:`decode_block`: the same result per line, in two passes
over the block, for replay, its ``--jobs`` workers and ``matrix learn``). Output: one
:data:`auditor.model.Record` per line — a :class:`~auditor.model.Flow`, :class:`~auditor.model.LostEvents`,
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
from typing import Any, Final

import msgspec
from msgspec.structs import astuple as _astuple

from auditor.decode_schema import (
    BARE_FLOW_HINTS,
    CAMEL_DECODER,
    CAMEL_ENDPOINT,
    CAMEL_MARKER,
    DIRECTIONS,
    FLOW_TYPES,
    L4,
    LINE_DECODER,
    POINTS,
    TRACE_REASONS,
    TWINS,
    VERDICTS,
    Addresses,
    Flags,
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

__all__ = [
    "LINE_DECODER",
    "DecodeError",
    "blank",
    "decode_block",
    "decode_line",
    "drop_reason_name",
    "parse_time",
]

# Positions in ``astuple`` of the schema's structs (checked against the schema below, at import).
_FLOW_ORDER: Final = (
    "time",
    "verdict",
    "drop_reason",
    "drop_reason_desc",
    "IP",
    "l4",
    "source",
    "destination",
    "Type",
    "node_name",
    "source_names",
    "destination_names",
    "reply",
    "event_type",
    "traffic_direction",
    "trace_observation_point",
    "is_reply",
    "trace_reason",
)
_FLOW_FIELDS: Final = 18
_BRACE: Final = 0x7B  # b"{"[0]
_TIME: Final = 0
_NODE_NAME: Final = 9
_LINE_FLOW: Final = 18
# Module-level Finals are C statics in the compiled module, where other globals are a dict lookup per use.
astuple: Final = _astuple
_ENDPOINT: Final = Endpoint
_VERDICTS: Final = VERDICTS
_FLOW_TYPES: Final = FLOW_TYPES
_DIRECTIONS: Final = DIRECTIONS
_POINTS: Final = POINTS
_TRACE_REASONS: Final = TRACE_REASONS
_SECONDS: Final = datetime.timestamp  # called unbound: no method lookup per flow
# Each enum's commonest name, compared before its table is looked up (see _number)
_FORWARDED: Final = "FORWARDED"
_FORWARDED_NUMBER: Final = VERDICTS[_FORWARDED]
_L3_L4: Final = "L3_L4"
_L3_L4_NUMBER: Final = FLOW_TYPES[_L3_L4]
_EGRESS: Final = "EGRESS"
_EGRESS_NUMBER: Final = DIRECTIONS[_EGRESS]
_TO_ENDPOINT: Final = "TO_ENDPOINT"
_TO_ENDPOINT_NUMBER: Final = POINTS[_TO_ENDPOINT]
_NEW: Final = "NEW"
_NEW_NUMBER: Final = TRACE_REASONS[_NEW]


def _check_positions() -> None:
    """Fail at import, not on data, if the schema's field order stops matching the positions read here."""
    orders: dict[type, tuple[str, ...]] = {
        FlowFields: _FLOW_ORDER,
        Line: (*_FLOW_ORDER, "flow"),
        L4: ("TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6"),
        Flags: ("FIN", "SYN", "RST", "PSH", "ACK"),
        Addresses: ("source", "destination"),
    }
    if (len(_FLOW_ORDER), _FLOW_ORDER[_TIME], _FLOW_ORDER[_NODE_NAME]) != (_FLOW_FIELDS, "time", "node_name"):
        raise ImportError("auditor.decode: the positions of time and node_name do not match _FLOW_ORDER")
    for tp, order in orders.items():
        for twin in (tp, TWINS[tp]):
            names = tuple(f.name for f in msgspec.structs.fields(twin))
            if names[: len(order)] != order:
                raise ImportError(
                    f"auditor.decode: {twin.__name__} fields are not in the order read ({order})"
                )


_check_positions()


class DecodeError(ValueError):
    """A line that cannot be decoded; the message is a short reason."""


def decode_line(line: bytes | str) -> Record:
    """Decode one JSON line. Raises :class:`DecodeError`."""
    return _record(_parse(line), line)


def blank(line: bytes) -> bool:
    """Whether a line of a flow file holds nothing but whitespace (skipped, not invalid). A line that starts
    with ``{``, nearly every one, is told apart before the copy ``strip()`` makes."""
    return not line or (line[0] != _BRACE and not line.strip())


def decode_block(
    lines: list[bytes],
    start: int,
    stop: int,
    first: int,
    records: list[Record],
    errors: list[tuple[int, int, str]],
) -> int:
    """Decode ``lines[start:stop]`` (``lines[start]`` is line number ``first``) as :func:`decode_line` would,
    in two passes over the block: every line parsed, then every parsed line turned into its record, so that
    each pass's code stays in the core's instruction cache from one line to the next. Appends the records to
    ``records`` and each undecodable line to ``errors`` as ``(position, number, reason)``, both in line
    order, where ``position`` is the index in ``records`` of the first record after that line (the caller
    reports the error there, where a line-by-line loop would have). Blank lines are skipped. Returns how
    many lines were not blank."""
    parsed: list[Line] = []
    kept: list[int] = []  # the index of each parsed line
    failed: list[tuple[int, str]] = []
    nonblank = 0
    for i in range(start, stop):
        line = lines[i]
        if blank(line):
            continue
        nonblank += 1
        try:
            parsed.append(_parse(line))
        except DecodeError as e:
            failed.append((i, str(e)))
            continue
        kept.append(i)
    base = len(records)
    done: list[int] = []  # the index of each line turned into a record
    late = False  # an error of the second pass comes after the first pass's later ones: sort
    for k in range(len(parsed)):
        i = kept[k]
        try:
            records.append(_record(parsed[k], lines[i]))
        except DecodeError as e:
            failed.append((i, str(e)))
            late = True
            continue
        done.append(i)
    if failed:
        if late:
            failed.sort()
        position = 0
        for i, reason in failed:
            while position < len(done) and done[position] < i:
                position += 1
            errors.append((base + position, first + i - start, reason))
    return nonblank


def _parse(line: bytes | str) -> Line:
    """The first half of :func:`decode_line`: the JSON parse into the schema."""
    try:
        return LINE_DECODER.decode(line)
    except msgspec.DecodeError as e:
        raise DecodeError(_short(e)) from None
    except RecursionError:
        raise DecodeError("nested too deeply to be a Hubble event") from None


def _record(raw: Line, line: bytes | str) -> Record:
    """The second half of :func:`decode_line`: the record that ``raw``, parsed from ``line``, stands for."""
    fields = astuple(raw)
    flow = fields[_LINE_FLOW]
    if not (fields[_NODE_NAME] or (flow is not None and flow.node_name)) and CAMEL_MARKER.search(
        line.encode() if isinstance(line, str) else line
    ):
        try:
            raw = CAMEL_DECODER.decode(line)
        except msgspec.DecodeError as e:
            raise DecodeError(_short(e)) from None
        except RecursionError:
            raise DecodeError("nested too deeply to be a Hubble event") from None
        fields = astuple(raw)
        flow = fields[_LINE_FLOW]
    if flow is not None:
        return _flow(astuple(flow), fields[_NODE_NAME], fields[_TIME])
    if raw.lost_events is not None:
        return _lost(raw.lost_events, raw.node_name)
    if raw.node_status is not None:
        return _node_status(raw.node_status)
    if raw.agent_event:
        return OtherRecord("agent_event")
    if raw.debug_event:
        return OtherRecord("debug_event")
    if any(getattr(raw, f) for f in BARE_FLOW_HINTS):
        return _flow(fields, raw.node_name, raw.time)
    return OtherRecord("unknown")


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 120 else text[:117] + "..."


def _flow(f: tuple[Any, ...], envelope_node: str, envelope_time: datetime | None) -> Flow:
    """The model's Flow from a FlowFields' values (``astuple``: one call instead of a lookup per field)."""
    (
        t,
        verdict,
        drop,
        drop_desc,
        ip,
        l4,
        src,
        dst,
        ftype,
        node,
        source_names,
        destination_names,
        reply,
        event,
        direction,
        point,
        is_reply,
        reason,
    ) = f[:_FLOW_FIELDS]
    protocol, sport, dport, icmp_type, flags = Protocol.NONE, 0, 0, 0, 0
    if l4 is not None:
        tcp, udp, sctp, icmp4, icmp6 = astuple(l4)
        ports = tcp
        if tcp is not None:
            protocol = Protocol.TCP
            fl = tcp.flags
            if fl is not None:
                fin, syn, rst, psh, ack = astuple(fl)
                flags = (
                    (TCP_FIN if fin else 0)
                    | (TCP_SYN if syn else 0)
                    | (TCP_RST if rst else 0)
                    | (TCP_PSH if psh else 0)
                    | (TCP_ACK if ack else 0)
                )
        elif udp is not None:
            protocol, ports = Protocol.UDP, udp
        elif sctp is not None:
            protocol, ports = Protocol.SCTP, sctp
        elif icmp4 is not None:
            protocol, icmp_type = Protocol.ICMPV4, icmp4.type
        elif icmp6 is not None:
            protocol, icmp_type = Protocol.ICMPV6, icmp6.type
        if ports is not None:
            sport, dport = ports.source_port, ports.destination_port
    if is_reply is None and reply:
        is_reply = True
    drop = drop_desc or drop
    t = t or envelope_time
    seconds = 0.0
    if t is not None:
        # Hot path inlined: an aware time inside the model's range; _timestamp handles the rest.
        seconds = _SECONDS(t) if t.tzinfo is not None else _timestamp(t)
        if not MIN_TIME <= seconds < END_TIME:
            _timestamp(t)  # raises DecodeError naming the time
    # An endpoint decoded into the model's own type with its namespace set is used as it is.
    if src is None or type(src) is not _ENDPOINT or not src.namespace:
        src = _endpoint(src)
    if dst is None or type(dst) is not _ENDPOINT or not dst.namespace:
        dst = _endpoint(dst)
    if ip is not None:
        source_ip, destination_ip = astuple(ip)
    else:
        source_ip = destination_ip = ""
    return Flow(
        seconds,
        verdict if type(verdict) is int else _number(verdict, _VERDICTS, _FORWARDED, _FORWARDED_NUMBER),
        drop_reason_name(drop) if drop else "",
        src,
        dst,
        source_ip,
        destination_ip,
        protocol,
        sport,
        dport,
        icmp_type,
        flags,
        is_reply,
        ftype if type(ftype) is int else _number(ftype, _FLOW_TYPES, _L3_L4, _L3_L4_NUMBER),
        event.type if event is not None else 0,
        direction if type(direction) is int else _number(direction, _DIRECTIONS, _EGRESS, _EGRESS_NUMBER),
        point if type(point) is int else _number(point, _POINTS, _TO_ENDPOINT, _TO_ENDPOINT_NUMBER),
        node or envelope_node,
        source_names,
        destination_names,
        reason if type(reason) is int else _number(reason, _TRACE_REASONS, _NEW, _NEW_NUMBER),
    )


def _number(name: str, table: dict[str, int], common: str, number: int) -> int:
    """An enum name's number; its commonest name compared first (compiled: length, then bytes), which
    is cheaper than hashing the freshly decoded name for the table."""
    if name == common:
        return number
    return table.get(name, 0)


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
