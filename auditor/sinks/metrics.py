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

Error policy: never raises on a record. Unknown lost-event sources are counted under
``UNKNOWN_LOST_EVENT_SOURCE``; a judgement whose rule index is not in the current matrix (a matrix swapped in
the auditor but not here) updates no rule series. Counters survive matrix reloads; only caches are rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final, NamedTuple

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

import auditor
from auditor.classify import EXPECTED_DROPPED, JUDGED, OUTCOMES, UNEXPECTED_DROPPED, Edge, Judgement
from auditor.matrix import ENTITIES, Matrix
from auditor.model import ICMP_PROTOCOLS, VERDICT_NAMES, LostEvents, NodeStatus
from auditor.sources.resume import ANOMALY_KINDS

PREFIX: Final = "flow_auditor_"
OTHER: Final = "other"
UNKNOWN_PEER: Final = "unknown"
NAMESPACE_PREFIX: Final = "ns:"

LOST_EVENT_SOURCES: Final = (
    "UNKNOWN_LOST_EVENT_SOURCE",
    "PERF_EVENT_RING_BUFFER",
    "OBSERVER_EVENTS_QUEUE",
    "HUBBLE_RING_BUFFER",
)
UNKNOWN_LOST_EVENT_SOURCE: Final = LOST_EVENT_SOURCES[0]
NODE_STATES: Final = ("NODE_CONNECTED", "NODE_UNAVAILABLE", "NODE_ERROR")
NODE_GONE: Final = "NODE_GONE"
RELOAD_RESULTS: Final = ("success", "error")
OVERFLOW_LABELS: Final = ("source", "destination", "port", "verdict", "reason")

DEFAULT_MAX_NAMESPACES: Final = 50
DEFAULT_MAX_OTHER_PORTS: Final = 20
MAX_DROP_REASONS: Final = 64
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

    __slots__ = ("labels", "last_seen", "reasons", "verdicts")

    def __init__(self, labels: Labels, last_seen: float) -> None:
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

    __slots__ = ("dropped", "overflow", "rule", "rule_seen", "series")

    def __init__(
        self,
        series: _Series,
        rule: int,
        rule_seen: _RuleSeen | None,
        overflow: tuple[str, ...],
        dropped: bool,
    ) -> None:
        self.series = series
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
    ) -> None:
        self.max_namespaces = max_namespaces
        self.max_other_ports = max_other_ports
        # Counters and gauges (plain values; the collector reads them at scrape time).
        self._flows: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._series: dict[Labels, _Series] = {}
        self._rules_seen: dict[RuleKey, _RuleSeen] = {}
        self._lost: dict[str, int] = dict.fromkeys(LOST_EVENT_SOURCES, 0)
        self._nodes: dict[str, str] = {}
        self._reloads: dict[str, int] = dict.fromkeys(RELOAD_RESULTS, 0)
        self._overflow: dict[str, int] = dict.fromkeys(OVERFLOW_LABELS, 0)
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
        self._flows[JUDGED] += 1
        slot = self._slots.get(judgement.edge)
        if slot is None:
            slot = self._slot(judgement)
        series = slot.series
        t = judgement.flow.time
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
        if judgement.new_connection:
            verdict = judgement.verdict
            if verdict not in _VERDICT_LABELS:
                verdict = OTHER
                self._overflow["verdict"] += 1
            counts = series.verdicts
            counts[verdict] = counts.get(verdict, 0) + 1
            if slot.dropped:
                reason = judgement.flow.drop_reason or verdict
                if reason not in self._reasons:
                    reason = self._admit_reason(reason)
                reasons = series.reasons
                reasons[reason] = reasons.get(reason, 0) + 1

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
        if series is None:
            series = _Series(labels, judgement.flow.time)
            self._series[labels] = series
        rule = judgement.rule
        slot = _Slot(series, rule, self._rule_seen(rule, edge), tuple(overflow), cls in _DROPPED_CLASSES)
        if len(self._slots) >= _MAX_EDGE_CACHE:
            self._slots.clear()
        self._slots[edge] = slot
        return slot

    def _rule_seen(self, rule: int, edge: Edge) -> _RuleSeen | None:
        return self._rules_seen.get((rule, edge[0], edge[1]))

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
