"""The replay report: aggregation sink and the JSON contract of DESIGN §6.

Stage: sink. Input: the pipeline's outcomes and judgements. Output: :meth:`ReportSink.report`, a plain
dict in the stable JSON shape (``matrix``, ``flows``, ``classes``, ``edges``, ``unused_rules``) plus the
documented extensions ``lost_events`` and ``invalid_samples`` (first few undecodable lines with their
file and line number). Rendering to table/markdown/HTML lives in ``auditor.render``.

Memory is bounded per edge (a few example pods); edges themselves are bounded by the matrix's
components x ports seen.

Error policy: none needed (pure aggregation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from auditor.classify import (
    CLASSES,
    EXPECTED_ALLOWED,
    OUTCOMES,
    UNEXPECTED_DROPPED,
    VIOLATIONS,
    Edge,
    Judgement,
)
from auditor.matrix import Matrix
from auditor.model import LostEvents, NodeStatus

MAX_EXAMPLES: Final = 3
MAX_INVALID_SAMPLES: Final = 10
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


class ReportSink:
    """Aggregates everything a replay report needs."""

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.classes: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self.edges: dict[Edge, EdgeStats] = {}
        self.lost: dict[str, int] = {}
        self.invalid_samples: list[dict[str, Any]] = []

    # -- Sink ---------------------------------------------------------------------------------------
    def on_outcome(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def on_judgement(self, j: Judgement) -> None:
        self.outcomes["judged"] += 1
        stats = self.edges.get(j.edge)
        if stats is None:
            stats = self.edges[j.edge] = EdgeStats(j.rule)
        stats.flows += 1
        flow = j.flow
        t = flow.time
        if t < stats.first:
            stats.first = t
        if t > stats.last:
            stats.last = t
        if not j.new_connection:
            return
        self.classes[j.edge[4]] += 1
        stats.connections += 1
        stats.verdicts[j.verdict] = stats.verdicts.get(j.verdict, 0) + 1
        if flow.drop_reason:
            stats.drop_reasons[flow.drop_reason] = stats.drop_reasons.get(flow.drop_reason, 0) + 1
        if len(stats.examples) < MAX_EXAMPLES:
            example = (
                flow.source.pod or flow.source_ip,
                flow.destination.pod or flow.destination_ip,
                flow.node_name,
            )
            if example not in stats.examples:
                stats.examples.append(example)

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
        return {
            "matrix": self.matrix.name,
            "flows": {"received": self.received, **self.outcomes},
            "classes": dict(self.classes),
            "edges": [self._edge(edge, stats) for edge, stats in sorted(self.edges.items(), key=_edge_sort)],
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
            "lost_events": dict(sorted(self.lost.items())),
            "invalid_samples": list(self.invalid_samples),
        }

    @staticmethod
    def _edge(edge: Edge, s: EdgeStats) -> dict[str, Any]:
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
            "examples": [{"source_pod": a, "destination_pod": b, "node": n} for a, b, n in s.examples],
        }


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
