"""The daemon's live view of the matrix: the data behind ``/`` and ``/api/v1/edges``.

Stage: sink. Input: the pipeline's judgements, unproven connections, lost-event and node-status records;
from the daemon, the matrix in use (name, digest, last reload result) and the stream state. Output:
:meth:`LiveSink.snapshot`, a JSON-ready dict: edges with their connections since the auditor started and
within the last :data:`WINDOW` seconds, verdicts, first and last seen; provisional edges; nodes with
their state, lost events and newest flow; the matrix's components and unused rules.

Bounded by construction: at most ``max_edges`` edges (and as many provisional ones), beyond which new
edges are folded per class into one ``other`` edge; per edge a fixed number of one-minute buckets; at most
``max_nodes`` nodes. Times are flow times (Hubble's clock); the window ends at the newest flow time seen or
the clock, whichever is later, so a quiet stream ages out of "last 15 minutes". A flow stamped more than
the clock tolerance (60 s) ahead of the auditor's clock counts at the clock's time, so that one node clock
running ahead cannot move the window (or a node's newest flow) into the future.

Threading: the pipeline thread is the only writer; the HTTP thread calls :meth:`snapshot`, which copies
dicts (atomic under the GIL) and may see one edge a few events ahead of another, never a torn value.

Error policy: never raises on a record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from auditor.classify import CLASSES, OTHER, VIOLATIONS, Edge, Judgement, Unproven
from auditor.matrix import Matrix
from auditor.model import LostEvents, NodeStatus
from auditor.sources.resume import DEFAULT_TOLERANCE, plausible_time

WINDOW: Final = 900.0
BUCKET: Final = 60.0
DEFAULT_MAX_EDGES: Final = 5_000
DEFAULT_MAX_NODES: Final = 5_000
_BUCKETS: Final = int(WINDOW // BUCKET) + 1


class _EdgeStats:
    __slots__ = ("buckets", "connections", "first", "last", "rule", "verdicts")

    def __init__(self, rule: int, t: float) -> None:
        self.rule = rule
        self.connections = 0
        self.verdicts: dict[str, int] = {}
        self.first = t
        self.last = t
        self.buckets: dict[int, int] = {}  # minute → new connections

    def add(self, verdict: str, t: float) -> None:
        self.connections += 1
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        minute = int(t // BUCKET)
        buckets = self.buckets
        buckets[minute] = buckets.get(minute, 0) + 1
        if len(buckets) > _BUCKETS:
            del buckets[min(buckets)]

    def recent(self, since: float) -> int:
        first_minute = int(since // BUCKET)
        return sum(n for minute, n in self.buckets.copy().items() if minute >= first_minute)


class _NodeStats:
    __slots__ = ("last_flow", "lost", "state")

    def __init__(self) -> None:
        self.state = ""
        self.lost = 0
        self.last_flow = 0.0


class LiveSink:
    """Pipeline sink keeping the live matrix; see the module docstring."""

    def __init__(
        self,
        matrix: Matrix,
        *,
        clock: Callable[[], float] = time.time,
        clock_tolerance: float = DEFAULT_TOLERANCE,
        max_edges: int = DEFAULT_MAX_EDGES,
        max_nodes: int = DEFAULT_MAX_NODES,
    ) -> None:
        self.clock = clock
        self.clock_tolerance = clock_tolerance
        self._horizon = 0.0  # flow times beyond it are checked against the clock (plausible_time)
        self.max_edges = max_edges
        self.max_nodes = max_nodes
        self.started = clock()
        self.newest = 0.0
        self._edges: dict[Edge, _EdgeStats] = {}
        self._provisional: dict[tuple[str, str, int | None, str], int] = {}
        self._nodes: dict[str, _NodeStats] = {}
        self.matrix_info: dict[str, Any] = {}
        self.stream: dict[str, Any] = {"connected": False, "since": None, "last_error": None}
        self.set_matrix(matrix)

    # -- from the daemon ------------------------------------------------------------------------------
    def set_matrix(self, matrix: Matrix) -> None:
        self.matrix = matrix

    def matrix_loaded(self, digest: str, ok: bool, error: str | None = None) -> None:
        """A load or reload attempt of the matrix file (``digest`` of the file in use after it)."""
        self.matrix_info = {
            "digest": digest,
            "last_reload": "success" if ok else "error",
            "last_reload_time": _rfc3339(self.clock()),
            "last_error": error,
        }

    def stream_state(self, connected: bool, error: str | None = None) -> None:
        self.stream = {"connected": connected, "since": _rfc3339(self.clock()), "last_error": error}

    # -- Sink ---------------------------------------------------------------------------------------
    def on_outcome(self, outcome: str) -> None:
        pass

    def on_judgement(self, j: Judgement) -> None:
        flow = j.flow
        t = flow.time
        if t > self._horizon:  # stamped ahead of the clock: seen now (the window does not run ahead)
            t, self._horizon = plausible_time(t, self.clock, self.clock_tolerance)
        if t > self.newest:
            self.newest = t
        self._node(flow.node_name, t)
        if not j.new_connection:
            stats = self._edges.get(j.edge)
            if stats is not None and t > stats.last:
                stats.last = t
            return
        edge = j.edge
        stats = self._edges.get(edge)
        if stats is None:
            if len(self._edges) >= self.max_edges:
                edge = edge.folded()
                stats = self._edges.get(edge)
            if stats is None:
                stats = self._edges[edge] = _EdgeStats(j.rule if edge is j.edge else 0, t)
        if t > stats.last:
            stats.last = t
        if t < stats.first:
            stats.first = t
        stats.add(j.verdict, t)

    def on_unproven(self, connection: Unproven) -> None:
        key = connection.key
        if key not in self._provisional and len(self._provisional) >= self.max_edges:
            key = (OTHER, OTHER, None, OTHER)
        self._provisional[key] = self._provisional.get(key, 0) + 1

    def on_lost(self, record: LostEvents) -> None:
        node = self._node(record.node_name, 0.0)
        if node is not None and record.num_events > 0:
            node.lost += record.num_events

    def on_node_status(self, record: NodeStatus) -> None:
        for name in record.node_names:
            if record.state == "NODE_GONE":
                self._nodes.pop(name, None)
                continue
            node = self._node(name, 0.0)
            if node is not None:
                node.state = record.state

    def on_invalid(self, where: str, reason: str) -> None:
        pass

    def _node(self, name: str, t: float) -> _NodeStats | None:
        if not name:
            return None
        node = self._nodes.get(name)
        if node is None:
            if len(self._nodes) >= self.max_nodes:
                return None
            node = self._nodes[name] = _NodeStats()
        if t > node.last_flow:
            node.last_flow = t
        return node

    # -- for the HTTP thread --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The live matrix as the page and ``/api/v1/edges`` serve it (a JSON-ready dict)."""
        now = max(self.clock(), self.newest)
        since = now - WINDOW
        edges: list[dict[str, Any]] = []
        recent_classes = dict.fromkeys(CLASSES, 0)
        total_classes = dict.fromkeys(CLASSES, 0)
        used: set[int] = set()
        for (source, destination, port, protocol, cls), s in self._edges.copy().items():
            recent = s.recent(since)
            total_classes[cls] += s.connections
            recent_classes[cls] += recent
            if s.rule:
                used.add(s.rule)
            edges.append(
                {
                    "source": source,
                    "destination": destination,
                    "port": port,
                    "protocol": protocol,
                    "class": cls,
                    "connections": s.connections,
                    "connections_recent": recent,
                    "verdicts": dict(sorted(s.verdicts.copy().items())),
                    "rule": s.rule or None,
                    "first_seen": _rfc3339(s.first),
                    "last_seen": _rfc3339(s.last),
                }
            )
        edges.sort(key=_edge_order)
        matrix = self.matrix
        return {
            "generated": _rfc3339(now),
            "started": _rfc3339(self.started),
            "window_seconds": WINDOW,
            "matrix": {"name": matrix.name, **self.matrix_info},
            "stream": dict(self.stream),
            "components": [c.name for c in matrix.components],
            "classes": {"since_start": total_classes, "recent": recent_classes},
            "edges": edges,
            "provisional": [
                {"source": s, "destination": d, "port": p, "protocol": proto, "connections": n}
                for (s, d, p, proto), n in sorted(self._provisional.copy().items(), key=lambda i: -i[1])
            ],
            "unused_rules": [
                {
                    "rule": r.index,
                    "from": list(r.sources),
                    "to": list(r.destinations),
                    "ports": r.port_strings(),
                }
                for r in matrix.rules
                if r.index not in used
            ],
            "nodes": [
                {"name": name, "state": n.state, "lost_events": n.lost, "last_flow": _rfc3339(n.last_flow)}
                for name, n in sorted(self._nodes.copy().items())
            ],
        }


_ORDER: Final = {c: i for i, c in enumerate((*VIOLATIONS, "unexpected_dropped", "expected_allowed"))}


def _edge_order(e: dict[str, Any]) -> tuple[int, int, str, str, int]:
    port = -1 if e["port"] is None else int(e["port"])
    return (_ORDER.get(e["class"], len(_ORDER)), -int(e["connections"]), e["source"], e["destination"], port)


def _rfc3339(t: float) -> str | None:
    if t <= 0:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
