"""Static evaluator of Kubernetes NetworkPolicies (``networking.k8s.io/v1``).

Stage: offline tooling (``flow-auditor policies diff`` and the tests of ``policies generate``); no API
server, no network plugin. Input: NetworkPolicy manifests as plain dicts (parsed YAML, ``kubectl get
networkpolicies -A -o yaml`` output, or :func:`auditor.kube.policies.generate`), compiled once by
:func:`compile_policies`; the two ends of a connection as :class:`Pod`, :class:`External` (an address
outside the cluster) or :class:`Node` (the node the other end runs on). Output: a :class:`Decision` that
says whether the connection is allowed and which policies decided each side.

Semantics (Kubernetes API reference, NetworkPolicy):

- A pod is *isolated* for ingress (egress) when at least one policy of its namespace selects it with
  ``Ingress`` (``Egress``) in ``policyTypes``. Without ``policyTypes`` a policy has ``Ingress``, and
  ``Egress`` too when its ``egress`` list is not empty.
- A connection is allowed iff its source side allows it (the source is not isolated for egress, or a
  policy selecting it has an egress rule matching the destination and port) **and** its destination side
  allows it (the same with ingress). Policies only add allowances; there is no deny rule.
- A rule's ``from``/``to`` missing or empty matches every peer; ``ports`` missing or empty matches every
  port of every protocol (ICMP included). A port entry's ``protocol`` defaults to TCP; without ``port`` it
  matches every port of that protocol; ``endPort`` makes an inclusive range; a named port is resolved on
  the destination pod (:attr:`Pod.named_ports`).
- Within one peer, ``podSelector`` alone selects pods of the policy's namespace, ``namespaceSelector``
  alone every pod of the matching namespaces, both together the matching pods of the matching namespaces
  (AND). Several peers are alternatives (OR). ``ipBlock`` matches an address in ``cidr`` and not in
  ``except``, and cannot be combined with the selectors.
- Every namespace carries ``kubernetes.io/metadata.name: <name>`` (the API server sets it); :class:`Pod`
  adds it to the namespace labels.
- Whether an ``ipBlock`` matches *pod* addresses is left to the network plugin by the specification
  (Cilium's implementation does not; some plugins do). A :class:`Pod` without ``ip`` models the former;
  give it an ``ip`` to model the latter.
- Traffic between a pod and the node it runs on is always allowed (specification); :class:`Node` is that
  node. Two :class:`Pod` values are always two different pods (a pod talking to itself is not modelled).

Error policy: a malformed policy raises :class:`PolicyError` naming the policy and the field (unknown
fields included, so a misspelt key does not silently widen or narrow anything). Objects that are not
``networking.k8s.io/v1`` NetworkPolicies (``CiliumNetworkPolicy``, anything else) are not evaluated and
are listed in :attr:`PolicySet.skipped`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from auditor.matrix import LabelRequirement

NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
API_VERSION: Final = "networking.k8s.io/v1"
KIND: Final = "NetworkPolicy"
PORT_PROTOCOLS: Final = frozenset({"TCP", "UDP", "SCTP"})
_OPERATORS: Final = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})
_SPEC_KEYS: Final = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
_PEER_KEYS: Final = frozenset({"podSelector", "namespaceSelector", "ipBlock"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """A NetworkPolicy that cannot be evaluated: ``namespace/name: field: problem``."""

    def __init__(self, policy: str, key: str, problem: str) -> None:
        self.policy, self.key, self.problem = policy, key, problem
        super().__init__(f"{policy}: {key}: {problem}" if key else f"{policy}: {problem}")


# --------------------------------------------------------------------------------------------------
# The ends of a connection


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod: its namespace, labels, the labels of its namespace and (optionally) its address."""

    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None
    named_ports: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (protocol, port)

    def all_namespace_labels(self) -> dict[str, str]:
        """The namespace's labels, with the ``kubernetes.io/metadata.name`` label the API server sets."""
        return {**self.namespace_labels, NAMESPACE_NAME_LABEL: self.namespace}


@dataclass(frozen=True, slots=True)
class External:
    """An address outside the cluster (only ``ipBlock`` peers can match it)."""

    ip: str


@dataclass(frozen=True, slots=True)
class Node:
    """The node the other end runs on: traffic between a pod and its node is always allowed."""

    name: str = "node"


Subject = Pod | External | Node


# --------------------------------------------------------------------------------------------------
# Compiled policies


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """``matchLabels`` and ``matchExpressions`` as one AND-ed list; no requirement selects everything."""

    requirements: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: Network
    excepts: tuple[Network, ...] = ()

    def matches(self, ip: str | None) -> bool:
        if not ip:
            return False
        addr = ipaddress.ip_address(ip)
        return addr in self.cidr and not any(addr in ex for ex in self.excepts)


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One entry of ``from``/``to``: selectors (AND) or an ``ipBlock``."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def matches(self, subject: Subject, policy_namespace: str) -> bool:
        if self.ip_block is not None:
            return isinstance(subject, Pod | External) and self.ip_block.matches(subject.ip)
        if not isinstance(subject, Pod):
            return False
        if self.namespace_selector is None:
            if subject.namespace != policy_namespace:
                return False
        elif not self.namespace_selector.matches(subject.all_namespace_labels()):
            return False
        return self.pod_selector is None or self.pod_selector.matches(subject.labels)


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One entry of ``ports``: a protocol and a port, a port range, a named port or every port."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    def matches(self, protocol: str, port: int, destination: Subject) -> bool:
        if protocol != self.protocol:
            return False
        if self.port is None:
            return True
        if isinstance(self.port, str):
            named = destination.named_ports.get(self.port) if isinstance(destination, Pod) else None
            return named == (protocol, port)
        return self.port <= port <= (self.end_port if self.end_port is not None else self.port)


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ingress or egress rule; empty ``peers`` or ``ports`` match everything."""

    peers: tuple[PeerSpec, ...] = ()
    ports: tuple[PortSpec, ...] = ()

    def matches(
        self, peer: Subject, policy_namespace: str, protocol: str, port: int, destination: Subject
    ) -> bool:
        if self.peers and not any(p.matches(peer, policy_namespace) for p in self.peers):
            return False
        return not self.ports or any(p.matches(protocol, port, destination) for p in self.ports)


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    name: str
    namespace: str
    pod_selector: LabelSelector
    isolates_ingress: bool
    isolates_egress: bool
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


# --------------------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a connection: is the pod isolated in that direction, which policies let it through."""

    isolated: bool
    allowed_by: tuple[str, ...] = ()
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return not self.isolated or bool(self.allowed_by)


@dataclass(frozen=True, slots=True)
class Decision:
    egress: Side  # at the source
    ingress: Side  # at the destination

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed


_NOT_A_POD: Final = Side(False, (), "not a pod: no NetworkPolicy applies")
_NODE_LOCAL: Final = Side(False, (), "traffic between a pod and its node is always allowed")


@dataclass(frozen=True)
class PolicySet:
    """Compiled NetworkPolicies, indexed by namespace. Build with :func:`compile_policies`."""

    policies: tuple[NetworkPolicy, ...]
    skipped: tuple[str, ...] = ()
    _by_namespace: dict[str, tuple[NetworkPolicy, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, list[NetworkPolicy]] = {}
        for pol in self.policies:
            index.setdefault(pol.namespace, []).append(pol)
        self._by_namespace.update({ns: tuple(pols) for ns, pols in index.items()})

    def evaluate(self, source: Subject, destination: Subject, protocol: str, port: int) -> Decision:
        """Both sides of a connection from ``source`` to ``destination`` on ``protocol``/``port``.

        ``protocol`` is ``TCP``, ``UDP``, ``SCTP`` or anything else (``ICMPv4``…), which only rules
        without ``ports`` allow; ``port`` is the destination port (ignored for protocols without ports).
        """
        if isinstance(source, Node) or isinstance(destination, Node):
            return Decision(_NODE_LOCAL, _NODE_LOCAL)
        return Decision(
            self._side(source, destination, protocol, port, destination, egress=True),
            self._side(destination, source, protocol, port, destination, egress=False),
        )

    def allows(self, source: Subject, destination: Subject, protocol: str, port: int) -> bool:
        return self.evaluate(source, destination, protocol, port).allowed

    def _side(
        self, pod: Subject, peer: Subject, protocol: str, port: int, destination: Subject, *, egress: bool
    ) -> Side:
        if not isinstance(pod, Pod):
            return _NOT_A_POD
        isolated = False
        allowed_by: list[str] = []
        for pol in self._by_namespace.get(pod.namespace, ()):
            if not (pol.isolates_egress if egress else pol.isolates_ingress):
                continue
            if not pol.pod_selector.matches(pod.labels):
                continue
            isolated = True
            rules = pol.egress if egress else pol.ingress
            if any(r.matches(peer, pol.namespace, protocol, port, destination) for r in rules):
                allowed_by.append(pol.ref)
        return Side(isolated, tuple(allowed_by))


# --------------------------------------------------------------------------------------------------
# Loading and compiling


def load_documents(text: str) -> list[dict[str, Any]]:
    """Objects of a (multi-document) YAML stream; ``kind: List``/``*List`` objects are flattened.

    Raises :class:`ValueError` on invalid YAML or a document that is not a mapping.
    """
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ValueError(f"invalid YAML: {e}") from None
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ValueError(f"document {i + 1}: expected a Kubernetes object (a mapping)")
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            out.extend(item for item in doc["items"] if isinstance(item, dict))
        else:
            out.append(doc)
    return out


def compile_policies(objects: Iterable[Mapping[str, Any]], default_namespace: str = "default") -> PolicySet:
    """Compile the NetworkPolicies among ``objects`` (others are skipped). Raises :class:`PolicyError`."""
    policies: list[NetworkPolicy] = []
    skipped: list[str] = []
    for obj in objects:
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        name = str(meta.get("name", "<unnamed>"))
        namespace = str(meta.get("namespace") or default_namespace)
        if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
            skipped.append(f"{obj.get('kind', '<no kind>')} {namespace}/{name}")
            continue
        policies.append(_Compiler(f"{namespace}/{name}").policy(name, namespace, obj.get("spec")))
    return PolicySet(tuple(policies), tuple(skipped))


class _Compiler:
    """Validates and compiles one policy; every error names the policy and the field."""

    def __init__(self, ref: str) -> None:
        self.ref = ref

    def err(self, key: str, problem: str) -> PolicyError:
        return PolicyError(self.ref, key, problem)

    def mapping(self, value: Any, key: str, allowed: frozenset[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(key, "expected a mapping")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.err(
                key, f"unknown field {unknown[0]!r} (expected one of: {', '.join(sorted(allowed))})"
            )
        return value

    def sequence(self, value: Any, key: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.err(key, "expected a list")
        return value

    def policy(self, name: str, namespace: str, spec_value: Any) -> NetworkPolicy:
        spec = self.mapping(spec_value, "spec", _SPEC_KEYS)
        ingress = self.sequence(spec.get("ingress"), "spec.ingress")
        egress = self.sequence(spec.get("egress"), "spec.egress")
        if "policyTypes" in spec:
            types = self.sequence(spec["policyTypes"], "spec.policyTypes")
            for t in types:
                if t not in ("Ingress", "Egress"):
                    raise self.err("spec.policyTypes", f"unknown policy type {t!r} (Ingress or Egress)")
        else:
            types = ["Ingress", *(["Egress"] if egress else [])]
        return NetworkPolicy(
            name=name,
            namespace=namespace,
            pod_selector=self.selector(spec.get("podSelector"), "spec.podSelector"),
            isolates_ingress="Ingress" in types,
            isolates_egress="Egress" in types,
            ingress=tuple(self.rule(r, f"spec.ingress[{i}]", "from") for i, r in enumerate(ingress)),
            egress=tuple(self.rule(r, f"spec.egress[{i}]", "to") for i, r in enumerate(egress)),
        )

    def rule(self, value: Any, key: str, peers_key: str) -> PolicyRule:
        r = self.mapping(value, key, frozenset({peers_key, "ports"}))
        peers = self.sequence(r.get(peers_key), f"{key}.{peers_key}")
        ports = self.sequence(r.get("ports"), f"{key}.ports")
        return PolicyRule(
            peers=tuple(self.peer(p, f"{key}.{peers_key}[{i}]") for i, p in enumerate(peers)),
            ports=tuple(self.port(p, f"{key}.ports[{i}]") for i, p in enumerate(ports)),
        )

    def peer(self, value: Any, key: str) -> PeerSpec:
        p = self.mapping(value, key, _PEER_KEYS)
        if not p:
            raise self.err(key, "a peer needs podSelector, namespaceSelector or ipBlock")
        if "ipBlock" in p:
            if len(p) > 1:
                raise self.err(key, "ipBlock cannot be combined with podSelector or namespaceSelector")
            return PeerSpec(ip_block=self.ip_block(p["ipBlock"], f"{key}.ipBlock"))
        return PeerSpec(
            pod_selector=self.selector(p["podSelector"], f"{key}.podSelector")
            if "podSelector" in p
            else None,
            namespace_selector=(
                self.selector(p["namespaceSelector"], f"{key}.namespaceSelector")
                if "namespaceSelector" in p
                else None
            ),
        )

    def ip_block(self, value: Any, key: str) -> IPBlock:
        b = self.mapping(value, key, frozenset({"cidr", "except"}))
        if "cidr" not in b:
            raise self.err(f"{key}.cidr", "required field is missing")
        cidr = self.network(b["cidr"], f"{key}.cidr")
        excepts: list[Network] = []
        for i, text in enumerate(self.sequence(b.get("except"), f"{key}.except")):
            ex = self.network(text, f"{key}.except[{i}]")
            if ex.version != cidr.version or not ex.subnet_of(cidr):  # type: ignore[arg-type]
                raise self.err(f"{key}.except[{i}]", f"{ex} is not inside {cidr}")
            excepts.append(ex)
        return IPBlock(cidr, tuple(excepts))

    def network(self, value: Any, key: str) -> Network:
        try:
            return ipaddress.ip_network(str(value), strict=False)
        except ValueError as e:
            raise self.err(key, f"invalid CIDR {value!r}: {e}") from None

    def port(self, value: Any, key: str) -> PortSpec:
        p = self.mapping(value, key, frozenset({"protocol", "port", "endPort"}))
        protocol = p.get("protocol", "TCP")
        if protocol not in PORT_PROTOCOLS:
            raise self.err(f"{key}.protocol", f"unknown protocol {protocol!r} (TCP, UDP or SCTP)")
        port = p.get("port")
        if isinstance(port, bool) or not isinstance(port, int | str | None):
            raise self.err(f"{key}.port", "expected a port number or a port name")
        if isinstance(port, int) and not 1 <= port <= 65535:
            raise self.err(f"{key}.port", f"port {port} out of range (1-65535)")
        if isinstance(port, str) and (not port or port.isdigit()):
            raise self.err(f"{key}.port", f"invalid port name {port!r} (numbers must not be quoted)")
        end = p.get("endPort")
        if end is not None:
            if not isinstance(port, int):
                raise self.err(f"{key}.endPort", "endPort needs a numeric port")
            if not isinstance(end, int) or isinstance(end, bool) or not port <= end <= 65535:
                raise self.err(f"{key}.endPort", f"endPort must be a number from {port} to 65535")
        return PortSpec(protocol, port, end)

    def selector(self, value: Any, key: str) -> LabelSelector:
        s = self.mapping(value, key, frozenset({"matchLabels", "matchExpressions"}))
        reqs: list[LabelRequirement] = []
        labels = s.get("matchLabels") or {}
        if not isinstance(labels, dict):
            raise self.err(f"{key}.matchLabels", "expected a mapping of strings")
        for k, v in labels.items():
            if not isinstance(v, str):
                raise self.err(f"{key}.matchLabels.{k}", "label values must be strings")
            reqs.append(LabelRequirement(str(k), "In", frozenset({v})))
        for i, e in enumerate(self.sequence(s.get("matchExpressions"), f"{key}.matchExpressions")):
            reqs.append(self.requirement(e, f"{key}.matchExpressions[{i}]"))
        return LabelSelector(tuple(reqs))

    def requirement(self, value: Any, key: str) -> LabelRequirement:
        e = self.mapping(value, key, frozenset({"key", "operator", "values"}))
        if "key" not in e or "operator" not in e:
            raise self.err(key, "key and operator are required")
        op = e["operator"]
        if op not in _OPERATORS:
            raise self.err(f"{key}.operator", f"unknown operator {op!r}")
        values = self.sequence(e.get("values"), f"{key}.values")
        if op in ("In", "NotIn") and not values:
            raise self.err(f"{key}.values", f"operator {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise self.err(f"{key}.values", f"operator {op} takes no values")
        return LabelRequirement(str(e["key"]), op, frozenset(str(v) for v in values))
