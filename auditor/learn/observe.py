"""What ``matrix learn`` observes: a sink of the one pipeline that remembers peers and edges.

Stage: sink (learning). Input: the pipeline's judgements, made by the same :class:`~auditor.classify.Auditor`
as ``replay`` and ``run``, here with a matrix that has no components and no rules — so every final verdict
arrives as ``unexpected_allowed`` (delivered) or ``unexpected_dropped`` (dropped, ``AUDIT`` included), with
replies already placed on their original connection and provisional evidence already set aside.
Output: :class:`Observations` — peers (distinct endpoints as the matrix would see them) and, per
(source peer, destination peer, protocol, port):

* ``allowed``: connections delivered, or seen by an ``AUDIT`` verdict (audit mode is how Cilium users find
  out what a policy must allow) — the only evidence rules are learned from;
* ``dropped``: connections ``DROPPED``/``ERROR``, never a rule (listed for review);
* ``unproven``: connections seen only through provisional evidence (listed for review).

A connection counts once per edge even when it was both audited and delivered: the ``allowed`` table
deduplicates (5-tuple, edge) itself, across the two classes. So every edge with evidence has at least one
connection — also the edge of a reply that names its peer differently from the request (a world reply
without DNS names), which ``replay`` will judge on that edge too.

Peers are kept per Cilium identity (verified against labels, namespace and workloads, as the classifier
does), so the per-event cost is a few dict look-ups. World destinations are kept per DNS name set, or per
address when Hubble knows no name; world sources are the ``world`` entity (client addresses are many and
mean nothing).

Memory is bounded: at most :data:`MAX_PEERS` peers and :data:`MAX_EDGES` edges per table; what does not fit
is counted in ``Observations.overflow`` and said in the output. Error policy: never raises on a record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from auditor.classify import UNEXPECTED_ALLOWED, DedupTable, Judgement, Unproven
from auditor.learn.labels import stable
from auditor.matrix import endpoint_labels, most_specific_entity
from auditor.model import Endpoint, LostEvents, NodeStatus

MAX_PEERS: Final = 20_000
MAX_EDGES: Final = 100_000
MAX_VARIANTS: Final = 64  # distinct label sets remembered per pod group (for verification)
MAX_PODS: Final = 1_000  # distinct pod names counted per group
MAX_NAMES: Final = 8  # DNS names kept per world destination
_DNS_PART: Final = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")

POD: Final = "pod"
ENTITY: Final = "entity"
FQDN: Final = "fqdn"
CIDR: Final = "cidr"
UNKNOWN: Final = "unknown"

GroupKey = tuple[str, ...]


@dataclass
class Group:
    """What would become one component: the pods of a workload (or pods sharing their labels), an
    entity, a DNS name set or an address. ``stable`` are the pod labels every pod seen carries."""

    key: GroupKey
    kind: str
    namespace: str = ""
    workload: tuple[str, str] | None = None
    stable: dict[str, str] | None = None
    entity: str = ""
    pods: set[str] = field(default_factory=set)
    pods_overflow: bool = False


@dataclass
class Peer:
    """One distinct endpoint (the unit the matrix resolves), with the group it belongs to."""

    id: int
    group: Group
    endpoint: Endpoint
    ip: str
    names: tuple[str, ...]


@dataclass
class Tally:
    """Connections on an edge (or on one port of a learned rule): how many, how many of them with an
    ``AUDIT`` verdict, the flow time of the first and last, and one example (source, destination)."""

    connections: int = 0
    audited: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    example: tuple[str, str] | None = None

    def add(self, s: Tally) -> None:
        self.connections += s.connections
        self.audited += s.audited
        self.first = min(self.first, s.first)
        self.last = max(self.last, s.last)
        if self.example is None:
            self.example = s.example


@dataclass
class EdgeStats(Tally):
    reasons: dict[str, int] = field(default_factory=dict)

    def see(self, t: float) -> None:
        if t < self.first:
            self.first = t
        if t > self.last:
            self.last = t


EdgeKey = tuple[int, int, str, int | None]
"""(source peer id, destination peer id, protocol, port); port is None for ICMP."""


@dataclass
class Observations:
    peers: list[Peer] = field(default_factory=list)
    groups: dict[GroupKey, Group] = field(default_factory=dict)
    allowed: dict[EdgeKey, EdgeStats] = field(default_factory=dict)
    dropped: dict[EdgeKey, EdgeStats] = field(default_factory=dict)
    unproven: dict[EdgeKey, EdgeStats] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    lost_events: int = 0
    overflow: dict[str, int] = field(default_factory=lambda: {"peers": 0, "edges": 0})

    def time_range(self) -> tuple[float, float]:
        """Flow time of the first and last final evidence (``inf``, ``-inf`` when there was none)."""
        tables = (self.allowed, self.dropped, self.unproven)
        first = min((s.first for table in tables for s in table.values()), default=float("inf"))
        last = max((s.last for table in tables for s in table.values()), default=float("-inf"))
        return first, last


def entity_of(ep: Endpoint) -> str:
    """The most specific reserved entity an endpoint is, or ``""``."""
    _, entities = endpoint_labels(ep)
    return most_specific_entity(entities) or ""


def clean_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """DNS names a matrix can hold (lowercase, no trailing dot, valid labels), sorted, at most a few."""
    out = set()
    for raw in names:
        name = raw.rstrip(".").lower()
        if 0 < len(name) <= 253 and all(_DNS_PART.match(p) for p in name.split(".")):
            out.add(name)
    return tuple(sorted(out)[:MAX_NAMES])


class LearnSink:
    """Pipeline sink that fills :class:`Observations` (see the module docstring)."""

    def __init__(self, dedup_window: float = 30.0) -> None:
        self.obs = Observations()
        self._ids: dict[int, tuple[tuple[str, ...], str, tuple[object, ...], Peer]] = {}
        self._anon: dict[tuple[str, tuple[str, ...], tuple[object, ...]], Peer] = {}
        self._by_names: dict[tuple[str, ...], Peer] = {}
        self._by_ip: dict[str, Peer] = {}
        self._world_source: Peer | None = None
        self._overflow_peer: Peer | None = None
        self._seen = DedupTable(dedup_window)

    # -- Sink -------------------------------------------------------------------------------------
    def on_outcome(self, outcome: str) -> None:
        outcomes = self.obs.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def on_judgement(self, j: Judgement) -> None:
        obs = self.obs
        flow = j.flow
        if j.reply:
            obs.outcomes["reply"] = obs.outcomes.get("reply", 0) + 1
            src_ep, dst_ep, sip, dip = flow.destination, flow.source, flow.destination_ip, flow.source_ip
            names, sport = flow.source_names, flow.destination_port
        else:
            obs.outcomes["judged"] = obs.outcomes.get("judged", 0) + 1
            src_ep, dst_ep, sip, dip = flow.source, flow.destination, flow.source_ip, flow.destination_ip
            names, sport = flow.destination_names, flow.source_port
        _, _, port, protocol, cls = j.edge
        audit = j.verdict == "AUDIT"
        table = obs.allowed if cls == UNEXPECTED_ALLOWED or audit else obs.dropped
        src = self.peer(src_ep, sip, (), False)
        dst = self.peer(dst_ep, dip, names, True)
        key = (src.id, dst.id, protocol, port)
        stats = table.get(key)
        fresh = stats is None
        if stats is None:
            if len(table) >= MAX_EDGES:
                obs.overflow["edges"] += int(j.new_connection)
                return
            stats = table[key] = EdgeStats()
        t = flow.time
        if t < stats.first:
            stats.first = t
        if t > stats.last:
            stats.last = t
        if not (j.new_connection or fresh):
            return
        if table is obs.allowed:
            # One connection per edge: an audited-then-delivered connection counts once, and a reply that
            # names its peer differently (a world reply without DNS names) still counts on its own edge.
            if self._seen.seen(hash((sip, dip, sport, port, protocol, key)), t):
                return
            stats.audited += audit
        elif flow.drop_reason:
            stats.reasons[flow.drop_reason] = stats.reasons.get(flow.drop_reason, 0) + 1
        stats.connections += 1
        src_pod, dst_pod = src_ep.pod, dst_ep.pod
        if stats.example is None:
            stats.example = (src_pod or sip, dst_pod or dip)
        _add_pod(src.group, src_pod)
        _add_pod(dst.group, dst_pod)

    def on_unproven(self, connection: Unproven) -> None:
        f = connection.flow
        src = self.peer(f.source, f.source_ip, (), False)
        dst = self.peer(f.destination, f.destination_ip, f.destination_names, True)
        key = (src.id, dst.id, connection.protocol, connection.port)
        stats = self.obs.unproven.get(key)
        if stats is None:
            if len(self.obs.unproven) >= MAX_EDGES:
                self.obs.overflow["edges"] += 1
                return
            stats = self.obs.unproven[key] = EdgeStats()
        stats.see(f.time)
        stats.connections += 1
        if stats.example is None:
            stats.example = (f.source.pod or f.source_ip, f.destination.pod or f.destination_ip)

    def on_lost(self, record: LostEvents) -> None:
        self.obs.lost_events += record.num_events

    def on_node_status(self, record: NodeStatus) -> None:
        pass

    def on_invalid(self, where: str, reason: str) -> None:
        pass  # counted through on_outcome("invalid")

    # -- peers ------------------------------------------------------------------------------------
    def peer(self, ep: Endpoint, ip: str, names: tuple[str, ...], is_destination: bool) -> Peer:
        """The peer of one end of a connection (cached per identity)."""
        ident = ep.identity
        found: Peer | None
        if ident:
            cached = self._ids.get(ident)
            if (
                cached is not None
                and cached[0] == ep.labels
                and cached[1] == ep.namespace
                and cached[2] == ep.workloads
            ):
                found = cached[3]
            else:
                found = self._new_peer(ep, ip)
                if len(self._ids) >= MAX_PEERS:
                    self._ids.clear()
                self._ids[ident] = (ep.labels, ep.namespace, ep.workloads, found)
        else:
            anon_key = (ep.namespace, ep.labels, ep.workloads)
            found = self._anon.get(anon_key)
            if found is None:
                found = self._new_peer(ep, ip)
                if len(self._anon) >= MAX_PEERS:
                    self._anon.clear()
                self._anon[anon_key] = found
        if found.group.entity != "world":
            return found
        if not is_destination:
            return found  # the world entity: client addresses are many and mean nothing
        return self._world_destination(ep, ip, names, found)

    def _world_destination(self, ep: Endpoint, ip: str, names: tuple[str, ...], world: Peer) -> Peer:
        if names:
            peer = self._by_names.get(names)
            if peer is None:
                cleaned = clean_names(names)
                if not cleaned:
                    peer = self._address_peer(ep, ip, world)
                else:
                    peer = self._make(("fqdn", *cleaned), FQDN, ep, ip, cleaned, world)
                if len(self._by_names) < MAX_PEERS:
                    self._by_names[names] = peer
            return peer
        return self._address_peer(ep, ip, world)

    def _address_peer(self, ep: Endpoint, ip: str, world: Peer) -> Peer:
        peer = self._by_ip.get(ip)
        if peer is None:
            peer = self._make(("cidr", ip), CIDR, ep, ip, (), world)
            if len(self._by_ip) < MAX_PEERS:
                self._by_ip[ip] = peer
        return peer

    def _new_peer(self, ep: Endpoint, ip: str) -> Peer:
        entity = entity_of(ep)
        if entity and not (ep.namespace and ep.pod_name):
            return self._make(("entity", entity), ENTITY, ep, "", (), None, entity=entity)
        if not ep.namespace:
            return self._make(("unknown",), UNKNOWN, ep, ip, (), None)
        if ep.workloads:
            w = ep.workloads[0]
            key: GroupKey = ("pod", ep.namespace, w.kind, w.name)
        else:
            labels = stable(None, ep.labels)
            key = ("pod", ep.namespace, "", *sorted(f"{k}={v}" for k, v in labels.items()))
        return self._make(key, POD, ep, ip, (), None)

    def _make(
        self,
        key: GroupKey,
        kind: str,
        ep: Endpoint,
        ip: str,
        names: tuple[str, ...],
        fallback: Peer | None,
        entity: str = "",
    ) -> Peer:
        """A new peer in the group ``key`` (created if new); past :data:`MAX_PEERS`, ``fallback`` or a
        shared unknown peer stands for it (counted)."""
        obs = self.obs
        if len(obs.peers) >= MAX_PEERS:
            obs.overflow["peers"] += 1
            if fallback is not None:
                return fallback
            if self._overflow_peer is None:
                lost = Group(("unknown", "overflow"), UNKNOWN)
                self._overflow_peer = Peer(len(obs.peers), lost, ep, ip, ())
                obs.peers.append(self._overflow_peer)
            return self._overflow_peer
        group: Group | None = obs.groups.get(key)
        if group is None:
            group = obs.groups[key] = Group(key, kind, namespace=ep.namespace if kind == POD else "")
            group.entity = entity
            if kind == POD and ep.workloads:
                group.workload = (ep.workloads[0].kind, ep.workloads[0].name)
        if kind == POD:
            group.stable = stable(group.stable, ep.labels)
        peer = Peer(len(obs.peers), group, ep, ip, names)
        obs.peers.append(peer)
        return peer


def _add_pod(group: Group, pod: str) -> None:
    if pod and pod not in group.pods:
        if len(group.pods) < MAX_PODS:
            group.pods.add(pod)
        else:
            group.pods_overflow = True
