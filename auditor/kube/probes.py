"""Synthetic endpoints (probes) standing for a matrix's components, and what the matrix expects between them.

Stage: offline tooling (``flow-auditor policies diff`` and the generation notes of ``policies generate``);
pure functions of a compiled :class:`~auditor.matrix.Matrix`.

- :func:`probes`: for every pod component one pod per namespace it names (or a namespace of its own),
  labelled to satisfy its selector; every pod carries *its namespace's* labels (the union of what the
  components living there require), so a policy admitting a labelled namespace also meets that
  namespace's other pods; an unlabelled pod in every namespace a probe lives in; a pod in a namespace
  outside the matrix; an address inside each CIDR and the first address of each ``except``; world
  addresses (IPv4 and IPv6 documentation ranges); each FQDN (a wildcard as a name one and two labels
  deep), known by name only; the node (``host``) and Cilium's other reserved identities.
- Every probe is named by :meth:`Matrix.resolve`, so a probe that the matrix names differently than the
  component it was built for (overlapping selectors) is judged as the matrix would judge it.
- :func:`expected_ports`: what the matrix allows from one name to another, as a port set.
- Probes that stand for no component but for the rest of a namespace, a foreign namespace or the IPv6
  world carry a ``noise`` label; reports summarise their differences apart.

Error policy: none (a matrix that loaded is valid); a selector that no pod can satisfy yields no probe.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from auditor.kube.model import (
    ALL,
    NAMESPACE_NAME_LABEL,
    External,
    Node,
    Pod,
    PortSet,
    Reserved,
    Subject,
)
from auditor.matrix import Component, LabelRequirement, Matrix, Network, Rule, Selector
from auditor.model import ICMP_PROTOCOLS, Endpoint, Workload

PROBE_LABEL: Final = "flow-auditor.io/probe"
PROBE_NAMESPACE: Final = "flow-auditor-probe"
WORLD_PROBES: Final = ("203.0.113.10", "2001:db8::10")  # documentation ranges (RFC 5737, RFC 3849)
_WORLD_ENDPOINT: Final = Endpoint(identity=2, labels=("reserved:world",))
_HOST_ENDPOINT: Final = Endpoint(identity=1, labels=("reserved:host",))
_RESERVED_IDS: Final = {
    "remote-node": 6,
    "kube-apiserver": 7,
    "health": 4,
    "ingress": 8,
    "init": 5,
    "unmanaged": 3,
}


@dataclass(frozen=True, slots=True)
class Probe:
    """A synthetic endpoint: what the matrix calls it (``name``), what it was built for, the subject, and
    (for probes standing for no component) what kind of noise it is."""

    name: str
    origin: str
    subject: Subject
    noise: str | None = None


def address_kind(sel: Selector) -> str | None:
    """How a component is selected when it is not a pod selector: ``cidrs``, ``fqdns`` or ``entities``."""
    if sel.cidrs:
        return "cidrs"
    if sel.fqdns:
        return "fqdns"
    if sel.entities is not None:
        return "entities"
    return None


def probes(matrix: Matrix) -> list[Probe]:
    """Synthetic endpoints for ``matrix`` (see the module docstring), without duplicates."""
    out: list[Probe] = []
    seen: set[Subject] = set()

    def add(name: str, origin: str, subject: Subject, noise: str | None = None) -> None:
        if subject not in seen:
            seen.add(subject)
            out.append(Probe(name, origin, subject, noise))

    ns_labels = namespace_labels(matrix)
    pod_namespaces: list[str] = []
    for comp in matrix.components:
        sel, kind = comp.selector, address_kind(comp.selector)
        if kind is None:
            for pod, ep in synthetic_pods(comp, ns_labels):
                add(matrix.resolve(ep), comp.name, pod)
                if pod.namespace not in pod_namespaces:
                    pod_namespaces.append(pod.namespace)
        elif kind == "cidrs":
            for ip in cidr_addresses(sel.cidrs):
                add(matrix.resolve(_WORLD_ENDPOINT, ip), comp.name, External(ip))
        elif kind == "fqdns":
            for name in fqdn_names(sel.fqdns):
                add(matrix.resolve(_WORLD_ENDPOINT, "", (name,)), comp.name, External("", (name,)))
        else:
            for entity in sorted(sel.entities or ()):
                if entity == "host":
                    add(matrix.resolve(_HOST_ENDPOINT), comp.name, Node())
                elif entity in _RESERVED_IDS:
                    ep = Endpoint(identity=_RESERVED_IDS[entity], labels=(f"reserved:{entity}",))
                    add(matrix.resolve(ep), comp.name, Reserved(entity))
    v4, v6 = WORLD_PROBES
    add(matrix.resolve(_WORLD_ENDPOINT, v4), "world", External(v4))
    add(matrix.resolve(_WORLD_ENDPOINT, v6), "world-ipv6", External(v6), "the IPv6 world")
    for ns in [*sorted(matrix.scope_namespaces or ()), *pod_namespaces]:
        pod = Pod(ns, {PROBE_LABEL: "unmatched"}, ns_labels.get(ns, {}))
        add(matrix.resolve(pod_endpoint(pod, None, None)), f"unmatched:{ns}", pod, f"other pods of {ns}")
    foreign = Pod(PROBE_NAMESPACE, {PROBE_LABEL: "foreign"})
    add(
        matrix.resolve(pod_endpoint(foreign, None, None)),
        "foreign",
        foreign,
        "a namespace outside the matrix",
    )
    return out


def expected_ports(matrix: Matrix, source: str, destination: str) -> tuple[PortSet, tuple[Rule, ...]]:
    """What the matrix allows from ``source`` to ``destination`` (component or fallback names), and the
    rules that allow it, in matrix order."""
    rules = tuple(r for r in matrix.rules if source in r.sources and destination in r.destinations)
    sets: list[PortSet] = []
    for rule in rules:
        for p in rule.ports:
            if not p.protocols:
                sets.append(ALL)
                continue
            for proto in p.protocols:
                sets.append(
                    PortSet.single(proto, 0) if proto in ICMP_PROTOCOLS else PortSet.single(proto, p.lo, p.hi)
                )
    return PortSet.union(sets), rules


def namespace_labels(matrix: Matrix) -> dict[str, dict[str, str]]:
    """The labels each probe namespace carries: what the components living there require, merged (on a
    conflict the first component wins; the other keeps its own value on its own pods)."""
    out: dict[str, dict[str, str]] = {}
    for comp in matrix.components:
        if address_kind(comp.selector) is not None:
            continue
        for ns, labels in _component_namespaces(comp):
            merged = out.setdefault(ns, {})
            for k, v in labels.items():
                merged.setdefault(k, v)
    return out


def _component_namespaces(comp: Component) -> list[tuple[str, dict[str, str]]]:
    sel = comp.selector
    ns_labels = _satisfy(sel.namespace_labels)
    if ns_labels is None or _satisfy(sel.pod_labels) is None:
        return []
    if sel.namespaces is not None:
        namespaces = sorted(sel.namespaces)
    elif NAMESPACE_NAME_LABEL in ns_labels:
        namespaces = [ns_labels[NAMESPACE_NAME_LABEL]]
    else:
        namespaces = [f"{PROBE_NAMESPACE}-{re.sub(r'[^a-z0-9-]', '-', comp.name)}"]
    own = {k: v for k, v in ns_labels.items() if k != NAMESPACE_NAME_LABEL}
    return [(ns, own) for ns in namespaces if ns_labels.get(NAMESPACE_NAME_LABEL, ns) == ns]


def synthetic_pods(
    comp: Component, ns_labels: dict[str, dict[str, str]] | None = None
) -> list[tuple[Pod, Endpoint]]:
    """Pods satisfying a pod component's selector, each with the Hubble endpoint the matrix would see."""
    sel = comp.selector
    labels = _satisfy(sel.pod_labels)
    if labels is None:
        return []
    mentioned = {r.key for r in sel.namespace_labels}
    out = []
    for ns, own in _component_namespaces(comp):
        shared = {k: v for k, v in (ns_labels or {}).get(ns, {}).items() if k not in mentioned}
        named = {name: (proto, port) for name, proto, port in sel.container_ports}
        pod = Pod(ns, dict(labels), {**shared, **own}, named_ports=named, service_account=sel.service_account)
        out.append((pod, pod_endpoint(pod, sel.service_account, sel.workload)))
    return out


def pod_endpoint(
    pod: Pod, service_account: str | None, workload: tuple[str | None, str | None] | None
) -> Endpoint:
    labels = [f"k8s:{k}={v}" for k, v in pod.labels.items()]
    labels += [f"k8s:io.cilium.k8s.namespace.labels.{k}={v}" for k, v in pod.all_namespace_labels().items()]
    labels.append(f"k8s:io.kubernetes.pod.namespace={pod.namespace}")
    if service_account is not None:
        labels.append(f"k8s:io.cilium.k8s.policy.serviceaccount={service_account}")
    workloads: tuple[Workload, ...] = ()
    if workload is not None:
        workloads = (Workload(kind=workload[0] or "Deployment", name=workload[1] or "probe"),)
    return Endpoint(
        namespace=pod.namespace, labels=tuple(sorted(labels)), pod_name="probe", workloads=workloads
    )


def _satisfy(reqs: Sequence[LabelRequirement]) -> dict[str, str] | None:
    """Labels satisfying every requirement (absent keys where allowed), or ``None`` if impossible."""
    by_key: dict[str, list[LabelRequirement]] = {}
    for r in reqs:
        by_key.setdefault(r.key, []).append(r)
    out: dict[str, str] = {}
    for key, rs in by_key.items():
        allowed: set[str] | None = None
        forbidden: set[str] = set()
        present = absent = False
        for r in rs:
            if r.operator == "In":
                allowed = set(r.values) if allowed is None else allowed & r.values
                present = True
            elif r.operator == "NotIn":
                forbidden |= r.values
            elif r.operator == "Exists":
                present = True
            else:
                absent = True
        if present and absent:
            return None
        if absent:
            continue
        if allowed is not None:
            candidates = sorted(allowed - forbidden)
            if not candidates:
                return None
            out[key] = candidates[0]
        elif present:
            value, n = "probe", 0
            while value in forbidden:
                n += 1
                value = f"probe{n}"
            out[key] = value
    return out


def cidr_addresses(cidrs: Sequence[tuple[Network, tuple[Network, ...]]]) -> list[str]:
    """An address inside each CIDR but outside its excepts, then the first address of each except."""
    out: list[str] = []
    for net, excepts in cidrs:
        candidates = [net.network_address + (1 if net.num_addresses > 2 else 0), net.broadcast_address]
        candidates += [
            ex.broadcast_address + 1 for ex in excepts if ex.broadcast_address != net.broadcast_address
        ]
        inside = next((a for a in candidates if a in net and not any(a in ex for ex in excepts)), None)
        if inside is not None:
            out.append(str(inside))
        out.extend(str(ex.network_address) for ex in excepts)
    return out


def fqdn_names(patterns: Sequence[str]) -> list[str]:
    """A name per exact FQDN; a wildcard ``*.d`` (any depth in the matrix): ``probe.d``, ``a.probe.d``."""
    out: list[str] = []
    for p in patterns:
        if p.startswith("*."):
            out += [f"probe.{p[2:]}", f"a.probe.{p[2:]}"]
        else:
            out.append(p)
    return out
