"""The daemon's log (structlog lines): what it sees, how it is doing, never one line per flow.

Stage: sink (plus stream-health callbacks from the daemon). Input: the pipeline's judgements, outcomes,
lost-event and node-status records, undecodable events; stream state changes (:meth:`LogSink.stream_up`,
:meth:`LogSink.stream_down`, :meth:`LogSink.stream_retry`). Output: log lines:

- ``violation`` — the first connection of a violation edge, then at most one line per edge per ``interval``
  carrying the number of connections since the previous line; with the matrix (constructor or
  :meth:`LogSink.set_matrix`, which follows hot reloads), a line of an ``unexpected_allowed`` edge carries
  ``suggestion`` (the rule, and the components the matrix lacks, that would allow it:
  :mod:`auditor.learn.suggest`, the code of replay's report) and a line of an ``expected_dropped`` edge
  ``policy_change`` (the generated NetworkPolicy/CiliumNetworkPolicy objects that implement the allowing
  rule, whether they admit these pods, and the likely cause: :mod:`auditor.learn.policy_hint`). Both are
  computed only for a line actually written (after the rate limit; the policies of a matrix are generated
  on the first ``expected_dropped`` line), at most ``MAX_HINT_CHARS`` long; suggestions are cached per edge
  and pair of label sets (at most ``max_edges`` entries, then emptied); a failure becomes a
  ``suggestion_error`` field, never an exception;
- ``lost events``, ``hubble node status``, ``undecodable event skipped`` (the first, then every 1000th);
- ``summary`` — every ``summary_interval`` seconds: flows received and flows/s, active violation edges,
  stream state, lines suppressed by the rate limit;
- ``hubble unreachable, retrying`` — while the stream is down: attempt, next retry, last error, at most
  once per ``retry_log_interval`` (the first failure is logged at once).

Bounds: every line from the data path (violations, lost events, node status, undecodable events) takes a
token from one global bucket (``burst`` lines, refilled at ``rate`` lines/s): past it, lines are dropped and
counted, and the count appears in the next summary. Churn (new pods, new namespaces, so new edges) can
therefore never write more than ``burst + rate x t`` lines. The per-edge table holds at most ``max_edges``
edges (emptied when full; edges are made of component, entity and namespace names, so an entry is small),
as does the set of active edges of the current summary period, the suggestion cache, and the label
history behind ``policy_change`` (labels of delivered connections per component and namespace). Empty
fields (``None``, ``""``, empty collections) are left out of every line (:func:`drop_empty`, also a
structlog processor for the daemon).

Threading: the data-path methods run on the pipeline thread (single writer); the stream methods on the
source's thread; the summary on the sink's own thread (:meth:`LogSink.start`), which reads counters that
only ever grow. Error policy: never raises into the pipeline; the summary thread survives any exception.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Final

import structlog

from auditor.classify import (
    EXPECTED_ALLOWED,
    EXPECTED_DROPPED,
    UNEXPECTED_ALLOWED,
    VIOLATIONS,
    Edge,
    Judgement,
    Unproven,
)
from auditor.learn.policy_hint import PolicyAdvisor, advice_text
from auditor.learn.suggest import suggestion_text, suggestions
from auditor.matrix import Matrix
from auditor.model import LostEvents, NodeStatus
from auditor.sinks.label_history import LabelHistory

log = structlog.get_logger("flow-auditor")

DEFAULT_RATE: Final = 1.0  # lines per second, sustained
DEFAULT_BURST: Final = 100
DEFAULT_SUMMARY_INTERVAL: Final = 60.0
DEFAULT_RETRY_LOG_INTERVAL: Final = 30.0
DEFAULT_MAX_EDGES: Final = 10_000
INVALID_SAMPLE_EVERY: Final = 1000
MAX_HINT_CHARS: Final = 2000  # suggestion / policy_change text in one line


def _empty(value: object) -> bool:
    return value is None or (isinstance(value, str | tuple | list | dict | set | frozenset) and not value)


def drop_empty(logger: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: leave out fields whose value is ``None``, ``""`` or an empty collection."""
    for key in [k for k, v in event.items() if _empty(v)]:
        del event[key]
    return event


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second of ``clock``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class LogSink:
    """Pipeline sink writing the daemon's log lines (see the module docstring)."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        max_edges: int = DEFAULT_MAX_EDGES,
        *,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        summary_interval: float = DEFAULT_SUMMARY_INTERVAL,
        retry_log_interval: float = DEFAULT_RETRY_LOG_INTERVAL,
        matrix: Matrix | None = None,
        matrix_file: str | None = None,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.max_edges = max_edges
        self.summary_interval = summary_interval
        self.retry_log_interval = retry_log_interval
        self._bucket = TokenBucket(rate, burst, clock)
        self._last: dict[Edge, tuple[float, int]] = {}  # edge → (time of its last line, connections since)
        self._active: set[Edge] = set()  # violation edges seen in the current summary period
        self.received = 0  # flows (every outcome)
        self.invalid = 0
        self.suppressed = 0  # lines dropped by the rate limit
        self.lines = 0  # data-path lines written
        # stream state (source thread)
        self.stream = "starting"
        self.attempt = 0
        self.last_error = ""
        self._retry_logged_at: float | None = None
        # summary (summary thread)
        self._summary_at = clock()
        self._summary_received = 0
        self._summary_suppressed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # suggestions (pipeline thread; the matrix is swapped between two records)
        self.matrix_file = matrix_file
        self._history = LabelHistory(max_edges)
        self._hints: dict[tuple[object, ...], dict[str, str]] = {}
        self._matrix: Matrix | None = None
        self._advisor: PolicyAdvisor | None = None
        if matrix is not None:
            self.set_matrix(matrix)

    def set_matrix(self, matrix: Matrix) -> None:
        """Use ``matrix`` for the suggestions of later lines (hot reload: called between two records)."""
        self._matrix = matrix
        self._advisor = None  # the generated policies of the new matrix are built on first use
        self._hints = {}

    def cache_info(self) -> dict[str, int]:
        """Entries of the bounded per-edge state: edges whose last line time is remembered."""
        return {"edges": len(self._last)}

    # -- rate limit -----------------------------------------------------------------------------------
    def _line(
        self, level: str, event: str, extra: Callable[[], dict[str, str]] | None = None, **fields: Any
    ) -> bool:
        """Write one data-path line if the global bucket allows it; count it as suppressed otherwise.
        ``extra`` adds fields computed only for a line that is written."""
        if not self._bucket.take():
            self.suppressed += 1
            return False
        self.lines += 1
        if extra is not None:
            fields.update(extra())
        getattr(log, level)(event, **{k: v for k, v in fields.items() if not _empty(v)})
        return True

    # -- Sink -----------------------------------------------------------------------------------------
    def on_outcome(self, outcome: str) -> None:
        self.received += 1

    def on_judgement(self, j: Judgement) -> None:
        self.received += 1
        edge = j.edge
        if edge.cls not in VIOLATIONS:
            if edge.cls == EXPECTED_ALLOWED and j.new_connection:
                self._history.on_delivered(j)
            return
        if edge.cls == UNEXPECTED_ALLOWED and j.new_connection:
            self._history.on_delivered(j)
        if len(self._active) < self.max_edges:
            self._active.add(edge)
        if not j.new_connection:
            return
        now = self.clock()
        last = self._last.get(edge)
        if last is not None and now - last[0] < self.interval:
            self._last[edge] = (last[0], last[1] + 1)
            return
        if len(self._last) >= self.max_edges:
            self._last.clear()
        since = last[1] if last is not None else 0
        source, destination, port, protocol, cls = edge
        flow = j.flow
        written = self._line(
            "warning",
            "violation",
            (lambda: self._hint(j)) if self._matrix is not None else None,
            **{"class": cls},
            source=source,
            destination=destination,
            port=port,
            protocol=protocol,
            verdict=j.verdict,
            drop_reason=flow.drop_reason,
            source_pod=j.source.pod or j.source_ip,
            destination_pod=j.destination.pod or j.destination_ip,
            node=flow.node_name,
            rule=j.rule or None,
            new_edge=last is None,
            connections_since_last_log=since,
        )
        # A suppressed line keeps its connections for the edge's next line.
        self._last[edge] = (now, 0) if written else (now, since + 1)

    def _hint(self, j: Judgement) -> dict[str, str]:
        """``suggestion`` or ``policy_change`` for a violation line (cached; never raises)."""
        try:
            src, dst, flow = j.source, j.destination, j.flow
            names = flow.source_names if j.reply else flow.destination_names
            key = (
                j.edge,
                j.rule,
                src.namespace,
                src.labels,
                dst.namespace,
                dst.labels,
                names,
                j.destination_ip,
            )
            hint = self._hints.get(key)
            if hint is None:
                hint = self._compute_hint(j)
                if len(self._hints) >= self.max_edges:
                    self._hints.clear()
                if j.edge.cls == UNEXPECTED_ALLOWED:  # policy_change depends on the label history: not cached
                    self._hints[key] = hint
            return hint
        except Exception as e:  # a suggestion must never stop the pipeline
            return {"suggestion_error": f"{type(e).__name__}: {e}"[:300]}

    def _compute_hint(self, j: Judgement) -> dict[str, str]:
        matrix = self._matrix
        if matrix is None:
            return {}
        if j.edge.cls == UNEXPECTED_ALLOWED:
            suggestion = suggestions(matrix, [[j]])[0]
            return {"suggestion": suggestion_text(suggestion)[:MAX_HINT_CHARS]} if suggestion else {}
        if j.edge.cls == EXPECTED_DROPPED:
            if self._advisor is None:
                self._advisor = PolicyAdvisor(matrix)
            advice = self._advisor.advise(j, self._history.changes_of(j))
            if advice is not None:
                return {"policy_change": advice_text(advice, self.matrix_file)[:MAX_HINT_CHARS]}
        return {}

    def on_unproven(self, connection: Unproven) -> None:
        pass  # not a violation; counted in the metrics and the live page

    def on_lost(self, record: LostEvents) -> None:
        self._line(
            "warning", "lost events", source=record.source, count=record.num_events, node=record.node_name
        )

    def on_node_status(self, record: NodeStatus) -> None:
        self._line(
            "info",
            "hubble node status",
            state=record.state,
            nodes=list(record.node_names),
            message=record.message,
        )

    def on_invalid(self, where: str, reason: str) -> None:
        """The first undecodable message with a sample, then every 1000th (never one line per event)."""
        self.invalid += 1
        if self.invalid == 1 or self.invalid % INVALID_SAMPLE_EVERY == 0:
            self._line("warning", "undecodable event skipped", where=where, reason=reason, total=self.invalid)

    # -- stream state (source thread) -----------------------------------------------------------------
    def stream_up(self) -> None:
        self.stream = "connected"
        self.attempt = 0
        self._retry_logged_at = None

    def stream_down(self, reason: str) -> None:
        self.stream = "down"
        self.attempt += 1
        self.last_error = reason[:500]

    def stream_retry(self, delay: float) -> None:
        """A retry is scheduled in ``delay`` seconds: one line now and then every ``retry_log_interval``."""
        now = self.clock()
        if self._retry_logged_at is not None and now - self._retry_logged_at < self.retry_log_interval:
            return
        self._retry_logged_at = now
        log.warning(
            "hubble unreachable, retrying",
            attempt=self.attempt,
            next_retry_seconds=round(delay, 2),
            **({"last_error": self.last_error} if self.last_error else {}),
        )

    # -- summary --------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Write the summary line of the period since the previous one, and return its fields."""
        now = self.clock()
        elapsed = max(now - self._summary_at, 1e-9)
        received, suppressed = self.received, self.suppressed
        active, self._active = self._active, set()
        fields: dict[str, Any] = {
            "flows": received - self._summary_received,
            "flows_per_second": round((received - self._summary_received) / elapsed, 1),
            "violation_edges_active": len(active),
            "stream": self.stream,
            "suppressed_lines": suppressed - self._summary_suppressed,
        }
        if self.stream == "down" and self.last_error:
            fields["last_error"] = self.last_error
        self._summary_at, self._summary_received, self._summary_suppressed = now, received, suppressed
        log.info("summary", **fields)
        return fields

    def tick(self) -> None:
        """Write the summary when ``summary_interval`` has passed (called by the summary thread)."""
        if self.clock() - self._summary_at >= self.summary_interval:
            self.summary()

    def start(self) -> None:
        """Start the summary thread (daemon thread; :meth:`stop` ends it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="log-summary", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.summary_interval)):
            try:
                self.tick()
            except Exception as e:  # a log line must never end the thread
                log.error("summary failed", error=repr(e)[:300])
