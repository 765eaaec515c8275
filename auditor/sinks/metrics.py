"""Prometheus metrics of the daemon (DESIGN §6): the metrics sink.

Stage: sink. Input: the pipeline's outcomes, judgements, lost-event and node-status records; calls from
the live source (stream health: :meth:`MetricsSink.set_hubble_up`, :meth:`MetricsSink.inc_reconnects`,
:meth:`MetricsSink.set_last_flow_timestamp`, and :attr:`MetricsSink.stream_stats` read at scrape time for the
counters the source keeps itself); from the pipeline on hot reload (:meth:`MetricsSink.set_matrix`,
applied between two records); from the daemon (:meth:`MetricsSink.matrix_reloaded`). Output: the
``flow_auditor_*`` metrics, produced by this object acting as a ``prometheus_client`` collector registered in
the registry given to the constructor.

Cost: the per-event path touches plain ints and floats in dicts, never a ``prometheus_client`` metric object
(no lock, no label lookup). Mapping an edge to its bounded label values is done once per edge and cached, so
a judged event costs one dict lookup on the edge tuple plus a few attribute and dict updates. Metric families
are built from a snapshot at scrape time.

Threading: every mutating method has a single writer, the pipeline thread (the stream-health methods may be
called by the source's thread instead, as long as only one thread calls each). Scrapes run on the HTTP
server's thread and read dict copies (``dict.copy()`` runs in C under the GIL, so it never sees a dict half
updated); every series is monotonic on its own, scrapes just may see one series a few events ahead of another.

Bounded label values (DESIGN §6): ``source``/``destination`` are component names, entity names, ``unknown``
or ``ns:<namespace>`` with at most ``max_namespaces`` distinct namespaces; ``port`` is a port of a single-port
rule of the matrix, a rule's port range (``30000-32767``), ``""`` for ICMP, or one of at most
``max_other_ports`` other ports; verdicts outside Hubble's names and drop reasons beyond
:data:`MAX_DROP_REASONS` distinct values are folded too. Every folded value becomes ``other`` and counts in
``flow_auditor_label_overflow_total{label}``: once per judged event for source, destination and port, once per
new connection for verdict and reason. Admitted namespaces and ports stay admitted (also across reloads).

Bounded series (per metric family, whatever the label caps allow): the label caps alone still allow
sources x destinations x ports x classes x verdicts combinations (crafted flows within them made 296,027
series and a 47 MB scrape). So each edge family holds at most ``max_series`` series
(:data:`DEFAULT_MAX_SERIES`): ``edge_last_seen`` counts edges, ``connections`` (edge, verdict) pairs,
``dropped_connections`` (edge, reason) pairs. An edge or pair beyond the cap is aggregated into the series
of its class whose source, destination, port and protocol are all ``other`` (at most 4 such edges, so a
family never exceeds its cap by more than a few dozen series), and each judged event or new connection that
lands there counts in ``flow_auditor_series_overflow_total{metric}``. ``rule_last_seen`` has one series per
(rule, source, destination) of the matrix, which :mod:`auditor.matrix` bounds at load time.

Error policy: never raises on a record. Unknown lost-event sources are counted under
``UNKNOWN_LOST_EVENT_SOURCE``; a judgement whose rule index is not in the current matrix (a matrix swapped in
the auditor but not here) updates no rule series. Counters survive matrix reloads; only caches are rebuilt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Final, NamedTuple

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

import auditor
from auditor.classify import EXPECTED_DROPPED, OTHER, OUTCOMES, UNEXPECTED_DROPPED, Edge, Judgement, Unproven
from auditor.matrix import ENTITIES, Matrix
from auditor.model import ICMP_PROTOCOLS, VERDICT_NAMES, LostEvents, NodeStatus
from auditor.names import (
    LOST_EVENT_SOURCE_NAMES,
    NODE_GONE,
    NODE_STATE_NAMES,
    UNKNOWN_LOST_EVENT_SOURCE,
    UNKNOWN_NODE_STATE,
)
from auditor.sources.resume import ANOMALY_KINDS, DEFAULT_TOLERANCE, plausible_time

PREFIX: Final = "flow_auditor_"
UNKNOWN_PEER: Final = "unknown"
NAMESPACE_PREFIX: Final = "ns:"

LOST_EVENT_SOURCES: Final = tuple(name for _, name in sorted(LOST_EVENT_SOURCE_NAMES.items()))
NODE_STATES: Final = tuple(
    name for _, name in sorted(NODE_STATE_NAMES.items()) if name not in (UNKNOWN_NODE_STATE, NODE_GONE)
)
"""Node states exposed by ``flow_auditor_hubble_nodes`` (gone nodes are forgotten)."""
RELOAD_RESULTS: Final = ("success", "error")
SERIES_FAMILIES: Final = {
    "edge_last_seen": PREFIX + "edge_last_seen_timestamp_seconds",
    "connections": PREFIX + "connections_total",
    "dropped_connections": PREFIX + "dropped_connections_total",
    "provisional_connections": PREFIX + "provisional_connections_total",
}
"""Capped edge families: key → the ``metric`` label value of ``flow_auditor_series_overflow_total``."""
OVERFLOW_LABELS: Final = ("source", "destination", "port", "verdict", "reason")

DEFAULT_MAX_NAMESPACES: Final = 50
DEFAULT_MAX_OTHER_PORTS: Final = 20
MAX_DROP_REASONS: Final = 64
DEFAULT_MAX_SERIES: Final = 10_000
"""Series per edge metric family (a 10,000-series family is about 1.5 MB of exposition text)."""
"""Distinct drop reasons kept as label values (Hubble's DropReason enum has fewer than 200 names)."""

_DROPPED_CLASSES: Final = frozenset({EXPECTED_DROPPED, UNEXPECTED_DROPPED})
_VERDICT_LABELS: Final = frozenset(VERDICT_NAMES.values())
_MAX_EDGE_CACHE: Final = 50_000

EDGE_LABELS: Final = ("source", "destination", "port", "protocol", "class")


class StreamStats(NamedTuple):
    """Counters the live source keeps itself, read at scrape time (see :attr:`MetricsSink.stream_stats`)."""

    resent: int = 0
    gaps: int = 0
    anomalies: Mapping[str, int] = {}


Labels = tuple[str, str, str, str, str]
"""Bounded label values of an edge: (source, destination, port, protocol, class)."""
RuleKey = tuple[int, str, str]
"""(rule index, source component, destination component)."""


class _Series:
    """Everything exposed for one edge, keyed by its bounded label values. Survives matrix reloads."""

    __slots__ = ("aggregate", "labels", "last_seen", "reasons", "verdicts")

    def __init__(self, labels: Labels, last_seen: float, aggregate: bool = False) -> None:
        self.aggregate = aggregate  # the 'other' series of a class, where edges beyond the cap go
        self.labels = labels
        self.last_seen = last_seen
        self.verdicts: dict[str, int] = {}  # new connections by verdict label
        self.reasons: dict[str, int] = {}  # new dropped connections by drop reason label


class _RuleSeen:
    """Last-seen time of one (rule, source, destination) of the current matrix."""

    __slots__ = ("last_seen",)

    def __init__(self, last_seen: float) -> None:
        self.last_seen = last_seen


class _Slot:
    """Cached mapping of one judged edge (as the auditor names it) to its series. Rebuilt on reload."""

    __slots__ = ("dropped", "overflow", "rule", "rule_seen", "series", "series_overflow")

    def __init__(
        self,
        series: _Series,
        rule: int,
        rule_seen: _RuleSeen | None,
        overflow: tuple[str, ...],
        dropped: bool,
        series_overflow: bool,
    ) -> None:
        self.series = series
        self.series_overflow = series_overflow
        self.rule = rule
        self.rule_seen = rule_seen
        self.overflow = overflow
        self.dropped = dropped


class MetricsSink:
    """Pipeline sink and Prometheus collector of every ``flow_auditor_*`` metric."""

    def __init__(
        self,
        matrix: Matrix,
        registry: CollectorRegistry | None = None,
        *,
        max_namespaces: int = DEFAULT_MAX_NAMESPACES,
        max_other_ports: int = DEFAULT_MAX_OTHER_PORTS,
        max_series: int = DEFAULT_MAX_SERIES,
        clock: Callable[[], float] = time.time,
        clock_tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self.max_series = max_series
        # Last-seen times are flow times bounded by the auditor's clock (see on_judgement).
        self._clock, self._tolerance, self._horizon = clock, clock_tolerance, 0.0
        self.max_namespaces = max_namespaces
        self.max_other_ports = max_other_ports
        # Counters and gauges (plain values; the collector reads them at scrape time).
        self._flows: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._series: dict[Labels, _Series] = {}
        self._provisional: dict[tuple[str, str, str, str], int] = {}
        self._rules_seen: dict[RuleKey, _RuleSeen] = {}
        self._lost: dict[str, int] = dict.fromkeys(LOST_EVENT_SOURCES, 0)
        self._nodes: dict[str, str] = {}
        self._reloads: dict[str, int] = dict.fromkeys(RELOAD_RESULTS, 0)
        self._overflow: dict[str, int] = dict.fromkeys(OVERFLOW_LABELS, 0)
        self._series_overflow: dict[str, int] = dict.fromkeys(SERIES_FAMILIES, 0)
        self._other_series: dict[str, _Series] = {}  # by class: where edges beyond the cap go
        self._pairs = {"connections": 0, "dropped_connections": 0}  # (edge, verdict|reason) series
        self._reconnects = 0
        self._hubble_up = False
        self.last_flow_timestamp = 0.0
        self.stream_stats: Callable[[], StreamStats] = StreamStats
        # Label values admitted so far (persist across reloads so that series keep their labels).
        self._namespaces: set[str] = set()
        self._other_ports: set[str] = set()
        self._reasons: set[str] = set()
        self.set_matrix(matrix)
        if registry is not None:
            registry.register(self)

    # -- configuration ------------------------------------------------------------------------------
    def set_matrix(self, matrix: Matrix) -> None:
        """Use a new matrix (hot reload): label caches and rule series are rebuilt, counters are kept.

        Rule series are one per (rule index, source component, destination component) of the new matrix;
        those that existed before keep their last-seen time, the others start at 0.
        """
        self.matrix = matrix
        self._peers = frozenset({c.name for c in matrix.components} | ENTITIES | {UNKNOWN_PEER})
        singles: set[tuple[str, int]] = set()
        ranges: dict[tuple[str, int, int], str] = {}
        for rule in matrix.rules:
            for ports in rule.ports:
                if not ports.protocols or ports.protocols <= ICMP_PROTOCOLS:
                    continue  # "any" names no port; ICMP has none
                for protocol in ports.protocols:
                    if ports.lo == ports.hi:
                        singles.add((protocol, ports.lo))
                    else:
                        ranges.setdefault((protocol, ports.lo, ports.hi), f"{ports.lo}-{ports.hi}")
        self._single_ports = frozenset(singles)
        self._port_ranges = tuple((p, lo, hi, text) for (p, lo, hi), text in ranges.items())
        old = self._rules_seen
        self._rules_seen = {
            key: _RuleSeen(old[key].last_seen if key in old else 0.0)
            for rule in matrix.rules
            for key in ((rule.index, s, d) for s in rule.sources for d in rule.destinations)
        }
        self._slots: dict[Edge, _Slot] = {}

    def cache_info(self) -> dict[str, int]:
        """Entries of the bounded structures: edge series (every family) and the per-edge cache."""
        return {"series": len(self._series), "edge_slots": len(self._slots)}

    def matrix_reloaded(self, ok: bool) -> None:
        """Count a reload attempt (``result="success"`` or ``"error"``).

        Does not swap the matrix: on success the daemon also calls :meth:`set_matrix`.
        """
        self._reloads["success" if ok else "error"] += 1

    # -- stream health ------------------------------------------------------------------------------
    def set_hubble_up(self, up: bool) -> None:
        """Whether the Hubble stream is connected. Going down forgets node states (Relay resends them)."""
        self._hubble_up = up
        if not up:
            self._nodes = {}

    def inc_reconnects(self) -> None:
        self._reconnects += 1

    def set_last_flow_timestamp(self, t: float) -> None:
        """Flow time of the newest flow received (a plain store; the source calls it very often)."""
        self.last_flow_timestamp = t

    # -- Sink ---------------------------------------------------------------------------------------
    def on_outcome(self, outcome: str) -> None:
        """Count one record by outcome: one of :data:`auditor.classify.OUTCOMES`, nothing else."""
        self._flows[outcome] += 1

    def on_judgement(self, judgement: Judgement) -> None:
        self._flows[judgement.outcome] += 1
        slot = self._slots.get(judgement.edge)
        if slot is None:
            slot = self._slot(judgement)
        series = slot.series
        t = judgement.flow.time
        if t > self._horizon:  # stamped ahead of the clock: seen now (the silent-rule alert stays true)
            t, self._horizon = plausible_time(t, self._clock, self._tolerance)
        if t > series.last_seen:
            series.last_seen = t
        rule = judgement.rule
        if rule:
            seen = slot.rule_seen if rule == slot.rule else self._rule_seen(rule, judgement.edge)
            if seen is not None and t > seen.last_seen:
                seen.last_seen = t
        if slot.overflow:
            for label in slot.overflow:
                self._overflow[label] += 1
        if slot.series_overflow:
            self._series_overflow["edge_last_seen"] += 1
        if judgement.new_connection:
            verdict = judgement.verdict
            if verdict not in _VERDICT_LABELS:
                verdict = OTHER
                self._overflow["verdict"] += 1
            if series.aggregate:  # an edge beyond the cap: its connections are overflow too
                self._series_overflow["connections"] += 1
                if slot.dropped:
                    self._series_overflow["dropped_connections"] += 1
            counts = series.verdicts
            if verdict in counts:
                counts[verdict] += 1
            else:
                self._new_pair(series, "connections", verdict)
            if slot.dropped:
                reason = judgement.flow.drop_reason or verdict
                if reason not in self._reasons:
                    reason = self._admit_reason(reason)
                reasons = series.reasons
                if reason in reasons:
                    reasons[reason] += 1
                else:
                    self._new_pair(series, "dropped_connections", reason)

    def _new_pair(self, series: _Series, family: str, key: str) -> None:
        """First count of an (edge, verdict|reason) series, or of the overflow series past the cap."""
        if self._pairs[family] >= self.max_series and not series.aggregate:
            self._series_overflow[family] += 1
            series = self._overflow_series(series.labels[4], series.last_seen)
        counts = series.verdicts if family == "connections" else series.reasons
        if key not in counts:
            counts[key] = 0
            if not series.aggregate:
                self._pairs[family] += 1
        counts[key] += 1

    def _overflow_series(self, cls: str, t: float) -> _Series:
        series = self._other_series.get(cls)
        if series is None:
            series = _Series((OTHER, OTHER, OTHER, OTHER, cls), t, aggregate=True)
            self._other_series[cls] = series
            self._series[series.labels] = series
        elif t > series.last_seen:
            series.last_seen = t
        return series

    def on_unproven(self, connection: Unproven) -> None:
        """Count a connection that only provisional evidence was seen for, on bounded labels."""
        overflow: list[str] = []
        labels = (
            self._peer_label(connection.source, "source", overflow),
            self._peer_label(connection.destination, "destination", overflow),
            self._port_label(connection.protocol, connection.port, overflow),
            connection.protocol,
        )
        for label in overflow:
            self._overflow[label] += 1
        provisional = self._provisional
        if labels not in provisional and len(provisional) >= self.max_series:
            self._series_overflow["provisional_connections"] += 1
            labels = (OTHER, OTHER, OTHER, OTHER)
        provisional[labels] = provisional.get(labels, 0) + 1

    def on_lost(self, record: LostEvents) -> None:
        source = record.source if record.source in self._lost else UNKNOWN_LOST_EVENT_SOURCE
        if record.num_events > 0:
            self._lost[source] += record.num_events

    def on_node_status(self, record: NodeStatus) -> None:
        nodes = self._nodes
        if record.state == NODE_GONE:
            for name in record.node_names:
                nodes.pop(name, None)
        else:
            for name in record.node_names:
                nodes[name] = record.state

    def on_invalid(self, where: str, reason: str) -> None:
        pass  # the pipeline reports the same record through on_outcome("invalid"), counted there

    # -- label mapping (once per edge) ----------------------------------------------------------------
    def _slot(self, judgement: Judgement) -> _Slot:
        edge = judgement.edge
        source, destination, port, protocol, cls = edge
        overflow: list[str] = []
        labels: Labels = (
            self._peer_label(source, "source", overflow),
            self._peer_label(destination, "destination", overflow),
            self._port_label(protocol, port, overflow),
            protocol,
            cls,
        )
        series = self._series.get(labels)
        beyond = False
        if series is None:
            if len(self._series) - len(self._other_series) >= self.max_series:
                beyond = True
                series = self._overflow_series(cls, 0.0)
            else:
                series = _Series(labels, 0.0)  # on_judgement sets its time (bounded by the clock)
                self._series[labels] = series
        rule = judgement.rule
        slot = _Slot(
            series, rule, self._rule_seen(rule, edge), tuple(overflow), cls in _DROPPED_CLASSES, beyond
        )
        if len(self._slots) >= _MAX_EDGE_CACHE:
            self._slots.clear()
        self._slots[edge] = slot
        return slot

    def _rule_seen(self, rule: int, edge: Edge) -> _RuleSeen | None:
        return self._rules_seen.get((rule, edge.source, edge.destination))

    def _peer_label(self, name: str, label: str, overflow: list[str]) -> str:
        if name in self._peers or name in self._namespaces:
            return name
        if name.startswith(NAMESPACE_PREFIX) and len(self._namespaces) < self.max_namespaces:
            self._namespaces.add(name)
            return name
        overflow.append(label)
        return OTHER

    def _port_label(self, protocol: str, port: int | None, overflow: list[str]) -> str:
        if port is None:
            return ""
        if (protocol, port) in self._single_ports:
            return str(port)
        for p, lo, hi, text in self._port_ranges:
            if p == protocol and lo <= port <= hi:
                return text
        text = str(port)
        if text in self._other_ports:
            return text
        if len(self._other_ports) < self.max_other_ports:
            self._other_ports.add(text)
            return text
        overflow.append("port")
        return OTHER

    def _admit_reason(self, reason: str) -> str:
        if len(self._reasons) < MAX_DROP_REASONS:
            self._reasons.add(reason)
            return reason
        self._overflow["reason"] += 1
        return OTHER

    # -- collector ----------------------------------------------------------------------------------
    def describe(self) -> list[Metric]:
        """The metric families without samples (lets the registry reject duplicate names)."""
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        f = _families()
        connections, dropped, edge_last = f["connections"], f["dropped_connections"], f["edge_last_seen"]
        for series in self._series.copy().values():
            labels = series.labels
            edge_last.add_metric(labels, series.last_seen)
            for verdict, n in series.verdicts.copy().items():
                connections.add_metric((*labels, verdict), n)
            for reason, n in series.reasons.copy().items():
                dropped.add_metric((*labels, reason), n)
        for outcome, n in self._flows.copy().items():
            f["flows"].add_metric((outcome,), n)
        for provisional_labels, n in self._provisional.copy().items():
            f["provisional"].add_metric(provisional_labels, n)
        for (rule, source, destination), seen in self._rules_seen.copy().items():
            f["rule_last_seen"].add_metric((str(rule), source, destination), seen.last_seen)
        f["hubble_up"].add_metric((), 1.0 if self._hubble_up else 0.0)
        f["reconnects"].add_metric((), self._reconnects)
        for source, n in self._lost.copy().items():
            f["lost_events"].add_metric((source,), n)
        f["last_flow"].add_metric((), self.last_flow_timestamp)
        states = list(self._nodes.copy().values())
        for state in NODE_STATES:
            f["nodes"].add_metric((state,), states.count(state))
        f["matrix_rules"].add_metric((), len(self.matrix.rules))
        for result, n in self._reloads.copy().items():
            f["reloads"].add_metric((result,), n)
        for label, n in self._overflow.copy().items():
            f["overflow"].add_metric((label,), n)
        for family, n in self._series_overflow.copy().items():
            f["series_overflow"].add_metric((SERIES_FAMILIES[family],), n)
        f["build_info"].add_metric((auditor.__version__,), 1.0)
        stream = self.stream_stats()
        f["resent"].add_metric((), stream.resent)
        f["gaps"].add_metric((), stream.gaps)
        for kind in ANOMALY_KINDS:
            f["clock_anomalies"].add_metric((kind,), stream.anomalies.get(kind, 0))
        yield from f.values()


def _families() -> dict[str, CounterMetricFamily | GaugeMetricFamily]:
    """Fresh, empty families of every metric (names without ``_total``: the exposition adds it)."""
    c, g = CounterMetricFamily, GaugeMetricFamily
    return {
        "connections": c(
            PREFIX + "connections",
            "Judged connections (distinct attempts, deduplicated) by edge and verdict.",
            labels=(*EDGE_LABELS, "verdict"),
        ),
        "dropped_connections": c(
            PREFIX + "dropped_connections",
            "Judged connections of the dropped classes by Hubble drop reason "
            "(the verdict name when Hubble gave none).",
            labels=(*EDGE_LABELS, "reason"),
        ),
        "flows": c(
            PREFIX + "flows",
            "Received flow events by outcome (judged, reply, provisional, ignored, out_of_scope, invalid).",
            labels=("outcome",),
        ),
        "provisional": c(
            PREFIX + "provisional_connections",
            "Connections seen only through provisional (egress-side) evidence: neither delivery nor a drop "
            "was observed within the dedup window.",
            labels=EDGE_LABELS[:4],
        ),
        "edge_last_seen": g(
            PREFIX + "edge_last_seen_timestamp_seconds",
            "Flow time of the newest judged event of the edge.",
            labels=EDGE_LABELS,
        ),
        "rule_last_seen": g(
            PREFIX + "rule_last_seen_timestamp_seconds",
            "Flow time of the newest judged event matching the allow rule, 0 until one is seen.",
            labels=("rule", "from", "to"),
        ),
        "hubble_up": g(
            PREFIX + "hubble_up",
            "1 while the Hubble flow stream is healthy (delivering, or open and answering), else 0.",
        ),
        "reconnects": c(PREFIX + "hubble_reconnects", "Reconnections of the Hubble flow stream."),
        "lost_events": c(
            PREFIX + "hubble_lost_events",
            "Events Hubble reported as lost, by where they were lost.",
            labels=("source",),
        ),
        "last_flow": g(
            PREFIX + "last_flow_timestamp_seconds", "Flow time of the newest flow received from Hubble."
        ),
        "nodes": g(
            PREFIX + "hubble_nodes", "Hubble nodes by state, as reported by Relay.", labels=("state",)
        ),
        "matrix_rules": g(PREFIX + "matrix_rules", "Allow rules in the loaded communication matrix."),
        "reloads": c(
            PREFIX + "matrix_reloads",
            "Matrix reload attempts by result (an error keeps the previous matrix).",
            labels=("result",),
        ),
        "overflow": c(
            PREFIX + "label_overflow",
            "Label values replaced by 'other' because their cap was reached.",
            labels=("label",),
        ),
        "series_overflow": c(
            PREFIX + "series_overflow",
            "Judged events (edge_last_seen) or new connections aggregated into the 'other' series of their "
            "class because the metric family reached its series cap.",
            labels=("metric",),
        ),
        "resent": c(
            PREFIX + "hubble_resent_events_skipped",
            "Events Hubble sent again after a reconnection, recognised and skipped (exactly once).",
        ),
        "gaps": c(
            PREFIX + "hubble_stream_gaps",
            "Streams started at the server's end, knowingly skipping events (after an oversized message).",
        ),
        "clock_anomalies": c(
            PREFIX + "hubble_clock_anomalies",
            "Flows stamped ahead of the auditor's clock, or a node's flow times stepping back, by kind.",
            labels=("kind",),
        ),
        "build_info": g(PREFIX + "build_info", "Always 1; the version of flow-auditor.", labels=("version",)),
    }
