"""The synthetic stream for benchmarks: many pods, realistic event mix, precomputed templates.

Part of :mod:`auditor.scenario`; its docstring gives the stage, the modelling choices and the error
policy.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Final

from auditor.scenario.cluster import (
    COREDNS_LABELS,
    PG_LABELS,
    airflow_labels,
    cilium_labels,
    crc32_of,
    identity_of,
    mac_address,
    make_node,
    prometheus_labels,
    traefik_labels,
)
from auditor.scenario.flows import VXLAN
from auditor.scenario.model import CLUSTER, DEFAULT_START, Event, TimeFormatter, to_ns

# ------------------------------------------------------------------------------------------------
# Synthetic stream for benchmarks
# ------------------------------------------------------------------------------------------------

_SYNTH_COMPONENTS: Final = (  # (component, weight of pods, kind)
    ("worker", 40, "StatefulSet"),
    ("webserver", 12, "Deployment"),
    ("scheduler", 10, "Deployment"),
    ("triggerer", 6, "StatefulSet"),
    ("statsd", 4, "Deployment"),
    ("redis", 6, "StatefulSet"),
    ("postgresql", 8, "StatefulSet"),
    ("prometheus", 4, "StatefulSet"),
    ("traefik", 4, "Deployment"),
    ("kube-dns", 4, "Deployment"),
    ("debug", 2, ""),
)

# (source component, destination component, port, protocol, pattern, weight)
_SYNTH_PAIRS: Final = (
    ("webserver", "postgresql", 5432, "TCP", "tcp", 10),
    ("scheduler", "postgresql", 5432, "TCP", "tcp", 12),
    ("worker", "postgresql", 5432, "TCP", "tcp", 14),
    ("triggerer", "postgresql", 5432, "TCP", "audit", 2),
    ("scheduler", "redis", 6379, "TCP", "tcp", 8),
    ("worker", "redis", 6379, "TCP", "tcp", 10),
    ("scheduler", "worker", 8793, "TCP", "tcp", 4),
    ("traefik", "webserver", 8080, "TCP", "tcp", 8),
    ("prometheus", "webserver", 8080, "TCP", "tcp", 3),
    ("prometheus", "postgresql", 9187, "TCP", "drop", 3),
    ("prometheus", "redis", 9121, "TCP", "drop", 2),
    ("worker", "statsd", 9125, "UDP", "udp", 8),
    ("worker", "kube-dns", 53, "UDP", "dns", 8),
    ("worker", "world", 443, "TCP", "world", 5),
    ("debug", "redis", 6379, "TCP", "tcp", 1),
    ("debug", "postgresql", 5432, "TCP", "drop", 1),
)


def _synth_labels(component: str) -> tuple[str, str, tuple[str, ...]]:
    """(namespace, service account, labels) of a synthetic component's pods."""
    if component == "postgresql":
        return "airflow", "airflow-postgresql", PG_LABELS
    if component == "prometheus":
        return "monitoring", "kube-prometheus-stack-prometheus", prometheus_labels(False)
    if component == "traefik":
        return "kube-system", "traefik", traefik_labels("traefik", "traefik-27.0.2")
    if component == "kube-dns":
        return "kube-system", "coredns", COREDNS_LABELS
    if component == "debug":
        return "default", "default", cilium_labels("default", "default", {"run": "debug-shell"})
    return "airflow", f"airflow-{component}", airflow_labels(component)


class _SynthPod:
    __slots__ = ("iface", "ip", "local", "mac", "node", "remote")

    def __init__(
        self,
        ip: str,
        mac: str,
        node: int,
        remote: dict[str, Any],
        local: dict[str, Any],
        iface: dict[str, Any],
    ) -> None:
        self.ip = ip
        self.mac = mac
        self.node = node
        self.remote = remote  # Endpoint as seen from another node (no ID)
        self.local = local  # Endpoint as seen from its own node
        self.iface = iface


def _synth_pods(distinct_pods: int, n_nodes: int, rng: random.Random) -> dict[str, list[_SynthPod]]:
    total_weight = sum(w for _, w, _ in _SYNTH_COMPONENTS)
    pods: dict[str, list[_SynthPod]] = {}
    index = 0
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    for component, weight, kind in _SYNTH_COMPONENTS:
        count = max(1, distinct_pods * weight // total_weight)
        namespace, _sa, labels = _synth_labels(component)
        identity = identity_of(labels)
        workload_name = {
            "kube-dns": "coredns",
            "traefik": "traefik",
            "debug": "debug-shell",
            "prometheus": "prometheus-kube-prometheus-stack-prometheus",
        }.get(component, f"airflow-{component}")
        hash_part = format(crc32_of(component), "x")[:9]
        members: list[_SynthPod] = []
        for i in range(count):
            if kind == "StatefulSet":
                name = f"{workload_name}-{i}"
            else:
                suffix = "".join(rng.choice(alphabet) for _ in range(5))
                name = f"{workload_name}-{hash_part}-{suffix}" if kind else f"{workload_name}-{suffix}"
            node = index % n_nodes
            ip = f"10.{244 + (index >> 16)}.{(index >> 8) & 0xFF}.{index & 0xFF}"
            index += 1
            ep: dict[str, Any] = {
                "identity": identity,
                "cluster_name": CLUSTER,
                "namespace": namespace,
                "labels": list(labels),
                "pod_name": name,
            }
            if kind:
                ep["workloads"] = [{"name": workload_name, "kind": kind}]
            local = {"ID": 100 + (crc32_of(name) % 3900), **ep}
            lxc = {"index": 10 + index % 200, "name": "lxc" + format(crc32_of(name), "08x") + "abcd"}
            members.append(_SynthPod(ip, mac_address(name), node, ep, local, lxc))
        pods[component] = members
    return pods


def synthetic_events(
    n: int, *, distinct_pods: int = 1000, seed: int = 1, start: datetime = DEFAULT_START
) -> Iterator[Event]:
    """``n`` realistic Hubble jsonpb records for benchmarks (deterministic for given arguments).

    Airflow components with ``distinct_pods`` pods (names, IPs, endpoint IDs, MACs) spread over
    ``max(2, distinct_pods // 30)`` nodes; every connection gets a fresh source port and is emitted as the
    events Cilium would produce for it (policy verdicts both ways, traces to-overlay / from-overlay /
    to-endpoint / to-stack, replies, policy drops with retransmits, DNS proxy records, audit verdicts).
    Events are ~2 KB when serialized. Nested objects (endpoints, label lists, node labels) are shared
    between events: treat the yielded dicts as read-only.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if distinct_pods < 1:
        raise ValueError(f"distinct_pods must be >= 1, got {distinct_pods}")
    rng = random.Random(seed)
    n_nodes = max(2, distinct_pods // 30)
    node_names = ["kind-worker" if i == 0 else f"kind-worker{i + 1}" for i in range(n_nodes)]
    node_labels = [list(make_node(name, "", "").labels) for name in node_names]
    pairs, cum = _synth_pairs(_synth_pods(distinct_pods, n_nodes, rng))
    fmt = TimeFormatter()
    ns = to_ns(start)
    randrange, getrandbits = rng.randrange, rng.getrandbits

    produced = 0
    while produced < n:
        conn = _synth_connection(pairs, cum, n_nodes, rng)
        for spec in _SYNTH_PATTERNS[conn.pattern]:
            if produced >= n:
                return
            ns += 3_000 + randrange(40_000)  # ~45k events per second of flow time
            node = conn.src_node if spec[0] == "s" else conn.dst_node
            f = _synth_flow(spec, conn, node, fmt(ns), _fast_uuid(getrandbits(128)))
            f["node_name"] = node_names[node]
            f["node_labels"] = node_labels[node]
            _put_annotations(f, spec, conn)
            produced += 1
            yield {"flow": f, "node_name": node_names[node], "time": f["time"]}


# A pair of :data:`_SYNTH_PAIRS` over the pods: (source pods, destination pods or None for the world,
# port, protocol, pattern).
_Pair = tuple[list[_SynthPod], list[_SynthPod] | None, int, str, str]


def _synth_pairs(pods: Mapping[str, list[_SynthPod]]) -> tuple[list[_Pair], list[int]]:
    """The pairs of :data:`_SYNTH_PAIRS` over ``pods``, and their cumulative weights (for bisection)."""
    pairs = [(pods[s], pods.get(d), port, proto, pattern) for s, d, port, proto, pattern, _ in _SYNTH_PAIRS]
    return pairs, list(itertools.accumulate(w for *_, w in _SYNTH_PAIRS))


class _SynthConn:
    """One synthetic connection: its ends, ports and pattern, and the nodes its events are seen on."""

    __slots__ = ("dport", "dst", "dst_node", "pattern", "proto", "sport", "src", "src_node")

    def __init__(
        self,
        src: _SynthPod,
        dst: _SynthPod | None,  # None: the world
        dport: int,
        proto: str,
        pattern: str,
        sport: int,
        src_node: int,
        dst_node: int,
    ) -> None:
        self.src, self.dst, self.dport, self.proto, self.pattern = src, dst, dport, proto, pattern
        self.sport, self.src_node, self.dst_node = sport, src_node, dst_node


def _synth_connection(pairs: list[_Pair], cum: list[int], n_nodes: int, rng: random.Random) -> _SynthConn:
    """A connection of a pair drawn by weight, between pods drawn from its pools, on a fresh source port."""
    src_pool, dst_pool, dport, proto, pattern = pairs[bisect.bisect_right(cum, rng.randrange(cum[-1]))]
    src = rng.choice(src_pool)
    dst = rng.choice(dst_pool) if dst_pool is not None else None
    sport = rng.randrange(32_768, 61_000)
    src_node = src.node
    dst_node = dst.node if dst is not None else src_node
    if dst_node == src_node and dst is not None and n_nodes > 1:
        dst_node = (src_node + 1) % n_nodes  # keep most connections cross-node, as in real clusters
    return _SynthConn(src, dst, dport, proto, pattern, sport, src_node, dst_node)


def _synth_flow(spec: _Spec, c: _SynthConn, node: int, time: str, uuid: str) -> dict[str, Any]:
    """The addressing part of one event of ``c`` seen on ``node``: verdict, Ethernet, IP, L4, endpoints, type.

    Endpoints are seen as the event's node sees them (with an endpoint ID on their own node only); a reply
    swaps the ends. Key order is that of Hubble's jsonpb.
    """
    kind = spec[1]
    reply = kind.startswith("r")
    src, dst, proto = c.src, c.dst, c.proto
    f: dict[str, Any] = {"time": time, "uuid": uuid, "verdict": spec[2]}
    if spec[2] == "DROPPED":
        f["drop_reason"] = 133
    if dst is None:
        dst_ep: dict[str, Any] = _WORLD_EP
        dst_ip, dst_mac = _WORLD_IP, _WORLD_MAC
    else:
        dst_ep = dst.local if node == c.dst_node else dst.remote
        dst_ip, dst_mac = dst.ip, dst.mac
    src_ep = src.local if node == c.src_node else src.remote
    if kind != "l7":
        f["ethernet"] = (
            {"source": dst_mac, "destination": src.mac}
            if reply
            else {"source": src.mac, "destination": dst_mac}
        )
    if reply:
        f["IP"] = {"source": dst_ip, "destination": src.ip, "ipVersion": "IPv4"}
        f["l4"] = (
            {"TCP": {"source_port": c.dport, "destination_port": c.sport, "flags": spec[3]}}
            if proto == "TCP"
            else {"UDP": {"source_port": c.dport, "destination_port": c.sport}}
        )
        f["source"], f["destination"] = dst_ep, src_ep
    else:
        f["IP"] = {"source": src.ip, "destination": dst_ip, "ipVersion": "IPv4"}
        f["l4"] = (
            {"TCP": {"source_port": c.sport, "destination_port": c.dport, "flags": spec[3]}}
            if proto == "TCP"
            else {"UDP": {"source_port": c.sport, "destination_port": c.dport}}
        )
        f["source"], f["destination"] = src_ep, dst_ep
    f["Type"] = "L7" if kind == "l7" else "L3_L4"
    return f


def _put_annotations(f: dict[str, Any], spec: _Spec, c: _SynthConn) -> None:
    """Add what Cilium says about the event after its node: names, L7, event type, trace, interface."""
    kind = spec[1]
    reply = kind.startswith("r")
    if c.dst is None:
        f["destination_names"] = _WORLD_NAMES
    if kind == "l7":
        f["l7"] = _SYNTH_DNS_L7
    if reply:
        f["reply"] = True
    f["event_type"] = spec[4]
    if spec[5]:
        f["traffic_direction"] = spec[5]
    if spec[6]:
        f["policy_match_type"] = spec[6]
    if spec[7]:
        f["trace_observation_point"] = spec[7]
        if spec[8]:
            f["trace_reason"] = spec[8]
    if spec[2] == "DROPPED":
        f["drop_reason_desc"] = "POLICY_DENIED"
    if spec[9] is not None:
        f["is_reply"] = spec[9]
    if spec[10] == "lxc":
        f["interface"] = (c.src if reply or spec[0] == "s" else c.dst or c.src).iface
    elif spec[10]:
        f["interface"] = VXLAN
    f["Summary"] = spec[11] if c.proto == "TCP" or kind == "l7" else "UDP"


def _fast_uuid(bits: int) -> str:
    h = format((bits & ~(0xF << 76) & ~(0x3 << 62)) | (0x4 << 76) | (0x2 << 62), "032x")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_SYN: Final = {"SYN": True}
_SYNACK: Final = {"SYN": True, "ACK": True}
_ACKPSH: Final = {"PSH": True, "ACK": True}
_WORLD_EP: Final[dict[str, Any]] = {"identity": 2, "labels": ["reserved:world"]}
_WORLD_NAMES: Final = ["api.github.com"]
_WORLD_IP: Final = "140.82.112.3"
_WORLD_MAC: Final = "02:42:ac:12:00:01"
_SYNTH_DNS_L7: Final = {
    "type": "REQUEST",
    "dns": {
        "query": "airflow-postgresql.airflow.svc.cluster.local.",
        "observation_source": "proxy",
        "qtypes": ["A"],
    },
}

# Per pattern, the events of one connection: (node s/d, kind, verdict, TCP flags, event_type, direction,
# policy_match_type, observation point, trace reason, is_reply, interface, summary).
_Spec = tuple[str, str, str, Mapping[str, bool], Mapping[str, int], str, int, str, str, bool | None, str, str]
_PV: Final = {"type": 5}
_T_EP: Final = {"type": 4}
_T_STACK: Final = {"type": 4, "sub_type": 3}
_T_OVL: Final = {"type": 4, "sub_type": 4}
_T_FOVL: Final = {"type": 4, "sub_type": 9}
_T_PROXY: Final = {"type": 4, "sub_type": 1}
_DROP: Final = {"type": 1, "sub_type": 133}
_L7: Final = {"type": 129}
_S_SYN: Final = "TCP Flags: SYN"
_S_SA: Final = "TCP Flags: SYN, ACK"
_S_AP: Final = "TCP Flags: ACK, PSH"
_S_DNS: Final = "DNS Query airflow-postgresql.airflow.svc.cluster.local. A"
_SYNTH_PATTERNS: Final[dict[str, tuple[_Spec, ...]]] = {
    "tcp": (
        ("s", "pv", "FORWARDED", _SYN, _PV, "EGRESS", 2, "", "", False, "", _S_SYN),
        ("s", "t", "FORWARDED", _SYN, _T_OVL, "EGRESS", 0, "TO_OVERLAY", "NEW", False, "vxlan", _S_SYN),
        ("d", "t", "FORWARDED", _SYN, _T_FOVL, "", 0, "FROM_OVERLAY", "", None, "vxlan", _S_SYN),
        ("d", "pv", "FORWARDED", _SYN, _PV, "INGRESS", 2, "", "", False, "", _S_SYN),
        ("d", "t", "FORWARDED", _SYN, _T_EP, "INGRESS", 0, "TO_ENDPOINT", "NEW", False, "lxc", _S_SYN),
        ("d", "r", "FORWARDED", _SYNACK, _T_OVL, "INGRESS", 0, "TO_OVERLAY", "REPLY", True, "vxlan", _S_SA),
        ("s", "r", "FORWARDED", _SYNACK, _T_EP, "EGRESS", 0, "TO_ENDPOINT", "REPLY", True, "lxc", _S_SA),
        (
            "d",
            "t",
            "FORWARDED",
            _ACKPSH,
            _T_EP,
            "INGRESS",
            0,
            "TO_ENDPOINT",
            "ESTABLISHED",
            False,
            "lxc",
            _S_AP,
        ),
        ("s", "r", "FORWARDED", _ACKPSH, _T_EP, "EGRESS", 0, "TO_ENDPOINT", "REPLY", True, "lxc", _S_AP),
    ),
    "audit": (
        ("s", "pv", "AUDIT", _SYN, _PV, "EGRESS", 0, "", "", False, "", _S_SYN),
        ("s", "t", "FORWARDED", _SYN, _T_OVL, "EGRESS", 0, "TO_OVERLAY", "NEW", False, "vxlan", _S_SYN),
        ("d", "pv", "FORWARDED", _SYN, _PV, "INGRESS", 2, "", "", False, "", _S_SYN),
        ("d", "t", "FORWARDED", _SYN, _T_EP, "INGRESS", 0, "TO_ENDPOINT", "NEW", False, "lxc", _S_SYN),
        ("s", "r", "FORWARDED", _SYNACK, _T_EP, "EGRESS", 0, "TO_ENDPOINT", "REPLY", True, "lxc", _S_SA),
    ),
    "drop": (
        ("s", "t", "FORWARDED", _SYN, _T_OVL, "EGRESS", 0, "TO_OVERLAY", "NEW", False, "vxlan", _S_SYN),
        ("d", "t", "FORWARDED", _SYN, _T_FOVL, "", 0, "FROM_OVERLAY", "", None, "vxlan", _S_SYN),
        ("d", "pv", "DROPPED", _SYN, _PV, "INGRESS", 0, "", "", None, "", _S_SYN),
        ("d", "drop", "DROPPED", _SYN, _DROP, "INGRESS", 0, "", "", None, "", _S_SYN),
        ("d", "drop", "DROPPED", _SYN, _DROP, "INGRESS", 0, "", "", None, "", _S_SYN),
    ),
    "udp": (
        ("s", "pv", "FORWARDED", _SYN, _PV, "EGRESS", 2, "", "", False, "", "UDP"),
        ("s", "t", "FORWARDED", _SYN, _T_OVL, "EGRESS", 0, "TO_OVERLAY", "NEW", False, "vxlan", "UDP"),
        ("d", "pv", "FORWARDED", _SYN, _PV, "INGRESS", 2, "", "", False, "", "UDP"),
        ("d", "t", "FORWARDED", _SYN, _T_EP, "INGRESS", 0, "TO_ENDPOINT", "NEW", False, "lxc", "UDP"),
    ),
    "dns": (
        ("s", "pv", "REDIRECTED", _SYN, _PV, "EGRESS", 2, "", "", False, "", "UDP"),
        ("s", "t", "FORWARDED", _SYN, _T_PROXY, "EGRESS", 0, "TO_PROXY", "NEW", False, "", "UDP"),
        ("s", "l7", "FORWARDED", _SYN, _L7, "EGRESS", 0, "", "", False, "", _S_DNS),
        ("d", "t", "FORWARDED", _SYN, _T_EP, "INGRESS", 0, "TO_ENDPOINT", "NEW", False, "lxc", "UDP"),
        ("s", "r", "FORWARDED", _SYN, _T_EP, "EGRESS", 0, "TO_ENDPOINT", "REPLY", True, "lxc", "UDP"),
    ),
    "world": (
        ("s", "pv", "FORWARDED", _SYN, _PV, "EGRESS", 2, "", "", False, "", _S_SYN),
        ("s", "t", "FORWARDED", _SYN, _T_STACK, "EGRESS", 0, "TO_STACK", "NEW", False, "", _S_SYN),
        ("s", "r", "FORWARDED", _SYNACK, _T_EP, "EGRESS", 0, "TO_ENDPOINT", "REPLY", True, "lxc", _S_SA),
    ),
}
