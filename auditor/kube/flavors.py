"""How each flavor writes policies: the Kubernetes ``NetworkPolicy`` and Cilium ``CiliumNetworkPolicy``
renderers of ``flow-auditor policies generate`` (what they express, and the notes on what they cannot, is
described in :mod:`auditor.kube.policies`).

Stage: offline tooling; pure functions of a compiled matrix. Error policy: none (the matrix is valid).
"""

from __future__ import annotations

import copy
import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Final

from auditor.kube.model import NAMESPACE_NAME_LABEL
from auditor.kube.probes import address_kind
from auditor.matrix import Component, LabelRequirement, Matrix, Network, PortRange, Rule, Selector
from auditor.model import ICMP_PROTOCOLS, Protocol

MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "flow-auditor"}
ANNOTATION_PREFIX: Final = "flow-auditor.io/"
WORLD_CIDRS: Final = ("0.0.0.0/0", "::/0")

_K8S_API: Final = ("networking.k8s.io/v1", "NetworkPolicy")
_CILIUM_API: Final = ("cilium.io/v2", "CiliumNetworkPolicy")
_CILIUM_NS: Final = "k8s:io.kubernetes.pod.namespace"
_CILIUM_NS_LABELS: Final = "k8s:io.cilium.k8s.namespace.labels."
_CILIUM_SA: Final = "k8s:io.cilium.k8s.policy.serviceaccount"
_DEFAULT_DNS: Final = (
    {"matchLabels": {_CILIUM_NS: "kube-system", "k8s:k8s-app": "kube-dns"}},
    "kube-system/k8s-app=kube-dns",
)
_ICMP_ECHO: Final = {
    Protocol.ICMPV4: {"type": 8, "family": "IPv4"},
    Protocol.ICMPV6: {"type": 128, "family": "IPv6"},
}
_CILIUM_MAX_PORTS: Final = 40  # PortRule.ports maxItems in the CiliumNetworkPolicy schema


def add_note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


def _label_selector(reqs: Sequence[LabelRequirement]) -> dict[str, Any]:
    """A Kubernetes LabelSelector: single-value ``In`` on a key used once → matchLabels, else expressions."""
    counts = Counter(r.key for r in reqs)
    match_labels: dict[str, str] = {}
    expressions: list[dict[str, Any]] = []
    for r in reqs:
        if r.operator == "In" and len(r.values) == 1 and counts[r.key] == 1:
            match_labels[r.key] = next(iter(r.values))
            continue
        expr: dict[str, Any] = {"key": r.key, "operator": r.operator}
        if r.operator in ("In", "NotIn"):
            expr["values"] = sorted(r.values)
        expressions.append(expr)
    out: dict[str, Any] = {}
    if match_labels:
        out["matchLabels"] = match_labels
    if expressions:
        out["matchExpressions"] = expressions
    return out


def _namespace_requirements(sel: Selector) -> list[LabelRequirement]:
    reqs = (
        [LabelRequirement(NAMESPACE_NAME_LABEL, "In", sel.namespaces)] if sel.namespaces is not None else []
    )
    return reqs + list(sel.namespace_labels)


def _has_transport(p: PortRange) -> bool:
    return bool(p.protocols - ICMP_PROTOCOLS)


class Renderer:
    """What both flavors share: walking the rules of one component, metadata, notes."""

    api: tuple[str, str]

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix
        self.by_name = {c.name: c for c in matrix.components}

    def default_deny(self, name: str, namespace: str) -> dict[str, Any]:
        raise NotImplementedError

    def rules(self, rule: Rule, peers: Sequence[Component], *, egress: bool, notes: list[str]) -> list[Any]:
        raise NotImplementedError

    def wrap(
        self,
        comp: Component,
        metadata: dict[str, Any],
        ingress: list[Any],
        egress: list[Any],
        notes: list[str],
    ) -> dict[str, Any]:
        raise NotImplementedError

    def own_notes(self, comp: Component) -> list[str]:
        return []

    def component(self, comp: Component, name: str, namespace: str) -> tuple[dict[str, Any], list[str]]:
        notes: list[str] = []
        for text in self.own_notes(comp):
            add_note(notes, text)
        implemented: set[int] = set()
        ingress: list[Any] = []
        egress: list[Any] = []
        for rule in self.matrix.rules:
            for is_egress, ends, others, out in (
                (False, rule.destinations, rule.sources, ingress),
                (True, rule.sources, rule.destinations, egress),
            ):
                if comp.name not in ends:
                    continue
                peers = [self.by_name[n] for n in others]
                for text in self.shadow_notes(rule, peers):
                    add_note(notes, text)
                rendered = self.rules(rule, peers, egress=is_egress, notes=notes)
                if rendered:
                    implemented.add(rule.index)
                    out.extend(rendered)
        metadata = self.metadata(name, namespace, comp.name, implemented)
        obj = self.wrap(comp, metadata, ingress, egress, notes)
        if notes:
            obj["metadata"]["annotations"][f"{ANNOTATION_PREFIX}notes"] = "; ".join(notes)
        return obj, notes

    def shadow_notes(self, rule: Rule, peers: Sequence[Component]) -> list[str]:
        """World peers also cover the CIDR/FQDN components the matrix matches before them (wider)."""
        out = []
        for comp in peers:
            if "world" not in (comp.selector.entities or ()):
                continue
            shadowed = []
            for other in self.matrix.components:
                if other.name == comp.name:
                    break
                if address_kind(other.selector) in ("cidrs", "fqdns"):
                    shadowed.append(other.name)
            if shadowed:
                out.append(
                    f"rule {rule.index}: {comp.name}: the world also covers {', '.join(shadowed)} (matched "
                    f"first in the matrix), so this rule allows them too (wider)"
                )
        return out

    def metadata(self, name: str, namespace: str, component: str | None, rules: set[int]) -> dict[str, Any]:
        annotations = {
            f"{ANNOTATION_PREFIX}matrix": self.matrix.name,
            f"{ANNOTATION_PREFIX}rules": ",".join(str(i) for i in sorted(rules)) or "none",
        }
        if component is not None:
            annotations[f"{ANNOTATION_PREFIX}component"] = component
        return {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY), "annotations": annotations}

    def envelope(self, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": self.api[0], "kind": self.api[1], "metadata": metadata, "spec": spec}


def _dedupe(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


class KubernetesRenderer(Renderer):
    api = _K8S_API

    def __init__(self, matrix: Matrix, cluster_cidrs: tuple[Network, ...]) -> None:
        super().__init__(matrix)
        self.cluster_cidrs = cluster_cidrs

    def default_deny(self, name: str, namespace: str) -> dict[str, Any]:
        spec = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        return self.envelope(self.metadata(name, namespace, None, set()), spec)

    def own_notes(self, comp: Component) -> list[str]:
        sel, notes = comp.selector, []
        for field, present in (
            ("namespaceLabels", bool(sel.namespace_labels)),
            ("serviceAccount", sel.service_account is not None),
            ("workload", sel.workload is not None),
        ):
            if present:
                notes.append(
                    f"{comp.name}: its {field} cannot be expressed in a podSelector; "
                    "the policy selects its pods by namespace and labels only (wider)"
                )
        return notes

    def wrap(
        self,
        comp: Component,
        metadata: dict[str, Any],
        ingress: list[Any],
        egress: list[Any],
        notes: list[str],
    ) -> dict[str, Any]:
        spec = {
            "podSelector": _label_selector(comp.selector.pod_labels),
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        }
        return self.envelope(metadata, spec)

    def rules(self, rule: Rule, peers: Sequence[Component], *, egress: bool, notes: list[str]) -> list[Any]:
        ports = self.ports(rule, notes)
        if ports == []:
            return []  # nothing expressible: never emit a rule without ports (that would allow every port)
        rendered_peers = _dedupe(p for comp in peers for p in self.peers(comp, rule, notes))
        if not rendered_peers:
            return []  # an empty peer list would allow every peer
        out: dict[str, Any] = {"to" if egress else "from": rendered_peers}
        if ports is not None:
            out["ports"] = ports
        return [out]

    def ports(self, rule: Rule, notes: list[str]) -> list[dict[str, Any]] | None:
        """Port entries; ``None`` for every port (``any``); ``[]`` when nothing is expressible."""
        if any(not p.protocols for p in rule.ports):
            return None
        out: list[dict[str, Any]] = []
        for p in rule.ports:
            if not _has_transport(p):
                add_note(
                    notes, f"rule {rule.index}: {p} cannot be expressed in a NetworkPolicy (not allowed)"
                )
                continue
            for proto in sorted(p.protocols - ICMP_PROTOCOLS):
                entry: dict[str, Any] = {"protocol": proto, "port": p.lo}
                if p.hi > p.lo:
                    entry["endPort"] = p.hi
                out.append(entry)
        return _dedupe(out)

    def peers(self, comp: Component, rule: Rule, notes: list[str]) -> list[dict[str, Any]]:
        sel, where = comp.selector, f"rule {rule.index}: {comp.name}"
        kind = address_kind(sel)
        if kind is None:
            for field, present in (
                ("serviceAccount", sel.service_account is not None),
                ("workload", sel.workload is not None),
            ):
                if present:
                    add_note(
                        notes,
                        f"{where}: {field} cannot be selected; selected by namespace and labels (wider)",
                    )
            return [
                {
                    "podSelector": _label_selector(sel.pod_labels),
                    "namespaceSelector": _label_selector(_namespace_requirements(sel)),
                }
            ]
        if kind == "cidrs":
            return [{"ipBlock": _ip_block(net, excepts)} for net, excepts in sel.cidrs]
        if kind == "fqdns":
            add_note(
                notes,
                f"{where}: FQDNs ({', '.join(sel.fqdns)}) have no NetworkPolicy equivalent: "
                f"{' and '.join(WORLD_CIDRS)} on the rule's ports instead (wider)",
            )
            return self.world()
        out: list[dict[str, Any]] = []
        for entity in sorted(sel.entities or ()):
            if entity == "world":
                out.extend(self.world())
                if not self.cluster_cidrs:
                    add_note(
                        notes,
                        f"{where}: entity world is {' and '.join(WORLD_CIDRS)}, which on some network "
                        "plugins also matches pod and service addresses (wider): give --cluster-cidr to "
                        "except them",
                    )
            elif entity == "host":
                add_note(
                    notes,
                    f"{where}: entity host cannot be selected by a NetworkPolicy; traffic between a pod and "
                    "its own node is always allowed, other nodes are denied",
                )
            else:
                add_note(
                    notes, f"{where}: entity {entity} cannot be selected by a NetworkPolicy (not allowed)"
                )
        return out

    def world(self) -> list[dict[str, Any]]:
        return [
            {"ipBlock": _ip_block(net, tuple(c for c in self.cluster_cidrs if c.version == net.version))}
            for net in (ipaddress.ip_network(w) for w in WORLD_CIDRS)
        ]


def _ip_block(net: Network, excepts: tuple[Network, ...]) -> dict[str, Any]:
    block: dict[str, Any] = {"cidr": str(net)}
    if excepts:
        block["except"] = [str(e) for e in excepts]
    return block


def _fqdn_selector(name: str) -> dict[str, str]:
    if name.startswith("*."):
        return {"matchPattern": "**." + name[2:]}
    return {"matchName": name}


class CiliumRenderer(Renderer):
    api = _CILIUM_API

    def __init__(self, matrix: Matrix) -> None:
        super().__init__(matrix)
        self.dns = self._dns_target()

    def default_deny(self, name: str, namespace: str) -> dict[str, Any]:
        spec = {
            "description": f"flow-auditor matrix {self.matrix.name}: default deny in {namespace}",
            "endpointSelector": {},
            "enableDefaultDeny": {"ingress": True, "egress": True},
            "ingress": [{}],
            "egress": [{}],
        }
        return self.envelope(self.metadata(name, namespace, None, set()), spec)

    def own_notes(self, comp: Component) -> list[str]:
        if comp.selector.workload is None:
            return []
        return [
            f"{comp.name}: its workload cannot be selected; the policy selects its pods by labels (wider)"
        ]

    def wrap(
        self,
        comp: Component,
        metadata: dict[str, Any],
        ingress: list[Any],
        egress: list[Any],
        notes: list[str],
    ) -> dict[str, Any]:
        if any("toFQDNs" in r for r in egress):
            egress = [*egress, self.dns_rule(comp, notes)]
        spec = {
            "description": f"flow-auditor matrix {self.matrix.name}: component {comp.name}",
            "endpointSelector": self.endpoint_selector(comp.selector, peer=False),
            "enableDefaultDeny": {"ingress": True, "egress": True},
            "ingress": ingress or [{}],  # an empty rule allows nothing (and keeps the section present)
            "egress": egress or [{}],
        }
        return self.envelope(metadata, spec)

    def endpoint_selector(self, sel: Selector, *, peer: bool) -> dict[str, Any]:
        reqs: list[LabelRequirement] = []
        if peer:  # without a namespace key Cilium would restrict a peer to the policy's namespace
            reqs.append(
                LabelRequirement(_CILIUM_NS, "In", sel.namespaces)
                if sel.namespaces is not None
                else LabelRequirement(_CILIUM_NS, "Exists")
            )
        reqs.extend(replace(r, key=_CILIUM_NS_LABELS + r.key) for r in sel.namespace_labels)
        reqs.extend(replace(r, key="k8s:" + r.key) for r in sel.pod_labels)
        if sel.service_account is not None:
            reqs.append(LabelRequirement(_CILIUM_SA, "In", frozenset({sel.service_account})))
        return _label_selector(reqs)

    def rules(self, rule: Rule, peers: Sequence[Component], *, egress: bool, notes: list[str]) -> list[Any]:
        l4 = self.l4(rule, notes)
        groups = self.peer_groups(rule, peers, egress, notes)
        return [copy.deepcopy({key: values, **extra}) for key, values in groups for extra in l4]

    def l4(self, rule: Rule, notes: list[str]) -> list[dict[str, Any]]:
        """The L4 part of the rules for one allow rule; ``[{}]`` for every port and protocol."""
        if any(not p.protocols for p in rule.ports):
            return [{}]
        ports: list[dict[str, Any]] = []
        icmp: list[dict[str, Any]] = []
        for p in rule.ports:
            for proto in sorted(p.protocols):
                if proto in ICMP_PROTOCOLS:
                    icmp.append(dict(_ICMP_ECHO[proto]))
                    continue
                entry: dict[str, Any] = {"port": str(p.lo), "protocol": proto}
                if p.hi > p.lo:
                    entry["endPort"] = p.hi
                ports.append(entry)
        out: list[dict[str, Any]] = []
        ports = _dedupe(ports)
        if ports:
            chunks = [ports[i : i + _CILIUM_MAX_PORTS] for i in range(0, len(ports), _CILIUM_MAX_PORTS)]
            out.append({"toPorts": [{"ports": chunk} for chunk in chunks]})
        if icmp:
            add_note(notes, f"rule {rule.index}: ICMP allowed for echo requests only (types 8 and 128)")
            out.append({"icmps": [{"fields": _dedupe(icmp)}]})
        return out

    def peer_groups(
        self, rule: Rule, peers: Sequence[Component], egress: bool, notes: list[str]
    ) -> list[tuple[str, list[Any]]]:
        """One (field, values) per kind of peer: Cilium allows one peer kind per rule."""
        endpoints: list[Any] = []
        entities: list[str] = []
        cidrs: list[Any] = []
        fqdns: list[Any] = []
        for comp in peers:
            sel, where = comp.selector, f"rule {rule.index}: {comp.name}"
            kind = address_kind(sel)
            if kind is None:
                if sel.workload is not None:
                    add_note(
                        notes,
                        f"{where}: workload cannot be selected; selected by namespace and labels (wider)",
                    )
                endpoints.append(self.endpoint_selector(sel, peer=True))
            elif kind == "cidrs":
                cidrs.extend(_ip_block(net, ex) for net, ex in sel.cidrs)  # CIDRRule: cidr + except
            elif kind == "fqdns" and egress:
                fqdns.extend(_fqdn_selector(n) for n in sel.fqdns)
            elif kind == "fqdns":
                add_note(notes, f"{where}: FQDNs cannot select a source: world entity instead (wider)")
                entities.append("world")
            else:
                entities.extend(sorted(sel.entities or ()))
        prefix = "to" if egress else "from"
        groups = [
            (f"{prefix}Endpoints", _dedupe(endpoints)),
            (f"{prefix}Entities", _dedupe(entities)),
            (f"{prefix}CIDRSet", _dedupe(cidrs)),
            ("toFQDNs", _dedupe(fqdns)),
        ]
        return [(key, values) for key, values in groups if values]

    def dns_rule(self, comp: Component, notes: list[str]) -> dict[str, Any]:
        """The DNS proxy rule toFQDNs needs, on the protocols the matrix allows ``comp`` towards its DNS
        server on 53 (UDP and TCP, noted as wider, when the matrix allows none)."""
        selector, described, target = self.dns
        protocols = [
            proto
            for proto in (Protocol.UDP, Protocol.TCP)
            if target is not None and self.matrix.rule_for(comp.name, target, proto, 53) is not None
        ]
        if protocols:
            add_note(notes, f"DNS proxy rule towards {described} on 53: toFQDNs needs to see DNS answers")
        else:
            protocols = [Protocol.UDP, Protocol.TCP]
            add_note(
                notes,
                f"{comp.name}: DNS proxy rule towards {described} on 53/UDP and 53/TCP added, which the "
                "matrix does not allow: toFQDNs needs to see DNS answers (wider)",
            )
        return {
            "toEndpoints": [selector],
            "toPorts": [
                {
                    "ports": [{"port": "53", "protocol": proto} for proto in protocols],
                    "rules": {"dns": [{"matchPattern": "*"}]},
                }
            ],
        }

    def _dns_target(self) -> tuple[dict[str, Any], str, str | None]:
        for rule in self.matrix.rules:
            if not any(Protocol.UDP in p.protocols and p.lo <= 53 <= p.hi for p in rule.ports if p.protocols):
                continue
            for name in rule.destinations:
                sel = self.by_name[name].selector
                if address_kind(sel) is None:
                    return self.endpoint_selector(sel, peer=True), f"{name} (matrix rule {rule.index})", name
        return (*_DEFAULT_DNS, None)
