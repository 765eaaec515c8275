"""NetworkPolicies that enforce a communication matrix (``flow-auditor policies generate``), and the static
comparison of deployed NetworkPolicies with the matrix (``flow-auditor policies diff``).

Stage: offline tooling; reads a compiled :class:`~auditor.matrix.Matrix`, never a flow.

Input/output:

- :func:`generate` (and :func:`build`, which also returns the notes) turns a matrix into Kubernetes
  ``networking.k8s.io/v1`` ``NetworkPolicy`` objects (flavor ``kubernetes``) or ``cilium.io/v2``
  ``CiliumNetworkPolicy`` objects (flavor ``cilium``): plain dicts, in a deterministic order (default-deny
  per scoped namespace, then components in matrix order), with deterministic names.
  :func:`to_yaml` renders them as one multi-document YAML stream.
- :func:`diff` evaluates Kubernetes NetworkPolicies with :mod:`auditor.kube.netpol` on synthetic endpoints
  built from the matrix (:func:`probes`, :func:`probe_ports`) and lists where they and the matrix disagree.

What is generated:

- ``<matrix>-default-deny`` in every scoped namespace (``matrix.scope_namespaces``): selects every pod,
  isolates ingress and egress, allows nothing (cilium: ``ingress: [{}]``, ``egress: [{}]`` plus
  ``enableDefaultDeny``).
- ``<matrix>-<component>`` for every in-scope component (pinned by ``namespace``/``namespaces`` to scoped
  namespaces; one object per such namespace): selects the component's pods, with one ingress rule per allow
  rule whose destination is the component (peers: the rule's sources) and one egress rule per allow rule
  whose source is the component (peers: the rule's destinations), on the rule's ports. Rules stay in matrix
  order, one (or, in the cilium flavor, one per peer kind) per allow rule, so each can be traced back.
- Every object has the label ``app.kubernetes.io/managed-by: flow-auditor`` and the annotations
  ``flow-auditor.io/matrix`` (matrix name), ``flow-auditor.io/rules`` (the allow rules it implements,
  ``none`` for default-deny), ``flow-auditor.io/component`` and, when something could not be expressed
  exactly, ``flow-auditor.io/notes``.

How selectors and ports map (k8s = kubernetes flavor; "wider" = the policies allow more than the matrix,
"narrower" = less; every inexact case is recorded as a note on the object and in :attr:`Generation.notes`):

- ``namespace(s)``: k8s namespaceSelector ``kubernetes.io/metadata.name``; cilium
  ``k8s:io.kubernetes.pod.namespace`` (a peer without namespace gets ``Exists``, i.e. any namespace).
- ``namespaceLabels``: k8s namespaceSelector; cilium ``k8s:io.cilium.k8s.namespace.labels.<key>``. On the
  selected component itself k8s cannot express it (the namespace is fixed): dropped, wider.
- ``labels``/``matchExpressions``: podSelector (k8s) or endpoint selector ``k8s:<key>`` (cilium).
- ``serviceAccount``: k8s cannot select it: dropped, the pods are selected by namespace and labels only
  (wider; "the label the user gave" is what remains); cilium ``k8s:io.cilium.k8s.policy.serviceaccount``.
- ``workload``: neither flavor can select a controller: dropped (wider); give the pods a label instead.
- entity ``world``: k8s ipBlocks ``0.0.0.0/0`` and ``::/0`` (minus ``cluster_cidrs``: whether an ipBlock
  also matches pod addresses is up to the network plugin); cilium ``fromEntities``/``toEntities``.
- entity ``host`` (kubelet probes): k8s cannot select nodes; nothing is emitted, and Kubernetes always allows
  traffic between a pod and its own node (other nodes stay denied); cilium ``host`` entity.
- other entities (``remote-node``, ``kube-apiserver``, …): k8s dropped (narrower: that traffic stays
  denied); cilium entities.
- ``cidrs`` with ``except``: k8s ipBlock; cilium ``fromCIDRSet``/``toCIDRSet``.
- ``fqdns``: k8s has no equivalent: ipBlocks ``0.0.0.0/0`` and ``::/0`` on the rule's ports (wider). cilium
  egress ``toFQDNs`` (``matchName``; a ``*.`` wildcard, which matches any depth in the matrix, becomes
  ``matchPattern: "**.<domain>"``) plus the DNS proxy rule that toFQDNs needs: port 53 ``ANY`` with
  ``rules: {dns: [{matchPattern: "*"}]}`` towards the matrix's DNS server (the first pod component that
  an allow rule reaches on 53/UDP, else ``kube-system``/``k8s-app: kube-dns``); as a *source* an FQDN
  cannot be selected: ``world`` entity (wider).
- ports: ``port`` (+ ``endPort`` for ranges) and ``protocol`` TCP/UDP/SCTP; ``any`` = no ports (every
  protocol). ICMP: k8s cannot express it (dropped, narrower; a rule with only ICMP is left out rather than
  emitted without ports); cilium ``icmps`` with the echo request types (8, IPv6 128) only, because Cilium
  matches ICMP by type and has no "any type" (narrower for the other types).
- first match wins: policies add up, so a pod matched by the selectors of two components gets both
  components' allowances (wider). Pod components whose selectors certainly overlap (the minimal pod of one
  matches the other's selector) are reported as notes. Likewise the ``world`` ipBlocks (and Cilium's
  ``world`` entity) also cover the addresses of CIDR components declared before the world component.
- a pod component that is not pinned to a namespace (only ``namespaceLabels``, or nothing) gets no policy of
  its own (the default-deny of the scoped namespaces still applies to its pods there): noted.

Error policy: generation does not fail for a matrix that loaded; an unknown flavor or an invalid cluster
CIDR raises :class:`ValueError`. :func:`diff` raises :class:`auditor.kube.netpol.PolicyError` for a
malformed policy; objects other than Kubernetes NetworkPolicies are ignored by it (see
:attr:`auditor.kube.netpol.PolicySet.skipped`).
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

import yaml

from auditor.kube.netpol import NAMESPACE_NAME_LABEL, External, Node, Pod, Subject, compile_policies
from auditor.matrix import (
    Component,
    LabelRequirement,
    Matrix,
    Network,
    PortRange,
    Rule,
    Selector,
    endpoint_labels,
)
from auditor.model import ICMP_PROTOCOLS, Endpoint, Protocol, Workload

Flavor = Literal["kubernetes", "cilium"]
FLAVORS: Final[tuple[Flavor, ...]] = ("kubernetes", "cilium")
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
_TRANSPORT: Final = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)
_PROBE_LABEL: Final = "flow-auditor.io/probe"
_PROBE_NAMESPACE: Final = "flow-auditor-probe"
_WORLD_PROBES: Final = ("203.0.113.10", "2001:db8::10")  # documentation ranges (RFC 5737, RFC 3849)
_WORLD_ENDPOINT: Final = Endpoint(identity=2, labels=("reserved:world",))
_HOST_ENDPOINT: Final = Endpoint(identity=1, labels=("reserved:host",))


# --------------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class Generation:
    """Generated objects and every distinct note (what could not be expressed exactly), in order."""

    objects: list[dict[str, Any]]
    notes: list[str]


def generate(
    matrix: Matrix, flavor: Flavor = "kubernetes", *, cluster_cidrs: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The policies enforcing ``matrix``; see :func:`build`."""
    return build(matrix, flavor, cluster_cidrs=cluster_cidrs).objects


def build(matrix: Matrix, flavor: Flavor = "kubernetes", *, cluster_cidrs: Sequence[str] = ()) -> Generation:
    """The policies enforcing ``matrix`` and the notes on what they cannot express exactly.

    ``cluster_cidrs`` (pod and service CIDRs) are excepted from the ``world`` ipBlocks of the kubernetes
    flavor, for network plugins whose ipBlocks also match pod addresses. Raises :class:`ValueError` for
    an unknown flavor or an invalid CIDR.
    """
    renderer: _Renderer
    if flavor == "kubernetes":
        renderer = _Kubernetes(matrix, _parse_cidrs(cluster_cidrs))
    elif flavor == "cilium":
        renderer = _Cilium(matrix)
    else:
        raise ValueError(f"unknown flavor {flavor!r} (expected one of: {', '.join(FLAVORS)})")
    names = _Names()
    objects: list[dict[str, Any]] = []
    notes: list[str] = []
    scope = frozenset(matrix.scope_namespaces or ())
    if not scope:
        _note(notes, "the matrix has no scope namespaces: there is nothing to enforce")
    for ns in sorted(scope):
        objects.append(renderer.default_deny(names.take(ns, f"{matrix.name}-default-deny"), ns))
    for comp in matrix.components:
        for text in _selector_notes(comp):
            _note(notes, text)
        for ns in _placement(comp, scope):
            obj, obj_notes = renderer.component(comp, names.take(ns, f"{matrix.name}-{comp.name}"), ns)
            objects.append(obj)
            for text in obj_notes:
                _note(notes, text)
    for text in _overlap_notes(matrix):
        _note(notes, text)
    return Generation(objects, notes)


def to_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    """A multi-document YAML stream (``---`` before every object), keys in generation order."""
    return "".join(
        "---\n" + yaml.dump(dict(obj), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)
        for obj in objects
    )


class _Dumper(yaml.SafeDumper):
    """Safe dumper that writes shared sub-objects out in full instead of as anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


def _parse_cidrs(texts: Sequence[str]) -> tuple[Network, ...]:
    out: list[Network] = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError as e:
            raise ValueError(f"invalid cluster CIDR {text!r}: {e}") from None
    return tuple(out)


class _Names:
    """Valid, unique (per namespace) object names."""

    def __init__(self) -> None:
        self.used: set[tuple[str, str]] = set()

    def take(self, namespace: str, base: str) -> str:
        name = re.sub(r"[^a-z0-9.-]+", "-", base.lower()).strip("-.")[:253].rstrip("-.") or "flow-auditor"
        candidate, n = name, 2
        while (namespace, candidate) in self.used:
            candidate, n = f"{name[:245]}-{n}", n + 1
        self.used.add((namespace, candidate))
        return candidate


def _address_kind(sel: Selector) -> str | None:
    """How a component is selected when it is not a pod selector: ``cidrs``, ``fqdns`` or ``entities``."""
    if sel.cidrs:
        return "cidrs"
    if sel.fqdns:
        return "fqdns"
    if sel.entities is not None:
        return "entities"
    return None


def _placement(comp: Component, scope: frozenset[str]) -> list[str]:
    """The scoped namespaces in which the component gets a policy of its own."""
    sel = comp.selector
    if _address_kind(sel) is not None or sel.namespaces is None:
        return []
    return sorted(sel.namespaces & scope)


def _selector_notes(comp: Component) -> list[str]:
    sel = comp.selector
    parts = [
        name
        for name, present in (
            ("cidrs", bool(sel.cidrs)),
            ("fqdns", bool(sel.fqdns)),
            ("entities", sel.entities is not None),
            (
                "pod fields",
                sel.namespaces is not None
                or bool(sel.pod_labels or sel.namespace_labels or sel.service_account or sel.workload),
            ),
        )
        if present
    ]
    notes = []
    if len(parts) > 1:
        notes.append(
            f"component {comp.name} combines {', '.join(parts)}: "
            f"only its {parts[0]} are used in policies (wider)"
        )
    if _address_kind(sel) is None and sel.namespaces is None:
        notes.append(
            f"component {comp.name} is not pinned to a namespace: no policy of its own selects its pods "
            "(the default-deny applies to them in scoped namespaces)"
        )
    return notes


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


class _Renderer:
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
            _note(notes, text)
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
                rendered = self.rules(rule, [self.by_name[n] for n in others], egress=is_egress, notes=notes)
                if rendered:
                    implemented.add(rule.index)
                    out.extend(rendered)
        metadata = self.metadata(name, namespace, comp.name, implemented)
        obj = self.wrap(comp, metadata, ingress, egress, notes)
        if notes:
            obj["metadata"]["annotations"][f"{ANNOTATION_PREFIX}notes"] = "; ".join(notes)
        return obj, notes

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


class _Kubernetes(_Renderer):
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
                _note(notes, f"rule {rule.index}: {p} cannot be expressed in a NetworkPolicy (not allowed)")
                continue
            for proto in sorted(p.protocols - ICMP_PROTOCOLS):
                entry: dict[str, Any] = {"protocol": proto, "port": p.lo}
                if p.hi > p.lo:
                    entry["endPort"] = p.hi
                out.append(entry)
        return _dedupe(out)

    def peers(self, comp: Component, rule: Rule, notes: list[str]) -> list[dict[str, Any]]:
        sel, where = comp.selector, f"rule {rule.index}: {comp.name}"
        kind = _address_kind(sel)
        if kind is None:
            for field, present in (
                ("serviceAccount", sel.service_account is not None),
                ("workload", sel.workload is not None),
            ):
                if present:
                    _note(
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
            _note(
                notes,
                f"{where}: FQDNs ({', '.join(sel.fqdns)}) have no NetworkPolicy equivalent: "
                f"{' and '.join(WORLD_CIDRS)} on the rule's ports instead (wider)",
            )
            return self.world()
        out: list[dict[str, Any]] = []
        for entity in sorted(sel.entities or ()):
            if entity == "world":
                out.extend(self.world())
            elif entity == "host":
                _note(
                    notes,
                    f"{where}: entity host cannot be selected by a NetworkPolicy; traffic between a pod and "
                    "its own node is always allowed, other nodes are denied",
                )
            else:
                _note(notes, f"{where}: entity {entity} cannot be selected by a NetworkPolicy (not allowed)")
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


class _Cilium(_Renderer):
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
            selector, described = self.dns
            egress = [
                *egress,
                {
                    "toEndpoints": [selector],
                    "toPorts": [
                        {
                            "ports": [{"port": "53", "protocol": "ANY"}],
                            "rules": {"dns": [{"matchPattern": "*"}]},
                        }
                    ],
                },
            ]
            _note(notes, f"DNS proxy rule towards {described} on 53 added: toFQDNs needs to see DNS answers")
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
            _note(notes, f"rule {rule.index}: ICMP allowed for echo requests only (types 8 and 128)")
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
            kind = _address_kind(sel)
            if kind is None:
                if sel.workload is not None:
                    _note(
                        notes,
                        f"{where}: workload cannot be selected; selected by namespace and labels (wider)",
                    )
                endpoints.append(self.endpoint_selector(sel, peer=True))
            elif kind == "cidrs":
                cidrs.extend(_ip_block(net, ex) for net, ex in sel.cidrs)  # CIDRRule: cidr + except
            elif kind == "fqdns" and egress:
                fqdns.extend(_fqdn_selector(n) for n in sel.fqdns)
            elif kind == "fqdns":
                _note(notes, f"{where}: FQDNs cannot select a source: world entity instead (wider)")
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

    def _dns_target(self) -> tuple[dict[str, Any], str]:
        for rule in self.matrix.rules:
            if not any(Protocol.UDP in p.protocols and p.lo <= 53 <= p.hi for p in rule.ports if p.protocols):
                continue
            for name in rule.destinations:
                sel = self.by_name[name].selector
                if _address_kind(sel) is None:
                    return self.endpoint_selector(sel, peer=True), f"{name} (matrix rule {rule.index})"
        return _DEFAULT_DNS


def _overlap_notes(matrix: Matrix) -> list[str]:
    """Pairs of pod components whose selectors certainly overlap (one's minimal pod matches the other)."""
    pods = [
        (c, [ep for _, ep in _synthetic_pods(c)])
        for c in matrix.components
        if _address_kind(c.selector) is None
    ]
    notes = []
    for i, (a, a_eps) in enumerate(pods):
        for b, b_eps in pods[i + 1 :]:
            if _matches_any(b.selector, a_eps) or _matches_any(a.selector, b_eps):
                notes.append(
                    f"components {a.name} and {b.name} can select the same pods: policies add up, so "
                    f"such pods get the allowances of both, while the matrix names them {a.name} "
                    "(first match wins)"
                )
    return notes


def _matches_any(sel: Selector, endpoints: Sequence[Endpoint]) -> bool:
    for ep in endpoints:
        k8s, entities = endpoint_labels(ep)
        if sel.matches_labels(ep, k8s, entities):
            return True
    return False


# --------------------------------------------------------------------------------------------------
# Synthetic endpoints (probes) and the comparison of policies with the matrix


@dataclass(frozen=True, slots=True)
class Probe:
    """A synthetic endpoint: what the matrix calls it (``name``), what it was built for, and the subject."""

    name: str
    origin: str
    subject: Subject


def probes(matrix: Matrix) -> list[Probe]:
    """Synthetic endpoints standing for the matrix's components, plus endpoints that match none.

    - a pod component: one pod per namespace it names (or a namespace of its own), labelled to satisfy its
      selector, in a namespace whose labels satisfy ``namespaceLabels``;
    - ``cidrs``: an address inside each CIDR and the first address of each ``except``;
    - entity ``world``: a documentation IPv4 and IPv6 address (always added); entity ``host``: the
      :class:`~auditor.kube.netpol.Node`; FQDN components and other entities have no probe;
    - an unlabelled pod in every scoped namespace and a pod in a namespace outside the matrix.

    Every probe is named by :meth:`Matrix.resolve`, so a probe that the matrix names differently than
    the component it was built for (selectors that overlap) is judged as the matrix would judge it.
    """
    out: list[Probe] = []

    def add(name: str, origin: str, subject: Subject) -> None:
        if all(p.subject != subject for p in out):
            out.append(Probe(name, origin, subject))

    for comp in matrix.components:
        sel, kind = comp.selector, _address_kind(comp.selector)
        if kind is None:
            for pod, ep in _synthetic_pods(comp):
                add(matrix.resolve(ep), comp.name, pod)
        elif kind == "cidrs":
            for ip in _cidr_addresses(sel.cidrs):
                add(matrix.resolve(_WORLD_ENDPOINT, ip), comp.name, External(ip))
        elif kind == "entities" and "host" in (sel.entities or ()):
            add(matrix.resolve(_HOST_ENDPOINT), comp.name, Node())
    for ip in _WORLD_PROBES:
        add(matrix.resolve(_WORLD_ENDPOINT, ip), "world", External(ip))
    for ns in sorted(matrix.scope_namespaces or ()):
        pod = Pod(ns, {_PROBE_LABEL: "unmatched"})
        add(matrix.resolve(_pod_endpoint(pod, None, None)), f"unmatched:{ns}", pod)
    foreign = Pod(_PROBE_NAMESPACE, {_PROBE_LABEL: "foreign"})
    add(matrix.resolve(_pod_endpoint(foreign, None, None)), "foreign", foreign)
    return out


def probe_ports(matrix: Matrix) -> list[tuple[str, int]]:
    """(protocol, port) pairs to try: every port the rules mention (range ends and their neighbours) with
    TCP, UDP and SCTP, a port no rule covers, and ICMPv4/ICMPv6 (port 0)."""
    ranges = [p for rule in matrix.rules for p in rule.ports if _has_transport(p)]
    numbers: set[int] = set()
    for p in ranges:
        numbers.update(n for n in (p.lo - 1, p.lo, p.hi, p.hi + 1) if 1 <= n <= 65535)
    uncovered = next((n for n in range(1, 65536) if not any(p.lo <= n <= p.hi for p in ranges)), None)
    if uncovered is not None:
        numbers.add(uncovered)
    out = [(proto, n) for n in sorted(numbers) for proto in _TRANSPORT]
    return [*out, (Protocol.ICMPV4, 0), (Protocol.ICMPV6, 0)]


@dataclass(frozen=True, slots=True)
class Difference:
    """Where the policies and the matrix disagree on one (source, destination, protocol, port).

    ``kind`` is ``unexpected_allowed`` (the policies allow what the matrix does not; ``allowed_by`` names
    the policies that let it through on each side) or ``expected_denied`` (the matrix allows it, as
    ``rule``, but the policies deny it). ``port`` is ``None`` for ICMP.
    """

    kind: str
    source: str
    destination: str
    protocol: str
    port: int | None
    rule: int | None = None
    allowed_by: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = self.protocol if self.port is None else f"{self.port}/{self.protocol}"
        why = (
            f"rule {self.rule}"
            if self.rule is not None
            else "allowed by " + (", ".join(self.allowed_by) or "-")
        )
        return f"{self.kind}: {self.source} -> {self.destination} {where} ({why})"


def diff(policies: Iterable[Mapping[str, Any]], matrix: Matrix) -> list[Difference]:
    """Where Kubernetes NetworkPolicies and the matrix disagree, on :func:`probes` and :func:`probe_ports`.

    Only pairs with at least one end in a scoped namespace are compared (the rest is out of scope); a probe
    paired with itself stands for two pods of the same component. Node traffic is not compared (Kubernetes
    always allows it between a pod and its node), nor are FQDN components (no address to probe). Sorted by
    kind, source, destination, protocol, port.
    """
    pset = compile_policies(policies)
    scope = matrix.scope_namespaces or frozenset()
    prbs = [p for p in probes(matrix) if not isinstance(p.subject, Node)]
    ports = probe_ports(matrix)
    found: dict[tuple[str, str, str, str, int | None], Difference] = {}
    for src in prbs:
        for dst in prbs:
            if not (_in_scope(src.subject, scope) or _in_scope(dst.subject, scope)):
                continue
            for proto, port in ports:
                decision = pset.evaluate(src.subject, dst.subject, proto, port)
                rule = matrix.rule_for(src.name, dst.name, proto, port)
                if decision.allowed == (rule is not None):
                    continue
                shown_port = None if proto in ICMP_PROTOCOLS else port
                key_kind = "unexpected_allowed" if decision.allowed else "expected_denied"
                key = (key_kind, src.name, dst.name, proto, shown_port)
                if key not in found:
                    found[key] = Difference(
                        key_kind,
                        src.name,
                        dst.name,
                        proto,
                        shown_port,
                        rule.index if rule is not None else None,
                        tuple(_dedupe((*decision.egress.allowed_by, *decision.ingress.allowed_by))),
                    )
    return sorted(found.values(), key=lambda d: (d.kind, d.source, d.destination, d.protocol, d.port or 0))


def format_differences(differences: Sequence[Difference]) -> str:
    """One line per difference (``policies diff`` text output); a final line says how many."""
    lines = [str(d) for d in differences]
    lines.append(f"{len(differences)} difference(s)" if differences else "no difference")
    return "\n".join(lines) + "\n"


def _in_scope(subject: Subject, scope: frozenset[str]) -> bool:
    return isinstance(subject, Pod) and subject.namespace in scope


def _synthetic_pods(comp: Component) -> list[tuple[Pod, Endpoint]]:
    """Pods satisfying a pod component's selector, each with the Hubble endpoint the matrix would see."""
    sel = comp.selector
    labels, ns_labels = _satisfy(sel.pod_labels), _satisfy(sel.namespace_labels)
    if labels is None or ns_labels is None:
        return []  # the selector can match no pod
    if sel.namespaces is not None:
        namespaces = sorted(sel.namespaces)
    elif NAMESPACE_NAME_LABEL in ns_labels:
        namespaces = [ns_labels[NAMESPACE_NAME_LABEL]]
    else:
        namespaces = [f"{_PROBE_NAMESPACE}-{re.sub(r'[^a-z0-9-]', '-', comp.name)}"]
    out = []
    for ns in namespaces:
        if ns_labels.get(NAMESPACE_NAME_LABEL, ns) != ns:
            continue
        pod = Pod(ns, dict(labels), {k: v for k, v in ns_labels.items() if k != NAMESPACE_NAME_LABEL})
        out.append((pod, _pod_endpoint(pod, sel.service_account, sel.workload)))
    return out


def _pod_endpoint(
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


def _cidr_addresses(cidrs: Sequence[tuple[Network, tuple[Network, ...]]]) -> list[str]:
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
