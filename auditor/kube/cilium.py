"""Static evaluator of CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (``cilium.io/v2``).

Stage: offline tooling (``flow-auditor policies diff``); no API server, no agent. Input: policy manifests as
plain dicts, compiled once by :func:`compile_cilium`; the ends of a connection as the subjects of
:mod:`auditor.kube.model`. Output: per side a :class:`~auditor.kube.model.Side` with port-set grants.

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

Error policy: a malformed policy raises :class:`~auditor.kube.checks.PolicyError` naming the object
(``CiliumNetworkPolicy ns/name``) and the field; unknown fields are errors under ``strict`` and warnings
otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from auditor.kube.checks import Checker, PolicyError, object_ref
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
    label_key_problem,
    label_value_problem,
)
from auditor.kube.netpol import cidr_matches, resolve_named_port

API_VERSION: Final = "cilium.io/v2"
KINDS: Final = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
NS_KEY: Final = "io.kubernetes.pod.namespace"
NS_LABELS_PREFIX: Final = "io.cilium.k8s.namespace.labels."
SA_KEY: Final = "io.cilium.k8s.policy.serviceaccount"
SOURCES: Final = frozenset({"k8s", "any", "reserved", "cidr", "fqdn", "container", "unspec", "cilium"})
RESERVED_ENTITIES: Final = frozenset(
    {"host", "remote-node", "kube-apiserver", "health", "init", "ingress", "unmanaged"}
)
ENTITIES: Final = frozenset({"world", "world-ipv4", "world-ipv6", "cluster", "all", *RESERVED_ENTITIES})
L7_KEYS: Final = frozenset({"http", "kafka", "dns", "l7proto", "l7"})
_OPERATORS: Final = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})
_ICMP_ECHO: Final = {("IPv4", 8): "ICMPv4", ("IPv6", 128): "ICMPv6"}
_ICMP_NAMES: Final = {("IPv4", "EchoRequest"): 8, ("IPv6", "EchoRequest"): 128}
_SPEC_KEYS: Final = frozenset(
    {
        "endpointSelector",
        "nodeSelector",
        "ingress",
        "ingressDeny",
        "egress",
        "egressDeny",
        "enableDefaultDeny",
        "description",
        "labels",
        "log",
    }
)
_L3: Final = {
    "from": ("fromEndpoints", "fromEntities", "fromCIDR", "fromCIDRSet", "fromGroups", "fromNodes"),
    "to": (
        "toEndpoints",
        "toEntities",
        "toCIDR",
        "toCIDRSet",
        "toFQDNs",
        "toServices",
        "toGroups",
        "toNodes",
    ),
}
_UNSUPPORTED: Final = frozenset({"fromGroups", "fromNodes", "toServices", "toGroups", "toNodes"})
_PORT_RULE_KEYS: Final = frozenset(
    {"ports", "rules", "serverNames", "listener", "terminatingTLS", "originatingTLS"}
)


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


# --------------------------------------------------------------------------------------------------
# Compiling


def compile_cilium(
    objects: Sequence[Mapping[str, Any]], *, strict: bool = False, notes: Notes | None = None
) -> CiliumPolicySet:
    """Compile the Cilium policies among ``objects`` (other kinds are ignored). Raises
    :class:`PolicyError`, also for two policies of one kind and name in one namespace."""
    notes = notes if notes is not None else Notes()
    out: list[CiliumPolicy] = []
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        kind = obj.get("kind")
        if obj.get("apiVersion") != API_VERSION or kind not in KINDS:
            continue
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        name = str(meta.get("name") or "")
        clusterwide = kind == "CiliumClusterwideNetworkPolicy"
        namespace = None if clusterwide else str(meta.get("namespace") or "default")
        ref = object_ref(obj)
        if not name:
            raise PolicyError(ref, "metadata.name", "required field is missing")
        if (str(kind), namespace or "", name) in seen:
            raise PolicyError(
                ref, "metadata.name", "duplicate policy name" + (" in this namespace" if namespace else "")
            )
        seen.add((str(kind), namespace or "", name))
        c = _Compiler(ref, strict=strict, notes=notes)
        specs: list[tuple[Any, str]] = []
        if obj.get("spec") is not None:
            specs.append((obj["spec"], "spec"))
        specs.extend((s, f"specs[{i}]") for i, s in enumerate(c.sequence(obj.get("specs"), "specs")))
        if not specs:
            raise c.err("spec", "a policy needs spec or specs")
        for spec, key in specs:
            out.append(c.policy(str(kind), name, namespace, spec, key))
    return CiliumPolicySet(tuple(out), notes)


class _Compiler(Checker):
    namespace: str | None = None

    def policy(self, kind: str, name: str, namespace: str | None, value: Any, key: str) -> CiliumPolicy:
        self.namespace = namespace
        spec = self.mapping(value, key, _SPEC_KEYS)
        has_ep, has_node = "endpointSelector" in spec, "nodeSelector" in spec
        if has_ep == has_node:
            raise self.err(key, "exactly one of endpointSelector and nodeSelector is required")
        if has_node and namespace is not None:
            raise self.err(f"{key}.nodeSelector", "only a CiliumClusterwideNetworkPolicy can select nodes")
        endpoint_selector = node_selector = None
        if has_ep:
            endpoint_selector = self.selector(spec["endpointSelector"], f"{key}.endpointSelector")
            if namespace is not None and endpoint_selector.has_key(NS_KEY):
                self.warn(
                    f"{key}.endpointSelector",
                    "a namespaced policy's endpointSelector always applies to its own namespace only",
                )
        else:
            node_selector = self.selector(spec["nodeSelector"], f"{key}.nodeSelector")
        lists = {}
        for field_name, direction, deny in (
            ("ingress", "from", False),
            ("ingressDeny", "from", True),
            ("egress", "to", False),
            ("egressDeny", "to", True),
        ):
            items = self.sequence(spec.get(field_name), f"{key}.{field_name}")
            lists[field_name] = tuple(
                self.rule(r, f"{key}.{field_name}[{i}]", direction, deny) for i, r in enumerate(items)
            )
        dd = self.mapping(
            spec.get("enableDefaultDeny"), f"{key}.enableDefaultDeny", frozenset({"ingress", "egress"})
        )
        for d in ("ingress", "egress"):
            if d in dd and not isinstance(dd[d], bool):
                raise self.err(f"{key}.enableDefaultDeny.{d}", "expected true or false")
        dd_in = dd["ingress"] if "ingress" in dd else bool(lists["ingress"] or lists["ingressDeny"])
        dd_eg = dd["egress"] if "egress" in dd else bool(lists["egress"] or lists["egressDeny"])
        has_dns = _has_dns_rule(spec.get("egress"))
        return CiliumPolicy(
            kind,
            name,
            namespace,
            endpoint_selector,
            node_selector,
            lists["ingress"],
            lists["ingressDeny"],
            lists["egress"],
            lists["egressDeny"],
            dd_in,
            dd_eg,
            has_dns,
        )

    def rule(self, value: Any, key: str, direction: str, deny: bool) -> Rule:
        l3 = _L3[direction]
        allowed = {*l3, "toPorts", "icmps"}
        if not deny:
            allowed |= {f"{direction}Requires", "authentication"}
        if deny:
            allowed -= {"toFQDNs"}
        r = self.mapping(value, key, frozenset(allowed))
        present = [k for k in l3 if r.get(k)]
        if len(present) > 1:
            raise self.err(key, f"Cilium does not accept {present[0]} and {present[1]} in one rule")
        for k in present:
            if k in _UNSUPPORTED:
                self.warn(
                    f"{key}.{k}", "depends on the running cluster and is not evaluated: matches nothing here"
                )
        for k in (f"{direction}Requires", "authentication"):
            if r.get(k):
                self.warn(f"{key}.{k}", "not evaluated: ignored (the result may be wider than enforced)")
        endpoints = tuple(
            self.peer_selector(s, f"{key}.{direction}Endpoints[{i}]")
            for i, s in enumerate(
                self.sequence(r.get(f"{direction}Endpoints"), f"{key}.{direction}Endpoints")
            )
        )
        entities: set[str] = set()
        for i, e in enumerate(self.sequence(r.get(f"{direction}Entities"), f"{key}.{direction}Entities")):
            if e not in ENTITIES:
                raise self.err(
                    f"{key}.{direction}Entities[{i}]",
                    f"unknown entity {e!r} (expected one of: {', '.join(sorted(ENTITIES))})",
                )
            entities.add(e)
        cidrs = [
            self.cidr_with_excepts(c, None, f"{key}.{direction}CIDR[{i}]")
            for i, c in enumerate(self.sequence(r.get(f"{direction}CIDR"), f"{key}.{direction}CIDR"))
        ]
        for i, item in enumerate(self.sequence(r.get(f"{direction}CIDRSet"), f"{key}.{direction}CIDRSet")):
            k = f"{key}.{direction}CIDRSet[{i}]"
            s = self.mapping(item, k, frozenset({"cidr", "except", "cidrGroupRef", "cidrGroupSelector"}))
            if "cidr" in s:
                cidrs.append(self.cidr_with_excepts(s["cidr"], s.get("except"), k))
            elif s:
                self.warn(
                    k,
                    "cidrGroupRef/cidrGroupSelector depend on the cluster and are not evaluated: "
                    "match nothing here",
                )
            else:
                raise self.err(k, "cidr, cidrGroupRef or cidrGroupSelector is required")
        fqdns = (
            tuple(
                self.fqdn(f, f"{key}.toFQDNs[{i}]")
                for i, f in enumerate(self.sequence(r.get("toFQDNs"), f"{key}.toFQDNs"))
            )
            if direction == "to" and not deny
            else ()
        )
        to_ports = tuple(
            self.port_rule(
                p, f"{key}.toPorts[{i}]", direction, deny, fqdns_or_ip=bool(fqdns or cidrs or entities)
            )
            for i, p in enumerate(self.sequence(r.get("toPorts"), f"{key}.toPorts"))
        )
        icmps = self.icmps(r.get("icmps"), f"{key}.icmps")
        has_l4 = ("toPorts" in r and r["toPorts"] is not None) or ("icmps" in r and r["icmps"] is not None)
        has_l3 = bool(present)
        return Rule(
            endpoints=endpoints,
            entities=frozenset(entities),
            cidrs=tuple(cidrs),
            fqdns=fqdns,
            any_peer=not has_l3 and has_l4,
            to_ports=to_ports,
            icmps=icmps,
            has_l4=has_l4,
        )

    def port_rule(self, value: Any, key: str, direction: str, deny: bool, *, fqdns_or_ip: bool) -> PortRule:
        allowed = frozenset({"ports"}) if deny else _PORT_RULE_KEYS
        p = self.mapping(value, key, allowed)
        numbered: dict[str, list[tuple[int, int]]] = {}
        named: list[tuple[str, str | None]] = []
        entries = self.sequence(p.get("ports"), f"{key}.ports")
        if not entries:
            entries = [{}]
        for i, e in enumerate(entries):
            k = f"{key}.ports[{i}]"
            e = self.mapping(e, k, frozenset({"port", "endPort", "protocol"}))
            proto = str(e.get("protocol") or "ANY").upper()
            if proto not in ("TCP", "UDP", "SCTP", "ANY"):
                raise self.err(
                    f"{k}.protocol", f"unknown protocol {e.get('protocol')!r} (TCP, UDP, SCTP or ANY)"
                )
            protos = ("TCP", "UDP", "SCTP") if proto == "ANY" else (proto,)
            port = e.get("port", "0")
            text = str(port) if isinstance(port, int | str) and not isinstance(port, bool) else None
            if text is None or not text:
                raise self.err(f"{k}.port", "expected a port number or a port name")
            end = e.get("endPort")
            if text.isdigit():
                lo = int(text)
                if not 0 <= lo <= 65535:
                    raise self.err(f"{k}.port", f"port {lo} out of range (0-65535)")
                if end is not None and (
                    isinstance(end, bool) or not isinstance(end, int) or not lo <= end <= 65535
                ):
                    raise self.err(f"{k}.endPort", f"endPort must be a number from {lo} to 65535")
                lo_hi = (1, 65535) if lo == 0 else (lo, end if end else lo)
                for pr in protos:
                    numbered.setdefault(pr, []).append(lo_hi)
            else:
                if label_value_problem(text) or len(text) > 15:
                    raise self.err(f"{k}.port", f"invalid port name {text!r}")
                if direction == "to" and fqdns_or_ip:
                    raise self.err(
                        f"{k}.port",
                        f"named port {text!r} towards an address: a name can only be resolved on a pod",
                    )
                named.append((text.lower(), None if proto == "ANY" else proto))
        rules = self.mapping(p.get("rules"), f"{key}.rules", L7_KEYS)
        if direction == "from" and rules.get("dns"):
            raise self.err(f"{key}.rules.dns", "DNS rules apply to egress only")
        l7 = any(bool(v) for v in rules.values()) or bool(p.get("serverNames")) or bool(p.get("listener"))
        return PortRule(PortSet.of(numbered), tuple(named), l7)

    def icmps(self, value: Any, key: str) -> PortSet:
        out: dict[str, list[tuple[int, int]]] = {}
        for i, item in enumerate(self.sequence(value, key)):
            m = self.mapping(item, f"{key}[{i}]", frozenset({"fields"}))
            for j, f in enumerate(self.sequence(m.get("fields"), f"{key}[{i}].fields")):
                k = f"{key}[{i}].fields[{j}]"
                f = self.mapping(f, k, frozenset({"type", "family"}))
                family = f.get("family") or "IPv4"
                if family not in ("IPv4", "IPv6"):
                    raise self.err(f"{k}.family", f"unknown family {family!r} (IPv4 or IPv6)")
                t = f.get("type")
                if isinstance(t, str) and not t.isdigit():
                    t = _ICMP_NAMES.get((family, t), -1)
                elif isinstance(t, str):
                    t = int(t)
                if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= 255:
                    if t == -1:
                        continue  # a named type other than the echo request: not probed
                    raise self.err(f"{k}.type", "expected an ICMP type (0-255)")
                proto = _ICMP_ECHO.get((family, t))
                if proto is not None:
                    out.setdefault(proto, []).append((0, 0))
        return PortSet.of(out)

    def fqdn(self, value: Any, key: str) -> FqdnSelector:
        f = self.mapping(value, key, frozenset({"matchName", "matchPattern"}))
        if len(f) != 1:
            raise self.err(key, "exactly one of matchName and matchPattern is required")
        if "matchName" in f:
            name = self.string(f["matchName"], f"{key}.matchName").rstrip(".").lower()
            return FqdnSelector(name, re.compile(re.escape(name)))
        pattern = self.string(f["matchPattern"], f"{key}.matchPattern").rstrip(".").lower()
        if pattern == "*":
            return FqdnSelector(pattern, re.compile(r".+"))
        body, prefix = pattern, ""
        if pattern.startswith("**."):
            body, prefix = pattern[3:], r"(?:[-a-z0-9_]+\.)+"
        regex = prefix + re.escape(body).replace(r"\*", "[-a-z0-9_]*")
        return FqdnSelector(pattern, re.compile(regex))

    def peer_selector(self, value: Any, key: str) -> EndpointSelector:
        sel = self.selector(value, key)
        if sel.has_key(NS_KEY) or sel.has_source("reserved"):
            return sel
        if self.namespace is None:
            return sel.plus(Requirement("k8s", NS_KEY, "Exists"))
        if sel.has_prefix(NS_LABELS_PREFIX):
            self.warn(
                key,
                "a namespace-label selector without io.kubernetes.pod.namespace in a namespaced policy: "
                "Cilium's code matches pods of every namespace with those labels (evaluated so), its "
                "documentation supports it in clusterwide policies only; add the namespace key or use a "
                "CiliumClusterwideNetworkPolicy",
            )
            return sel
        return sel.plus(Requirement("k8s", NS_KEY, "In", frozenset({self.namespace})))

    def selector(self, value: Any, key: str) -> EndpointSelector:
        s = self.mapping(value, key, frozenset({"matchLabels", "matchExpressions"}))
        reqs: list[Requirement] = []
        labels = s.get("matchLabels") or {}
        if not isinstance(labels, dict):
            raise self.err(f"{key}.matchLabels", "expected a mapping of strings")
        for k, v in labels.items():
            source, bare = self.label_key_with_source(k, f"{key}.matchLabels")
            reqs.append(
                Requirement(source, bare, "In", frozenset({self.label_value(v, f"{key}.matchLabels.{k}")}))
            )
        for i, e in enumerate(self.sequence(s.get("matchExpressions"), f"{key}.matchExpressions")):
            k = f"{key}.matchExpressions[{i}]"
            e = self.mapping(e, k, frozenset({"key", "operator", "values"}))
            if "key" not in e or "operator" not in e:
                raise self.err(k, "key and operator are required")
            op = e["operator"]
            if op not in _OPERATORS:
                raise self.err(f"{k}.operator", f"unknown operator {op!r}")
            values = self.sequence(e.get("values"), f"{k}.values")
            if op in ("In", "NotIn") and not values:
                raise self.err(f"{k}.values", f"operator {op} needs values")
            if op in ("Exists", "DoesNotExist") and values:
                raise self.err(f"{k}.values", f"operator {op} takes no values")
            source, bare = self.label_key_with_source(e["key"], f"{k}.key")
            reqs.append(
                Requirement(
                    source,
                    bare,
                    op,
                    frozenset(self.label_value(v, f"{k}.values[{j}]") for j, v in enumerate(values)),
                )
            )
        return EndpointSelector(tuple(reqs))

    def label_key_with_source(self, value: Any, key: str) -> tuple[str | None, str]:
        text = self.string(value, key)
        source: str | None = None
        head, colon, rest = text.partition(":")
        if colon:
            if head not in SOURCES:
                raise self.err(key, f"unknown label source {head!r} in {text!r} (k8s, reserved, any…)")
            source, text = (None if head == "any" else head), rest
        problem = label_key_problem(text)
        if problem:
            raise self.err(key, problem)
        return source, text


def _has_dns_rule(egress: Any) -> bool:
    if not isinstance(egress, list):
        return False
    for rule in egress:
        if not isinstance(rule, dict):
            continue
        for pr in rule.get("toPorts") or ():
            if isinstance(pr, dict) and isinstance(pr.get("rules"), dict) and pr["rules"].get("dns"):
                return True
    return False
