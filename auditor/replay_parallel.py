"""Parallel replay (``replay --jobs N``): chunks of a file judged in worker processes, merged in input order.

Stage: source → decode → judge → classify, split across processes; the merge feeds the one
:class:`~auditor.sinks.report.ReportSink` and the one :class:`~auditor.classify.Auditor` of the run, so the
report is byte-identical to the single-process one **by construction**:

* Workers do everything that depends on one line only: decoding, judging, resolving components and rules,
  the outcome counts, lost events, the field-mask check, each edge's flows and first/last seen (sums,
  minima and maxima), invalid samples (first ten of the chunk) and the suggestion samples (first 32 distinct
  endpoint pairs of the chunk per ``unexpected_allowed`` edge).
* Everything that depends on the lines before — connection dedup within the window, the pending
  (provisional) table and the reply evidence that resolves it, and therefore which event opens a connection
  (connections, verdicts, drop reasons, examples, classes) — is **not** judged in the workers. Their
  auditor runs with recorders in place of :class:`~auditor.classify.DedupTable` and
  :class:`~auditor.classify.PendingTable` that note the keys the auditor would look up; each chunk returns
  those keys, in input order, as four packed arrays (time, connection key, dedup key, slot). The merge runs
  the real tables over them in input order, so expiry, the entry caps and out-of-order times behave exactly
  as in one process, whatever the chunk boundaries.
* Order-dependent parts with a cap are merged in chunk order: the first ``--max-edges`` distinct edges are
  kept (an edge's rank in its chunk is never above its rank in the input, so an edge a worker folded into
  ``other`` is folded in the input too), the first ten invalid samples, the first three distinct examples.

Only uncompressed regular files of at least one chunk are split; standard input, gzip and pipes go through
:func:`auditor.replay_input.feed_file` in this process, on the same auditor and sink.

Error policy: as single-process replay: undecodable lines are counted and sampled; a file that cannot be
read raises :class:`~auditor.sources.files.SourceError` (from the worker, re-raised here).
"""

from __future__ import annotations

import gc
import io
import itertools
import multiprocessing
import os
import stat
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult
from typing import Any, Final, cast

from auditor.classify import (
    EXPECTED_ALLOWED,
    EXPECTED_DROPPED,
    IGNORED,
    INVALID,
    JUDGED,
    OUTCOMES,
    PROVISIONAL,
    REPLY,
    UNEXPECTED_ALLOWED,
    Auditor,
    DedupTable,
    Edge,
    Judgement,
    PendingTable,
    Unproven,
)
from auditor.decode import DecodeError, decode_line
from auditor.matrix import Matrix
from auditor.model import EMPTY_ENDPOINT, Endpoint, Flow, LostEvents, NodeStatus, OtherRecord, Record
from auditor.pipeline import Pipeline
from auditor.replay_input import UNKNOWN_KIND, InputSummary, UnjudgeableCheck
from auditor.sinks.report import (
    MAX_EXAMPLES,
    MAX_INVALID_SAMPLES,
    MAX_SUGGESTION_SAMPLES,
    EdgeStats,
    ReportSink,
    add_example,
)
from auditor.sources.files import SourceError

DEFAULT_CHUNK_BYTES: Final = 4 * 1024 * 1024
_PROVISIONAL: Final = -1  # slot values below zero: a provisional event, its Unproven at -slot - 1

Example = tuple[str, str, str]
Delivered = tuple[str, str, tuple[str, ...], str, str, tuple[str, ...]]
"""Both ends of a delivered connection as the label history keeps them: component, namespace, labels."""


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def splittable(name: str, chunk_bytes: int) -> bool:
    """An uncompressed regular file larger than one chunk (stdin, pipes and gzip stay in one process)."""
    if name == "-":
        return False
    try:
        st = os.stat(name)
        if not stat.S_ISREG(st.st_mode) or st.st_size <= chunk_bytes:
            return False
        with open(name, "rb") as f:
            return f.read(2) != b"\x1f\x8b"
    except OSError:
        return False  # the single-process path reports it


def chunks(name: str, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of ``name`` of about ``chunk_bytes`` each, every one starting at a line boundary."""
    size = os.stat(name).st_size
    bounds = [0]
    with open(name, "rb") as f:
        while bounds[-1] + chunk_bytes < size:
            f.seek(bounds[-1] + chunk_bytes - 1)
            f.readline()  # to the end of the line that holds the byte before the cut
            at = f.tell()
            if at >= size:
                break
            bounds.append(at)
    bounds.append(size)
    return list(itertools.pairwise(bounds))


# -- worker side ------------------------------------------------------------------------------------
class _DedupRecorder(DedupTable):
    """Notes the dedup key the auditor asks about; says "new" (the merge asks the real table)."""

    key = 0

    def seen(self, key: int, t: float) -> bool:
        self.key = key
        return False


class _PendingRecorder(PendingTable):
    """Notes the connection key resolved or held (with the Unproven maker); holds nothing."""

    key = 0
    make: Callable[[], Unproven] | None = None

    def hold(self, key: int, t: float, make: Callable[[], Unproven]) -> None:
        self.key, self.make = key, make

    def resolve(self, key: int, t: float) -> None:
        self.key = key


@dataclass
class ChunkResult:
    """What one worker returns for one byte range of a file (line numbers relative to the range)."""

    lines: int = 0  # physical lines
    nonblank: int = 0
    events: int = 0
    first_error: tuple[int, str] | None = None
    invalid: list[tuple[int, str]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    unjudgeable_events: int = 0
    unjudgeable_missing: dict[str, int] = field(default_factory=dict)
    # edges in first-appearance order: (edge, rule, flows, first, last, kept); not kept: folded in `other`
    edges: list[tuple[Edge, int, int, float, float, bool]] = field(default_factory=list)
    samples: dict[int, tuple[dict[tuple[object, ...], Judgement], bool]] = field(default_factory=dict)
    slots: list[tuple[int, str, str, Example]] = field(default_factory=list)  # (edge, verdict, drop, ex.)
    unproven: list[tuple[str, str, int | None, str, Example]] = field(default_factory=list)
    times: array[float] = field(default_factory=lambda: array("d"))
    conns: array[int] = field(default_factory=lambda: array("q"))
    keys: array[int] = field(default_factory=lambda: array("q"))
    kinds: array[int] = field(default_factory=lambda: array("q"))
    # per judged event: index into `policy` (a judgement the report samples for policy advice), or -1
    policy_slots: array[int] = field(default_factory=lambda: array("q"))
    policy: list[Judgement | Delivered] = field(default_factory=list)


_worker: tuple[Auditor, _DedupRecorder, _PendingRecorder, int, Matrix] | None = None


def init_worker(matrix: Matrix, window: float, max_edges: int) -> None:
    """Set up this process to judge chunks (:func:`judge_chunk`): the pool's initializer."""
    global _worker
    auditor = Auditor(matrix, window)
    dedup, pending = _DedupRecorder(window), _PendingRecorder(window)
    auditor.dedup, auditor.pending = dedup, pending
    _worker = (auditor, dedup, pending, max_edges, matrix)


def judge_chunk(task: tuple[str, int, int]) -> ChunkResult:
    """Decode and judge the lines of ``name`` in ``[start, end)`` (a worker's whole job)."""
    assert _worker is not None
    name, start, end = task
    try:
        with open(name, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    except OSError as e:
        raise SourceError(f"{name}: cannot read: {e.strerror or e}") from None
    return _judge_lines(io.BytesIO(data), *_worker)


def _judge_lines(
    stream: io.BytesIO,
    auditor: Auditor,
    dedup: _DedupRecorder,
    pending: _PendingRecorder,
    max_edges: int,
    matrix: Matrix,
) -> ChunkResult:
    chunk = _Chunk(UnjudgeableCheck(matrix), max_edges)
    outcomes, check = chunk.outcomes, chunk.unjudgeable.check
    process, decode = auditor.process, decode_line
    number = nonblank = events = 0
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        nonblank += 1
        try:
            record = decode(line)
        except DecodeError as e:
            chunk.invalid(number, str(e))
            continue
        if type(record) is not Flow:
            events += chunk.other(record)
            continue
        events += 1
        if not record.event_type or not (record.traffic_direction or record.observation_point):
            check(record)
        result = process(record)
        if type(result) is str:
            outcomes[result] += 1
            if result == PROVISIONAL:  # the merge decides whether the pending table holds it
                chunk.provisional(record, pending)
        else:
            chunk.judged(record, cast(Judgement, result), dedup.key, pending.key)
    return chunk.result(number, nonblank, events)


class _Chunk:
    """What a worker gathers over one chunk: counts, edges in first-appearance order, and per event the
    keys and slots the merge replays (see :class:`ChunkResult`)."""

    def __init__(self, unjudgeable: UnjudgeableCheck, max_edges: int) -> None:
        self.r = ChunkResult()
        self.unjudgeable = unjudgeable
        self.max_edges = max_edges
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.edge_index: dict[Edge, int] = {}
        self.edge_rows: list[list[Any]] = []  # [edge, rule, flows, first, last, kept]
        self.slot_index: dict[tuple[int, str, str, str, str, str, str, str, str, str], int] = {}
        self.unproven_index: dict[
            tuple[str, str, int | None, str, str, str, str, str, str, str, str], int
        ] = {}
        self.samples: dict[int, tuple[dict[tuple[object, ...], Judgement], bool]] = {}
        self.policy_index: dict[tuple[object, ...], int] = {}  # expected_dropped judgements
        self.delivered_index: dict[
            tuple[int, int, int, str, str], list[tuple[tuple[str, ...], tuple[str, ...], int]]
        ] = {}
        self.labels_of: dict[tuple[str, ...], tuple[str, ...]] = {}
        # Per event, gathered in lists (a native append; an array's is a method call) and packed at the end
        self.times: list[float] = []
        self.conns: list[int] = []
        self.keys: list[int] = []
        self.kinds: list[int] = []
        self.policy_slots: list[int] = []

    def invalid(self, number: int, reason: str) -> None:
        r = self.r
        self.outcomes[INVALID] += 1
        if len(r.invalid) < MAX_INVALID_SAMPLES:
            r.invalid.append((number, reason))
        if r.first_error is None:
            r.first_error = (number, reason)

    def other(self, record: Record) -> int:
        """A record that is not a flow; 1 when it is a Hubble event (counted in ``events``)."""
        if type(record) is LostEvents:
            self.r.lost[record.source] = self.r.lost.get(record.source, 0) + record.num_events
        elif type(record) is not NodeStatus:
            self.outcomes[IGNORED] += 1
        return 0 if type(record) is OtherRecord and record.kind == UNKNOWN_KIND else 1

    def provisional(self, record: Flow, pending: _PendingRecorder) -> None:
        """A provisional event: its connection key and the unproven connection it would open."""
        assert pending.make is not None
        u = pending.make()
        src, dst = record.source, record.destination
        ukey = (
            u.source,
            u.destination,
            u.port,
            u.protocol,
            src.namespace,
            src.pod_name,
            record.source_ip,
            dst.namespace,
            dst.pod_name,
            record.destination_ip,
            record.node_name,
        )
        slot = self.unproven_index.get(ukey)
        if slot is None:
            slot = self.unproven_index[ukey] = len(self.unproven_index)
        self.times.append(record.time)
        self.conns.append(pending.key)
        self.keys.append(0)
        self.kinds.append(_PROVISIONAL - slot)
        self.policy_slots.append(-1)

    def judged(self, record: Flow, j: Judgement, dedup_key: int, connection: int) -> None:
        """A final verdict: its edge's counts and times, its example slot and its policy candidate."""
        reply = j.reply
        self.outcomes[REPLY if reply else JUDGED] += 1
        edge = j.edge
        index = self.edge_index.get(edge)
        if index is None:
            index = self._new_edge(edge, j.rule)
        row = self.edge_rows[index]
        t = record.time
        row[2] += 1
        if t < row[3]:
            row[3] = t
        if t > row[4]:
            row[4] = t
        cls = edge.cls
        if cls == UNEXPECTED_ALLOWED and row[5]:
            _sample(self.samples, index, j)
        # The example's parts, raw (pod strings are built once per distinct slot, at the end)
        src, dst = (record.destination, record.source) if reply else (record.source, record.destination)
        skey = (
            index,
            j.verdict,
            record.drop_reason,
            src.namespace,
            src.pod_name,
            record.destination_ip if reply else record.source_ip,
            dst.namespace,
            dst.pod_name,
            record.source_ip if reply else record.destination_ip,
            record.node_name,
        )
        slot = self.slot_index.get(skey)
        if slot is None:
            slot = self.slot_index[skey] = len(self.slot_index)
        self.times.append(t)
        self.conns.append(connection)
        self.keys.append(dedup_key)
        self.kinds.append(slot)
        if not row[5] or cls not in _POLICY_CLASSES:
            self.policy_slots.append(-1)
        elif cls == EXPECTED_DROPPED:
            self.policy_slots.append(_dropped_slot(self.policy_index, self.r.policy, index, j))
        else:  # delivered: the label sets of both ends, what the label history reads
            self.policy_slots.append(self._delivered_slot(index, edge, src, dst))

    def _delivered_slot(self, index: int, edge: Edge, src: Endpoint, dst: Endpoint) -> int:
        """The policy slot of a delivered event: one per distinct (edge, namespaces, label sets) of the
        chunk. Looked up by the ends' identities, cheap to hash, then told apart by comparing the label
        sets (a reused identity): hashing two label sets of fresh strings per event cost more than
        judging the event. Two slots with equal contents (one label set under two identities) are
        remembered alike by the label history."""
        key = (index, src.identity, dst.identity, src.namespace, dst.namespace)
        found = self.delivered_index.get(key)
        if found is None:
            found = self.delivered_index[key] = []
        else:
            src_labels, dst_labels = src.labels, dst.labels
            for labels_a, labels_b, slot in found:
                if labels_a == src_labels and labels_b == dst_labels:
                    return slot
        slot = len(self.r.policy)
        self.r.policy.append(_delivered(edge, src, dst, self.labels_of))
        found.append((src.labels, dst.labels, slot))
        return slot

    def _new_edge(self, edge: Edge, rule: int) -> int:
        rows, index_of = self.edge_rows, self.edge_index
        if len(rows) < self.max_edges:
            index = index_of[edge] = len(rows)
            rows.append([edge, rule, 0, float("inf"), float("-inf"), True])
            return index
        # beyond the cap in this chunk: beyond it in the input too
        folded = edge.folded()
        found = index_of.get(folded)
        if found is None:
            found = index_of[folded] = len(rows)
            rows.append([folded, 0, 0, float("inf"), float("-inf"), False])
        index_of[edge] = found  # bounded by the chunk's lines
        return found

    def result(self, lines: int, nonblank: int, events: int) -> ChunkResult:
        r = self.r
        r.lines, r.nonblank, r.events, r.outcomes = lines, nonblank, events, self.outcomes
        r.times, r.conns, r.keys = array("d", self.times), array("q", self.conns), array("q", self.keys)
        r.kinds, r.policy_slots = array("q", self.kinds), array("q", self.policy_slots)
        r.unjudgeable_events, r.unjudgeable_missing = self.unjudgeable.events, self.unjudgeable.missing
        r.edges = [(e, rule, n, first, last, kept) for e, rule, n, first, last, kept in self.edge_rows]
        r.samples = self.samples
        r.slots = [
            (k[0], k[1], k[2], (_pod(k[3], k[4], k[5]), _pod(k[6], k[7], k[8]), k[9]))
            for k in self.slot_index
        ]
        r.unproven = [
            (*k[:4], (_pod(k[4], k[5], k[6]), _pod(k[7], k[8], k[9]), k[10])) for k in self.unproven_index
        ]
        return r


_POLICY_CLASSES: Final = frozenset({EXPECTED_ALLOWED, UNEXPECTED_ALLOWED, EXPECTED_DROPPED})


def _dropped_slot(
    index_of: dict[tuple[object, ...], int], taken: list[Judgement | Delivered], edge: int, j: Judgement
) -> int:
    """An ``expected_dropped`` event's whole judgement (what the report's policy advice reads), standing
    for every event of ``edge`` with the same ends: the merge samples it when the event turns out to open
    a connection."""
    f = j.flow
    key = (
        edge,
        j.reply,
        f.source,
        f.destination,
        f.source_ip,
        f.destination_ip,
        f.source_names,
        f.destination_names,
    )
    slot = index_of.get(key)
    if slot is None:
        slot = index_of[key] = len(taken)
        taken.append(j)
    return slot


def _delivered(
    edge: Edge, src: Endpoint, dst: Endpoint, labels_of: dict[tuple[str, ...], tuple[str, ...]]
) -> Delivered:
    """A delivered connection as the label history reads it: both ends' component, namespace and labels
    (interned, so that a chunk's result carries each label set once)."""
    return (
        edge.source,
        src.namespace,
        labels_of.setdefault(src.labels, src.labels),
        edge.destination,
        dst.namespace,
        labels_of.setdefault(dst.labels, dst.labels),
    )


def _pod(namespace: str, name: str, ip: str) -> str:
    """An example's end as the report names it: ``namespace/pod`` (as ``Endpoint.pod``), or the IP."""
    if not name:
        return ip
    return f"{namespace}/{name}" if namespace else name


def _sample(
    samples: dict[int, tuple[dict[tuple[object, ...], Judgement], bool]], index: int, j: Judgement
) -> None:
    """The first :data:`MAX_SUGGESTION_SAMPLES` distinct endpoint pairs of one edge (as the report sink)."""
    got = samples.get(index)
    if got is None:
        got = samples[index] = ({}, False)
    taken, full = got
    if full:
        return
    src, dst, flow = j.source, j.destination, j.flow
    names = flow.source_names if j.reply else flow.destination_names
    address = "" if dst.namespace else j.destination_ip
    key = (src.namespace, src.labels, src.workloads, dst.namespace, dst.labels, dst.workloads, names, address)
    if key not in taken:
        if len(taken) >= MAX_SUGGESTION_SAMPLES:
            samples[index] = (taken, True)
            return
        taken[key] = j


# -- merge side -------------------------------------------------------------------------------------
class Merger:
    """Applies chunk results, in input order, to the run's auditor (its dedup and pending tables) and sink."""

    def __init__(self, pipeline: Pipeline, sink: ReportSink, unjudgeable: UnjudgeableCheck) -> None:
        self.pipeline, self.sink, self.unjudgeable = pipeline, sink, unjudgeable

    def apply(self, name: str, base: int, r: ChunkResult, summary: InputSummary) -> None:
        sink, auditor = self.sink, self.pipeline.auditor
        summary.lines += r.nonblank
        summary.events += r.events
        if summary.first_error is None and r.first_error is not None:
            summary.first_error = (base + r.first_error[0], r.first_error[1])
        for outcome, n in r.outcomes.items():
            sink.outcomes[outcome] += n
        for number, reason in r.invalid:
            sink.on_invalid(f"{name}:{base + number}", reason)
        for source, n in r.lost.items():
            sink.lost[source] = sink.lost.get(source, 0) + n
        self.unjudgeable.events += r.unjudgeable_events
        for key, n in r.unjudgeable_missing.items():
            self.unjudgeable.missing[key] += n
        # edges: the first max_edges distinct ones (in input order) are kept, the rest fold per class
        targets: list[tuple[Edge, EdgeStats, bool]] = []
        for index, (edge, rule, flows, first, last, kept) in enumerate(r.edges):
            stats = sink.edges.get(edge) if kept else None
            if stats is None and kept and len(sink.edges) < sink.max_edges:
                stats = sink.edges[edge] = EdgeStats(rule)
            if stats is None:  # beyond the cap (in the chunk, or in the input so far): folded per class
                kept = False
                other = edge.folded()
                stats = sink.edges.get(other)
                if stats is None:
                    stats = sink.edges[other] = EdgeStats(0)
                edge = other
            targets.append((edge, stats, not kept))
            stats.flows += flows
            stats.first = min(stats.first, first)
            stats.last = max(stats.last, last)
            if kept and edge.cls == UNEXPECTED_ALLOWED:
                got = r.samples.get(index)
                if got is not None:
                    self._merge_samples(edge, *got)
        slots = [(targets[i], verdict, drop, ex) for i, verdict, drop, ex in r.slots]
        self._apply_events(r, slots, auditor)

    def _merge_samples(self, edge: Edge, taken: dict[tuple[object, ...], Judgement], full: bool) -> None:
        sink = self.sink
        samples = sink.violation_samples.setdefault(edge, {})
        if edge in sink.samples_full:
            return
        for key, j in taken.items():
            if key not in samples:
                if len(samples) >= MAX_SUGGESTION_SAMPLES:
                    sink.samples_full.add(edge)
                    return
                samples[key] = j
        if full:  # the chunk alone held more distinct pairs than are kept
            sink.samples_full.add(edge)

    def _apply_events(
        self,
        r: ChunkResult,
        slots: list[tuple[tuple[Edge, EdgeStats, bool], str, str, Example]],
        auditor: Auditor,
    ) -> None:
        sink = self.sink
        classes, aggregated = sink.classes, sink.aggregated
        seen = auditor.dedup.seen
        pending = auditor.pending
        unproven = r.unproven
        policy, sample_policy, remember = r.policy, sink.sample_policy, sink.label_history.remember
        for t, conn, key, kind, pslot in zip(r.times, r.conns, r.keys, r.kinds, r.policy_slots, strict=True):
            if kind >= 0:
                if pending is not None:
                    pending.resolve(conn, t)
                if seen(key, t):
                    continue
                (edge, stats, folded), verdict, drop, ex = slots[kind]
                if pslot >= 0 and not folded:
                    item = policy[pslot]
                    if type(item) is tuple:
                        remember(*item[:3])
                        remember(*item[3:])
                    else:
                        sample_policy(edge, item)  # type: ignore[arg-type]  # a Judgement
                classes[edge.cls] += 1
                stats.connections += 1
                stats.verdicts[verdict] = stats.verdicts.get(verdict, 0) + 1
                if drop:
                    stats.drop_reasons[drop] = stats.drop_reasons.get(drop, 0) + 1
                if len(stats.examples) < MAX_EXAMPLES:
                    add_example(stats.examples, ex)
                if folded:
                    aggregated["edges"] += 1
            elif pending is not None:
                pending.hold(conn, t, _maker(unproven[_PROVISIONAL - kind], t))
        self.pipeline.emit_unproven()


def _maker(item: tuple[str, str, int | None, str, Example], t: float) -> Callable[[], Unproven]:
    """Build the Unproven the report needs (its key, its first event's time, pods and node)."""

    def make() -> Unproven:
        source, destination, port, protocol, (src, dst, node) = item
        flow = Flow(
            t, 0, "", EMPTY_ENDPOINT, EMPTY_ENDPOINT, src, dst, protocol, 0, 0, 0, 0, None, 0, 0, 0, 0, node
        )
        return Unproven(flow, source, destination, port, protocol)

    return make


class ParallelReplay:
    """A pool of ``jobs`` workers for one replay run (fork: workers share the parent's matrix)."""

    def __init__(self, matrix: Matrix, window: float, max_edges: int, jobs: int) -> None:
        ctx = multiprocessing.get_context("fork")
        # The parent's objects out of the workers' collections (as CPython advises before a fork): their
        # pages stay shared instead of being copied when a worker's collector walks them.
        gc.freeze()
        try:
            self.pool = ctx.Pool(jobs, initializer=init_worker, initargs=(matrix, window, max_edges))
        finally:
            gc.unfreeze()
        self.ahead = 4 * jobs

    def feed(
        self, merger: Merger, name: str, chunk_bytes: int, progress: Callable[[int], None] | None = None
    ) -> InputSummary:
        """Judge one splittable file; returns its summary, as :func:`auditor.replay_input.feed_file`."""
        summary = InputSummary(name)
        ranges = iter(chunks(name, chunk_bytes))
        in_flight: deque[tuple[int, AsyncResult[ChunkResult]]] = deque()
        base = 0
        while True:
            # At most a few chunks per worker ahead of the merge: memory does not grow with the file.
            while len(in_flight) < self.ahead and (task := next(ranges, None)) is not None:
                start, end = task
                in_flight.append((end, self.pool.apply_async(judge_chunk, ((name, start, end),))))
            if not in_flight:
                return summary
            end, pending = in_flight.popleft()
            result = pending.get()
            merger.apply(name, base, result, summary)
            base += result.lines
            if progress is not None:
                progress(end)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
