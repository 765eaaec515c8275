"""The Flow record: one Hubble flow event as every stage reads it (re-exported by :mod:`auditor.model`).

Stage: none (a data type). A plain class, not a ``msgspec.Struct`` like the rest of the model: this module
is compiled with the judging core (``make native``), where a field of a compiled class is read as a
struct member and a struct's field through a generic attribute lookup (≈ 165 instructions; a flow's
fields are read some thirty times on its way through judging, classification and the sinks). It keeps
what the struct gave: equality, hash and repr over its fields, pickling (``replay --jobs``), keyword
construction and :meth:`Flow.replace`. Immutable by convention: nothing assigns to a flow's fields after
construction (only decoders build flows).

Error policy: none here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # auditor.model imports this module (at its end) to re-export Flow: no import back
    from auditor.model import Endpoint

FIELDS = (
    "time",
    "verdict",
    "drop_reason",
    "source",
    "destination",
    "source_ip",
    "destination_ip",
    "protocol",
    "source_port",
    "destination_port",
    "icmp_type",
    "tcp_flags",
    "is_reply",
    "flow_type",
    "event_type",
    "traffic_direction",
    "observation_point",
    "node_name",
    "source_names",
    "destination_names",
    "trace_reason",
)


class Flow:
    """One Hubble flow event, reduced to what the auditor reads.

    ``time`` is seconds since the epoch (float, microsecond precision or better). ``is_reply`` is
    ``None`` when Hubble did not know (the field was absent). Ports are 0 for protocols without ports;
    ``icmp_type`` is set for ICMP only. ``trace_reason`` is Hubble's TraceReason (Hubble ≥ 1.15; 0 when
    not said): RELATED marks ICMP errors.
    """

    __slots__ = FIELDS

    def __init__(
        self,
        time: float,
        verdict: int,
        drop_reason: str,
        source: Endpoint,
        destination: Endpoint,
        source_ip: str,
        destination_ip: str,
        protocol: str,
        source_port: int,
        destination_port: int,
        icmp_type: int,
        tcp_flags: int,
        is_reply: bool | None,
        flow_type: int,
        event_type: int,
        traffic_direction: int,
        observation_point: int,
        node_name: str,
        source_names: tuple[str, ...] = (),
        destination_names: tuple[str, ...] = (),
        trace_reason: int = 0,
    ) -> None:
        self.time = time
        self.verdict = verdict
        self.drop_reason = drop_reason
        self.source = source
        self.destination = destination
        self.source_ip = source_ip
        self.destination_ip = destination_ip
        self.protocol = protocol
        self.source_port = source_port
        self.destination_port = destination_port
        self.icmp_type = icmp_type
        self.tcp_flags = tcp_flags
        self.is_reply = is_reply
        self.flow_type = flow_type
        self.event_type = event_type
        self.traffic_direction = traffic_direction
        self.observation_point = observation_point
        self.node_name = node_name
        self.source_names = source_names
        self.destination_names = destination_names
        self.trace_reason = trace_reason

    def values(self) -> tuple[Any, ...]:
        """The fields' values, in :data:`FIELDS` order."""
        return (
            self.time,
            self.verdict,
            self.drop_reason,
            self.source,
            self.destination,
            self.source_ip,
            self.destination_ip,
            self.protocol,
            self.source_port,
            self.destination_port,
            self.icmp_type,
            self.tcp_flags,
            self.is_reply,
            self.flow_type,
            self.event_type,
            self.traffic_direction,
            self.observation_point,
            self.node_name,
            self.source_names,
            self.destination_names,
            self.trace_reason,
        )

    def replace(self, **changes: Any) -> Flow:
        """A copy with ``changes`` applied (as ``msgspec.structs.replace`` does for the model's structs)."""
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise TypeError(f"Flow has no field {sorted(unknown)[0]!r}")
        fields = dict(zip(FIELDS, self.values(), strict=True))
        fields.update(changes)
        return Flow(**fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Flow):
            return NotImplemented
        return self.values() == other.values()

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Flow):
            return NotImplemented
        return self.values() != other.values()

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in zip(FIELDS, self.values(), strict=True))
        return f"Flow({inner})"

    def __reduce__(self) -> tuple[type[Flow], tuple[Any, ...]]:
        return (Flow, self.values())
