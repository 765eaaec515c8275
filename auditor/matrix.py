"""Loading, validating and compiling the communication matrix (DESIGN §4).

Stage: configuration (runs once per load or reload, never per flow). Input: a YAML file or text.
Output: an immutable :class:`Matrix` whose selectors and port sets are compiled for the per-flow path
(``auditor.classify`` resolves endpoints through it and caches the results).

Error policy: every problem raises :class:`MatrixError` and nothing else (a daemon's reload relies on it),
whose message names the file, the line and the offending key (``matrix.yaml:14: components.webserver.labels:
expected a mapping of strings``). Nothing is guessed: unknown fields, unknown components, bad ports, duplicate
names, empty selectors, component names the auditor gives to unmatched peers (entities, ``unknown``,
``ns:<namespace>``) and YAML nested deeper than :data:`MAX_DEPTH` are errors.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml

from auditor.model import ICMP_PROTOCOLS, Endpoint, Protocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

API_VERSION: Final = "flow-auditor/v1alpha1"
KIND: Final = "CommunicationMatrix"

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
_ENTITY_PRECEDENCE: Final = (
    "kube-apiserver",
    "health",
    "ingress",
    "init",
    "host",
    "remote-node",
    "world",
    "unmanaged",
)

_K8S_NS_LABEL_PREFIX: Final = "io.cilium.k8s.namespace.labels."
_K8S_SA_LABEL: Final = "io.cilium.k8s.policy.serviceaccount"
_K8S_NS_LABEL: Final = "io.kubernetes.pod.namespace"
_PROTOCOLS: Final = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}
_ICMP_SPELLINGS: Final[dict[str, tuple[str, ...]]] = {
    "ICMP": (Protocol.ICMPV4, Protocol.ICMPV6),
    "ICMPV4": (Protocol.ICMPV4,),
    "ICMPV6": (Protocol.ICMPV6,),
}
_PORT_RE: Final = re.compile(r"^(?P<lo>[0-9]+)(?:-(?P<hi>[0-9]+))?(?:/(?P<proto>[A-Za-z0-9]+))?$")
_NAME_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
_PORT_NAME_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Names the auditor gives to peers that match no component (entities, also as reserved labels spell them,
# and ``unknown``; ``ns:<namespace>`` cannot pass _NAME_RE): a component named so would capture, or hide
# behind, that traffic.
RESERVED_NAMES: Final = ENTITIES | {"world-ipv4", "world-ipv6", "unknown"}
MAX_DEPTH: Final = 32
"""Deepest YAML nesting accepted; a real matrix needs 6 (``components.x.cidrs[0].except[0]``)."""


class MatrixError(ValueError):
    """A matrix that cannot be loaded: ``file:line: key: problem``."""

    def __init__(self, file: str, line: int, key: str, problem: str) -> None:
        self.file, self.line, self.key, self.problem = file, line, key, problem
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


# --------------------------------------------------------------------------------------------------
# Compiled form


@dataclass(frozen=True, slots=True)
class PortRange:
    """Protocols and an inclusive port range; ``protocols`` empty means any protocol, any port."""

    protocols: frozenset[str]
    lo: int = 0
    hi: int = 65535

    def matches(self, protocol: str, port: int) -> bool:
        if not self.protocols:
            return True
        if protocol not in self.protocols:
            return False
        return protocol in ICMP_PROTOCOLS or self.lo <= port <= self.hi

    def __str__(self) -> str:
        if not self.protocols:
            return "any"
        protos = "/".join(sorted(self.protocols))
        if self.protocols <= ICMP_PROTOCOLS:
            return "ICMP" if len(self.protocols) == 2 else protos
        ports = str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"
        return f"{ports}/{protos}"


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
        every reserved entity the endpoint is (an identity with several reserved labels is each of them)."""
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


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    selector: Selector
    line: int


@dataclass(frozen=True, slots=True)
class Rule:
    """An allow rule; ``index`` is its 1-based position in the file (the ``rule`` of reports)."""

    index: int
    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    ports: tuple[PortRange, ...]
    description: str
    line: int

    def port_strings(self) -> list[str]:
        return [str(p) for p in self.ports]

    def allows_port(self, protocol: str, port: int) -> bool:
        return any(p.matches(protocol, port) for p in self.ports)


@dataclass(frozen=True)
class Matrix:
    """The compiled communication matrix. Immutable; build a new one to reload."""

    name: str
    file: str
    components: tuple[Component, ...]
    rules: tuple[Rule, ...]
    scope_namespaces: frozenset[str] | None
    _by_pair: dict[tuple[str, str], tuple[Rule, ...]] = field(repr=False, compare=False)

    @property
    def uses_workloads(self) -> bool:
        return any(c.selector.workload is not None for c in self.components)

    def in_scope(self, namespace: str) -> bool:
        return self.scope_namespaces is None or namespace in self.scope_namespaces

    def candidates(self, ep: Endpoint) -> tuple[tuple[Component, ...], str]:
        """Label-part resolution of an endpoint (cacheable per identity).

        Returns the components whose label part matches, in matrix order, stopping at the first one that
        needs no address check, and the name the endpoint gets when none matches in full.
        """
        k8s, entities = endpoint_labels(ep)
        entity: str | None = next((e for e in _ENTITY_PRECEDENCE if e in entities), None)
        found: list[Component] = []
        for comp in self.components:
            if comp.selector.matches_labels(ep, k8s, entities):
                found.append(comp)
                if not comp.selector.has_address_part:
                    break
        if entity is not None:
            fallback = entity
        elif ep.namespace:
            fallback = f"ns:{ep.namespace}"
        else:
            fallback = "unknown"
        return tuple(found), fallback

    def resolve(self, ep: Endpoint, ip: str = "", names: Sequence[str] = ()) -> str:
        """The component name of an endpoint (uncached; the classifier caches the label part)."""
        comps, fallback = self.candidates(ep)
        return pick(comps, fallback, ip, names)

    def rule_for(self, source: str, destination: str, protocol: str, port: int) -> Rule | None:
        """The first allow rule matching the connection, or ``None`` (the connection is unexpected)."""
        for rule in self._by_pair.get((source, destination), ()):
            if rule.allows_port(protocol, port):
                return rule
        return None


def pick(comps: tuple[Component, ...], fallback: str, ip: str, names: Sequence[str]) -> str:
    """First candidate whose address part matches (candidates come from :meth:`Matrix.candidates`)."""
    for comp in comps:
        sel = comp.selector
        if not sel.has_address_part or sel.matches_address(ip, names):
            return comp.name
    return fallback


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


# --------------------------------------------------------------------------------------------------
# Loading


def load_matrix(path: str | Path) -> Matrix:
    """Read, validate and compile a matrix file. Raises :class:`MatrixError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise MatrixError(str(path), 0, "", f"cannot read file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise MatrixError(str(path), 0, "", "not UTF-8 text") from None
    return parse_matrix(text, str(path))


def parse_matrix(text: str, file: str = "<matrix>") -> Matrix:
    """Validate and compile matrix YAML text; ``file`` is used in error messages."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except _TooDeep as e:
        raise MatrixError(file, e.line, "", f"nested deeper than {MAX_DEPTH} levels") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise MatrixError(file, line, "", f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise MatrixError(file, 0, "", f"invalid YAML: {e}") from None
    if root is None:
        raise MatrixError(file, 1, "", "empty file")
    return _Compiler(file).compile(root)


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing nesting deeper than :data:`MAX_DEPTH` (composing recurses per level)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark.line + 1)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_TOP_KEYS: Final = {"apiVersion", "kind", "metadata", "scope", "components", "allow"}
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
_RULE_KEYS: Final = {"from", "to", "ports", "description"}


class _Compiler:
    """Walks the YAML node tree (which keeps line numbers) and builds the compiled matrix."""

    def __init__(self, file: str) -> None:
        self.file = file

    # -- node helpers -------------------------------------------------------------------------------
    def err(self, node: yaml.Node | None, key: str, problem: str) -> MatrixError:
        line = node.start_mark.line + 1 if node is not None else 0
        return MatrixError(self.file, line, key, problem)

    def mapping(self, node: yaml.Node, key: str, allowed: set[str] | None = None) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, key, "expected a mapping")
        out: dict[str, yaml.Node] = {}
        for k_node, v_node in node.value:
            if not isinstance(k_node, yaml.ScalarNode):
                raise self.err(k_node, key, "keys must be strings")
            k = str(k_node.value)
            sub = f"{key}.{k}" if key else k
            if k in out:
                raise self.err(k_node, sub, "duplicate key")
            if allowed is not None and k not in allowed:
                raise self.err(k_node, sub, f"unknown field (expected one of: {', '.join(sorted(allowed))})")
            out[k] = v_node
        return out

    def string(self, node: yaml.Node, key: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in ("tag:yaml.org,2002:str",):
            raise self.err(node, key, "expected a string")
        value = str(node.value)
        if not value:
            raise self.err(node, key, "must not be empty")
        return value

    def strings(
        self, node: yaml.Node, key: str, *, allow_single: bool = False
    ) -> list[tuple[str, yaml.Node]]:
        if allow_single and isinstance(node, yaml.ScalarNode):
            return [(self.string(node, key), node)]
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, key, "expected a list of strings")
        if not node.value:
            raise self.err(node, key, "must not be empty")
        return [(self.string(item, f"{key}[{i}]"), item) for i, item in enumerate(node.value)]

    def string_map(self, node: yaml.Node, key: str) -> dict[str, str]:
        items = self.mapping(node, key)
        if not items:
            raise self.err(node, key, "must not be empty")
        out: dict[str, str] = {}
        for k, v in items.items():
            if not isinstance(v, yaml.ScalarNode):
                raise self.err(v, f"{key}.{k}", "expected a string value")
            out[k] = str(v.value)  # label values like "true" or 1 are strings in Kubernetes
        return out

    # -- document -----------------------------------------------------------------------------------
    def compile(self, root: yaml.Node) -> Matrix:
        top = self.mapping(root, "", _TOP_KEYS)
        for required in ("apiVersion", "kind", "metadata", "components", "allow"):
            if required not in top:
                raise self.err(root, required, "required field is missing")
        if (api := self.string(top["apiVersion"], "apiVersion")) != API_VERSION:
            raise self.err(top["apiVersion"], "apiVersion", f"unsupported {api!r} (expected {API_VERSION!r})")
        if (kind := self.string(top["kind"], "kind")) != KIND:
            raise self.err(top["kind"], "kind", f"unsupported {kind!r} (expected {KIND!r})")
        meta = self.mapping(top["metadata"], "metadata", {"name", "labels", "annotations"})
        if "name" not in meta:
            raise self.err(top["metadata"], "metadata.name", "required field is missing")
        name = self.string(meta["name"], "metadata.name")
        components = self.components(top["components"])
        names = {c.name for c in components}
        rules = self.rules(top["allow"], names)
        scope = self.scope(top.get("scope"), components)
        check_expansion(self.file, rules)
        by_pair: dict[tuple[str, str], list[Rule]] = {}
        for rule in rules:
            for s in rule.sources:
                for d in rule.destinations:
                    by_pair.setdefault((s, d), []).append(rule)
        return Matrix(
            name=name,
            file=self.file,
            components=tuple(components),
            rules=tuple(rules),
            scope_namespaces=scope,
            _by_pair={k: tuple(v) for k, v in by_pair.items()},
        )

    def scope(self, node: yaml.Node | None, components: list[Component]) -> frozenset[str] | None:
        if node is None:
            named = {ns for c in components for ns in (c.selector.namespaces or ())}
            return frozenset(named) if named else None
        scope = self.mapping(node, "scope", {"namespaces"})
        if "namespaces" not in scope:
            raise self.err(node, "scope.namespaces", "required field is missing")
        return frozenset(s for s, _ in self.strings(scope["namespaces"], "scope.namespaces"))

    def components(self, node: yaml.Node) -> list[Component]:
        items = self.mapping(node, "components")
        if not items:
            raise self.err(node, "components", "must not be empty")
        out: list[Component] = []
        for comp_name, sel_node in items.items():
            key = f"components.{comp_name}"
            if not _NAME_RE.match(comp_name) or comp_name.startswith("ns:"):
                raise self.err(sel_node, key, "component names must be lowercase DNS-style names")
            if comp_name in RESERVED_NAMES:
                raise self.err(
                    sel_node,
                    key,
                    f"{comp_name!r} is reserved: the auditor names peers that match no component so "
                    "(entities, 'unknown', 'ns:<namespace>'); choose another name",
                )
            out.append(Component(comp_name, self.selector(sel_node, key), sel_node.start_mark.line + 1))
        return out

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
            for k, v in (self.string_map(f["labels"], f"{key}.labels").items() if "labels" in f else ())
        )
        if "matchExpressions" in f:
            pod_labels += self.expressions(f["matchExpressions"], f"{key}.matchExpressions")
        ns_labels = tuple(
            LabelRequirement(k, "In", frozenset({v}))
            for k, v in (
                self.string_map(f["namespaceLabels"], f"{key}.namespaceLabels").items()
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
            out.append(LabelRequirement(self.string(e["key"], f"{k}.key"), op, values or frozenset()))
        return tuple(out)

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
            if not bare or "*" in bare or not all(_NAME_RE.match(part) for part in bare.split(".")):
                raise self.err(item, key, f"invalid FQDN {value!r} (exact name or '*.' wildcard)")
            out.append(name)
        return tuple(out)

    def rules(self, node: yaml.Node, components: set[str]) -> list[Rule]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, "allow", "expected a list of rules")
        out: list[Rule] = []
        for i, item in enumerate(node.value):
            key = f"allow[{i}]"
            r = self.mapping(item, key, _RULE_KEYS)
            for required in ("from", "to", "ports"):
                if required not in r:
                    raise self.err(item, f"{key}.{required}", "required field is missing")
            ends = {}
            for end in ("from", "to"):
                ends[end] = tuple(self.component_refs(r[end], f"{key}.{end}", components))
            ports = self.ports(r["ports"], f"{key}.ports")
            desc = self.string(r["description"], f"{key}.description") if "description" in r else ""
            out.append(Rule(i + 1, ends["from"], ends["to"], ports, desc, item.start_mark.line + 1))
        return out

    def component_refs(self, node: yaml.Node, key: str, components: set[str]) -> list[str]:
        names = []
        for value, item in self.strings(node, key, allow_single=True):
            if value not in components:
                raise self.err(
                    item, key, f"unknown component {value!r} (declared: {', '.join(sorted(components))})"
                )
            names.append(value)
        return names

    def ports(self, node: yaml.Node, key: str) -> tuple[PortRange, ...]:
        if isinstance(node, yaml.ScalarNode):
            node = yaml.SequenceNode("tag:yaml.org,2002:seq", [node], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.err(node, key, "expected a non-empty list of ports")
        return tuple(self.port(item, f"{key}[{i}]") for i, item in enumerate(node.value))

    def port(self, node: yaml.Node, key: str) -> PortRange:
        if not isinstance(node, yaml.ScalarNode):
            raise self.err(
                node, key, 'expected a port like 8080, "53/UDP", "30000-32767/TCP", "ICMP" or "any"'
            )
        return parse_port(str(node.value), lambda problem: self.err(node, key, problem))


def parse_port(text: str, fail: Callable[[str], Exception]) -> PortRange:
    """Parse one port spec of DESIGN §4; ``fail(problem)`` builds the exception to raise."""
    spec = text.strip()
    if spec.lower() == "any":
        return PortRange(frozenset())
    if spec.upper() in _ICMP_SPELLINGS:
        return PortRange(frozenset(_ICMP_SPELLINGS[spec.upper()]))
    m = _PORT_RE.match(spec)
    if not m:
        raise fail(
            f'invalid port {_clip(text)} (expected 8080, "53/UDP", "30000-32767/TCP", "ICMP" or "any")'
        )
    proto_text = (m.group("proto") or "TCP").upper()
    if proto_text not in _PROTOCOLS:
        raise fail(
            f"unknown protocol {_clip(m.group('proto'))} in {_clip(text)} "
            "(expected TCP, UDP or SCTP; ICMP takes no port)"
        )
    lo_text, hi_text = m.group("lo"), m.group("hi") or m.group("lo")
    if len(lo_text) > 5 or len(hi_text) > 5:  # also keeps int() away from 5,000-digit numbers
        raise fail(f"port out of range in {_clip(text)} (1-65535)")
    lo, hi = int(lo_text), int(hi_text)
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise fail(f"port out of range in {_clip(text)} (1-65535)")
    if hi < lo:
        raise fail(f"empty port range {_clip(text)}")
    return PortRange(frozenset({_PROTOCOLS[proto_text]}), lo, hi)


MAX_RULE_EXPANSION: Final = 10_000
"""Most (rule, source, destination) combinations a matrix may expand to: each is a lookup entry and a
``flow_auditor_rule_last_seen_timestamp_seconds`` series (YAML aliases make a few KB expand to millions)."""


def check_expansion(file: str, rules: Sequence[Rule], limit: int = MAX_RULE_EXPANSION) -> None:
    """Refuse a matrix whose rules expand to more than ``limit`` combinations, naming the largest rule."""
    sizes = [len(r.sources) * len(r.destinations) for r in rules]
    total = sum(sizes)
    if total > limit:
        big = rules[max(range(len(rules)), key=sizes.__getitem__)]
        raise MatrixError(
            file,
            big.line,
            f"allow[{big.index - 1}]",
            f"the rules expand to {total:,} (rule, from, to) combinations, more than the limit of {limit:,} "
            f"(this rule alone: {len(big.sources)} x {len(big.destinations)}); each one is a metric series, "
            "so list fewer components per rule or group workloads into broader components",
        )


def _clip(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def describe(matrix: Matrix) -> str:
    """Human-readable summary of a compiled matrix (``flow-auditor matrix check``)."""
    lines = [
        f"matrix {matrix.name!r} ({matrix.file}): {len(matrix.components)} components, "
        f"{len(matrix.rules)} rules"
    ]
    scope = (
        "all namespaces" if matrix.scope_namespaces is None else ", ".join(sorted(matrix.scope_namespaces))
    )
    lines.append(f"scope: {scope}")
    lines.append("components (first match wins):")
    for c in matrix.components:
        lines.append(f"  {c.name:<16} {_describe_selector(c.selector)}")
    lines.append("allow:")
    for r in matrix.rules:
        desc = f"  # {r.description}" if r.description else ""
        lines.append(
            f"  {r.index:>3}. {','.join(r.sources)} -> {','.join(r.destinations)} "
            f"[{', '.join(r.port_strings())}]{desc}"
        )
    return "\n".join(lines)


def _describe_selector(s: Selector) -> str:
    parts = []
    if s.namespaces is not None:
        parts.append(f"namespace in ({', '.join(sorted(s.namespaces))})")
    for title, reqs in (("labels", s.pod_labels), ("namespaceLabels", s.namespace_labels)):
        for r in reqs:
            if r.operator == "In" and len(r.values) == 1:
                parts.append(f"{title}[{r.key}={next(iter(r.values))}]")
            elif r.operator in ("In", "NotIn"):
                parts.append(f"{title}[{r.key} {r.operator} ({', '.join(sorted(r.values))})]")
            else:
                parts.append(f"{title}[{r.key} {r.operator}]")
    if s.service_account:
        parts.append(f"serviceAccount={s.service_account}")
    if s.workload:
        parts.append(f"workload={s.workload[0] or '*'}/{s.workload[1]}")
    if s.entities:
        parts.append(f"entity in ({', '.join(sorted(s.entities))})")
    if s.cidrs:
        parts.append(
            "cidr in ("
            + ", ".join(str(n) + (f" except {', '.join(map(str, ex))}" if ex else "") for n, ex in s.cidrs)
            + ")"
        )
    if s.fqdns:
        parts.append(f"fqdn in ({', '.join(s.fqdns)})")
    return " and ".join(parts)
