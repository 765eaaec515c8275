"""What a ``replay --jobs`` worker gathers over one chunk (:mod:`auditor.replay_parallel` runs it).

Stage: judge → classify, worker side. Input: each record of a chunk with what the worker's auditor made of
it. The auditor runs with recorders (:class:`DedupRecorder`, :class:`PendingRecorder`) in place of the
dedup and pending tables: they note the keys it would look up and answer "new", so the worker never
decides whether an event opens a connection. Output: a :class:`ChunkResult` — the counts, the chunk's
edges in first-appearance order, and per judged or provisional event its time, connection key, dedup key
and slot (edge, verdict, drop reason and example; or the unproven connection it would hold) in packed
arrays, with each distinct slot, policy candidate and label set once — for the merge to replay in input
order on the real tables.

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
Delivered = tuple[str, str, tuple[str, ...], str, str, tuple[str, ...]]
"""Both ends of a delivered connection as the label history keeps them: component, namespace, labels."""


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
    slots: list[tuple[int, str, str, Example]] = field(default_factory=list)  # (edge, verdict, drop, ex.)
    unproven: list[tuple[str, str, int | None, str, Example]] = field(default_factory=list)
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
