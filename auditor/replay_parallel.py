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
* What the merge can no longer use, a worker does not gather (:class:`~auditor.replay_chunk.Settled`): the
  merge notes each edge or provisional key whose examples or samples are complete as it completes them,
  and each task carries what was noted since its worker's previous task. The report only adds to them, so
  a worker that learns late gathers more, never something else.

What a worker gathers over one chunk (the recorders, the per-event entries, the result) is
:mod:`auditor.replay_chunk`; this module cuts files, runs the workers and merges.

Only uncompressed regular files of at least one chunk are split; standard input, gzip and pipes go through
:func:`auditor.replay_input.feed_file` in this process, on the same auditor and sink.

Error policy: as single-process replay: undecodable lines are counted and sampled; a file that cannot be
read raises :class:`~auditor.sources.files.SourceError` (from the worker, re-raised here).
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Final, cast

from auditor.classify import (
    PROVISIONAL,
    UNEXPECTED_ALLOWED,
    Auditor,
    Edge,
    Judgement,
    Unproven,
)
from auditor.decode import decode_block
from auditor.matrix import Matrix
from auditor.model import EMPTY_ENDPOINT, Flow, Record
from auditor.pipeline import Pipeline
from auditor.replay_chunk import (
    PROVISIONAL_SLOT,
    SETTLED_DROPPED,
    SETTLED_EXAMPLES,
    SETTLED_SAMPLES,
    SETTLED_UNPROVEN,
    Chunk,
    ChunkResult,
    DedupRecorder,
    Example,
    PendingRecorder,
    Settled,
    UnprovenKey,
)
from auditor.replay_input import InputSummary, UnjudgeableCheck
from auditor.sinks.report import (
    MAX_EXAMPLES,
    MAX_SUGGESTION_SAMPLES,
    EdgeStats,
    ReportSink,
    add_example,
)
from auditor.sources.files import BLOCK_BYTES, BOM, SourceError, line_blocks
from auditor.workers import OrderedPool

DEFAULT_CHUNK_BYTES: Final = 4 * 1024 * 1024


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
    with open(name, "rb") as f:
        bounds = [len(BOM) if f.read(len(BOM)) == BOM else 0]  # a byte order mark is not part of line 1
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
Task = tuple[str, int, int, list[tuple[int, Any]]]
"""A chunk to judge: file name, byte range, and what the merge noted as settled since the worker's last
task (``(SETTLED_..., edge or key)`` pairs)."""

_worker: tuple[Auditor, DedupRecorder, PendingRecorder, int, Matrix, Settled] | None = None


def init_worker(matrix: Matrix, window: float, max_edges: int) -> None:
    """Set up this process to judge chunks (:func:`judge_chunk`): the pool's initializer."""
    global _worker
    auditor = Auditor(matrix, window)
    dedup, pending = DedupRecorder(window), PendingRecorder(window)
    auditor.dedup, auditor.pending = dedup, pending
    _worker = (auditor, dedup, pending, max_edges, matrix, Settled())


def judge_chunk(task: Task) -> ChunkResult:
    """Decode and judge the lines of ``name`` in ``[start, end)`` (a worker's whole job)."""
    assert _worker is not None
    name, start, end, news = task
    _worker[5].learn(news)
    try:
        f = open(name, "rb")  # noqa: SIM115 - closed below, after the blocks are read
    except OSError as e:
        raise SourceError(f"{name}: cannot read: {e.strerror or e}") from None
    with f:
        return _judge_lines(_blocks(f, name, start, end), *_worker)


def _blocks(f: BinaryIO, name: str, start: int, end: int) -> Iterator[list[bytes]]:
    """The lines of ``f`` in ``[start, end)`` (both at line boundaries) as ``FlowFile.blocks`` gives a
    file's: read a block at a time, so that each block's lines are decoded while the core's cache still
    holds them (reading the whole chunk at once and splitting it was 5 % slower with ``--jobs 2``)."""
    left = end - start

    def read() -> bytes:  # the next block of the range; b"" at its end (or the file's, if it shrank)
        nonlocal left
        data = f.read(min(BLOCK_BYTES, left)) if left > 0 else b""
        left -= len(data)
        return data

    try:
        f.seek(start)
        yield from line_blocks(read)
    except OSError as e:
        raise SourceError(f"{name}: cannot read: {e.strerror or e}") from None


def _judge_lines(
    blocks: Iterable[list[bytes]],
    auditor: Auditor,
    dedup: DedupRecorder,
    pending: PendingRecorder,
    max_edges: int,
    matrix: Matrix,
    settled: Settled,
) -> ChunkResult:
    chunk = Chunk(UnjudgeableCheck(matrix), max_edges, settled)
    outcomes, unjudgeable = chunk.outcomes, chunk.unjudgeable
    nonblank = events = number = 0
    records: list[Record] = []
    errors: list[tuple[int, int, str]] = []
    # A block at a time, decoded whole before it is judged (as replay_input.feed_file does).
    for lines in blocks:
        nonblank += decode_block(lines, 0, len(lines), number + 1, records, errors)
        number += len(lines)
        for _, at, reason in errors:  # the chunk keeps them apart from its results: in line order
            chunk.invalid(at, reason)
        errors.clear()
        for record in records:
            if type(record) is not Flow:
                events += chunk.other(record)
                continue
            events += 1
            if not record.event_type or not (record.traffic_direction or record.observation_point):
                unjudgeable.check(record)
            result = auditor.process(record)
            if type(result) is str:
                outcomes[result] += 1
                if result == PROVISIONAL:  # the merge decides whether the pending table holds it
                    chunk.provisional(record, pending)
            else:
                chunk.judged(
                    record,
                    cast(Judgement, result),
                    dedup.key,
                    pending.key,
                    auditor.resolved_before,
                    auditor.resolved,
                )
        records.clear()
    return chunk.result(number, nonblank, events)


# -- merge side -------------------------------------------------------------------------------------
class Merger:
    """Applies chunk results, in input order, to the run's auditor (its dedup and pending tables) and sink.

    One per run: :attr:`settled` notes, in order, each edge and provisional key whose examples or samples
    the merge completed (what the workers need not gather any more; see :class:`ParallelReplay`)."""

    def __init__(self, pipeline: Pipeline, sink: ReportSink, unjudgeable: UnjudgeableCheck) -> None:
        self.pipeline, self.sink, self.unjudgeable = pipeline, sink, unjudgeable
        self.settled: list[tuple[int, Any]] = []
        self._noted_unproven: set[UnprovenKey] = set()  # bounded as the report's provisional table

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
                    full = True
                    break
                samples[key] = j
        if full:  # more distinct pairs than are kept: in the input so far, or in the chunk alone
            sink.samples_full.add(edge)
            self.settled.append((SETTLED_SAMPLES, edge))

    def _apply_events(
        self,
        r: ChunkResult,
        slots: list[tuple[tuple[Edge, EdgeStats, bool], str, str, Example | None]],
        auditor: Auditor,
    ) -> None:
        sink = self.sink
        classes, aggregated = sink.classes, sink.aggregated
        dedup, pending = auditor.dedup, auditor.pending
        unproven = r.unproven
        policy, history, dropped, settled = r.policy, sink.label_history, sink.dropped_samples, self.settled
        for t, conn, key, kind, pslot in zip(r.times, r.conns, r.keys, r.kinds, r.policy_slots, strict=True):
            if kind >= 0:
                if pending is not None:
                    pending.resolve(conn, t)
                if dedup.seen(key, t):
                    continue
                (edge, stats, folded), verdict, drop, ex = slots[kind]
                if pslot >= 0 and not folded:
                    item = policy[pslot]
                    if type(item) is tuple:
                        history.remember(item[0], item[1], item[2])
                        history.remember(item[3], item[4], item[5])
                    elif edge not in dropped:  # a Judgement: the dropped edge's first connection
                        sink.sample_policy(edge, item)  # type: ignore[arg-type]
                        settled.append((SETTLED_DROPPED, edge))
                classes[edge.cls] += 1
                stats.connections += 1
                stats.verdicts[verdict] = stats.verdicts.get(verdict, 0) + 1
                if drop:
                    stats.drop_reasons[drop] = stats.drop_reasons.get(drop, 0) + 1
                if len(stats.examples) < MAX_EXAMPLES:
                    assert ex is not None  # settled only once it has them all, which it keeps
                    add_example(stats.examples, ex)
                    if len(stats.examples) == MAX_EXAMPLES:
                        settled.append((SETTLED_EXAMPLES, edge))
                if folded:
                    aggregated["edges"] += 1
            elif pending is not None:
                pending.hold(conn, t, _maker(unproven[PROVISIONAL_SLOT - kind], t))
        if pending is not None and pending.expired:
            self._emit_unproven([u.key for u in pending.expired])

    def _emit_unproven(self, keys: list[UnprovenKey]) -> None:
        """Report what expired unproven; note the provisional keys that now have all their examples."""
        self.pipeline.emit_unproven()
        provisional, noted = self.sink.provisional, self._noted_unproven
        for key in keys:
            if key not in noted:
                stats = provisional.get(key)
                if stats is not None and len(stats.examples) >= MAX_EXAMPLES:
                    noted.add(key)
                    self.settled.append((SETTLED_UNPROVEN, key))


def _maker(item: tuple[str, str, int | None, str, Example | None], t: float) -> Callable[[], Unproven]:
    """Build the Unproven the report needs (its key, its first event's time, pods and node: none when the
    key has all its examples, see :class:`~auditor.replay_chunk.Settled`)."""

    def make() -> Unproven:
        source, destination, port, protocol, example = item
        src, dst, node = example if example is not None else ("", "", "")
        flow = Flow(
            t, 0, "", EMPTY_ENDPOINT, EMPTY_ENDPOINT, src, dst, protocol, 0, 0, 0, 0, None, 0, 0, 0, 0, node
        )
        return Unproven(flow, source, destination, port, protocol)

    return make


class ParallelReplay:
    """``jobs`` worker processes for one replay run (fork: workers share the parent's matrix)."""

    def __init__(self, matrix: Matrix, window: float, max_edges: int, jobs: int, merger: Merger) -> None:
        self.pool: OrderedPool[Task, ChunkResult] = OrderedPool(
            jobs, judge_chunk, init_worker, (matrix, window, max_edges)
        )
        self.ahead = 4 * jobs
        self.merger = merger  # the run's one merger: its notes are what the workers learn
        self.told = [0] * jobs  # per worker: how many of the merger's notes it was sent

    def feed(
        self, name: str, chunk_bytes: int, progress: Callable[[int], None] | None = None
    ) -> InputSummary:
        """Judge one splittable file; returns its summary, as :func:`auditor.replay_input.feed_file`."""
        merger = self.merger
        summary = InputSummary(name)
        ranges = chunks(name, chunk_bytes)
        tasks: list[Task] = [(name, start, end, []) for start, end in ranges]
        base = 0
        # At most a few chunks per worker ahead of the merge: memory does not grow with the file.
        results = self.pool.map(tasks, self.ahead, self._stamp)
        for (_, _, end, _), result in zip(tasks, results, strict=True):
            merger.apply(name, base, result, summary)
            base += result.lines
            if progress is not None:
                progress(end)
        return summary

    def _stamp(self, worker: int, task: Task) -> Task:
        """``task`` as sent to ``worker``: with the merger's notes it has not been sent yet."""
        notes, told = self.merger.settled, self.told[worker]
        self.told[worker] = len(notes)
        return (task[0], task[1], task[2], notes[told:])

    def close(self) -> None:
        self.pool.close()
