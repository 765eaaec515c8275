"""The replay report: aggregation sink and the JSON contract of DESIGN §6.

Stage: sink. Input: the pipeline's outcomes, judgements and unproven (provisional) connections. Output:
:meth:`ReportSink.report`, a plain dict in the stable JSON shape (``matrix``, ``flows``, ``classes``,
``edges``, ``unused_rules``, ``provisional``) plus the documented extensions ``lost_events``,
``invalid_samples`` (first few undecodable lines with their file and line number), ``edge_limit`` and a
``hint`` per edge (the likely cause where one can be told from the report itself: source NAT between
nodes for ``remote-node`` peers) and a ``suggestion`` per ``unexpected_allowed`` edge (the rule, and the
components, that would allow it: :mod:`auditor.learn.suggest`) and a ``policy_change`` per
``expected_dropped`` edge (the generated NetworkPolicy/CiliumNetworkPolicy objects that implement the
allowing rule, whether they admit the observed pods, and the likely cause:
:mod:`auditor.learn.policy_hint`; label changes are taken against the delivered connections seen before
the edge's first connection). Rendering to table/markdown/HTML lives in ``auditor.render``.

Memory is bounded whatever the input: a few example pods per edge, and at most ``max_edges`` edges (and as
many provisional edges); past that, new edges are aggregated per class into one ``other`` edge, totals stay
exact, and ``edge_limit.aggregated_connections`` says how much was folded.

Error policy: none needed (pure aggregation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from auditor.classify import (
    CLASSES,
    EXPECTED_ALLOWED,
    EXPECTED_DROPPED,
    OTHER,
    OUTCOMES,
    UNEXPECTED_ALLOWED,
    UNEXPECTED_DROPPED,
    VIOLATIONS,
    Edge,
    Judgement,
    Unproven,
)
from auditor.learn.policy_hint import PolicyAdvisor
from auditor.learn.suggest import suggestions
from auditor.matrix import Matrix
from auditor.model import LostEvents, NodeStatus
from auditor.sinks.label_history import LabelHistory

MAX_EXAMPLES: Final = 3
MAX_INVALID_SAMPLES: Final = 10
MAX_SUGGESTION_SAMPLES: Final = 32  # distinct endpoint pairs per unexpected_allowed edge
DEFAULT_MAX_EDGES: Final = 10_000
REMOTE_NODE: Final = "remote-node"
# Violations first, then the rest.
CLASS_ORDER: Final = {c: i for i, c in enumerate((*VIOLATIONS, UNEXPECTED_DROPPED, EXPECTED_ALLOWED))}


@dataclass
class EdgeStats:
    """Mutable per-edge accumulator (sink-private)."""

    rule: int
    connections: int = 0
    flows: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    drop_reasons: dict[str, int] = field(default_factory=dict)
    first: float = float("inf")
    last: float = float("-inf")
    examples: list[tuple[str, str, str]] = field(default_factory=list)


ProvisionalKey = tuple[str, str, int | None, str]
"""(source, destination, port, protocol) of connections that only provisional evidence was seen for."""


@dataclass
class ProvisionalStats:
    """Mutable per-edge accumulator of unproven connections (sink-private)."""

    connections: int = 0
    examples: list[tuple[str, str, str]] = field(default_factory=list)


class ReportSink:
    """Aggregates everything a replay report needs."""

    def __init__(
        self, matrix: Matrix, max_edges: int = DEFAULT_MAX_EDGES, inputs: dict[str, Any] | None = None
    ) -> None:
        self.matrix = matrix
        self.max_edges = max_edges
        self.inputs = inputs  # what the report was made from (files, matrix file and digest), if known
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.classes: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self.edges: dict[Edge, EdgeStats] = {}
        self.provisional: dict[ProvisionalKey, ProvisionalStats] = {}
        self.aggregated = {"edges": 0, "provisional": 0}  # connections folded into `other` edges
        self.lost: dict[str, int] = {}
        self.invalid_samples: list[dict[str, Any]] = []
        # per unexpected_allowed edge, one judgement per distinct pair of endpoints (for its suggestion)
        self.violation_samples: dict[Edge, dict[tuple[object, ...], Judgement]] = {}
        self.samples_full: set[Edge] = set()
        # per expected_dropped edge, its first connection and the label changes of its ends at that time
        self.dropped_samples: dict[Edge, tuple[Judgement, list[dict[str, Any]]]] = {}
        self.label_history = LabelHistory()

    # -- Sink ---------------------------------------------------------------------------------------
    def on_outcome(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def on_judgement(self, j: Judgement) -> None:
        self.outcomes[j.outcome] += 1
        edge = j.edge
        stats = self.edges.get(edge)
        if stats is None:
            if len(self.edges) >= self.max_edges:
                edge = edge.folded()
                stats = self.edges.get(edge)
                if j.new_connection:
                    self.aggregated["edges"] += 1
            if stats is None:
                stats = self.edges[edge] = EdgeStats(j.rule if edge is j.edge else 0)
        stats.flows += 1
        flow = j.flow
        t = flow.time
        if t < stats.first:
            stats.first = t
        if t > stats.last:
            stats.last = t
        if edge.cls == UNEXPECTED_ALLOWED and edge is j.edge:
            self._sample_violation(edge, j)
        if j.new_connection and edge is j.edge and edge.cls != UNEXPECTED_DROPPED:
            self.sample_policy(edge, j)
        if not j.new_connection:
            return
        self.classes[edge.cls] += 1
        stats.connections += 1
        stats.verdicts[j.verdict] = stats.verdicts.get(j.verdict, 0) + 1
        if flow.drop_reason:
            stats.drop_reasons[flow.drop_reason] = stats.drop_reasons.get(flow.drop_reason, 0) + 1
        if len(stats.examples) < MAX_EXAMPLES:
            add_example(
                stats.examples,
                (j.source.pod or j.source_ip, j.destination.pod or j.destination_ip, flow.node_name),
            )

    def _sample_violation(self, edge: Edge, j: Judgement) -> None:
        """Keep one judgement per distinct pair of endpoints of a violation edge (for its suggestion)."""
        if edge in self.samples_full:
            return
        samples = self.violation_samples.setdefault(edge, {})
        src, dst, flow = j.source, j.destination, j.flow
        names = flow.source_names if j.reply else flow.destination_names
        address = "" if dst.namespace else j.destination_ip  # world destinations: per address
        key = (
            src.namespace,
            src.labels,
            src.workloads,
            dst.namespace,
            dst.labels,
            dst.workloads,
            names,
            address,
        )
        if key not in samples:
            if len(samples) >= MAX_SUGGESTION_SAMPLES:
                self.samples_full.add(edge)  # the suggestion covers only part of the edge
                return
            samples[key] = j

    def sample_policy(self, edge: Edge, j: Judgement) -> None:
        """Remember the labels of delivered connections, and the first connection of a dropped edge
        (called for each new connection of a detailed edge, in input order; parallel replay calls it too)."""
        cls = edge.cls
        if cls in (EXPECTED_ALLOWED, UNEXPECTED_ALLOWED):
            self.label_history.on_delivered(j)
        elif cls == EXPECTED_DROPPED and edge not in self.dropped_samples:
            self.dropped_samples[edge] = (j, self.label_history.changes_of(j))

    def on_unproven(self, connection: Unproven) -> None:
        key = connection.key
        stats = self.provisional.get(key)
        if stats is None:
            if len(self.provisional) >= self.max_edges:
                key = (OTHER, OTHER, None, OTHER)
                stats = self.provisional.get(key)
                self.aggregated["provisional"] += 1
            if stats is None:
                stats = self.provisional[key] = ProvisionalStats()
        stats.connections += 1
        if len(stats.examples) < MAX_EXAMPLES:
            f = connection.flow
            add_example(
                stats.examples,
                (f.source.pod or f.source_ip, f.destination.pod or f.destination_ip, f.node_name),
            )

    def on_lost(self, record: LostEvents) -> None:
        self.lost[record.source] = self.lost.get(record.source, 0) + record.num_events

    def on_node_status(self, record: NodeStatus) -> None:
        pass  # node status only matters to a live stream's health metrics

    def on_invalid(self, where: str, reason: str) -> None:
        if len(self.invalid_samples) < MAX_INVALID_SAMPLES:
            file, _, line = where.rpartition(":")
            self.invalid_samples.append({"file": file, "line": int(line), "error": reason})

    # -- result -------------------------------------------------------------------------------------
    @property
    def received(self) -> int:
        return sum(self.outcomes.values())

    def report(self) -> dict[str, Any]:
        """The JSON report (DESIGN §6), deterministic for a given input."""
        used = {stats.rule for stats in self.edges.values() if stats.rule}
        samples = [list(v.values()) for v in self.violation_samples.values()]
        suggested = dict(zip(self.violation_samples, suggestions(self.matrix, samples), strict=True))
        for edge in self.samples_full:
            suggestion = suggested.get(edge)
            if suggestion is not None:
                suggested[edge] = {**suggestion, "partial": True}
        advisor = PolicyAdvisor(self.matrix) if self.dropped_samples else None
        policy = {
            edge: advisor.advise(j, changes)
            for edge, (j, changes) in self.dropped_samples.items()
            if advisor is not None
        }
        provisional_ports = {(d, port, proto) for (_, d, port, proto) in self.provisional}
        return {
            "matrix": self.matrix.name,
            "inputs": self.inputs,
            "components": [c.name for c in self.matrix.components],
            "flows": {"received": self.received, **self.outcomes},
            "classes": dict(self.classes),
            "edges": [
                {
                    **self._edge(edge, stats, _hint(edge, provisional_ports), suggested.get(edge)),
                    "policy_change": policy.get(edge),
                }
                for edge, stats in sorted(self.edges.items(), key=_edge_sort)
            ],
            "unused_rules": [
                {
                    "rule": r.index,
                    "from": _names(r.sources),
                    "to": _names(r.destinations),
                    "ports": r.port_strings(),
                }
                for r in self.matrix.rules
                if r.index not in used
            ],
            "provisional": [
                {
                    "source": source,
                    "destination": destination,
                    "port": port,
                    "protocol": protocol,
                    "connections": stats.connections,
                    "examples": _examples(stats.examples),
                }
                for (source, destination, port, protocol), stats in sorted(
                    self.provisional.items(), key=_provisional_sort
                )
            ],
            "lost_events": dict(sorted(self.lost.items())),
            "invalid_samples": list(self.invalid_samples),
            "edge_limit": {
                "max_edges": self.max_edges,
                "aggregated_connections": self.aggregated["edges"],
                "aggregated_provisional_connections": self.aggregated["provisional"],
            },
        }

    @staticmethod
    def _edge(
        edge: Edge, s: EdgeStats, hint: str | None, suggestion: dict[str, Any] | None
    ) -> dict[str, Any]:
        source, destination, port, protocol, cls = edge
        return {
            "source": source,
            "destination": destination,
            "port": port,
            "protocol": protocol,
            "class": cls,
            "connections": s.connections,
            "flows": s.flows,
            "verdicts": dict(sorted(s.verdicts.items())),
            "drop_reasons": dict(sorted(s.drop_reasons.items())),
            "rule": s.rule or None,
            "first_seen": rfc3339(s.first),
            "last_seen": rfc3339(s.last),
            "examples": _examples(s.examples),
            "hint": hint,
            "suggestion": suggestion,
        }


def add_example(examples: list[tuple[str, str, str]], example: tuple[str, str, str]) -> None:
    if example not in examples:
        examples.append(example)


def _examples(examples: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{"source_pod": a, "destination_pod": b, "node": n} for a, b, n in examples]


def _hint(edge: Edge, provisional_ports: set[tuple[str, int | None, str]]) -> str | None:
    """The likely cause of an edge, where the report itself tells it."""
    source, destination, port, protocol, _ = edge
    if source == REMOTE_NODE and (destination, port, protocol) in provisional_ports:
        return (
            f"pods also sent unproven connections to {destination} on this port: source NAT between nodes "
            "(masquerading, or a tunnel or load balancer that rewrites the source) likely hides those pods "
            "behind the remote-node identity"
        )
    return None


def _provisional_sort(item: tuple[ProvisionalKey, ProvisionalStats]) -> tuple[int, str, str, str, int]:
    (source, destination, port, protocol), stats = item
    return (-stats.connections, source, destination, protocol, -1 if port is None else port)


def _edge_sort(item: tuple[Edge, EdgeStats]) -> tuple[int, int, str, str, str, int]:
    (source, destination, port, protocol, cls), stats = item
    return (CLASS_ORDER[cls], -stats.connections, source, destination, protocol, -1 if port is None else port)


def _names(names: tuple[str, ...]) -> str | list[str]:
    return names[0] if len(names) == 1 else list(names)


def rfc3339(t: float) -> str | None:
    """Seconds since the epoch → ``2026-11-23T09:00:01.123456Z`` (microseconds), ``None`` if unset."""
    if t in (float("inf"), float("-inf")):
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
