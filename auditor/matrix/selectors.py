"""Component selectors: their YAML form, their compiled form and matching an endpoint (DESIGN §4.2, §4.4).

Stage: configuration for :class:`SelectorReader` (compiles one ``components.<name>`` mapping, once per matrix
load); per flow for :class:`Selector` and :func:`endpoint_labels` (pure; :class:`~auditor.matrix.model.Matrix`
calls them and ``auditor.classify`` caches the label part per identity). A new selector field is a change to
this module only: its key, its compiled field, its compilation and its match.

All fields of a selector must match (AND). The *label part* (namespaces, labels, namespace labels, service
account, workload, entities) depends only on the endpoint's identity; the *address part* (``cidrs``,
``fqdns``) depends on the flow's address and DNS names, and a selector that has one matches only endpoints
outside the cluster (:func:`outside_cluster`), as Cilium's CIDR and FQDN rules select. Entities are
Cilium's reserved identities, read from an endpoint's ``reserved:`` labels and its identity number as
Cilium's ``toEntities`` reads them.

Error policy: compiling raises :class:`~auditor.matrix.nodes.MatrixError` naming file, line and key (unknown
fields, empty selectors, bad operators, entities, CIDRs, FQDNs and port names); matching never raises (an
address that is not an IP is in no CIDR).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import yaml

from auditor.matrix.nodes import MatrixError, NodeReader
from auditor.matrix.ports import parse_port
from auditor.model import ICMP_PROTOCOLS, LOCAL_SCOPE_IDENTITY, Endpoint

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cilium reserved identities (pkg/identity numeric values) and their label names.
ENTITIES: Final = frozenset(
    {"world", "host", "remote-node", "kube-apiserver", "health", "ingress", "unmanaged", "init"}
)
RESERVED_IDENTITIES: Final[dict[int, str]] = {
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world",
    10: "world",
}
# Entity names as they appear in reserved:* labels, folded onto the matrix vocabulary.
_RESERVED_LABEL_ENTITY: Final[dict[str, str]] = {
    "world-ipv4": "world",
    "world-ipv6": "world",
    **{e: e for e in ENTITIES},
}
# An endpoint with several reserved labels matches a selector of any of them; when it matches no
# component, the most specific one names it.
ENTITY_PRECEDENCE: Final = (
    "kube-apiserver",
    "health",
    "ingress",
    "init",
    "host",
    "remote-node",
    "world",
    "unmanaged",
)

_ADDRESS_LABEL_PREFIXES: Final = ("cidr:", "fqdn:")
_LABEL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CILIUM_LABEL_SOURCES: Final = frozenset({"k8s", "any", "reserved", "container", "cidr", "fqdn", "unspec"})
_K8S_NS_LABEL_PREFIX: Final = "io.cilium.k8s.namespace.labels."
_K8S_SA_LABEL: Final = "io.cilium.k8s.policy.serviceaccount"
_K8S_NS_LABEL: Final = "io.kubernetes.pod.namespace"

NAME_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
_PORT_NAME_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Names the auditor gives to peers that match no component (entities, also as reserved labels spell them,
# and ``unknown``; ``ns:<namespace>`` cannot pass NAME_RE): a component named so would capture, or hide
# behind, that traffic.
RESERVED_NAMES: Final = ENTITIES | {"world-ipv4", "world-ipv6", "unknown"}

_SELECTOR_KEYS: Final = {
    "namespace",
    "namespaces",
    "namespaceLabels",
    "labels",
    "matchExpressions",
    "serviceAccount",
    "workload",
    "entities",
    "cidrs",
    "fqdns",
    "containerPorts",
    "description",
}


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One matchLabels entry or matchExpressions requirement on a label dictionary."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present


@dataclass(frozen=True, slots=True)
class Selector:
    """A compiled component selector. All given fields must match (AND).

    The *label part* (namespaces, labels, namespace labels, service account, workload, entities) depends
    only on the endpoint's identity and is cached by the classifier; the *address part* (``cidrs``,
    ``fqdns``) depends on the flow's IP address and DNS names and is checked per flow.
    """

    namespaces: frozenset[str] | None = None
    pod_labels: tuple[LabelRequirement, ...] = ()
    namespace_labels: tuple[LabelRequirement, ...] = ()
    service_account: str | None = None
    workload: tuple[str | None, str | None] | None = None
    entities: frozenset[str] | None = None
    cidrs: tuple[
        tuple[
            Network,
            tuple[Network, ...],
        ],
        ...,
    ] = ()
    fqdns: tuple[str, ...] = ()
    # Named container ports of the component's pods (name, protocol, port): only ``policies diff`` uses
    # them, to resolve a policy's named port; they never take part in matching.
    container_ports: tuple[tuple[str, str, int], ...] = ()

    @property
    def has_address_part(self) -> bool:
        return bool(self.cidrs or self.fqdns)

    def matches_labels(self, ep: Endpoint, k8s: dict[str, str], entities: frozenset[str]) -> bool:
        """The identity-dependent part; ``k8s`` are the endpoint's ``k8s:`` labels as a dict, ``entities``
        every reserved entity the endpoint is (an identity with several reserved labels is each of them).
        A selector with an address part matches only endpoints outside the cluster (as Cilium's CIDR and
        FQDN rules): a pod or node whose address lies in a CIDR, or whose address a DNS answer named, is
        not that component."""
        if (self.cidrs or self.fqdns) and not outside_cluster(ep, entities):
            return False
        if self.namespaces is not None and ep.namespace not in self.namespaces:
            return False
        if self.entities is not None and self.entities.isdisjoint(entities):
            return False
        if self.service_account is not None and k8s.get(_K8S_SA_LABEL) != self.service_account:
            return False
        if self.workload is not None and not any(
            (self.workload[0] is None or w.kind == self.workload[0]) and w.name == self.workload[1]
            for w in ep.workloads
        ):
            return False
        if not all(r.matches(k8s) for r in self.pod_labels):
            return False
        if self.namespace_labels:
            ns_labels = {
                k[len(_K8S_NS_LABEL_PREFIX) :]: v
                for k, v in k8s.items()
                if k.startswith(_K8S_NS_LABEL_PREFIX)
            }
            if not all(r.matches(ns_labels) for r in self.namespace_labels):
                return False
        return True

    def matches_address(self, ip: str, names: Sequence[str]) -> bool:
        """The flow-dependent part (IP in ``cidrs`` and/or a name in ``fqdns``)."""
        if self.cidrs and not _ip_in(ip, self.cidrs):
            return False
        return not self.fqdns or any(_fqdn_match(p, n) for p in self.fqdns for n in names)


def outside_cluster(ep: Endpoint, entities: frozenset[str]) -> bool:
    """Whether ``ep`` is outside the cluster's endpoints — the only peers Cilium's CIDR and FQDN rules
    select: the world (reserved identity or label), or a CIDR/FQDN identity (local scope, or ``cidr:`` and
    ``fqdn:`` labels). Pods, nodes (host, remote-node), the API server's identity, Cilium's own endpoints,
    unmanaged pods and endpoints of unknown identity are not."""
    return (
        "world" in entities
        or ep.identity >= LOCAL_SCOPE_IDENTITY
        or any(label.startswith(_ADDRESS_LABEL_PREFIXES) for label in ep.labels)
    )


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes label key (``[prefix/]name``), or ``None``. Selectors match the pod's
    Kubernetes labels, so a Cilium source prefix (``k8s:app``) is named as such."""
    source, colon, rest = key.partition(":")
    if colon and source in _CILIUM_LABEL_SOURCES:
        return f"label key {key!r} carries Cilium's source prefix {source + ':'!r}: write {rest!r}"
    prefix, slash, name = key.rpartition("/")
    if not _LABEL_NAME_RE.match(name) or len(name) > 63:
        return f"label key {key!r} is not a Kubernetes label key (name: up to 63 of a-z, A-Z, 0-9, -, _, .)"
    if slash and (not _DNS_SUBDOMAIN_RE.match(prefix) or len(prefix) > 253):
        return f"label key {key!r} is not a Kubernetes label key (its prefix is not a DNS subdomain)"
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes label value, or ``None`` (empty is a value)."""
    if value and (len(value) > 63 or not _LABEL_NAME_RE.match(value)):
        return f"label value {value!r} is not a Kubernetes label value (up to 63 of a-z, A-Z, 0-9, -, _, .)"
    return None


def _ip_in(
    ip: str,
    cidrs: Iterable[
        tuple[
            Network,
            tuple[Network, ...],
        ]
    ],
) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net and not any(addr in ex for ex in excepts) for net, excepts in cidrs)


def _fqdn_match(pattern: str, name: str) -> bool:
    name = name.rstrip(".").lower()
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def endpoint_labels(ep: Endpoint) -> tuple[dict[str, str], frozenset[str]]:
    """The endpoint's ``k8s:`` labels as a dict, and every reserved entity it is (from its ``reserved:``
    labels and its reserved identity number), as Cilium's ``toEntities`` sees it."""
    k8s: dict[str, str] = {}
    reserved: set[str] = set()
    for label in ep.labels:
        source, _, rest = label.partition(":")
        key, _, value = rest.partition("=")
        if source == "k8s":
            k8s[key] = value
        elif source == "reserved" and key in _RESERVED_LABEL_ENTITY:
            reserved.add(_RESERVED_LABEL_ENTITY[key])
    if ep.identity in RESERVED_IDENTITIES:
        reserved.add(RESERVED_IDENTITIES[ep.identity])
    if ep.namespace and _K8S_NS_LABEL not in k8s:
        k8s[_K8S_NS_LABEL] = ep.namespace
    return k8s, frozenset(reserved)


def most_specific_entity(entities: frozenset[str]) -> str | None:
    """The entity that names an endpoint that is each of ``entities`` and matches no component."""
    return next((e for e in ENTITY_PRECEDENCE if e in entities), None)


class SelectorReader(NodeReader):
    """Compiles the YAML of a component's selector into a :class:`Selector`."""

    def selector(self, node: yaml.Node, key: str) -> Selector:
        f = self.mapping(node, key, _SELECTOR_KEYS)
        if not (f.keys() - {"description", "containerPorts"}):
            raise self.err(node, key, "empty selector (it would match every endpoint)")
        if "namespace" in f and "namespaces" in f:
            raise self.err(f["namespaces"], f"{key}.namespaces", "use either namespace or namespaces")
        namespaces: frozenset[str] | None = None
        if "namespace" in f:
            namespaces = frozenset({self.string(f["namespace"], f"{key}.namespace")})
        elif "namespaces" in f:
            namespaces = frozenset(s for s, _ in self.strings(f["namespaces"], f"{key}.namespaces"))
        pod_labels = tuple(
            LabelRequirement(k, "In", frozenset({v}))
            for k, v in (self.label_map(f["labels"], f"{key}.labels").items() if "labels" in f else ())
        )
        if "matchExpressions" in f:
            pod_labels += self.expressions(f["matchExpressions"], f"{key}.matchExpressions")
        ns_labels = tuple(
            LabelRequirement(k, "In", frozenset({v}))
            for k, v in (
                self.label_map(f["namespaceLabels"], f"{key}.namespaceLabels").items()
                if "namespaceLabels" in f
                else ()
            )
        )
        sa = self.string(f["serviceAccount"], f"{key}.serviceAccount") if "serviceAccount" in f else None
        return Selector(
            namespaces=namespaces,
            pod_labels=pod_labels,
            namespace_labels=ns_labels,
            service_account=sa,
            workload=self.workload(f["workload"], f"{key}.workload") if "workload" in f else None,
            entities=self.entities(f["entities"], f"{key}.entities") if "entities" in f else None,
            cidrs=self.cidrs(f["cidrs"], f"{key}.cidrs") if "cidrs" in f else (),
            fqdns=self.fqdns(f["fqdns"], f"{key}.fqdns") if "fqdns" in f else (),
            container_ports=(
                self.container_ports(f["containerPorts"], f"{key}.containerPorts")
                if "containerPorts" in f
                else ()
            ),
        )

    def expressions(self, node: yaml.Node, key: str) -> tuple[LabelRequirement, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.err(node, key, "expected a non-empty list of {key, operator, values}")
        out: list[LabelRequirement] = []
        for i, item in enumerate(node.value):
            k = f"{key}[{i}]"
            e = self.mapping(item, k, {"key", "operator", "values"})
            for required in ("key", "operator"):
                if required not in e:
                    raise self.err(item, f"{k}.{required}", "required field is missing")
            op = self.string(e["operator"], f"{k}.operator")
            if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
                raise self.err(
                    e["operator"],
                    f"{k}.operator",
                    f"unknown operator {op!r} (expected In, NotIn, Exists or DoesNotExist)",
                )
            values = (
                frozenset(s for s, _ in self.strings(e["values"], f"{k}.values")) if "values" in e else None
            )
            if op in ("In", "NotIn") and not values:
                raise self.err(item, f"{k}.values", f"operator {op} needs a non-empty list of values")
            if op in ("Exists", "DoesNotExist") and values:
                raise self.err(e["values"], f"{k}.values", f"operator {op} takes no values")
            label = self.string(e["key"], f"{k}.key")
            problem = label_key_problem(label)
            if problem:
                raise self.err(e["key"], f"{k}.key", problem)
            for value in sorted(values or ()):
                if label_value_problem(value):
                    raise self.err(e["values"], f"{k}.values", label_value_problem(value) or "")
            out.append(LabelRequirement(label, op, values or frozenset()))
        return tuple(out)

    def label_map(self, node: yaml.Node, key: str) -> dict[str, str]:
        """matchLabels: Kubernetes label keys and values (a key Kubernetes refuses would never match)."""
        items = self.mapping(node, key)
        labels = self.string_map(node, key)
        for k, v in labels.items():
            problem = label_key_problem(k) or label_value_problem(v)
            if problem:
                raise self.err(items[k], f"{key}.{k}", problem)
        return labels

    def workload(self, node: yaml.Node, key: str) -> tuple[str | None, str | None]:
        w = self.mapping(node, key, {"kind", "name"})
        if "name" not in w:
            raise self.err(node, f"{key}.name", "required field is missing")
        kind = self.string(w["kind"], f"{key}.kind") if "kind" in w else None
        return kind, self.string(w["name"], f"{key}.name")

    def entities(self, node: yaml.Node, key: str) -> frozenset[str]:
        out: set[str] = set()
        for value, item in self.strings(node, key):
            if value not in ENTITIES:
                raise self.err(
                    item, key, f"unknown entity {value!r} (expected one of: {', '.join(sorted(ENTITIES))})"
                )
            out.add(value)
        return frozenset(out)

    def cidrs(
        self, node: yaml.Node, key: str
    ) -> tuple[
        tuple[
            Network,
            tuple[Network, ...],
        ],
        ...,
    ]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.err(node, key, "expected a non-empty list of CIDRs or {cidr, except}")
        out: list[tuple[Network, tuple[Network, ...]]] = []
        for i, item in enumerate(node.value):
            k = f"{key}[{i}]"
            if isinstance(item, yaml.ScalarNode):
                out.append((self.network(item, k), ()))
                continue
            c = self.mapping(item, k, {"cidr", "except"})
            if "cidr" not in c:
                raise self.err(item, f"{k}.cidr", "required field is missing")
            net = self.network(c["cidr"], f"{k}.cidr")
            excepts = []
            if "except" in c:
                for j, (_, ex_node) in enumerate(self.strings(c["except"], f"{k}.except")):
                    ex = self.network(ex_node, f"{k}.except[{j}]")
                    if ex.version != net.version or not ex.subnet_of(net):  # type: ignore[arg-type]
                        raise self.err(ex_node, f"{k}.except[{j}]", f"{ex} is not inside {net}")
                    excepts.append(ex)
            out.append((net, tuple(excepts)))
        return tuple(out)

    def network(self, node: yaml.Node, key: str) -> Network:
        text = self.string(node, key)
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            raise self.err(node, key, f"invalid CIDR {text!r}: {e}") from None

    def container_ports(self, node: yaml.Node, key: str) -> tuple[tuple[str, str, int], ...]:
        """``{http: 8080, dns: "53/UDP"}``: a port name (IANA service name syntax) to one port."""
        out = []
        for name, value in self.string_map(node, key).items():
            where = self.mapping(node, key)[name]
            if not _PORT_NAME_RE.match(name) or len(name) > 15:
                raise self.err(where, f"{key}.{name}", f"invalid port name {name!r} (1-15 of a-z, 0-9, '-')")
            field_key = f"{key}.{name}"

            def fail(problem: str, where: yaml.Node = where, field_key: str = field_key) -> MatrixError:
                return self.err(where, field_key, problem)

            port = parse_port(value, fail)
            if len(port.protocols) != 1 or port.protocols & ICMP_PROTOCOLS or port.lo != port.hi:
                raise self.err(
                    where, f"{key}.{name}", f'expected one port, as 8080 or "53/UDP", not {value!r}'
                )
            out.append((name, next(iter(port.protocols)), port.lo))
        return tuple(out)

    def fqdns(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        out = []
        for value, item in self.strings(node, key):
            name = value.rstrip(".").lower()
            bare = name[2:] if name.startswith("*.") else name
            if not bare or "*" in bare or not all(NAME_RE.match(part) for part in bare.split(".")):
                raise self.err(item, key, f"invalid FQDN {value!r} (exact name or '*.' wildcard)")
            out.append(name)
        return tuple(out)
