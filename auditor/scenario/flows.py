"""Building Hubble flow events, and the recorder that emits whole connections with their
ground truth.

Part of :mod:`auditor.scenario`; its docstring gives the stage, the modelling choices and the error
policy.
"""

from __future__ import annotations

import random
import uuid as _uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from auditor.scenario.cluster import Cluster, Node, Peer, stable_uuid
from auditor.scenario.model import (
    MS,
    NS,
    RULES,
    US,
    Event,
    ExpectedEdge,
    Scenario,
    TimeFormatter,
    class_of,
    rule_for,
)

# ------------------------------------------------------------------------------------------------
# Building one flow
# ------------------------------------------------------------------------------------------------

_TCP_FLAG_FIELDS: Final = ("FIN", "SYN", "RST", "PSH", "ACK")  # protojson (declaration) order
_TCP_FLAG_SUMMARY: Final = ("SYN", "ACK", "RST", "FIN", "PSH")  # Hubble's summary order
VXLAN: Final = {"index": 5, "name": "cilium_vxlan"}
_DROP_CODES: Final = {"POLICY_DENIED": 133}

# Cilium monitor trace sub-types and the observation point Hubble derives from them.
_TRACE_SUBTYPE: Final = {
    "TO_ENDPOINT": 0,
    "TO_PROXY": 1,
    "TO_HOST": 2,
    "TO_STACK": 3,
    "TO_OVERLAY": 4,
    "FROM_ENDPOINT": 5,
    "FROM_PROXY": 6,
    "FROM_HOST": 7,
    "FROM_STACK": 8,
    "FROM_OVERLAY": 9,
}


@dataclass(frozen=True)
class _Packet:
    """One packet as the datapath sees it (after service translation)."""

    src: Peer
    dst: Peer
    sport: int
    dport: int
    protocol: str  # TCP, UDP, ICMPv4
    flags: tuple[str, ...] = ()
    is_reply: bool = False
    icmp_type: int = 0

    def l4(self) -> dict[str, Any]:
        if self.protocol == "TCP":
            tcp: dict[str, Any] = {"source_port": self.sport, "destination_port": self.dport}
            if self.flags:
                tcp["flags"] = {name: True for name in _TCP_FLAG_FIELDS if name in self.flags}
            return {"TCP": tcp}
        if self.protocol == "UDP":
            return {"UDP": {"source_port": self.sport, "destination_port": self.dport}}
        return {self.protocol: {"type": self.icmp_type} if self.icmp_type else {}}

    def summary(self) -> str:
        if self.protocol == "TCP":
            return "TCP Flags: " + ", ".join(f for f in _TCP_FLAG_SUMMARY if f in self.flags)
        if self.protocol == "UDP":
            return "UDP"
        return "ICMPv4 EchoReply" if self.is_reply else "ICMPv4 EchoRequest"

    def answer(self, flags: tuple[str, ...]) -> _Packet:
        return _Packet(self.dst, self.src, self.dport, self.sport, self.protocol, flags, True, 0)

    def again(self, flags: tuple[str, ...]) -> _Packet:
        return _Packet(
            self.src, self.dst, self.sport, self.dport, self.protocol, flags, icmp_type=self.icmp_type
        )


@dataclass(frozen=True)
class Policy:
    name: str
    namespace: str
    kind: str
    revision: int

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "labels": [
                f"k8s:io.cilium.k8s.policy.derived-from={self.kind}",
                f"k8s:io.cilium.k8s.policy.name={self.name}",
                f"k8s:io.cilium.k8s.policy.namespace={self.namespace}",
                f"k8s:io.cilium.k8s.policy.uid={stable_uuid('policy/' + self.namespace + '/' + self.name)}",
            ],
            "revision": str(self.revision),
            "kind": self.kind,
        }


def _flow(
    stamp: str,
    flow_uuid: str,
    node: Node,
    pkt: _Packet,
    *,
    verdict: str,
    event_type: tuple[int, int],
    direction: str = "",
    match_type: int = 0,
    point: str = "",
    trace_reason: str = "",
    drop_reason: str = "",
    is_reply: bool | None = None,
    interface: Mapping[str, Any] | None = None,
    l7: Mapping[str, Any] | None = None,
    summary: str = "",
    policies: Sequence[Policy] = (),
) -> Event:
    """One ``GetFlowsResponse`` with a flow, keys in Go protojson's order, zero values omitted."""
    f: dict[str, Any] = {"time": stamp, "uuid": flow_uuid, "verdict": verdict}
    if drop_reason:
        f["drop_reason"] = _DROP_CODES[drop_reason]
    if l7 is None:
        f["ethernet"] = {"source": pkt.src.mac or node.mac, "destination": pkt.dst.mac or node.mac}
    f["IP"] = {"source": pkt.src.ip, "destination": pkt.dst.ip, "ipVersion": "IPv4"}
    f["l4"] = pkt.l4()
    f["source"] = pkt.src.endpoint(node)
    f["destination"] = pkt.dst.endpoint(node)
    f["Type"] = "L7" if l7 is not None else "L3_L4"
    f["node_name"] = node.name
    f["node_labels"] = list(node.labels)
    if pkt.src.names:
        f["source_names"] = list(pkt.src.names)
    if pkt.dst.names:
        f["destination_names"] = list(pkt.dst.names)
    if l7 is not None:
        f["l7"] = dict(l7)
    if is_reply:
        f["reply"] = True
    etype, subtype = event_type
    f["event_type"] = {"type": etype, "sub_type": subtype} if subtype else {"type": etype}
    if direction:
        f["traffic_direction"] = direction
    if match_type:
        f["policy_match_type"] = match_type
    if point:
        f["trace_observation_point"] = point
    if trace_reason:
        f["trace_reason"] = trace_reason
    if drop_reason:
        f["drop_reason_desc"] = drop_reason
    if is_reply is not None:
        f["is_reply"] = is_reply
    if interface is not None:
        f["interface"] = dict(interface)
    f["Summary"] = summary or pkt.summary()
    if policies:
        key = "ingress_allowed_by" if direction == "INGRESS" else "egress_allowed_by"
        f[key] = [p.as_json() for p in policies]
    return {"flow": f, "node_name": node.name, "time": stamp}


# ------------------------------------------------------------------------------------------------
# The recorder: emits the events of whole connections, remembers the ground truth
# ------------------------------------------------------------------------------------------------


@dataclass
class _EdgeTally:
    connections: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    drop_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Conn:
    """The intent of one connection: who talks to whom, and what the datapath does with it."""

    src: Peer
    dst: Peer
    dport: int
    src_name: str  # the names the auditor must give both ends
    dst_name: str
    protocol: str = "TCP"
    delivered: bool = True
    egress_policy: Policy | None = None  # source endpoint under egress policy → egress policy verdict
    ingress_policy: Policy | None = None  # destination under ingress policy → ingress policy verdict
    egress_audit: bool = False  # source endpoint in audit mode and its policy would deny this
    detail: int = 0  # 0: handshake; 1: + first ACK and data; 2: + FIN both ways
    in_scope: bool = True
    dns_query: str = ""  # UDP/53 through Cilium's DNS proxy


class Recorder:
    def __init__(self, start_ns: int, rng: random.Random) -> None:
        self.start_ns = start_ns
        self.rng = rng
        self.records: list[tuple[int, int, Event, str]] = []
        self.edges: dict[tuple[str, str, int, str, str], _EdgeTally] = {}
        self.rules_seen: set[int] = set()
        self._fmt = TimeFormatter()
        self._ports: set[tuple[str, int]] = set()

    # -- low level --------------------------------------------------------------------------------
    def _emit(self, ns: int, event: Event, outcome: str) -> None:
        self.records.append((ns, len(self.records), event, outcome))

    def flow(self, ns: int, node: Node, pkt: _Packet, outcome: str, **kw: Any) -> None:
        flow_uuid = str(_uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self._emit(ns, _flow(self._fmt(ns), flow_uuid, node, pkt, **kw), outcome)

    def lost(self, ns: int, node: Node, count: int, cpu: int) -> None:
        event = {
            "lost_events": {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": str(count), "cpu": cpu},
            "node_name": node.name,
            "time": self._fmt(ns),
        }
        self._emit(ns, event, "lost")

    def at(self, seconds: float) -> int:
        """Flow time ``seconds`` after the start, with sub-millisecond jitter."""
        return self.start_ns + int(seconds * NS) + self.rng.randrange(1, MS)

    def hop(self) -> int:
        """Latency of one datapath hop (same connection, next observation point)."""
        return self.rng.randrange(15 * US, 90 * US)

    def wire(self) -> int:
        """Latency across the overlay to another node."""
        return self.rng.randrange(180 * US, 450 * US)

    def sport(self, ip: str) -> int:
        while True:
            port = self.rng.randrange(32_768, 61_000)
            if (ip, port) not in self._ports:
                self._ports.add((ip, port))
                return port

    # -- ground truth -----------------------------------------------------------------------------
    def expect(self, conn: Conn, delivered: bool, verdict: str, drop_reason: str = "") -> None:
        port = conn.dport
        rule = rule_for(conn.src_name, conn.dst_name, port, conn.protocol)
        cls = class_of(rule is not None, delivered)
        tally = self.edges.setdefault((conn.src_name, conn.dst_name, port, conn.protocol, cls), _EdgeTally())
        tally.connections += 1
        tally.verdicts[verdict] = tally.verdicts.get(verdict, 0) + 1
        if drop_reason:
            tally.drop_reasons[drop_reason] = tally.drop_reasons.get(drop_reason, 0) + 1
        if rule is not None:
            self.rules_seen.add(rule)

    # -- event kinds ------------------------------------------------------------------------------
    def pv(
        self,
        t: int,
        node: Node,
        pkt: _Packet,
        outcome: str,
        direction: str,
        verdict: str = "FORWARDED",
        *,
        match_type: int = 2,
        policy: Policy | None = None,
    ) -> int:
        """A policy-verdict event (type 5); ``is_reply`` is false unless the verdict is a drop."""
        self.flow(
            t,
            node,
            pkt,
            outcome,
            verdict=verdict,
            event_type=(5, 0),
            direction=direction,
            match_type=match_type if verdict in ("FORWARDED", "REDIRECTED") else 0,
            drop_reason="POLICY_DENIED" if verdict == "DROPPED" else "",
            is_reply=None if verdict == "DROPPED" else False,
            policies=(policy,) if policy else (),
        )
        return t + self.hop()

    def trace(
        self,
        t: int,
        node: Node,
        pkt: _Packet,
        outcome: str,
        point: str,
        direction: str = "",
        *,
        reason: str = "",
        interface: Mapping[str, Any] | None = None,
    ) -> int:
        """A trace event (type 4) at an observation point; no reason means Hubble cannot tell replies."""
        self.flow(
            t,
            node,
            pkt,
            outcome,
            verdict="FORWARDED",
            event_type=(4, _TRACE_SUBTYPE[point]),
            direction=direction,
            point=point,
            trace_reason=reason,
            is_reply=(reason == "REPLY") if reason else None,
            interface=interface,
        )
        return t + self.hop()

    def drop(self, t: int, node: Node, pkt: _Packet, outcome: str) -> int:
        """A policy drop notification (type 1, sub-type 133) at the destination's ingress."""
        self.flow(
            t,
            node,
            pkt,
            outcome,
            verdict="DROPPED",
            event_type=(1, 133),
            direction="INGRESS",
            drop_reason="POLICY_DENIED",
        )
        return t + self.hop()

    # -- connections ------------------------------------------------------------------------------
    def connection(self, t: int, conn: Conn) -> None:
        """All events of one connection attempt starting at ``t``, and its ground truth."""
        sport = self.sport(conn.src.ip)
        flags = ("SYN",) if conn.protocol == "TCP" else ()
        syn = _Packet(conn.src, conn.dst, sport, conn.dport, conn.protocol, flags)
        if conn.dst.node is None:
            self._to_outside(t, conn, syn)
        elif conn.delivered:
            self._delivered(t, conn, syn)
        else:
            self._dropped(t, conn, syn)

    @staticmethod
    def _out(conn: Conn, outcome: str) -> str:
        return outcome if conn.in_scope else "out_of_scope"

    def _egress_side(self, t: int, conn: Conn, pkt: _Packet, *, first: bool) -> int:
        """Source-node events of an original-direction packet towards a pod; returns the time after them.

        Egress-side FORWARDED/REDIRECTED towards a pod proves nothing (provisional); AUDIT is final.
        """
        src, node = conn.src, conn.src.node
        if node is None or not src.pod_name:  # the host (kubelet): no endpoint program, no egress event
            return t
        maybe = self._out(conn, "provisional")
        reason = "NEW" if first else "ESTABLISHED"
        if first and conn.egress_policy is not None:
            if conn.egress_audit:
                t = self.pv(t, node, pkt, self._out(conn, "judged"), "EGRESS", "AUDIT")
            else:
                verdict = "REDIRECTED" if conn.dns_query else "FORWARDED"
                t = self.pv(t, node, pkt, maybe, "EGRESS", verdict, policy=conn.egress_policy)
        if conn.dns_query and first:
            t = self.trace(t, node, pkt, maybe, "TO_PROXY", "EGRESS", reason=reason)
            t += self.rng.randrange(120 * US, 400 * US)
            query = conn.dns_query
            l7 = {"type": "REQUEST", "dns": {"query": query, "observation_source": "proxy", "qtypes": ["A"]}}
            self.flow(
                t,
                node,
                pkt,
                self._out(conn, "ignored"),
                verdict="FORWARDED",
                event_type=(129, 0),
                direction="EGRESS",
                is_reply=False,
                l7=l7,
                summary=f"DNS Query {query} A",
            )
            t += self.hop()
        if conn.dst.node is not node:
            t = self.trace(t, node, pkt, maybe, "TO_OVERLAY", "EGRESS", reason=reason, interface=VXLAN)
            t += self.wire()
        return t

    def _overlay_in(self, t: int, conn: Conn, pkt: _Packet) -> int:
        """The overlay hop at the destination node (no direction, no is_reply: ignored)."""
        dst_node = conn.dst.node
        assert dst_node is not None
        if conn.src.node is dst_node or not conn.src.pod_name:
            return t
        return self.trace(t, dst_node, pkt, self._out(conn, "ignored"), "FROM_OVERLAY", interface=VXLAN)

    def _reply(self, t: int, conn: Conn, pkt: _Packet) -> int:
        """A reply packet from the destination back to the source (``is_reply: true`` everywhere)."""
        src, src_node, dst_node = conn.src, conn.src.node, conn.dst.node
        assert dst_node is not None
        out = self._out(conn, "reply")
        if not src.pod_name:  # back to the host (kubelet probe)
            return self.trace(t, dst_node, pkt, out, "TO_STACK", "INGRESS", reason="REPLY")
        if src_node is not dst_node:
            t = self.trace(t, dst_node, pkt, out, "TO_OVERLAY", "INGRESS", reason="REPLY", interface=VXLAN)
            t += self.wire()
        assert src_node is not None
        return self.trace(
            t,
            src_node,
            pkt,
            out,
            "TO_ENDPOINT",
            "EGRESS",
            reason="REPLY",
            interface={"index": src.ifindex, "name": src.lxc},
        )

    def _deliver(self, t: int, conn: Conn, pkt: _Packet, *, first: bool) -> int:
        """Ingress-side evidence at the destination pod for an original-direction packet (final)."""
        dst, dst_node = conn.dst, conn.dst.node
        assert dst_node is not None
        judged = self._out(conn, "judged")
        if first and conn.ingress_policy is not None:
            # The host is allowed by Cilium's allow-localhost (an L3-only match), not by the NetworkPolicy.
            if conn.src.identity == 1:
                t = self.pv(t, dst_node, pkt, judged, "INGRESS", match_type=1)
            else:
                t = self.pv(t, dst_node, pkt, judged, "INGRESS", policy=conn.ingress_policy)
        return self.trace(
            t,
            dst_node,
            pkt,
            judged,
            "TO_ENDPOINT",
            "INGRESS",
            reason="NEW" if first else "ESTABLISHED",
            interface={"index": dst.ifindex, "name": dst.lxc},
        )

    def _delivered(self, t: int, conn: Conn, syn: _Packet) -> None:
        rtt = self.rng.randrange(200 * US, 2 * MS)
        t = self._egress_side(t, conn, syn, first=True)
        t = self._overlay_in(t, conn, syn)
        t = self._deliver(t, conn, syn, first=True)
        if conn.protocol == "TCP":
            t = self._reply(t + rtt, conn, syn.answer(("SYN", "ACK")))
            if conn.detail >= 1:
                for flags in (("ACK",), ("ACK", "PSH")):
                    pkt = syn.again(flags)
                    t = self._egress_side(t + self.hop(), conn, pkt, first=False)
                    t = self._overlay_in(t, conn, pkt)
                    t = self._deliver(t, conn, pkt, first=False)
                t = self._reply(t + rtt, conn, syn.answer(("ACK", "PSH")))
            if conn.detail >= 2:
                close = syn.again(("ACK", "FIN"))
                t = self._egress_side(t + self.rng.randrange(5 * MS, 80 * MS), conn, close, first=False)
                t = self._overlay_in(t, conn, close)
                t = self._deliver(t, conn, close, first=False)
                self._reply(t + rtt, conn, syn.answer(("ACK", "FIN")))
        elif conn.dns_query:
            self._reply(t + rtt, conn, syn.answer(()))
        if conn.in_scope:
            if conn.egress_audit:
                self.expect(conn, False, "AUDIT")
            self.expect(conn, True, "FORWARDED")

    def _dropped(self, t: int, conn: Conn, syn: _Packet) -> None:
        """Ingress policy drop at the destination, with SYN retransmits 1 s and 3 s later."""
        dst_node = conn.dst.node
        assert dst_node is not None
        judged = self._out(conn, "judged")
        for n, delay in enumerate((0, 1 * NS, 3 * NS)):
            when = t + delay + (self.rng.randrange(0, 3 * MS) if delay else 0)
            when = self._egress_side(when, conn, syn, first=n == 0)
            when = self._overlay_in(when, conn, syn)
            if conn.ingress_policy is not None:
                when = self.pv(when, dst_node, syn, judged, "INGRESS", "DROPPED")
            self.drop(when, dst_node, syn, judged)
        if conn.in_scope:
            self.expect(conn, False, "DROPPED", "POLICY_DENIED")

    def _to_outside(self, t: int, conn: Conn, syn: _Packet) -> None:
        """Egress to a peer outside Cilium's endpoints (world, kube-apiserver): egress evidence is final."""
        src, node = conn.src, conn.src.node
        assert node is not None
        judged, reply = self._out(conn, "judged"), self._out(conn, "reply")
        iface = {"index": src.ifindex, "name": src.lxc}
        if conn.egress_policy is not None:
            t = self.pv(t, node, syn, judged, "EGRESS", policy=conn.egress_policy)
        t = self.trace(t, node, syn, judged, "TO_STACK", "EGRESS", reason="NEW")
        rtt = self.rng.randrange(8 * MS, 40 * MS)

        def answered(when: int, flags: tuple[str, ...]) -> int:
            """The peer's answer, delivered back to the source pod."""
            answer = syn.answer(flags)
            return self.trace(
                when, node, answer, reply, "TO_ENDPOINT", "EGRESS", reason="REPLY", interface=iface
            )

        t = answered(t + rtt, ("SYN", "ACK"))
        if conn.detail >= 1:
            for flags in (("ACK",), ("ACK", "PSH")):
                t = self.trace(t, node, syn.again(flags), judged, "TO_STACK", "EGRESS", reason="ESTABLISHED")
            answered(t + rtt, ("ACK", "PSH"))
        if conn.in_scope:
            self.expect(conn, True, "FORWARDED")

    def icmp_health(self, t: int, src_node: Node, health: Peer) -> None:
        """Cilium's node-to-node health probe (out of scope: neither end is in a namespace)."""
        assert health.node is not None
        pkt = _Packet(Cluster.remote_node(src_node), health, 0, 0, "ICMPv4", icmp_type=8)
        self.trace(
            t,
            health.node,
            pkt,
            "out_of_scope",
            "TO_ENDPOINT",
            "INGRESS",
            reason="NEW",
            interface={"index": health.ifindex, "name": health.lxc},
        )

    # -- result -----------------------------------------------------------------------------------
    def scenario(self) -> Scenario:
        self.records.sort(key=lambda r: (r[0], r[1]))
        edges = [
            ExpectedEdge(
                src,
                dst,
                port,
                proto,
                cls,
                tally.connections,
                dict(sorted(tally.verdicts.items())),
                dict(sorted(tally.drop_reasons.items())),
                rule_for(src, dst, port, proto) if cls.startswith("expected_") else None,
            )
            for (src, dst, port, proto, cls), tally in sorted(self.edges.items(), key=lambda kv: kv[0])
        ]
        unused = [number for number, *_ in RULES if number not in self.rules_seen]
        return Scenario([r[2] for r in self.records], [r[3] for r in self.records], edges, unused)
