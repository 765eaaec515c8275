"""Compiling CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy manifests for :mod:`auditor.kube.cilium`.

Stage: offline tooling (``flow-auditor policies diff``). Input: plain dicts; output: a
:class:`~auditor.kube.cilium.CiliumPolicySet`. The semantics the compiled form encodes (namespace
restriction of selectors, default deny, one peer kind per rule…) are described in :mod:`auditor.kube.cilium`.

Error policy: a malformed policy raises :class:`~auditor.kube.checks.PolicyError` naming the object
(``CiliumNetworkPolicy ns/name``) and the field, also for two policies of one kind and name in one
namespace; unknown fields are errors under ``strict`` and warnings otherwise; constructs that cannot be
evaluated offline are warnings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from auditor.kube.checks import Checker, PolicyError, note_default_namespace, object_ref
from auditor.kube.cilium import (
    API_VERSION,
    ENTITIES,
    KINDS,
    L7_KEYS,
    NS_KEY,
    NS_LABELS_PREFIX,
    SOURCES,
    CiliumPolicy,
    CiliumPolicySet,
    EndpointSelector,
    FqdnSelector,
    PortRule,
    Requirement,
    Rule,
)
from auditor.kube.model import Network, Notes, PortSet, label_key_problem, label_value_problem

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
        if not clusterwide:
            note_default_namespace(obj, notes)
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
        entities = self.entities(r.get(f"{direction}Entities"), f"{key}.{direction}Entities")
        cidrs = self.cidrs(r, key, direction)
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
        has_l4 = bool(r.get("toPorts") or r.get("icmps"))  # an empty list is no L4 part, as omitted
        has_l3 = bool(present)
        return Rule(
            endpoints=endpoints,
            entities=entities,
            cidrs=cidrs,
            fqdns=fqdns,
            any_peer=not has_l3 and has_l4,
            to_ports=to_ports,
            icmps=icmps,
            has_l4=has_l4,
        )

    def entities(self, value: Any, key: str) -> frozenset[str]:
        out: set[str] = set()
        for i, e in enumerate(self.sequence(value, key)):
            if e not in ENTITIES:
                raise self.err(
                    f"{key}[{i}]", f"unknown entity {e!r} (expected one of: {', '.join(sorted(ENTITIES))})"
                )
            out.add(e)
        return frozenset(out)

    def cidrs(
        self, r: dict[str, Any], key: str, direction: str
    ) -> tuple[tuple[Network, tuple[Network, ...]], ...]:
        """``<direction>CIDR`` and ``<direction>CIDRSet`` (with ``except``) of one rule."""
        out = [
            self.cidr_with_excepts(c, None, f"{key}.{direction}CIDR[{i}]")
            for i, c in enumerate(self.sequence(r.get(f"{direction}CIDR"), f"{key}.{direction}CIDR"))
        ]
        for i, item in enumerate(self.sequence(r.get(f"{direction}CIDRSet"), f"{key}.{direction}CIDRSet")):
            k = f"{key}.{direction}CIDRSet[{i}]"
            s = self.mapping(item, k, frozenset({"cidr", "except", "cidrGroupRef", "cidrGroupSelector"}))
            if "cidr" in s:
                out.append(self.cidr_with_excepts(s["cidr"], s.get("except"), k))
            elif s:
                self.warn(
                    k,
                    "cidrGroupRef/cidrGroupSelector depend on the cluster and are not evaluated: "
                    "match nothing here",
                )
            else:
                raise self.err(k, "cidr, cidrGroupRef or cidrGroupSelector is required")
        return tuple(out)

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
        return EndpointSelector(
            tuple(
                Requirement(source, bare, op, values)
                for (source, bare), op, values in self.label_selector(value, key, self.label_key_with_source)
            )
        )

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
