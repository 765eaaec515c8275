"""The flow model shared by every stage of the pipeline.

Stage: none (data types only). Input: produced by ``auditor.decode`` from Hubble JSON lines or protobuf
messages. Output: consumed by ``auditor.judge`` and ``auditor.classify``.

Everything here is immutable and cheap to build: ``msgspec.Struct`` with ``frozen=True`` and ``gc=False``
(no cycles are possible), but ``Flow``, a plain class of the compiled core (``auditor.flow_record``, see
there why) re-exported from here. Enumerations from Hubble's ``flow.proto`` are kept as plain ``int``
constants with the upstream numeric values, because integer comparisons are the cheapest thing on the
per-flow path; the name tables below turn them back into the names Hubble users know.

Error policy: none here; decoders map unknown enum names to ``0`` (the proto's "unknown" value) and keep
unknown numbers as they are.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeAlias

import msgspec


class Verdict:
    """``flow.Verdict`` values."""

    UNKNOWN: Final = 0
    FORWARDED: Final = 1
    DROPPED: Final = 2
    ERROR: Final = 3
    AUDIT: Final = 4
    REDIRECTED: Final = 5
    TRACED: Final = 6
    TRANSLATED: Final = 7


VERDICT_NAMES: Final[dict[int, str]] = {
    0: "VERDICT_UNKNOWN",
    1: "FORWARDED",
    2: "DROPPED",
    3: "ERROR",
    4: "AUDIT",
    5: "REDIRECTED",
    6: "TRACED",
    7: "TRANSLATED",
}


class FlowType:
    """``flow.FlowType`` values."""

    UNKNOWN: Final = 0
    L3_L4: Final = 1
    L7: Final = 2
    SOCK: Final = 3


FLOW_TYPE_NAMES: Final[dict[int, str]] = {0: "UNKNOWN_TYPE", 1: "L3_L4", 2: "L7", 3: "SOCK"}


class Direction:
    """``flow.TrafficDirection`` values."""

    UNKNOWN: Final = 0
    INGRESS: Final = 1
    EGRESS: Final = 2


DIRECTION_NAMES: Final[dict[int, str]] = {0: "TRAFFIC_DIRECTION_UNKNOWN", 1: "INGRESS", 2: "EGRESS"}


class ObservationPoint:
    """``flow.TraceObservationPoint`` values."""

    UNKNOWN: Final = 0
    TO_PROXY: Final = 1
    TO_HOST: Final = 2
    TO_STACK: Final = 3
    TO_OVERLAY: Final = 4
    TO_ENDPOINT: Final = 101
    FROM_ENDPOINT: Final = 5
    FROM_PROXY: Final = 6
    FROM_HOST: Final = 7
    FROM_STACK: Final = 8
    FROM_OVERLAY: Final = 9
    FROM_NETWORK: Final = 10
    TO_NETWORK: Final = 11
    FROM_CRYPTO: Final = 12
    TO_CRYPTO: Final = 13


class TraceReason:
    """``flow.TraceReason`` values (Hubble ≥ 1.15): what Cilium's connection tracking said of a packet."""

    UNKNOWN: Final = 0
    NEW: Final = 1
    ESTABLISHED: Final = 2
    REPLY: Final = 3
    RELATED: Final = 4


TRACE_REASON_NAMES: Final[dict[int, str]] = {
    0: "TRACE_REASON_UNKNOWN",
    1: "NEW",
    2: "ESTABLISHED",
    3: "REPLY",
    4: "RELATED",
    5: "REOPENED",
    6: "SRV6_ENCAP",
    7: "SRV6_DECAP",
    8: "ENCRYPT_OVERLAY",
}


OBSERVATION_POINT_NAMES: Final[dict[int, str]] = {
    0: "UNKNOWN_POINT",
    1: "TO_PROXY",
    2: "TO_HOST",
    3: "TO_STACK",
    4: "TO_OVERLAY",
    101: "TO_ENDPOINT",
    5: "FROM_ENDPOINT",
    6: "FROM_PROXY",
    7: "FROM_HOST",
    8: "FROM_STACK",
    9: "FROM_OVERLAY",
    10: "FROM_NETWORK",
    11: "TO_NETWORK",
    12: "FROM_CRYPTO",
    13: "TO_CRYPTO",
}


class EventType:
    """Cilium monitor message types (``CiliumEventType.type``)."""

    UNSPEC: Final = 0
    DROP: Final = 1
    DEBUG: Final = 2
    CAPTURE: Final = 3
    TRACE: Final = 4
    POLICY_VERDICT: Final = 5
    RECORD_CAPTURE: Final = 6
    TRACE_SOCK: Final = 7
    ACCESS_LOG: Final = 129
    AGENT: Final = 130


class Protocol:
    """Layer-4 protocol of a flow (the ``Layer4`` oneof case), as the matrix spells it."""

    NONE: Final = ""
    TCP: Final = "TCP"
    UDP: Final = "UDP"
    SCTP: Final = "SCTP"
    ICMPV4: Final = "ICMPv4"
    ICMPV6: Final = "ICMPv6"


ICMP_PROTOCOLS: Final = frozenset({Protocol.ICMPV4, Protocol.ICMPV6})
LOCAL_SCOPE_IDENTITY: Final = 1 << 24
"""Cilium's local-scope identities (CIDR and FQDN selectors) live at and above this bit."""

# Bits of Flow.tcp_flags (the order of flow.TCPFlags fields).
TCP_FIN: Final = 1
TCP_SYN: Final = 2
TCP_RST: Final = 4
TCP_PSH: Final = 8
TCP_ACK: Final = 16


class Workload(msgspec.Struct, frozen=True, gc=False):
    """A workload (controller) owning a pod, e.g. ``Deployment/airflow-webserver``."""

    kind: str
    name: str


class Endpoint(msgspec.Struct, frozen=True, gc=False):
    """One end of a flow as Hubble describes it.

    ``labels`` are Cilium labels in ``source:key=value`` form (``k8s:app=web``, ``reserved:world``).
    ``identity`` is the Cilium security identity (0 when Hubble did not know it); a uint32 on the wire,
    so the JSON decoder, which decodes straight into this type, rejects other values.
    """

    identity: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0
    namespace: str = ""
    labels: tuple[str, ...] = ()
    pod_name: str = ""
    workloads: tuple[Workload, ...] = ()
    cluster_name: str = ""

    @property
    def pod(self) -> str:
        """``namespace/pod`` as kubectl users write it, or ``""`` when this is not a pod."""
        if not self.pod_name:
            return ""
        return f"{self.namespace}/{self.pod_name}" if self.namespace else self.pod_name


EMPTY_ENDPOINT: Final = Endpoint()

_POD_NAMESPACE_LABEL: Final = "k8s:io.kubernetes.pod.namespace="


def namespace_from_labels(labels: tuple[str, ...]) -> str:
    """The pod namespace carried in Cilium labels.

    Hubble leaves ``Endpoint.namespace`` empty for endpoints it knows only by identity (remote nodes,
    some proxy traces); decoders fill it from this label so that scope and selectors still work.
    """
    for label in labels:
        if label.startswith(_POD_NAMESPACE_LABEL):
            return label[len(_POD_NAMESPACE_LABEL) :]
    return ""


# The times a Flow can hold, in seconds since the epoch: 0001-01-01T00:00:00Z (inclusive) to
# 10000-01-01T00:00:00Z (exclusive) — protobuf's Timestamp range and what ``datetime`` can show. Decoders
# reject times outside it; the end applies to the float itself (9999-12-31T23:59:59.999999Z rounds to it).
MIN_TIME: Final = -62135596800.0
END_TIME: Final = 253402300800.0


class LostEvents(msgspec.Struct, frozen=True, gc=False):
    """A ``lost_events`` record: Hubble (or Relay) could not deliver ``num_events`` events.

    ``source`` is the upstream ``LostEventSource`` name (``PERF_EVENT_RING_BUFFER``,
    ``OBSERVER_EVENTS_QUEUE``, ``HUBBLE_RING_BUFFER``) or ``UNKNOWN_LOST_EVENT_SOURCE``.
    """

    source: str
    num_events: int
    node_name: str = ""


class NodeStatus(msgspec.Struct, frozen=True, gc=False):
    """A Relay ``node_status`` record: the state of the listed nodes changed."""

    state: str
    node_names: tuple[str, ...]
    message: str = ""


class OtherRecord(msgspec.Struct, frozen=True, gc=False):
    """A response that carries no flow (agent or debug events): counted as ``ignored``."""

    kind: str


# The Flow record is a compiled class of its own module, which imports Endpoint from here: imported last.
from auditor.flow_record import Flow as Flow  # noqa: E402

Record: TypeAlias = Flow | LostEvents | NodeStatus | OtherRecord
