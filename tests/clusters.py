"""Generated clusters for ``matrix learn`` tests: many workloads, their traffic as Hubble records, and the
truth about it.

A cluster (fixed seed) has namespaces with workloads (Deployments whose pods differ by
``pod-template-hash`` and by a per-pod label, StatefulSets with ``statefulset.kubernetes.io/pod-name``,
DaemonSets, bare pods without a workload), the same workload names in several namespaces, world
destinations with DNS names (many under one domain) and without, kubelet probes (host) and the API server.
Traffic: every server workload listens on its own ports; clients connect from ephemeral ports. Each
connection is written as the events Cilium emits for it, in ``hubble observe -o jsonpb`` form: an egress
policy verdict at the source (provisional), then either ingress proof at the destination (policy verdict
and trace to the endpoint) and replies at both ends, or — "one end only" — the forwarded reply at the
source, sometimes SYN retransmits; drops (an attacker) and ``AUDIT`` verdicts are mixed in.

``Cluster.truth`` is the set of (source workload, destination workload, port, protocol) that were
delivered or audited — what learning must turn into rules — written by the generator, not by the
project's judging code.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from auditor.scenario import format_time

T0 = 1_795_000_000 * 1_000_000_000
Event = dict[str, Any]


def _identity(labels: tuple[str, ...]) -> int:
    return 256 + int(hashlib.sha256("|".join(labels).encode()).hexdigest()[:6], 16) % 60000


@dataclass
class Pod:
    namespace: str
    name: str
    ip: str
    labels: tuple[str, ...]
    workload: tuple[str, str] | None  # (kind, name)
    node: str
    owner: str  # the truth's name of its workload: "ns/name"

    def endpoint(self) -> dict[str, Any]:
        ep: dict[str, Any] = {
            "identity": _identity(self.labels),
            "cluster_name": "default",
            "namespace": self.namespace,
            "labels": list(self.labels),
            "pod_name": self.name,
        }
        if self.workload:
            ep["workloads"] = [{"name": self.workload[1], "kind": self.workload[0]}]
        return ep


@dataclass
class Peer:
    """A non-pod end: world (with or without names), host, kube-apiserver."""

    ip: str
    identity: int
    labels: tuple[str, ...]
    owner: str
    names: tuple[str, ...] = ()
    node: str = ""

    def endpoint(self) -> dict[str, Any]:
        return {"identity": self.identity, "labels": list(self.labels)}


End = Pod | Peer


@dataclass
class Cluster:
    events: list[Event] = field(default_factory=list)
    truth: set[tuple[str, str, int | None, str]] = field(default_factory=set)
    dropped: set[tuple[str, str, int | None, str]] = field(default_factory=set)
    workloads: dict[str, list[Pod]] = field(default_factory=dict)
    ports: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    ends: dict[str, Pod | Peer] = field(default_factory=dict)  # one end per truth name


def _labels(namespace: str, pod_labels: dict[str, str]) -> tuple[str, ...]:
    out = [f"k8s:{k}={v}" for k, v in pod_labels.items()]
    out += [
        f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={namespace}",
        "k8s:io.cilium.k8s.policy.cluster=default",
        f"k8s:io.cilium.k8s.policy.serviceaccount={namespace}-sa",
        f"k8s:io.kubernetes.pod.namespace={namespace}",
    ]
    return tuple(sorted(out))


_ROLES = ("api", "web", "db", "cache", "queue", "worker", "auth", "search", "metrics", "gateway")


def generate(seed: int, workloads: int = 200, connections: int = 3000) -> Cluster:
    """A cluster with about ``workloads`` workloads and ``connections`` connections (deterministic)."""
    rng = random.Random(seed)
    c = Cluster()
    namespaces = [f"team-{i}" for i in range(max(2, workloads // 25))]
    nodes = [f"node-{i}" for i in range(6)]
    ip_counter = [0]

    def next_ip() -> str:
        ip_counter[0] += 1
        n = ip_counter[0]
        return f"10.{100 + (n >> 16)}.{(n >> 8) & 0xFF}.{n & 0xFF}"

    for i in range(workloads):
        ns = namespaces[i % len(namespaces)]
        role = _ROLES[(i // len(namespaces)) % len(_ROLES)]
        # names repeat across namespaces on purpose (collisions need the namespace)
        name = (
            f"{role}-{(i // (len(namespaces) * len(_ROLES)))}" if i >= len(namespaces) * len(_ROLES) else role
        )
        kind = ("Deployment", "StatefulSet", "DaemonSet", "")[i % 4 if i % 7 else 0]
        owner = f"{ns}/{name}"
        base = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": ns}
        if i % 5 == 0:
            base["app.kubernetes.io/version"] = f"1.{i % 3}.0"
        pods = []
        for r in range(1 + rng.randrange(3)):
            labels = dict(base)
            if kind == "Deployment":
                labels["pod-template-hash"] = rng.choice(("7d9f8c6b5", "5c9d8b7f6"))
                labels["zone"] = rng.choice(("a", "b"))  # differs between pods: not stable
                pod_name = f"{name}-{labels['pod-template-hash']}-{rng.randrange(10**5):05d}"
            elif kind == "StatefulSet":
                labels["statefulset.kubernetes.io/pod-name"] = f"{name}-{r}"
                labels["controller-revision-hash"] = f"{name}-6b8f7d9c4"
                pod_name = f"{name}-{r}"
            elif kind == "DaemonSet":
                labels["pod-template-generation"] = str(1 + r % 2)
                pod_name = f"{name}-{rng.randrange(10**5):05d}"
            else:
                pod_name = f"{name}-{r}"
            workload = (kind, name) if kind else None
            pods.append(Pod(ns, pod_name, next_ip(), _labels(ns, labels), workload, rng.choice(nodes), owner))
        c.workloads[owner] = pods
        c.ports[owner] = [(8000 + i % 50, "TCP")] + ([(9100 + i % 7, "UDP")] if i % 6 == 0 else [])

    world = [
        Peer("140.82.112.3", 2, ("reserved:world",), "world:api.github.com", ("api.github.com",)),
        *(
            Peer(
                f"52.94.{k}.{k + 10}",
                2,
                ("reserved:world",),
                f"world:s{k}.example.com",
                (f"s{k}.example.com",),
            )
            for k in range(5)
        ),
        Peer("198.51.100.7", 2, ("reserved:world",), "world:198.51.100.7"),
        Peer("203.0.113.9", 16777217, ("cidr:203.0.113.9/32", "reserved:world"), "world:203.0.113.9"),
    ]
    apiserver = Peer("172.18.0.2", 7, ("reserved:kube-apiserver", "reserved:remote-node"), "kube-apiserver")
    attacker = Pod(
        namespaces[0],
        "attacker-x1",
        next_ip(),
        _labels(namespaces[0], {"run": "attacker"}),
        None,
        nodes[0],
        f"{namespaces[0]}/attacker",
    )
    owners = sorted(c.workloads)
    t = T0
    for n in range(connections):
        t += rng.randrange(1_000_000, 300_000_000)
        src_owner = rng.choice(owners)
        src = rng.choice(c.workloads[src_owner])
        roll = rng.random()
        dst: End
        if roll < 0.08:
            dst = rng.choice(world)
            port, proto = 443, "TCP"
        elif roll < 0.1:
            dst, port, proto = apiserver, 6443, "TCP"
        else:
            dst_owner = rng.choice(owners)
            dst = rng.choice(c.workloads[dst_owner])
            port, proto = rng.choice(c.ports[dst_owner])
        sport = rng.randrange(32768, 61000)
        mode = rng.choice(("both", "both", "both", "source-only", "retransmit", "audit"))
        _connection(c, t, src, dst, port, proto, sport, mode, rng)
        if n % 10 == 0:  # kubelet probes
            probe = rng.choice(owners)
            target = rng.choice(c.workloads[probe])
            host = Peer("10.0.0.1", 1, ("reserved:host",), "host", node=target.node)
            _connection(
                c,
                t + 1000,
                host,
                target,
                c.ports[probe][0][0],
                "TCP",
                rng.randrange(32768, 61000),
                "ingress",
                rng,
            )
        if n % 97 == 0:  # the attacker is dropped at the destination
            victim = rng.choice(owners)
            target = rng.choice(c.workloads[victim])
            port = c.ports[victim][0][0]
            for retry in range(2):
                _dropped(c, t + 2000 + retry * 1_000_000_000, attacker, target, port, 50000 + n % 1000)
    c.events.sort(key=lambda e: e["flow"]["time"])
    return c


def _flow(
    t: int,
    node: str,
    src: End,
    dst: End,
    sip: str,
    dip: str,
    sport: int,
    dport: int,
    proto: str,
    flags: dict[str, bool],
    *,
    verdict: str,
    event: dict[str, int],
    direction: str,
    reply: bool,
    point: str = "",
    names: tuple[str, ...] = (),
) -> Event:
    l4key = "TCP" if proto == "TCP" else "UDP"
    l4: dict[str, Any] = {"source_port": sport, "destination_port": dport}
    if proto == "TCP":
        l4["flags"] = flags
    f: dict[str, Any] = {
        "time": format_time(t),
        "verdict": verdict,
        "IP": {"source": sip, "destination": dip, "ipVersion": "IPv4"},
        "l4": {l4key: l4},
        "source": src.endpoint(),
        "destination": dst.endpoint(),
        "Type": "L3_L4",
        "node_name": node,
    }
    if names:
        f["destination_names"] = list(names)
    f["event_type"] = event
    if direction:
        f["traffic_direction"] = direction
    if point:
        f["trace_observation_point"] = point
    if verdict == "DROPPED":
        f["drop_reason_desc"] = "POLICY_DENIED"
    f["is_reply"] = reply
    return {"flow": f, "node_name": node, "time": f["time"]}


_PV = {"type": 5}
_TRACE = {"type": 4}
_SYN = {"SYN": True}
_SYNACK = {"SYN": True, "ACK": True}


def _connection(
    c: Cluster, t: int, src: End, dst: End, port: int, proto: str, sport: int, mode: str, rng: random.Random
) -> None:
    """One delivered (or audited) connection as the events of its ``mode``."""
    names = dst.names if isinstance(dst, Peer) else ()
    snode = src.node or "node-0"
    dnode = dst.node or snode
    ev = c.events
    external = isinstance(dst, Peer)
    args = (src, dst, src.ip, dst.ip, sport, port, proto)
    rargs = (dst, src, dst.ip, src.ip, port, sport, proto)
    if mode != "ingress":
        verdict = "AUDIT" if mode == "audit" else "FORWARDED"
        ev.append(
            _flow(
                t,
                snode,
                *args,
                _SYN,
                verdict=verdict,
                event=_PV,
                direction="EGRESS",
                reply=False,
                names=names,
            )
        )
    if mode == "retransmit":
        for k in (1, 2):
            ev.append(
                _flow(
                    t + k * 1_000_000_000,
                    snode,
                    *args,
                    _SYN,
                    verdict="FORWARDED",
                    event=_PV,
                    direction="EGRESS",
                    reply=False,
                    names=names,
                )
            )
    if mode in ("both", "ingress", "audit", "retransmit") and not external:
        ev.append(
            _flow(
                t + 200_000,
                dnode,
                *args,
                _SYN,
                verdict="FORWARDED",
                event=_PV,
                direction="INGRESS",
                reply=False,
            )
        )
        ev.append(
            _flow(
                t + 250_000,
                dnode,
                *args,
                _SYN,
                verdict="FORWARDED",
                event=_TRACE,
                direction="INGRESS",
                reply=False,
                point="TO_ENDPOINT",
            )
        )
        ev.append(
            _flow(
                t + 300_000,
                dnode,
                *rargs,
                _SYNACK,
                verdict="FORWARDED",
                event=_TRACE,
                direction="INGRESS",
                reply=True,
                point="TO_OVERLAY",
            )
        )
    # the forwarded reply at the source: proves delivery even when the destination's node is not seen
    if proto == "TCP":
        ev.append(
            _flow(
                t + 400_000,
                snode,
                *rargs,
                _SYNACK,
                verdict="FORWARDED",
                event=_TRACE,
                direction="EGRESS",
                reply=True,
                point="TO_ENDPOINT",
            )
        )
    elif mode == "source-only" and not external:
        return  # a UDP request seen only at its source, unanswered: provisional, never a rule
    c.truth.add((src.owner, dst.owner, port, proto))
    c.ends.setdefault(src.owner, src)
    c.ends.setdefault(dst.owner, dst)


def _dropped(c: Cluster, t: int, src: Pod, dst: Pod, port: int, sport: int) -> None:
    args = (src, dst, src.ip, dst.ip, sport, port, "TCP")
    c.events.append(
        _flow(t, src.node, *args, _SYN, verdict="FORWARDED", event=_PV, direction="EGRESS", reply=False)
    )
    c.events.append(
        _flow(
            t + 200_000,
            dst.node,
            *args,
            _SYN,
            verdict="DROPPED",
            event={"type": 1, "sub_type": 133},
            direction="INGRESS",
            reply=False,
        )
    )
    c.dropped.add((src.owner, dst.owner, port, "TCP"))
    c.ends.setdefault(src.owner, src)
