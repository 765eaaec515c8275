"""``policies diff``: where deployed policies and the matrix disagree, grouped by edge.

Stage: offline tooling. Input: policy objects (any mix of NetworkPolicy, CiliumNetworkPolicy and
CiliumClusterwideNetworkPolicy; other objects are counted and skipped) and a compiled matrix. Output: a
:class:`DiffResult` (rendered by :mod:`auditor.kube.diff_render`).

How: every ordered pair of :func:`~auditor.kube.probes.probes` with at least one end a pod in a scoped
namespace (every namespace when the matrix has no scope)
(a probe paired with itself stands for two pods of one component) is evaluated by
:class:`~auditor.kube.cluster.Cluster` for *every* port at once (port sets), and compared with
:func:`~auditor.kube.probes.expected_ports`. So a policy opening a port the matrix never names, or leaving
a hole inside a range, is found whatever the port. Differences are grouped by edge (source name,
destination name, kind) with their ports as ranges; the policies that allow an unexpected edge, or the
matrix rules an expected-but-denied edge implements, are named. Edges only the noise probes show (other
pods of a namespace, a foreign namespace, the IPv6 world) are kept apart. Node traffic (``host``) is not
compared: Cilium always lets the local node reach its pods, and pod→node needs host policies.

A difference that a ``policies generate`` note announced (the allowing, or the component's, generated
policy carries a ``flow-auditor.io/notes`` annotation naming the other end) is labelled ``announced``.

Error policy: :class:`~auditor.kube.checks.PolicyError` for an invalid policy (naming the object);
never fails on a valid input. Memory is bounded by the number of probe pairs (no per-port state).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from auditor.kube.checks import object_ref
from auditor.kube.cluster import Cluster, compile_cluster
from auditor.kube.model import ALL, Decision, Node, Pod, PortSet, Subject
from auditor.kube.probes import Probe, expected_ports, probes
from auditor.matrix import Matrix, Rule, parse_port
from auditor.model import ICMP_PROTOCOLS

Kind = Literal["unexpected_allowed", "expected_denied"]
KINDS: Final[tuple[Kind, ...]] = ("unexpected_allowed", "expected_denied")
NOTES_ANNOTATION: Final = "flow-auditor.io/notes"
COMPONENT_ANNOTATION: Final = "flow-auditor.io/component"
_MAX_POLICIES: Final = 20  # policies named per edge
_BLOCKED_ORDER: Final = ("source egress", "destination ingress")


@dataclass
class Edge:
    """One edge where policies and matrix disagree: ``ports`` as ranges, who allows / which rules."""

    kind: Kind
    source: str
    destination: str
    ports: PortSet
    rules: tuple[int, ...] = ()
    policies: tuple[str, ...] = ()  # allowing (unexpected_allowed) or denying (expected_denied) policies
    l7_ports: PortSet = field(default_factory=PortSet)  # unexpected ports allowed only with L7 filtering
    noise: str | None = None
    announced: str | None = None
    probes: tuple[str, ...] = ()  # origins of the probe pairs that showed it
    blocked_at: tuple[str, ...] = ()  # expected_denied: "source egress" and/or "destination ingress"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.source, self.destination)


@dataclass
class DiffResult:
    edges: list[Edge]
    l7_restricted: list[Edge]  # expected edges whose ports are allowed only through L7 rules
    warnings: list[str]
    policies: dict[str, int]  # evaluated policies by kind
    skipped: dict[str, int]  # other objects by kind
    probes: int
    pairs: int

    @property
    def differences(self) -> list[Edge]:
        return [e for e in self.edges if e.noise is None]

    @property
    def noise(self) -> list[Edge]:
        return [e for e in self.edges if e.noise is not None]

    @property
    def unannounced(self) -> list[Edge]:
        return [e for e in self.edges if e.announced is None]


def diff(objects: Sequence[Mapping[str, Any]], matrix: Matrix, *, strict: bool = False) -> DiffResult:
    """Compare the policies among ``objects`` with ``matrix`` (see the module docstring)."""
    cluster = compile_cluster(objects, strict=strict)
    return compare(cluster, matrix, _annotations(objects))


def compare(
    cluster: Cluster, matrix: Matrix, notes_by_ref: Mapping[str, tuple[str, str]] | None = None
) -> DiffResult:
    notes_by_ref = notes_by_ref or {}
    scope = matrix.scope_namespaces  # None: every namespace is in scope
    prbs = [p for p in probes(matrix) if not isinstance(p.subject, Node)]
    groups: dict[tuple[str, str, str, str | None], Edge] = {}
    l7: dict[tuple[str, str], Edge] = {}
    expected_cache: dict[tuple[str, str], tuple[PortSet, tuple[int, ...]]] = {}
    pairs = 0
    for src in prbs:
        for dst in prbs:
            if not (_in_scope(src.subject, scope) or _in_scope(dst.subject, scope)):
                continue
            pairs += 1
            names = (src.name, dst.name)
            if names not in expected_cache:
                ports, rules = expected_ports(matrix, *names)
                expected_cache[names] = (ports, tuple(r.index for r in rules))
            expected, rule_ids = expected_cache[names]
            decision = cluster.evaluate(src.subject, dst.subject)
            allowed = decision.allowed_ports
            noise = src.noise or dst.noise
            for kind, ports in (
                ("unexpected_allowed", allowed - expected),
                ("expected_denied", expected - allowed),
            ):
                if ports:
                    _add(groups, kind, src, dst, ports, noise, decision, rule_ids, matrix)
            restricted = decision.l7_ports & expected
            if restricted:
                edge = l7.setdefault(names, Edge("unexpected_allowed", src.name, dst.name, PortSet()))
                edge.ports = edge.ports | restricted
                edge.policies = _merge(edge.policies, _policies_for(decision, restricted, deny=False))
    edges = _fold_noise(groups)
    for edge in edges:
        edge.announced = _announced(edge, notes_by_ref, matrix)
    edges.sort(
        key=lambda e: (e.noise is not None, KINDS.index(e.kind), e.source, e.destination, e.noise or "")
    )
    return DiffResult(
        edges=edges,
        l7_restricted=sorted(l7.values(), key=lambda e: (e.source, e.destination)),
        warnings=cluster.notes.as_list(),
        policies=cluster.counts,
        skipped=dict(sorted(cluster.skipped.items())),
        probes=len(prbs),
        pairs=pairs,
    )


def _add(
    groups: dict[tuple[str, str, str, str | None], Edge],
    kind: str,
    src: Probe,
    dst: Probe,
    ports: PortSet,
    noise: str | None,
    decision: Decision,
    rule_ids: tuple[int, ...],
    matrix: Matrix,
) -> None:
    key = (kind, src.name, dst.name, noise)
    edge = groups.get(key)
    if edge is None:
        edge = groups[key] = Edge(kind, src.name, dst.name, PortSet(), noise=noise)  # type: ignore[arg-type]
    edge.ports = edge.ports | ports
    edge.probes = _merge(edge.probes, (f"{src.origin}->{dst.origin}",))
    if kind == "unexpected_allowed":
        edge.policies = _merge(edge.policies, _policies_for(decision, ports, deny=False))
        edge.l7_ports = edge.l7_ports | (decision.l7_ports & ports)
    else:
        edge.policies = _merge(edge.policies, _policies_for(decision, ports, deny=True))
        blocked = [
            where
            for proto, lo, _hi in ports.items()
            for where, side in (("source egress", decision.egress), ("destination ingress", decision.ingress))
            if not side.allows_port(proto, lo)
        ]
        edge.blocked_at = tuple(w for w in _BLOCKED_ORDER if w in {*edge.blocked_at, *blocked})
        edge.rules = tuple(
            sorted(
                set(edge.rules)
                | {
                    r.index
                    for r in matrix.rules
                    if r.index in rule_ids and any(r.allows_port(p, lo) for p, lo, _ in ports.items())
                }
            )
        )


def _policies_for(decision: Decision, ports: PortSet, *, deny: bool) -> tuple[str, ...]:
    out: tuple[str, ...] = ()
    for proto, lo, _hi in ports.items():
        found = decision.denied_by(proto, lo) if deny else decision.allowed_by(proto, lo)
        out = _merge(out, found)
    return out


def _merge(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*a, *b)))[:_MAX_POLICIES]


def _fold_noise(groups: dict[tuple[str, str, str, str | None], Edge]) -> list[Edge]:
    """Noise edges lose the ports a component probe already shows for the same edge."""
    main = {k[:3]: e for k, e in groups.items() if k[3] is None}
    out = list(main.values())
    for key, edge in groups.items():
        if key[3] is None:
            continue
        shown = main.get(key[:3])
        if shown is not None:
            edge.ports = edge.ports - shown.ports
            edge.l7_ports = edge.l7_ports & edge.ports
        if edge.ports:
            out.append(edge)
    return out


def _in_scope(subject: Subject, scope: frozenset[str] | None) -> bool:
    return isinstance(subject, Pod) and (scope is None or subject.namespace in scope)


def _annotations(objects: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """Grant reference (as the evaluators name policies) -> (component annotation, notes annotation)."""
    out: dict[str, tuple[str, str]] = {}
    for obj in objects:
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            continue
        ann = meta.get("annotations")
        if not isinstance(ann, dict) or not isinstance(ann.get(NOTES_ANNOTATION), str):
            continue
        entry = (str(ann.get(COMPONENT_ANNOTATION) or ""), ann[NOTES_ANNOTATION])
        out[grant_ref(obj)] = entry
    return out


def grant_ref(obj: Mapping[str, Any]) -> str:
    """How the evaluators name a policy in grants: ``ns/name`` (NetworkPolicy), ``cnp:ns/name``,
    ``ccnp:name``."""
    ref = object_ref(obj)
    kind, _, rest = ref.partition(" ")
    prefix = {"CiliumNetworkPolicy": "cnp:", "CiliumClusterwideNetworkPolicy": "ccnp:"}.get(kind, "")
    return prefix + rest


def _announced(edge: Edge, notes_by_ref: Mapping[str, tuple[str, str]], matrix: Matrix) -> str | None:
    """The ``policies generate`` note that announced this difference, if notes announce all its ports.

    Candidates are the notes of the allowing policies and of the generated policies of either end. A note
    on a matrix rule (``rule N: …``) announces the ports of rule N (or, when it names a port such as
    ``ICMP``, that port) on an edge of rule N: rule N has the edge's source as a source or its destination
    as a destination. A note on a component
    (``name: …``) announces every port of an edge at that component in the direction it states (wider:
    unexpected; otherwise denied). An edge with a port no note announces is not announced.
    """
    candidates = [notes_by_ref[p] for p in edge.policies if p in notes_by_ref]
    candidates += [v for v in notes_by_ref.values() if v[0] in (edge.source, edge.destination)]
    covered, first = PortSet(), None
    for _component, notes in candidates:
        for note in _NOTE_SPLIT.split(notes):
            ports = _announced_ports(note, edge, matrix)
            if ports:
                covered, first = covered | ports, first or note
    return first if first is not None and not (edge.ports - covered) else None


def _announced_ports(note: str, edge: Edge, matrix: Matrix) -> PortSet:
    m = _RULE_NOTE.match(note)
    if m is None:
        if note.split(":", 1)[0] in (edge.source, edge.destination) and (
            (edge.kind == "unexpected_allowed") == ("wider" in note)
        ):
            return edge.ports
        return PortSet()
    index = int(m.group(1))
    if not 1 <= index <= len(matrix.rules):
        return PortSet()
    rule = matrix.rules[index - 1]
    if edge.source not in rule.sources and edge.destination not in rule.destinations:
        return PortSet()
    ports = _rule_ports(rule)
    named = note[m.end() :].split(" ", 1)[0]
    try:
        spec = parse_port(named, ValueError)
    except ValueError:
        pass
    else:
        ports = _range_set(spec.protocols, spec.lo, spec.hi)
    return ports & edge.ports


_RULE_NOTE: Final = re.compile(r"^rule (\d+): ")
_NOTE_SPLIT: Final = re.compile(r"; (?=rule \d+: |[a-z0-9][-a-z0-9_.]*: |components |DNS proxy )")


def _rule_ports(rule: Rule) -> PortSet:
    return PortSet.union(_range_set(p.protocols, p.lo, p.hi) for p in rule.ports)


def _range_set(protocols: frozenset[str], lo: int, hi: int) -> PortSet:
    if not protocols:
        return ALL
    return PortSet.union(
        PortSet.single(p, 0) if p in ICMP_PROTOCOLS else PortSet.single(p, lo, hi) for p in protocols
    )
