"""What a ``replay --jobs`` worker gathers over one chunk (:mod:`auditor.replay_parallel` runs it).

Stage: judge → classify, worker side. Input: each record of a chunk with what the worker's auditor made of
it. The auditor runs with recorders (:class:`DedupRecorder`, :class:`PendingRecorder`) in place of the
dedup and pending tables: they note the keys it would look up and answer "new", so the worker never
decides whether an event opens a connection. Output: a :class:`ChunkResult` — the counts, the chunk's
edges in first-appearance order, and per judged or provisional event its time, connection key, dedup key
and slot (edge, verdict, drop reason and example; or the unproven connection it would hold) in packed
arrays, with each distinct slot, policy candidate and label set once — for the merge to replay in input
order on the real tables.

What the merge can no longer use is not gathered (:class:`Settled`): the example of an edge that has its
three, the judgement of a dropped edge that has its sample, the suggestion samples of a violation edge that
has its 32 distinct pairs, and the pods of a provisional connection whose key has its three examples. The
merge notes each as it happens; the parent sends each worker what is new since its last task with the
next one. Each is final once true (the report only ever adds to them), so what a worker learns late costs
only the gathering it could have skipped, and never changes the report.

Error policy: none needed; records arrive decoded and judged (the caller counts what does not decode).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from auditor.classify import (
    EXPECTED_ALLOWED,
    EXPECTED_DROPPED,
    IGNORED,
    INVALID,
    JUDGED,
    OUTCOMES,
    REPLY,
    UNEXPECTED_ALLOWED,
    DedupTable,
    Edge,
    Judgement,
    PendingTable,
    Resolution,
    Unproven,
)
from auditor.model import Flow, LostEvents, NodeStatus, OtherRecord, Record
from auditor.replay_input import UNKNOWN_KIND, UnjudgeableCheck
from auditor.sinks.report import MAX_INVALID_SAMPLES, MAX_SUGGESTION_SAMPLES

PROVISIONAL_SLOT: Final = -1  # slot values below zero: a provisional event, its Unproven at -slot - 1

Example = tuple[str, str, str]
UnprovenKey = tuple[str, str, int | None, str]  # Unproven.key: the report's provisional entry

SETTLED_EXAMPLES: Final = 0  # an edge (the report's, after folding) with all its examples
SETTLED_DROPPED: Final = 1  # an expected_dropped edge with its policy sample
SETTLED_SAMPLES: Final = 2  # an unexpected_allowed edge with all its suggestion samples
SETTLED_UNPROVEN: Final = 3  # a provisional key with all its examples
Delivered = tuple[str, str, tuple[str, ...], str, str, tuple[str, ...]]
"""Both ends of a delivered connection as the label history keeps them: component, namespace, labels."""


class Settled:
    """What the merge no longer uses, as far as this worker was told (see the module's docstring)."""

    def __init__(self) -> None:
        self.examples: set[Edge] = set()
        self.dropped: set[Edge] = set()
        self.samples: set[Edge] = set()
        self.unproven: set[UnprovenKey] = set()

    def learn(self, news: list[tuple[int, Any]]) -> None:
        """Add what the merge noted since this worker's last task: ``(SETTLED_..., edge or key)`` pairs."""
        kinds = (self.examples, self.dropped, self.samples, self.unproven)
        for kind, item in news:
            kinds[kind].add(item)


class DedupRecorder(DedupTable):
    """Notes the dedup key the auditor asks about; says "new" (the merge asks the real table)."""

    key = 0

    def seen(self, key: int, t: float) -> bool:
        self.key = key
        return False


class PendingRecorder(PendingTable):
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
    # (edge, verdict, drop, example); no example for an edge with all its examples (Settled)
    slots: list[tuple[int, str, str, Example | None]] = field(default_factory=list)
    unproven: list[tuple[str, str, int | None, str, Example | None]] = field(default_factory=list)
    times: array[float] = field(default_factory=lambda: array("d"))
    conns: array[int] = field(default_factory=lambda: array("q"))
    keys: array[int] = field(default_factory=lambda: array("q"))
    kinds: array[int] = field(default_factory=lambda: array("q"))
    # per judged event: index into `policy` (a judgement the report samples for policy advice), or -1
    policy_slots: array[int] = field(default_factory=lambda: array("q"))
    policy: list[Judgement | Delivered] = field(default_factory=list)


class Chunk:
    """What a worker gathers over one chunk: counts, edges in first-appearance order, and per event the
    keys and slots the merge replays (see :class:`ChunkResult`)."""

    def __init__(self, unjudgeable: UnjudgeableCheck, max_edges: int, settled: Settled) -> None:
        self.r = ChunkResult()
        self.unjudgeable = unjudgeable
        self.max_edges = max_edges
        self.settled = settled
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.edge_index: dict[Edge, int] = {}
        # [edge, rule, flows, first, last, kept, wants examples, wants samples, wants a dropped sample]
        self.edge_rows: list[list[Any]] = []
        self.slot_index: dict[tuple[object, ...], int] = {}  # 10 parts; 3 without the example
        self.unproven_index: dict[tuple[object, ...], int] = {}  # 11 parts; 4 without the example
        self.samples: dict[int, tuple[dict[tuple[object, ...], Judgement], bool]] = {}
        self.policy_index: dict[tuple[object, ...], int] = {}  # expected_dropped judgements
        self.delivered_index: dict[tuple[int, Resolution, Resolution], int] = {}
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

    def provisional(self, record: Flow, pending: PendingRecorder) -> None:
        """A provisional event: its connection key and the unproven connection it would open."""
        assert pending.make is not None
        u = pending.make()
        src, dst = record.source, record.destination
        ukey: tuple[object, ...] = u.key
        if ukey not in self.settled.unproven:
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
        self.kinds.append(PROVISIONAL_SLOT - slot)
        self.policy_slots.append(-1)

    def judged(
        self,
        record: Flow,
        j: Judgement,
        dedup_key: int,
        connection: int,
        source: Resolution,
        destination: Resolution,
    ) -> None:
        """A final verdict: its edge's counts and times, its example slot and its policy candidate
        (``source`` and ``destination``: the auditor's resolutions of the connection's ends)."""
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
        if cls == UNEXPECTED_ALLOWED and row[5] and row[7]:
            _sample(self.samples, index, j)
        skey: tuple[object, ...]
        if row[6]:  # the example's parts, raw (pod strings are built once per distinct slot, at the end)
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
        else:
            skey = (index, j.verdict, record.drop_reason)
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
            slot = _dropped_slot(self.policy_index, self.r.policy, index, j) if row[8] else -1
            self.policy_slots.append(slot)
        else:  # delivered: the label sets of both ends, what the label history reads
            self.policy_slots.append(self._delivered_slot(index, edge, source, destination))

    def _delivered_slot(self, index: int, edge: Edge, src: Resolution, dst: Resolution) -> int:
        """The policy slot of a delivered event: one per (edge, resolution of each end) of the chunk.

        A resolution is the auditor's cache entry for the end, whose namespace and label set equal the
        event's (the auditor compared them to use it): hashing it is hashing its identity, where hashing
        two label sets of fresh strings per event cost more than judging the event. Two slots with equal
        contents (one label set under two identities, or a cache entry replaced) are remembered alike by
        the label history."""
        key = (index, src, dst)
        slot = self.delivered_index.get(key)
        if slot is None:
            slot = self.delivered_index[key] = len(self.r.policy)
            self.r.policy.append(
                (edge.source, src.namespace, src.labels, edge.destination, dst.namespace, dst.labels)
            )
        return slot

    def _new_edge(self, edge: Edge, rule: int) -> int:
        rows, index_of = self.edge_rows, self.edge_index
        if len(rows) < self.max_edges:
            index = index_of[edge] = len(rows)
            rows.append([edge, rule, 0, float("inf"), float("-inf"), True, *self._wants(edge)])
            return index
        # beyond the cap in this chunk: beyond it in the input too
        folded = edge.folded()
        found = index_of.get(folded)
        if found is None:
            found = index_of[folded] = len(rows)
            rows.append([folded, 0, 0, float("inf"), float("-inf"), False, *self._wants(folded)])
        index_of[edge] = found  # bounded by the chunk's lines
        return found

    def _wants(self, edge: Edge) -> tuple[bool, bool, bool]:
        """Whether the merge may still use an example, a suggestion sample and a dropped sample of
        ``edge`` (the report's edge: as the merge folds it, the row's edge is the one it counts in)."""
        settled = self.settled
        return edge not in settled.examples, edge not in settled.samples, edge not in settled.dropped

    def result(self, lines: int, nonblank: int, events: int) -> ChunkResult:
        r = self.r
        r.lines, r.nonblank, r.events, r.outcomes = lines, nonblank, events, self.outcomes
        r.times, r.conns, r.keys = array("d", self.times), array("q", self.conns), array("q", self.keys)
        r.kinds, r.policy_slots = array("q", self.kinds), array("q", self.policy_slots)
        r.unjudgeable_events, r.unjudgeable_missing = self.unjudgeable.events, self.unjudgeable.missing
        r.edges = [(row[0], row[1], row[2], row[3], row[4], row[5]) for row in self.edge_rows]
        r.samples = self.samples
        r.slots = [_slot(k) for k in self.slot_index]
        r.unproven = [_unproven(k) for k in self.unproven_index]
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


def _slot(k: tuple[Any, ...]) -> tuple[int, str, str, Example | None]:
    if len(k) == 3:
        return (k[0], k[1], k[2], None)
    return (k[0], k[1], k[2], (_pod(k[3], k[4], k[5]), _pod(k[6], k[7], k[8]), k[9]))


def _unproven(k: tuple[Any, ...]) -> tuple[str, str, int | None, str, Example | None]:
    if len(k) == 4:
        return (k[0], k[1], k[2], k[3], None)
    return (k[0], k[1], k[2], k[3], (_pod(k[4], k[5], k[6]), _pod(k[7], k[8], k[9]), k[10]))


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
