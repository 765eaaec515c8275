"""Static evaluator of Kubernetes NetworkPolicies (``networking.k8s.io/v1``).

Stage: offline tooling (``flow-auditor policies diff`` and the tests of ``policies generate``); no API
server, no network plugin. Input: NetworkPolicy manifests as plain dicts (parsed YAML, ``kubectl get
networkpolicies -A -o yaml`` output, or :func:`auditor.kube.policies.generate`), compiled once by
:func:`compile_policies`; the two ends of a connection as :class:`Pod`, :class:`External` (an address
outside the cluster) or :class:`Node` (the node the other end runs on). Output: a :class:`Decision` that
says whether the connection is allowed and which policies decided each side.

Semantics (Kubernetes API reference, NetworkPolicy):

- A pod is *isolated* for ingress (egress) when at least one policy of its namespace selects it with
  ``Ingress`` (``Egress``) in ``policyTypes``. Without ``policyTypes`` (omitted, ``null`` or ``[]``: the API
  server defaults all three alike) a policy has ``Ingress``, and ``Egress`` too when its ``egress`` list
  is not empty.
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
  give it an ``ip`` to model the latter. Cilium's reserved identities (:class:`Node`, :class:`Reserved`)
  are not matched by ``ipBlock`` either (Cilium's default CIDR matching covers addresses outside the
  cluster). An :class:`External` known only by DNS name is matched by a ``/0`` block without ``except``;
  any narrower block cannot be decided statically and is reported as a warning.
- Traffic between a pod and the node it runs on is always allowed (specification); :class:`Node` is that
  node. Two :class:`Pod` values are always two different pods (a pod talking to itself is not modelled).
- A named port is resolved on the destination pod (:attr:`Pod.named_ports`); where it cannot be, the
  rule matches no port and a warning names the policy and the port. A named port in an egress rule towards
  an ``ipBlock`` can never be resolved and is rejected.

Output: per side a :class:`~auditor.kube.model.Side` whose grants carry port sets, so one evaluation
answers every port at once.

Error policy: a malformed policy raises :class:`~auditor.kube.checks.PolicyError` naming the policy and the
field (invalid label keys and values included); unknown fields are errors under ``strict`` and warnings
otherwise. Objects that are not ``networking.k8s.io/v1`` NetworkPolicies are left to the caller
(:mod:`auditor.kube.cluster` sorts objects by kind).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from auditor.kube.checks import Checker, PolicyError, note_default_namespace, object_ref
from auditor.kube.model import (
    ALL,
    NAMESPACE_NAME_LABEL,
    NONE,
    Decision,
    Evaluator,
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
from auditor.matrix import LabelRequirement

__all__ = [
    "NAMESPACE_NAME_LABEL",
    "Decision",
    "External",
    "Node",
    "Pod",
    "PolicyError",
    "PolicySet",
    "Reserved",
    "Side",
    "Subject",
    "compile_policies",
]

API_VERSION: Final = "networking.k8s.io/v1"
KIND: Final = "NetworkPolicy"
PORT_PROTOCOLS: Final = frozenset({"TCP", "UDP", "SCTP"})
_SPEC_KEYS: Final = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
_PEER_KEYS: Final = frozenset({"podSelector", "namespaceSelector", "ipBlock"})


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

    def matches(self, subject: Subject, notes: Notes, ref: str) -> bool:
        return cidr_matches(self.cidr, self.excepts, subject, notes, ref)


def cidr_matches(
    cidr: Network, excepts: tuple[Network, ...], subject: Subject, notes: Notes, ref: str
) -> bool:
    """Whether an address block covers ``subject``: a pod with an address, an external address, or (for
    an external known only by name) a ``/0`` block without excepts; other name cases are undecidable."""
    ip = subject.ip if isinstance(subject, Pod | External) else None
    if ip:
        addr = ipaddress.ip_address(ip)
        return addr in cidr and not any(addr in ex for ex in excepts)
    if isinstance(subject, External) and subject.names:
        if cidr.prefixlen == 0 and not excepts:
            return True
        notes.add(
            f"{ref}: whether {', '.join(subject.names)} resolves into {cidr}"
            f"{' (except ' + ', '.join(map(str, excepts)) + ')' if excepts else ''} cannot be decided "
            "statically: counted as not matching"
        )
    return False


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One entry of ``from``/``to``: selectors (AND) or an ``ipBlock``."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def matches(self, subject: Subject, policy_namespace: str, notes: Notes, ref: str) -> bool:
        if self.ip_block is not None:
            return self.ip_block.matches(subject, notes, ref)
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

    def ports(self, destination: Subject, notes: Notes, ref: str) -> PortSet:
        if self.port is None:
            return PortSet.single(self.protocol, 1, 65535)
        if isinstance(self.port, str):
            return resolve_named_port(self.port, self.protocol, destination, notes, ref)
        return PortSet.single(self.protocol, self.port, self.end_port)


def resolve_named_port(
    name: str, protocol: str | None, destination: Subject, notes: Notes, ref: str
) -> PortSet:
    """The port a named port stands for on ``destination`` (``protocol`` ``None``: any transport)."""
    named = destination.named_ports.get(name) if isinstance(destination, Pod) else None
    if named is None:
        what = "the destination" if not isinstance(destination, Pod) else f"pods in {destination.namespace}"
        notes.add(
            f"{ref}: named port {name!r} cannot be resolved on {what} (declare it with containerPorts in "
            "the matrix): it matches no port there"
        )
        return NONE
    if protocol is not None and named[0] != protocol:
        return NONE
    return PortSet.single(named[0], named[1])


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ingress or egress rule; empty ``peers`` or ``ports`` match everything."""

    peers: tuple[PeerSpec, ...] = ()
    ports: tuple[PortSpec, ...] = ()

    def grant(
        self, peer: Subject, policy_namespace: str, destination: Subject, notes: Notes, ref: str
    ) -> PortSet:
        if self.peers and not any(p.matches(peer, policy_namespace, notes, ref) for p in self.peers):
            return NONE
        if not self.ports:
            return ALL
        return PortSet.union(p.ports(destination, notes, ref) for p in self.ports)


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

_NOT_A_POD: Final = Side(False, (), (), "not a pod: no NetworkPolicy applies")
_NODE_LOCAL: Final = Side(False, (), (), "traffic between a pod and its node is always allowed")


class PolicySet(Evaluator):
    """Compiled NetworkPolicies, indexed by namespace. Build with :func:`compile_policies`."""

    def __init__(self, policies: tuple[NetworkPolicy, ...], notes: Notes | None = None) -> None:
        self.policies = policies
        self.notes = notes if notes is not None else Notes()
        self._by_namespace: dict[str, list[NetworkPolicy]] = {}
        for pol in policies:
            self._by_namespace.setdefault(pol.namespace, []).append(pol)

    def evaluate(self, source: Subject, destination: Subject) -> Decision:
        """Both sides of a connection from ``source`` to ``destination``, for every port at once."""
        if isinstance(source, Node) or isinstance(destination, Node):
            return Decision(_NODE_LOCAL, _NODE_LOCAL)
        return super().evaluate(source, destination)

    def side(self, pod: Subject, peer: Subject, destination: Subject, *, egress: bool) -> Side:
        if not isinstance(pod, Pod):
            return _NOT_A_POD
        isolated = False
        grants: list[Grant] = []
        for pol in self._by_namespace.get(pod.namespace, ()):
            if not (pol.isolates_egress if egress else pol.isolates_ingress):
                continue
            if not pol.pod_selector.matches(pod.labels):
                continue
            isolated = True
            for rule in pol.egress if egress else pol.ingress:
                ports = rule.grant(peer, pol.namespace, destination, self.notes, f"NetworkPolicy {pol.ref}")
                if ports:
                    grants.append(Grant(pol.ref, ports))
        return Side(isolated, tuple(grants))


# --------------------------------------------------------------------------------------------------
# Compiling


def compile_policies(
    objects: list[Mapping[str, Any]] | tuple[Mapping[str, Any], ...],
    default_namespace: str = "default",
    *,
    strict: bool = False,
    notes: Notes | None = None,
) -> PolicySet:
    """Compile the NetworkPolicies among ``objects`` (other kinds are ignored). Raises
    :class:`PolicyError`, also for two policies of one name in one namespace."""
    notes = notes if notes is not None else Notes()
    policies: list[NetworkPolicy] = []
    seen: set[tuple[str, str]] = set()
    for obj in objects:
        if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
            continue
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        name = str(meta.get("name") or "")
        namespace = str(meta.get("namespace") or default_namespace)
        note_default_namespace(obj, notes, default_namespace)
        ref = object_ref(obj, default_namespace)
        if not name:
            raise PolicyError(ref, "metadata.name", "required field is missing")
        if (namespace, name) in seen:
            raise PolicyError(ref, "metadata.name", "duplicate policy name in this namespace")
        seen.add((namespace, name))
        policies.append(_Compiler(ref, strict=strict, notes=notes).policy(name, namespace, obj.get("spec")))
    return PolicySet(tuple(policies), notes)


class _Compiler(Checker):
    """Validates and compiles one policy; every error names the policy and the field."""

    def policy(self, name: str, namespace: str, spec_value: Any) -> NetworkPolicy:
        spec = self.mapping(spec_value, "spec", _SPEC_KEYS)
        ingress = self.sequence(spec.get("ingress"), "spec.ingress")
        egress = self.sequence(spec.get("egress"), "spec.egress")
        types = self.sequence(spec.get("policyTypes"), "spec.policyTypes")
        for t in types:
            if t not in ("Ingress", "Egress"):
                raise self.err("spec.policyTypes", f"unknown policy type {t!r} (Ingress or Egress)")
        if not types:  # omitted, null and [] alike: the API server defaults them the same way
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
        peers = tuple(
            self.peer(p, f"{key}.{peers_key}[{i}]")
            for i, p in enumerate(self.sequence(r.get(peers_key), f"{key}.{peers_key}"))
        )
        ports = tuple(
            self.port(p, f"{key}.ports[{i}]")
            for i, p in enumerate(self.sequence(r.get("ports"), f"{key}.ports"))
        )
        if peers_key == "to" and any(p.ip_block for p in peers):
            for i, p in enumerate(ports):
                if isinstance(p.port, str):
                    raise self.err(
                        f"{key}.ports[{i}].port",
                        f"named port {p.port!r} towards an ipBlock: a name can only be resolved on a pod",
                    )
        return PolicyRule(peers, ports)

    def peer(self, value: Any, key: str) -> PeerSpec:
        p = self.mapping(value, key, _PEER_KEYS)
        if not p:
            raise self.err(key, "a peer needs podSelector, namespaceSelector or ipBlock")
        if "ipBlock" in p:
            if len(p) > 1:
                raise self.err(key, "ipBlock cannot be combined with podSelector or namespaceSelector")
            b = self.mapping(p["ipBlock"], f"{key}.ipBlock", frozenset({"cidr", "except"}))
            if "cidr" not in b:
                raise self.err(f"{key}.ipBlock.cidr", "required field is missing")
            cidr, excepts = self.cidr_with_excepts(b["cidr"], b.get("except"), f"{key}.ipBlock")
            return PeerSpec(ip_block=IPBlock(cidr, excepts))
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

    def port(self, value: Any, key: str) -> PortSpec:
        p = self.mapping(value, key, frozenset({"protocol", "port", "endPort"}))
        protocol = p.get("protocol") or "TCP"
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
        return LabelSelector(tuple(self.requirements(value, key)))

    def requirements(self, value: Any, key: str) -> list[LabelRequirement]:
        return [LabelRequirement(*r) for r in self.label_selector(value, key, self.label_key)]
