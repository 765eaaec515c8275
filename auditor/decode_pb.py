"""Decode Hubble protobuf messages into the auditor's model.

Stage: decode, protobuf edge (the live ``observer.Observer/GetFlows`` stream). Input: parsed
``observer.GetFlowsResponse`` messages (or a bare ``flow.Flow``) from ``auditor._proto``. Output:
``auditor.model`` records: ``Flow``, ``LostEvents``, ``NodeStatus``, or ``OtherRecord`` for anything else.

This is the per-flow hot path: every field is read once, straight from the message (no ``json_format``,
no dictionaries in between). Endpoints repeat across flows, so each distinct one is decoded once (a cache
keyed by its serialized bytes) and shared; absent endpoints are ``EMPTY_ENDPOINT``.

Memory: the endpoint cache is bounded by bytes, not entries (an endpoint is whatever labels the pod has:
tens of KB are possible, and 16,384 entries of 33 KB once took the process past 1.8 GB). Label sets and
workload lists are interned: the replicas of a workload carry the same labels, so 100,000 pods share a few
hundred label tuples, and an entry costs its key (the wire bytes), its struct and its pod name. Each entry
is charged its wire size, its pod name and :data:`ENDPOINT_OVERHEAD`; each label set or workload list the
first time it is seen is charged what its strings and tuple take (:func:`_strings_cost`). When
:data:`ENDPOINT_CACHE_BYTES` would be exceeded, the cache and its interned values are emptied and refill
with what is current (one cheap step on a rare path, instead of LRU bookkeeping on every hit).

Mapping notes:

- ``time`` is seconds since the epoch (0.0 when no time is set). In a response, a flow without ``time``
  or ``node_name`` (e.g. cut by a field mask) takes the envelope's ``time`` / ``node_name``.
- ``protocol`` is the name of the ``Layer4`` case (``TCP``, ``UDP``, ``SCTP``, ``ICMPv4``, ``ICMPv6``), ``""``
  when there is none or it is a case without ports (``VRRP``, ``IGMP``), exactly as the JSON decoder does.
- An endpoint without ``namespace`` takes it from its ``k8s:io.kubernetes.pod.namespace`` label.
- ``is_reply`` is ``None`` when Hubble did not say; the deprecated ``reply`` bool only counts when true.
- ``drop_reason`` is the ``DropReason`` name of ``drop_reason_desc`` (falling back to the deprecated
  numeric ``drop_reason``), ``""`` for none.

Error policy: a parsed message whose values are outside their domain — a port above 65535 or an ICMP type
above 255 (both ``uint32`` on the wire), a time outside 0001-01-01..9999-12-31 UTC (protobuf's ``Timestamp``
range: ``seconds`` = 2**40 is year 36812) or ``nanos`` outside 0..999,999,999 — raises :class:`DomainError`
naming the field; the live source counts it as ``invalid`` and skips it. Nothing else raises on a parsed
message. Unknown fields were already set aside by protobuf;
unknown enum numbers stay plain ints (verdict, direction, observation point, flow type); a drop reason
unknown to our ``flow.proto`` is kept as its decimal number (``"206"``), as protobuf JSON would print it;
an unknown lost-event source or node state maps to the proto's ``UNKNOWN_…`` name (they become metric
labels, which must stay bounded). A response with no known payload becomes ``OtherRecord``. Turning
bytes into messages (and counting ``DecodeError``) is the source's job.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.unknown_fields import UnknownFieldSet

from auditor._proto.flow import flow_pb2
from auditor._proto.live import live_pb2
from auditor._proto.observer import observer_pb2
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
    Record,
    Workload,
    namespace_from_labels,
)
from auditor.names import (
    DROP_REASON_NAMES,
    LOST_EVENT_SOURCE_NAMES,
    NODE_STATE_NAMES,
    UNKNOWN_LOST_EVENT_SOURCE,
    UNKNOWN_NODE_STATE,
    drop_reason_name,
)

# Payloads Hubble's exporter puts in the same envelope under numbers our GetFlowsResponse reserves.
OTHER_PAYLOAD_KINDS: Final[dict[int, str]] = {4: "agent_event", 5: "debug_event"}
UNKNOWN_PAYLOAD: Final = "unknown"

ENDPOINT_CACHE_BYTES: Final = 96 * 1024 * 1024
"""Memory charged to the decoder's endpoint cache before it is emptied."""
ENDPOINT_OVERHEAD: Final = 256
"""Bytes of one entry beside its key's and pod name's characters: the key and pod name objects, the dict
slot with its share of free slots, the ``Endpoint`` struct (measured by ``tests/test_memory_bounds.py``)."""
_STRING: Final = 49 + 8  # a str object (sys.getsizeof("")) and the tuple slot that holds it
_TUPLE: Final = 40 + 100  # an empty tuple, and the interning dict's slot for it
_WORKLOAD: Final = 32 + 8  # a Workload struct and its slot


def _strings_cost(strings: tuple[str, ...]) -> int:
    """Bytes of a tuple of strings, charged once when it is interned."""
    return _TUPLE + sum(_STRING + len(text) for text in strings)


Response = observer_pb2.GetFlowsResponse | live_pb2.GetFlowsResponse
"""The full message, or the lean wire-compatible view the live source parses (``proto/live/live.proto``)."""


class DomainError(ValueError):
    """A parsed message with a value outside its domain; the message names the field and the value."""


def flow_from_pb(msg: flow_pb2.Flow) -> Flow:
    """Decode one ``flow.Flow`` message. Raises :class:`DomainError`."""
    return _decode_flow(msg, None)


def record_from_response(resp: Response) -> Record:
    """Decode one ``GetFlowsResponse`` into the record its ``response_types`` case carries.

    Raises :class:`DomainError` for a flow with a value outside its domain.
    """
    kind = resp.WhichOneof("response_types")
    if kind == "flow":
        return _decode_flow(resp.flow, resp)
    if kind == "lost_events":
        return lost_events_from_pb(resp.lost_events, resp.node_name)
    if kind == "node_status":
        return node_status_from_pb(resp.node_status)
    return OtherRecord(kind=_other_kind(resp))


def lost_events_from_pb(msg: flow_pb2.LostEvent, node_name: str = "") -> LostEvents:
    """Decode a ``flow.LostEvent``; ``node_name`` comes from the response envelope."""
    source = LOST_EVENT_SOURCE_NAMES.get(msg.source, UNKNOWN_LOST_EVENT_SOURCE)
    return LostEvents(source=source, num_events=msg.num_events_lost, node_name=node_name)


def node_status_from_pb(msg: observer_pb2.NodeStatusEvent) -> NodeStatus:
    """Decode a Relay ``NodeStatusEvent``."""
    state = NODE_STATE_NAMES.get(msg.state_change, UNKNOWN_NODE_STATE)
    return NodeStatus(state=state, node_names=tuple(msg.node_names), message=msg.message)


def endpoint_from_pb(msg: flow_pb2.Endpoint) -> Endpoint:
    """Decode a ``flow.Endpoint``; an empty ``namespace`` is filled from the pod-namespace label."""
    labels = tuple(msg.labels)
    workloads = msg.workloads
    return Endpoint(
        identity=msg.identity,
        namespace=msg.namespace or (namespace_from_labels(labels) if labels else ""),
        labels=labels,
        pod_name=msg.pod_name,
        workloads=tuple([Workload(kind=w.kind, name=w.name) for w in workloads]) if workloads else (),
        cluster_name=msg.cluster_name,
    )


class EndpointCache:
    """Decoded endpoints by their exact wire bytes (a hit is always right), bounded by charged bytes.

    A cluster has far fewer endpoints than flows: decoding each distinct one once saves most of the
    per-flow cost and shares the objects. Hits are a plain ``dict.get`` (see :func:`_endpoint`). Label
    tuples, workload tuples and namespaces are interned, so the pods of one workload share them.
    """

    def __init__(self, budget: int = ENDPOINT_CACHE_BYTES) -> None:
        self.budget = budget
        self.entries: dict[bytes, Endpoint] = {}
        self._labels: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._workloads: dict[tuple[Workload, ...], tuple[Workload, ...]] = {}
        self._names: dict[str, str] = {}  # namespaces and cluster names
        self.charged = 0
        self.misses = 0
        self.resets = 0

    def decode(self, data: bytes) -> Endpoint:
        """The miss path: decode, and remember unless the endpoint alone exceeds the budget."""
        endpoint = endpoint_from_pb(flow_pb2.Endpoint.FromString(data))
        self.misses += 1
        cost = self._cost(data, endpoint)
        if self.charged + cost > self.budget:
            self.clear()
            self.resets += 1
            cost = self._cost(data, endpoint)
            if cost > self.budget:
                return endpoint
        names = self._names
        shared = self.entries[data] = Endpoint(
            identity=endpoint.identity,
            namespace=names.setdefault(endpoint.namespace, endpoint.namespace),
            labels=self._labels.setdefault(endpoint.labels, endpoint.labels),
            pod_name=endpoint.pod_name,
            workloads=self._workloads.setdefault(endpoint.workloads, endpoint.workloads),
            cluster_name=names.setdefault(endpoint.cluster_name, endpoint.cluster_name),
        )
        self.charged += cost
        return shared

    def _cost(self, data: bytes, endpoint: Endpoint) -> int:
        """Bytes an entry adds: its own, plus the values it interns first."""
        cost = len(data) + len(endpoint.pod_name) + ENDPOINT_OVERHEAD
        if endpoint.labels not in self._labels:
            cost += _strings_cost(endpoint.labels)
        workloads = endpoint.workloads
        if workloads not in self._workloads:
            texts = tuple(text for w in workloads for text in (w.kind, w.name))
            cost += _strings_cost(texts) + _WORKLOAD * len(workloads)
        for name in (endpoint.namespace, endpoint.cluster_name):
            if name not in self._names:
                cost += _TUPLE + _STRING + len(name)
        return cost

    def clear(self) -> None:
        self.entries.clear()  # the same dict: the module's bound ``get`` stays valid
        self._labels.clear()
        self._workloads.clear()
        self._names.clear()
        self.charged = 0

    def info(self) -> dict[str, int]:
        return {
            "entries": len(self.entries),
            "label_sets": len(self._labels),
            "charged_bytes": self.charged,
            "budget_bytes": self.budget,
            "misses": self.misses,
            "resets": self.resets,
        }


ENDPOINTS: Final = EndpointCache()
_cached_endpoint = ENDPOINTS.entries.get


def endpoint_cache_info() -> dict[str, int]:
    """Entries, charged bytes, budget, misses and resets of the decoder's endpoint cache."""
    return ENDPOINTS.info()


def _decode_flow(msg: flow_pb2.Flow | live_pb2.Flow, envelope: Response | None) -> Flow:
    ts = msg.time
    seconds, nanos = ts.seconds, ts.nanos
    node_name = msg.node_name
    if envelope is not None:
        if not (seconds or nanos):
            ts = envelope.time
            seconds, nanos = ts.seconds, ts.nanos
        if not node_name:
            node_name = envelope.node_name
    ip = msg.IP
    l4 = msg.l4
    kind = l4.WhichOneof("protocol")
    source_port = destination_port = icmp_type = tcp_flags = 0
    if kind == "TCP":
        tcp = l4.TCP
        source_port, destination_port = tcp.source_port, tcp.destination_port
        tcp_flags = _tcp_flags(tcp.flags)
    elif kind == "UDP":
        udp = l4.UDP
        source_port, destination_port = udp.source_port, udp.destination_port
    elif kind == "ICMPv4":
        icmp_type = l4.ICMPv4.type
    elif kind == "ICMPv6":
        icmp_type = l4.ICMPv6.type
    elif kind == "SCTP":
        sctp = l4.SCTP
        source_port, destination_port = sctp.source_port, sctp.destination_port
    else:
        kind = None  # none, or a newer case (VRRP, IGMP) that has no ports: not judged
    source_names = msg.source_names
    destination_names = msg.destination_names
    return assemble_flow(
        seconds,
        nanos,
        msg.verdict,
        msg.drop_reason_desc or msg.drop_reason,
        msg.source,
        msg.destination,
        ip.source,
        ip.destination,
        kind or "",
        source_port,
        destination_port,
        icmp_type,
        tcp_flags,
        msg.is_reply.value if msg.HasField("is_reply") else (True if msg.reply else None),
        msg.Type,
        msg.event_type.type,
        msg.traffic_direction,
        msg.trace_observation_point,
        node_name,
        tuple(source_names) if source_names else (),
        tuple(destination_names) if destination_names else (),
        msg.trace_reason,
    )


def assemble_flow(
    seconds: int,
    nanos: int,
    verdict: int,
    drop: int,
    source: flow_pb2.Endpoint | bytes,
    destination: flow_pb2.Endpoint | bytes,
    ip_source: str,
    ip_destination: str,
    kind: str,
    source_port: int,
    destination_port: int,
    icmp_type: int,
    tcp_flags: int,
    is_reply: bool | None,
    flow_type: int,
    event_type: int,
    direction: int,
    observation_point: int,
    node_name: str,
    source_names: tuple[str, ...],
    destination_names: tuple[str, ...],
    trace_reason: int,
) -> Flow:
    """The ``Flow`` of the values read from a message (by protobuf here, or from the wire by
    :mod:`auditor.decode_wire`): domain checks, time, drop reason name, cached endpoints.
    Raises :class:`DomainError`."""
    if (source_port | destination_port) > 65535 or icmp_type > 255:  # uint32 on the wire
        raise DomainError(_l4_problem(kind, source_port, destination_port, icmp_type))
    t = seconds + nanos / 1e9 if seconds or nanos else 0.0
    # model.MIN_TIME <= t < model.END_TIME, as literals (no global lookups per flow; tests pin both edges)
    if not (-62135596800.0 <= t < 253402300800.0 and 0 <= nanos < 1_000_000_000):
        raise DomainError(f"time {seconds}s {nanos}ns is outside 0001-01-01..9999-12-31 UTC")
    # Positional arguments in the order of model.Flow's fields: about 4x cheaper than keywords here.
    return Flow(
        t,
        verdict,
        (DROP_REASON_NAMES.get(drop) or str(drop)) if drop else "",
        _endpoint(source),
        _endpoint(destination),
        ip_source,
        ip_destination,
        kind,
        source_port,
        destination_port,
        icmp_type,
        tcp_flags,
        is_reply,
        flow_type,
        event_type,
        direction,
        observation_point,
        node_name,
        source_names,
        destination_names,
        trace_reason,
    )


def _l4_problem(kind: str, source_port: int, destination_port: int, icmp_type: int) -> str:
    if icmp_type > 255:
        return f"l4.{kind}.type {icmp_type} is out of range (0-255)"
    field, value = (
        ("source_port", source_port) if source_port > 65535 else ("destination_port", destination_port)
    )
    return f"l4.{kind}.{field} {value} is out of range (0-65535)"


def _endpoint(msg: flow_pb2.Endpoint | bytes) -> Endpoint:
    """Decoded endpoints are shared, found again by their exact wire bytes (the live schema delivers the
    bytes unparsed; a full ``flow.Endpoint`` message is serialized first)."""
    data = msg if type(msg) is bytes else msg.SerializeToString()  # type: ignore[union-attr]
    if not data:
        return EMPTY_ENDPOINT
    endpoint = _cached_endpoint(data)
    return endpoint if endpoint is not None else ENDPOINTS.decode(data)


def _tcp_flags(flags: flow_pb2.TCPFlags) -> int:
    return (
        (TCP_FIN if flags.FIN else 0)
        | (TCP_SYN if flags.SYN else 0)
        | (TCP_RST if flags.RST else 0)
        | (TCP_PSH if flags.PSH else 0)
        | (TCP_ACK if flags.ACK else 0)
    )


def _other_kind(resp: Response) -> str:
    """Name the payload of a response that carries none we know (rare path: inspects unknown fields)."""
    unknown = UnknownFieldSet(resp)
    for index in range(len(unknown)):
        number: int = unknown[index].field_number
        kind = OTHER_PAYLOAD_KINDS.get(number)
        if kind is not None:
            return kind
    return UNKNOWN_PAYLOAD


__all__ = [
    "DROP_REASON_NAMES",
    "LOST_EVENT_SOURCE_NAMES",
    "NODE_STATE_NAMES",
    "DomainError",
    "assemble_flow",
    "drop_reason_name",
    "endpoint_cache_info",
    "endpoint_from_pb",
    "flow_from_pb",
    "lost_events_from_pb",
    "node_status_from_pb",
    "record_from_response",
]
