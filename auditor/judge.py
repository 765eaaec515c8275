"""Judging one flow event on its evidence (DESIGN §5, rules 1-4).

Stage: judge. Input: a decoded :class:`auditor.model.Flow` and the auditor's view (the whole cluster, or
one node of a node-local DaemonSet). Output: one small int code — a reply, a reply that proves delivery
of the original connection, an event to ignore, provisional egress-side evidence, or a final
``DELIVERED``/``DROPPED`` verdict. Pure and stateless: deduplication and the matrix come later
(``auditor.classify``).

Error policy: never raises. Anything that cannot prove delivery or a drop (unknown verdicts, trace
points without a usable direction, L7 records of already-judged connections, socket traces) is
``IGNORED``; it is counted, never guessed.

The rules, in order:

1. ``is_reply`` true (or, when Hubble left it unset, a TCP SYN+ACK) is a reply: never a connection of its
   own. A ``FORWARDED`` L3/L4 reply is ``REPLY_DELIVERED``: conntrack passes a reply only when the request
   reached its destination, so it proves delivery of the original connection (the reversed 5-tuple).
   With ``node_local`` (each auditor sees one node, and the sum over nodes must count a connection once)
   every reply is a plain ``REPLY``: delivery is counted only on the destination's side (rule 3). Dropped,
   redirected and L7 replies, and ICMP messages that answer no request, prove nothing: ``REPLY``.
2. ``DROPPED``/``ERROR``/``AUDIT`` → ``DROPPED`` (``AUDIT``: would be dropped under enforcement), on
   either side, L7 drops included.
3. ``FORWARDED``/``REDIRECTED`` → ``DELIVERED`` only where it proves delivery: a trace to the endpoint,
   ingress-side evidence at the destination (ingress policy verdict, redirect to the ingress proxy), or
   egress-side evidence when the destination is outside Cilium's endpoints (world, CIDR/FQDN identities,
   host, remote-node, kube-apiserver, unmanaged, another cluster). Egress-side evidence towards a pod is
   ``PROVISIONAL``: the destination's ingress policy may still drop it.
4. L3/L4 events without a direction (overlay hops), L7 records, socket traces and other verdicts →
   ``IGNORED``. So is an ICMP error (destination unreachable, time exceeded, …) that Cilium's connection
   tracking marked ``RELATED`` to a connection (Hubble's ``trace_reason``, Cilium ≥ 1.15), whatever its
   verdict — checked before rule 1: it answers other traffic and is no connection attempt (a path-MTU or
   port-unreachable message must not read as unexpected traffic). Without a ``trace_reason`` (older Hubble)
   it is judged like any ICMP message.
"""

from __future__ import annotations

from typing import Final

from auditor.model import (
    ICMP_PROTOCOLS,
    LOCAL_SCOPE_IDENTITY,
    TCP_ACK,
    TCP_SYN,
    Direction,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    ObservationPoint,
    Protocol,
    TraceReason,
    Verdict,
)

# Evidence codes, used by name (their values carry no order).
REPLY: Final = 0
IGNORED: Final = 1
PROVISIONAL: Final = 2
DELIVERED: Final = 3
DROPPED: Final = 4
REPLY_DELIVERED: Final = 5
FINAL: Final = frozenset({DELIVERED, DROPPED, REPLY_DELIVERED})
"""Codes that place a connection on an edge (a final verdict)."""

_DROP_VERDICTS: Final = frozenset({Verdict.DROPPED, Verdict.ERROR, Verdict.AUDIT})
_PASS_VERDICTS: Final = frozenset({Verdict.FORWARDED, Verdict.REDIRECTED})
_EVIDENCE_EVENTS: Final = frozenset({EventType.TRACE, EventType.POLICY_VERDICT, EventType.UNSPEC})
_INGRESS_PROOF_POINTS: Final = frozenset({ObservationPoint.TO_ENDPOINT, ObservationPoint.TO_PROXY})
# Reserved identities outside Cilium's endpoints: host, world, unmanaged, remote-node, kube-apiserver,
# world-ipv4, world-ipv6. (health, init and ingress are Cilium-managed endpoints.)
_EXTERNAL_IDENTITIES: Final = frozenset({1, 2, 3, 6, 7, 9, 10})
_EXTERNAL_LABEL_PREFIXES: Final = (
    "reserved:world",
    "reserved:host",
    "reserved:remote-node",
    "reserved:kube-apiserver",
    "reserved:unmanaged",
    "cidr:",
    "fqdn:",
)
_SYN_ACK: Final = TCP_SYN | TCP_ACK
ICMP_REQUEST_TYPE: Final[dict[tuple[str, int], int]] = {
    # (protocol, reply type) → the request type it answers: echo, timestamp, information, address mask
    (Protocol.ICMPV4, 0): 8,
    (Protocol.ICMPV4, 14): 13,
    (Protocol.ICMPV4, 16): 15,
    (Protocol.ICMPV4, 18): 17,
    (Protocol.ICMPV6, 129): 128,  # echo
}
"""ICMP replies that answer a request: only those prove the request's delivery."""
ICMP_ERROR_TYPES: Final = frozenset(
    # ICMPv4 destination unreachable, source quench, redirect, time exceeded, parameter problem; ICMPv6
    # destination unreachable, packet too big, time exceeded, parameter problem
    [(Protocol.ICMPV4, t) for t in (3, 4, 5, 11, 12)] + [(Protocol.ICMPV6, t) for t in (1, 2, 3, 4)]
)
"""ICMP messages that report a problem with other traffic: with ``trace_reason`` RELATED, no connection."""


def judge(flow: Flow, node_local: bool = False) -> int:
    """The evidence code of one flow event (see the module docstring)."""
    if flow.trace_reason == TraceReason.RELATED and (flow.protocol, flow.icmp_type) in ICMP_ERROR_TYPES:
        return IGNORED
    reply = flow.is_reply
    if reply or (reply is None and flow.protocol == Protocol.TCP and flow.tcp_flags & _SYN_ACK == _SYN_ACK):
        if (
            node_local
            or flow.verdict != Verdict.FORWARDED
            or not flow.protocol
            or flow.flow_type == FlowType.L7
            or flow.event_type not in _EVIDENCE_EVENTS
            or (flow.protocol in ICMP_PROTOCOLS and (flow.protocol, flow.icmp_type) not in ICMP_REQUEST_TYPE)
        ):
            return REPLY
        return REPLY_DELIVERED
    verdict = flow.verdict
    if verdict in _DROP_VERDICTS:
        return DROPPED if flow.protocol else IGNORED
    if verdict not in _PASS_VERDICTS or not flow.protocol:
        return IGNORED
    if flow.flow_type == FlowType.L7 or flow.event_type not in _EVIDENCE_EVENTS:
        return IGNORED
    point = flow.observation_point
    if point == ObservationPoint.TO_ENDPOINT:
        return DELIVERED
    direction = flow.traffic_direction
    if direction == Direction.INGRESS:
        if flow.event_type == EventType.POLICY_VERDICT or point in _INGRESS_PROOF_POINTS:
            return DELIVERED
        return PROVISIONAL
    if direction == Direction.EGRESS:
        return DELIVERED if is_external(flow.destination, flow.source) else PROVISIONAL
    return IGNORED


def is_external(dst: Endpoint, src: Endpoint) -> bool:
    """Whether ``dst`` is outside Cilium's endpoints, so that egress-side evidence proves delivery."""
    ident = dst.identity
    if ident in _EXTERNAL_IDENTITIES or ident >= LOCAL_SCOPE_IDENTITY:
        return True
    if dst.cluster_name and src.cluster_name and dst.cluster_name != src.cluster_name:
        return True
    if ident == 0 or ident < 256:
        return any(label.startswith(_EXTERNAL_LABEL_PREFIXES) for label in dst.labels)
    return False
