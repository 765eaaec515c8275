"""Static evaluator of CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (``cilium.io/v2``).

Stage: offline tooling (``flow-auditor policies diff``); no API server, no agent. Input: policy manifests
as plain dicts, compiled once by :func:`auditor.kube.cilium_compile.compile_cilium`; the ends of a
connection as the subjects of :mod:`auditor.kube.model`. Output: per side a
:class:`~auditor.kube.model.Side` with port-set grants.

Semantics (Cilium's policy language documentation; where a point is not stated there, the behaviour of
Cilium's policy code as of 1.15-1.17, and the warnings say so):

- Selection. ``endpointSelector`` selects pods; in a namespaced CiliumNetworkPolicy only pods of the
  policy's namespace. ``nodeSelector`` (clusterwide only) selects nodes (:class:`Node`, host firewall).
- Default deny. A policy puts the endpoints it selects into default deny for a direction when
  ``enableDefaultDeny.<direction>`` says so; unset, when it has rules (``ingress``/``ingressDeny``,
  ``egress``/``egressDeny``) for that direction. An endpoint is in default deny when any policy puts it
  there; then only what some rule allows passes. Otherwise everything passes (rules only add to "all").
- Deny rules (``ingressDeny``/``egressDeny``) win over every allow, of any policy kind.
- A rule's peers (L3) and ports (L4) are AND-ed. L3: ``from/toEndpoints`` (label selectors),
  ``from/toEntities``, ``from/toCIDR``, ``from/toCIDRSet`` (``except``), ``toFQDNs``; one kind per rule
  (Cilium rejects rules combining kinds). A rule without L3 but with ``toPorts``/``icmps`` matches every
  peer; an empty rule (``{}``) matches nothing (it only puts the endpoint into default deny).
- Endpoint selectors: keys carry a label source (``k8s:``, ``reserved:``, ``any:``; none = any source).
  In a namespaced policy a selector without ``io.kubernetes.pod.namespace`` is restricted to the policy's
  namespace, unless it names a ``reserved:`` label; a selector on namespace labels
  (``io.cilium.k8s.namespace.labels.*``) without a namespace key is evaluated as Cilium's code does it
  (any namespace with those labels), with a warning: Cilium's documentation says such selectors are only
  supported in clusterwide policies. In a clusterwide policy a selector without namespace key matches
  pods of every namespace (never reserved identities).
- Entities: ``world`` (addresses outside the cluster; ``world-ipv4``/``world-ipv6`` by family), ``host``,
  ``remote-node``, ``kube-apiserver``, ``health``, ``init``, ``ingress``, ``unmanaged``; ``cluster`` = every
  pod and every reserved identity except ``world``; ``all`` = everything.
- CIDR rules match addresses outside the cluster only (Cilium's default: not pods, not nodes).
- ``toFQDNs`` (``matchName``, ``matchPattern`` with ``*`` for one DNS label's characters and a leading
  ``**.`` for any depth) matches destinations known by name (components declared with ``fqdns``). Which
  addresses a name resolves to, and whether DNS answers are seen by the proxy at run time, cannot be decided
  statically: a warning says when no DNS rule (``rules.dns``) of the source's policies exists.
- ``toPorts``: ``port`` (number, ``"0"`` = every port, or a name resolved on the destination pod),
  ``endPort``, ``protocol`` TCP/UDP/SCTP or ANY/empty (all three). ICMP only through ``icmps`` (the
  comparison probes echo requests: type 8, IPv6 128). A rule with L7 ``rules`` (http, kafka, dns, l7proto)
  or ``serverNames``/``listener`` allows the port at L4 but filters what passes: "allowed, L7-restricted".
- Constructs whose meaning depends on the running cluster (``toServices``, ``from/toGroups``,
  ``from/toNodes``, ``cidrGroupRef``/``cidrGroupSelector``, ``from/toRequires``, ``authentication``) are
  not evaluated: they match nothing (``*Requires``: ignored), and a warning names the policy and field.

Error policy: validation happens when compiling (:mod:`auditor.kube.cilium_compile`); evaluation never
fails, and what it cannot decide goes to the warnings (:class:`~auditor.kube.model.Notes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from auditor.kube.model import (
    ALL,
    NONE,
    External,
    Grant,
    Network,
    Node,
    Notes,
    Pod,
    PortSet,
    Reserved,
    Side,
    Subject,
)
from auditor.kube.netpol import cidr_matches, resolve_named_port

API_VERSION: Final = "cilium.io/v2"
KINDS: Final[tuple[str, str]] = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
NS_KEY: Final = "io.kubernetes.pod.namespace"
NS_LABELS_PREFIX: Final = "io.cilium.k8s.namespace.labels."
SA_KEY: Final = "io.cilium.k8s.policy.serviceaccount"
SOURCES: Final = frozenset({"k8s", "any", "reserved", "cidr", "fqdn", "container", "unspec", "cilium"})
RESERVED_ENTITIES: Final = frozenset(
    {"host", "remote-node", "kube-apiserver", "health", "init", "ingress", "unmanaged"}
)
ENTITIES: Final = frozenset({"world", "world-ipv4", "world-ipv6", "cluster", "all", *RESERVED_ENTITIES})
L7_KEYS: Final = frozenset({"http", "kafka", "dns", "l7proto", "l7"})


# --------------------------------------------------------------------------------------------------
# Labels of a subject, as Cilium's identities carry them

Labels = dict[str, dict[str, str]]  # key -> {source: value}


def identity_labels(subject: Subject) -> Labels:
    out: Labels = {}

    def put(source: str, key: str, value: str) -> None:
        out.setdefault(key, {})[source] = value

    if isinstance(subject, Pod):
        for k, v in subject.labels.items():
            put("k8s", k, v)
        put("k8s", NS_KEY, subject.namespace)
        for k, v in subject.all_namespace_labels().items():
            put("k8s", NS_LABELS_PREFIX + k, v)
        if subject.service_account is not None:
            put("k8s", SA_KEY, subject.service_account)
        put("k8s", "io.cilium.k8s.policy.cluster", "default")
    elif isinstance(subject, Node):
        put("reserved", "host", "")
    elif isinstance(subject, Reserved):
        put("reserved", subject.entity, "")
    else:
        put("reserved", "world", "")
    return out


@dataclass(frozen=True, slots=True)
class Requirement:
    source: str | None  # None: any source
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Labels) -> bool:
        by_source = labels.get(self.key, {})
        found = [v for s, v in by_source.items() if self.source is None or s == self.source]
        if self.operator == "In":
            return any(v in self.values for v in found)
        if self.operator == "NotIn":
            return not any(v in self.values for v in found)
        if self.operator == "Exists":
            return bool(found)
        return not found


@dataclass(frozen=True, slots=True)
class EndpointSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def has_key(self, key: str) -> bool:
        return any(r.key == key for r in self.requirements)

    def has_prefix(self, prefix: str) -> bool:
        return any(r.key.startswith(prefix) for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)

    def plus(self, req: Requirement) -> EndpointSelector:
        return EndpointSelector((*self.requirements, req))


# --------------------------------------------------------------------------------------------------
# Compiled rules


@dataclass(frozen=True, slots=True)
class FqdnSelector:
    text: str
    regex: re.Pattern[str]

    def matches(self, name: str) -> bool:
        return bool(self.regex.fullmatch(name.rstrip(".").lower()))


@dataclass(frozen=True, slots=True)
class PortRule:
    """One entry of ``toPorts``: ports (numbers/ranges by protocol, or names) and whether L7 filters."""

    numbered: PortSet
    named: tuple[tuple[str, str | None], ...] = ()  # (name, protocol or None for ANY)
    l7: bool = False

    def ports(self, destination: Subject, notes: Notes, ref: str) -> PortSet:
        if not self.named:
            return self.numbered
        return PortSet.union(
            [self.numbered, *(resolve_named_port(n, p, destination, notes, ref) for n, p in self.named)]
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of ingress/egress (or their Deny lists)."""

    endpoints: tuple[EndpointSelector, ...] = ()
    entities: frozenset[str] = frozenset()
    cidrs: tuple[tuple[Network, tuple[Network, ...]], ...] = ()
    fqdns: tuple[FqdnSelector, ...] = ()
    any_peer: bool = False  # no L3 part but an L4 part: every peer
    to_ports: tuple[PortRule, ...] = ()
    icmps: PortSet = NONE
    has_l4: bool = False

    def peer_matches(self, peer: Subject, peer_labels: Labels, notes: Notes, ref: str) -> bool:
        if self.any_peer:
            return True
        if any(sel.matches(peer_labels) for sel in self.endpoints):
            return True
        if self.entities and _entity_matches(self.entities, peer, notes, ref):
            return True
        if any(cidr_matches(net, ex, peer, notes, ref) for net, ex in self.cidrs if not _is_pod(peer)):
            return True
        return isinstance(peer, External) and any(f.matches(n) for f in self.fqdns for n in peer.names)

    def grants(self, ref: str, destination: Subject, notes: Notes, policy: str) -> list[Grant]:
        """The grants of a rule whose peer matched; ``ref`` names it in grants, ``policy`` in notes."""
        if not self.has_l4:
            return [Grant(ref, ALL)]
        out = [Grant(ref, self.icmps)] if self.icmps else []
        for pr in self.to_ports:
            ports = pr.ports(destination, notes, policy)
            if ports:
                out.append(Grant(ref, ports, pr.l7))
        return out


def _is_pod(subject: Subject) -> bool:
    return isinstance(subject, Pod)


def _entity_matches(entities: frozenset[str], peer: Subject, notes: Notes, ref: str) -> bool:
    if "all" in entities:
        return True
    if isinstance(peer, External):
        if "world" in entities:
            return True
        family = {"world-ipv4": 4, "world-ipv6": 6}
        wanted = {family[e] for e in entities if e in family}
        if not wanted:
            return False
        if peer.version is not None:
            return peer.version in wanted
        notes.add(
            f"{ref}: whether {', '.join(peer.names)} resolves to IPv{'/IPv'.join(map(str, sorted(wanted)))} "
            "cannot be decided statically: counted as not matching"
        )
        return False
    if "cluster" in entities:
        return True
    if isinstance(peer, Node):
        return "host" in entities
    if isinstance(peer, Reserved):
        return peer.entity in entities
    return False


@dataclass(frozen=True)
class CiliumPolicy:
    kind: str
    name: str
    namespace: str | None  # None: clusterwide
    endpoint_selector: EndpointSelector | None
    node_selector: EndpointSelector | None
    ingress: tuple[Rule, ...]
    ingress_deny: tuple[Rule, ...]
    egress: tuple[Rule, ...]
    egress_deny: tuple[Rule, ...]
    default_deny_ingress: bool
    default_deny_egress: bool
    has_dns_rule: bool = False

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    @property
    def short_ref(self) -> str:
        prefix = "cnp" if self.namespace else "ccnp"
        return f"{prefix}:{self.namespace}/{self.name}" if self.namespace else f"{prefix}:{self.name}"

    def selects(self, subject: Subject, labels: Labels) -> bool:
        if isinstance(subject, Pod):
            if self.endpoint_selector is None:
                return False
            if self.namespace is not None and subject.namespace != self.namespace:
                return False
            return self.endpoint_selector.matches(labels)
        if isinstance(subject, Node):
            return self.node_selector is not None and self.node_selector.matches(
                {k: {"k8s": v} for k, v in subject.labels}
            )
        return False


# --------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class CiliumPolicySet:
    """Compiled Cilium policies. Build with :func:`compile_cilium`."""

    policies: tuple[CiliumPolicy, ...]
    notes: Notes = field(default_factory=Notes)

    def side(self, subject: Subject, peer: Subject, destination: Subject, *, egress: bool) -> Side:
        """What the policies selecting ``subject`` decide about ``peer`` in one direction."""
        labels = identity_labels(subject)
        selecting = [p for p in self.policies if p.selects(subject, labels)]
        if not selecting:
            return Side(False)
        peer_labels = identity_labels(peer)
        isolated = any(p.default_deny_egress if egress else p.default_deny_ingress for p in selecting)
        allows: list[Grant] = []
        denies: list[Grant] = []
        for pol in selecting:
            rules, deny_rules = (pol.egress, pol.egress_deny) if egress else (pol.ingress, pol.ingress_deny)
            for rule in rules:
                if rule.peer_matches(peer, peer_labels, self.notes, pol.ref):
                    allows.extend(rule.grants(pol.short_ref, destination, self.notes, pol.ref))
                    if rule.fqdns and not any(p.has_dns_rule for p in selecting):
                        self.notes.add(
                            f"{pol.ref}: toFQDNs without a DNS rule (toPorts rules.dns) in the policies of "
                            "the same endpoints: Cilium never learns the addresses, so at run time this "
                            "allows nothing"
                        )
            for rule in deny_rules:
                if rule.peer_matches(peer, peer_labels, self.notes, pol.ref):
                    denies.extend(rule.grants(pol.short_ref, destination, self.notes, pol.ref))
        return Side(isolated, tuple(allows), tuple(denies))
