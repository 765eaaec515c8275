"""Classifying judged connections against the matrix: the auditor's core (DESIGN §4-§5).

Stage: judge → classify. Input: decoded records (:data:`auditor.model.Record`). Output: for each flow
either an outcome name (``reply``, ``provisional``, ``ignored``, ``out_of_scope``) or a
:class:`Judgement` — the edge (source, destination, port, protocol, class), the verdict, the matching
rule and whether this event opened a new connection (5-tuple and class not seen within the dedup window).

Pure: no I/O. State is bounded: the per-identity resolution cache, the rule and edge caches and the dedup
table all have caps, so memory does not grow with the length of the stream. The resolution, rule and edge
caches are bounded by bytes as well as entries (an endpoint carries all its pod's labels, tens of KB are
possible): each entry is charged an estimate of its size (:func:`_resolved_cost`), and a cache whose budget
(:class:`CacheBudgets`, by default :data:`IDENTITY_CACHE_BYTES`, :data:`ANON_CACHE_BYTES`,
:data:`RULE_CACHE_BYTES`, :data:`EDGE_CACHE_BYTES`) would be exceeded is emptied and refills. The dedup
table holds fixed-size entries (one object: an int hash and a float), so its cap in entries is a cap in
bytes.

Per-flow cost is kept small by resolving endpoints once per Cilium identity (the label part of every
selector), verified against the endpoint's labels on each hit so that a reused identity number cannot
return a stale answer; only selectors with ``cidrs``/``fqdns`` look at the flow's addresses. Each distinct
:class:`Edge` is built once and shared by its judgements (the edge cache).

Error policy: never raises on a flow; a matrix is swapped atomically with :meth:`Auditor.set_matrix`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final, NamedTuple

import msgspec
from msgspec.structs import astuple as _astuple

from auditor import judge as j
from auditor.matrix import Component, Matrix, pick
from auditor.model import ICMP_PROTOCOLS, VERDICT_NAMES, Endpoint, Flow

EXPECTED_ALLOWED: Final = "expected_allowed"
EXPECTED_DROPPED: Final = "expected_dropped"
UNEXPECTED_ALLOWED: Final = "unexpected_allowed"
UNEXPECTED_DROPPED: Final = "unexpected_dropped"
CLASSES: Final = (EXPECTED_ALLOWED, EXPECTED_DROPPED, UNEXPECTED_ALLOWED, UNEXPECTED_DROPPED)
VIOLATIONS: Final = (EXPECTED_DROPPED, UNEXPECTED_ALLOWED)

JUDGED: Final = "judged"
REPLY: Final = "reply"
PROVISIONAL: Final = "provisional"
IGNORED: Final = "ignored"
OUT_OF_SCOPE: Final = "out_of_scope"
INVALID: Final = "invalid"
OUTCOMES: Final = (JUDGED, REPLY, PROVISIONAL, IGNORED, OUT_OF_SCOPE, INVALID)
OUTCOME_TERMS: Final = (
    # One line per term, for the reports.
    "judged: events that proved a connection delivered or dropped",
    "reply: replies: never a connection of their own (a forwarded reply proves its connection delivered)",
    "provisional: events seen leaving the source towards a pod: delivery not proven by them alone",
    "ignored: events that prove nothing (no direction, L7 records, other event kinds)",
    "out of scope: neither end in the matrix's namespaces; invalid: lines that could not be decoded",
)

_CODE_OUTCOME: Final = {j.REPLY: REPLY, j.IGNORED: IGNORED, j.PROVISIONAL: PROVISIONAL}
_CLASS: Final = {
    (True, j.DELIVERED): EXPECTED_ALLOWED,
    (True, j.DROPPED): EXPECTED_DROPPED,
    (False, j.DELIVERED): UNEXPECTED_ALLOWED,
    (False, j.DROPPED): UNEXPECTED_DROPPED,
}

DEFAULT_DEDUP_WINDOW: Final = 30.0
_MAX_DEDUP_ENTRIES: Final = 250_000
_MAX_CACHE_ENTRIES: Final = 50_000
astuple: Final = _astuple  # a C static when compiled (a global is a dict lookup per use)
IDENTITY_CACHE_BYTES: Final = 48 * 1024 * 1024
ANON_CACHE_BYTES: Final = 16 * 1024 * 1024
RULE_CACHE_BYTES: Final = 8 * 1024 * 1024
EDGE_CACHE_BYTES: Final = 8 * 1024 * 1024


class CacheBudgets(NamedTuple):
    """The byte budgets of an :class:`Auditor`'s caches (see the module docstring)."""

    identity: int = IDENTITY_CACHE_BYTES
    anon: int = ANON_CACHE_BYTES
    rule: int = RULE_CACHE_BYTES
    edge: int = EDGE_CACHE_BYTES


DEFAULT_BUDGETS: Final = CacheBudgets()
_ENTRY_OVERHEAD: Final = 400  # dict slot, key, struct and tuple headers of one cache entry
_STRING_OVERHEAD: Final = 60  # header of one str object plus its tuple slot


class Edge(NamedTuple):
    """Where a connection goes and how it was judged; a plain tuple underneath (hash, equality and order
    are the tuple's), so an edge is a dictionary key and pickles as such."""

    source: str
    destination: str
    port: int | None  # None for ICMP
    protocol: str
    cls: str  # one of CLASSES

    def folded(self) -> Edge:
        """The edge of its class that every edge past a cap is counted in (``other`` in every field)."""
        return Edge(OTHER, OTHER, None, OTHER, self.cls)


OTHER: Final = "other"
"""The name of what edges, series and connections past a cap are folded into."""

_new_edge: Final = tuple.__new__  # an Edge without NamedTuple's Python-level __new__


class Judgement:
    """A flow that carried a final verdict, placed on its edge.

    ``reply`` is true when the flow is a forwarded reply that proved delivery of the original connection:
    the edge, ports and the ends (:attr:`source`, :attr:`destination`, …) are then those of the original
    connection, the reversed flow; the record itself is still counted as a ``reply``.

    A plain class, not a struct: compiled, the sinks read its fields without a lookup per field.
    """

    __slots__ = ("edge", "flow", "new_connection", "reply", "rule", "verdict")

    def __init__(
        self, flow: Flow, edge: Edge, verdict: str, rule: int, new_connection: bool, reply: bool = False
    ) -> None:
        self.flow = flow
        self.edge = edge
        self.verdict = verdict
        self.rule = rule  # 1-based index of the matching allow rule, 0 when the matrix does not allow it
        self.new_connection = new_connection
        self.reply = reply

    def __eq__(self, other: object) -> bool:
        return type(other) is Judgement and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Judgement(flow={self.flow!r}, edge={self.edge!r}, verdict={self.verdict!r}, "
            f"rule={self.rule!r}, new_connection={self.new_connection!r}, reply={self.reply!r})"
        )

    def __reduce__(self) -> tuple[type[Judgement], tuple[Flow, Edge, str, int, bool, bool]]:
        return (Judgement, self._fields())

    def _fields(self) -> tuple[Flow, Edge, str, int, bool, bool]:
        return (self.flow, self.edge, self.verdict, self.rule, self.new_connection, self.reply)

    @property
    def cls(self) -> str:
        return self.edge.cls

    @property
    def outcome(self) -> str:
        """The record's outcome: ``judged``, or ``reply`` for a reply that proved delivery."""
        return REPLY if self.reply else JUDGED

    @property
    def source(self) -> Endpoint:
        return self.flow.destination if self.reply else self.flow.source

    @property
    def destination(self) -> Endpoint:
        return self.flow.source if self.reply else self.flow.destination

    @property
    def source_ip(self) -> str:
        return self.flow.destination_ip if self.reply else self.flow.source_ip

    @property
    def destination_ip(self) -> str:
        return self.flow.source_ip if self.reply else self.flow.destination_ip


class Unproven(msgspec.Struct, frozen=True, gc=False):
    """A connection seen only through provisional evidence: neither delivered nor dropped as far as the
    auditor could see (e.g. a capture from the source's node only). ``flow`` is its first event."""

    flow: Flow
    source: str
    destination: str
    port: int | None
    protocol: str

    @property
    def key(self) -> tuple[str, str, int | None, str]:
        return (self.source, self.destination, self.port, self.protocol)


class Resolution:
    """An endpoint's resolution, cached (a plain class: compiled, its fields are read without a lookup).

    Equality is identity: one object stands for one cache entry, whose namespace and labels equal those of
    every endpoint it was returned for (see :meth:`Auditor.component`)."""

    __slots__ = ("candidates", "direct", "fallback", "labels", "namespace", "workloads")

    def __init__(
        self,
        namespace: str,
        labels: tuple[str, ...],
        workloads: tuple[object, ...],
        candidates: tuple[Component, ...],
        fallback: str,
        direct: str | None,  # the answer when no address check is needed
    ) -> None:
        self.namespace = namespace
        self.labels = labels
        self.workloads = workloads
        self.candidates = candidates
        self.fallback = fallback
        self.direct = direct


_NO_RESOLUTION: Final = Resolution("", (), (), (), "", None)


class _Seen:
    """A key and the flow time it was first seen: one object in the table and in its expiry queue (a float
    and a tuple per entry otherwise, and compiled code would box the time once per container)."""

    __slots__ = ("key", "t")

    def __init__(self, t: float, key: int) -> None:
        self.t = t
        self.key = key


class DedupTable:
    """Connections seen within a time window, keyed by a hash of (5-tuple, class).

    Time is flow time (so replays are deterministic), ``now`` is the newest flow time seen. Entries
    expire ``window`` seconds after they were first seen; the table never holds more than ``max_entries``
    (oldest first out).
    """

    def __init__(self, window: float = DEFAULT_DEDUP_WINDOW, max_entries: int = _MAX_DEDUP_ENTRIES) -> None:
        self.window = window
        self.max_entries = max_entries
        self._first: dict[int, _Seen] = {}
        self._order: deque[_Seen] = deque()
        self._now = 0.0

    def __len__(self) -> int:
        return len(self._first)

    @property
    def queued(self) -> int:
        """Entries of the expiry queue (at least ``len(self)``: a key seen again after expiry is queued
        again; stale ones leave as the window passes). Bounded by ``max_entries``."""
        return len(self._order)

    def seen(self, key: int, t: float) -> bool:
        """True when ``key`` was seen within the window of ``t``; otherwise records it.

        Events may arrive out of time order (files given late first, a node clock behind): one stamped
        less than the window before the connection's first is part of it, and the connection's window
        then runs from that earlier time (as if the events had come in time order); one stamped a window
        or more before it is another connection, and the later one stays the reference."""
        first = self._first.get(key)
        if first is not None:
            since = t - first.t
            if 0.0 <= since < self.window:
                return True
            if since < 0.0:
                if since > -self.window:
                    first.t = t
                    return True
                return False
        if t > self._now:
            self._now = t
            self._expire()
        entry = self._first[key] = _Seen(t, key)
        self._order.append(entry)
        if len(self._order) > self.max_entries:
            self._drop_oldest()
        return False

    def recent(self, key: int, t: float) -> bool:
        """True when ``key`` was seen within the window of ``t``, before or after it (records nothing)."""
        first = self._first.get(key)
        return first is not None and -self.window < t - first.t < self.window

    def _expire(self) -> None:
        order, limit = self._order, self._now - self.window
        while order and order[0].t <= limit:
            self._pop_oldest()

    def _drop_oldest(self) -> None:
        while len(self._order) > self.max_entries:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        """The oldest queued entry leaves; the table forgets its key unless it was seen again since."""
        oldest = self._order.popleft()
        kept = self._first.get(oldest.key)
        if kept is not None and kept.t == oldest.t:
            del self._first[oldest.key]


class PendingTable:
    """Provisional connections waiting for proof, keyed by a hash of their 5-tuple.

    A connection leaves the table when a final verdict for its 5-tuple arrives (:meth:`resolve`), or, as
    :class:`Unproven`, ``window`` seconds of flow time after it was first seen, when the table is over
    ``max_entries`` (oldest first), or at :meth:`flush`. Connections proven within the window before their
    provisional evidence arrives (events of two nodes interleave) never enter it.
    """

    def __init__(self, window: float, max_entries: int = _MAX_DEDUP_ENTRIES) -> None:
        self.window = window
        self.max_entries = max_entries
        self.proven = DedupTable(window, max_entries)
        self._items: dict[int, Unproven] = {}
        self._order: deque[tuple[float, int]] = deque()
        self._now = 0.0
        self.expired: list[Unproven] = []  # drained by the caller

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return key in self._items

    def hold(self, key: int, t: float, make: Callable[[], Unproven]) -> None:
        """Remember a provisional connection (``make`` builds it, only when it is new)."""
        if key in self._items or self.proven.recent(key, t):
            return
        self._items[key] = make()
        self._order.append((t, key))
        self.advance(t)
        if len(self._order) > self.max_entries:
            self._pop_oldest()

    def resolve(self, key: int, t: float) -> None:
        """A final verdict for the 5-tuple ``key``: it is proven (or dropped), no longer pending."""
        self.proven.seen(key, t)
        if self._items:
            self.advance(t)  # first what the window has passed: a proof after it comes too late
            self._items.pop(key, None)

    def advance(self, t: float) -> None:
        if t <= self._now:
            return
        self._now = t
        order, limit = self._order, t - self.window
        while order and order[0][0] <= limit:
            self._pop_oldest()

    def flush(self) -> None:
        """Everything still pending is unproven (the end of a replay)."""
        while self._order:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        t, key = self._order.popleft()
        item = self._items.get(key)
        if item is not None and item.flow.time == t:
            del self._items[key]
            self.expired.append(item)


class Auditor:
    """Judges and classifies flows against a matrix. One instance per pipeline.

    ``node_local``: this auditor sees one node of the cluster (DESIGN §5 rule 1): replies prove nothing,
    and provisional connections are not tracked (their destination's node judges them). ``budgets``: the
    byte budgets of the resolution, rule and edge caches.
    """

    def __init__(
        self,
        matrix: Matrix,
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        *,
        node_local: bool = False,
        budgets: CacheBudgets = DEFAULT_BUDGETS,
    ) -> None:
        self.budgets = budgets
        self.dedup = DedupTable(dedup_window)
        self.node_local = node_local
        self.pending: PendingTable | None = None if node_local else PendingTable(dedup_window)
        self.set_matrix(matrix)

    def set_matrix(self, matrix: Matrix) -> None:
        """Swap the matrix (hot reload). Caches are rebuilt; the dedup table survives."""
        self.matrix = matrix
        self._scope = matrix.scope_namespaces
        self._use_workloads = matrix.uses_workloads
        self._ids: dict[int, Resolution] = {}
        self._anon: dict[tuple[str, tuple[str, ...], tuple[object, ...]], Resolution] = {}
        self._rules: dict[tuple[str, str, str, int], int] = {}
        self._charged = {"identity": 0, "anon": 0, "rule": 0}
        self._edges: dict[tuple[str, str, int | None, str, str], Edge] = {}  # one Edge per distinct edge
        self._edges_charged = 0
        self.resolved = self.resolved_before = _NO_RESOLUTION

    def cache_info(self) -> dict[str, int]:
        """Entries and charged bytes of the resolution and rule caches."""
        return {
            "identity_entries": len(self._ids),
            "anon_entries": len(self._anon),
            "rule_entries": len(self._rules),
            **{f"{name}_bytes": n for name, n in self._charged.items()},
        }

    # -- per flow -----------------------------------------------------------------------------------
    def process(self, flow: Flow) -> Judgement | str:
        """Outcome name, or a :class:`Judgement` for a final verdict (a reply's is on the reversed flow).

        Provisional connections that expire unproven are appended to ``self.pending.expired``.
        """
        scope = self._scope
        if (
            scope is not None
            and flow.source.namespace not in scope
            and flow.destination.namespace not in scope
        ):
            return OUT_OF_SCOPE
        code = j.judge(flow, self.node_local)
        if code not in j.FINAL:
            if code == j.PROVISIONAL and self.pending is not None:
                self._hold(flow, self.pending)
            return _CODE_OUTCOME[code]
        protocol = flow.protocol
        icmp = protocol in ICMP_PROTOCOLS
        reply = code == j.REPLY_DELIVERED
        if reply:  # evidence for the original connection: the reversed 5-tuple
            src = self.component(flow.destination, flow.destination_ip, flow.destination_names)
            dst = self.component(flow.source, flow.source_ip, flow.source_names)
            sip, dip, sport = flow.destination_ip, flow.source_ip, flow.destination_port
            port = j.ICMP_REQUEST_TYPE[(protocol, flow.icmp_type)] if icmp else flow.source_port
            code = j.DELIVERED
        else:
            src = self.component(flow.source, flow.source_ip, flow.source_names)
            dst = self.component(flow.destination, flow.destination_ip, flow.destination_names)
            sip, dip, sport = flow.source_ip, flow.destination_ip, flow.source_port
            port = flow.icmp_type if icmp else flow.destination_port
        rule_key = (src, dst, protocol, port)
        rule = self._rules.get(rule_key)
        if rule is None:
            rule = self._rule(rule_key)
        cls = _CLASS[(rule > 0, code)]
        connection = hash((sip, dip, sport, port, protocol))
        if self.pending is not None:
            self.pending.resolve(connection, flow.time)
        new = not self.dedup.seen(hash((connection, cls)), flow.time)
        verdict = VERDICT_NAMES.get(flow.verdict) or str(flow.verdict)
        key = (src, dst, None if icmp else port, protocol, cls)
        edge = self._edges.get(key)
        if edge is None:
            edge = self._edge(key)
        return Judgement(flow, edge, verdict, rule, new, reply)

    def _edge(self, key: tuple[str, str, int | None, str, str]) -> Edge:
        """A cache miss: the Edge of ``key``, kept (the cache is bounded like the rule cache)."""
        cost = 2 * _ENTRY_OVERHEAD + len(key[0]) + len(key[1])
        if len(self._edges) >= _MAX_CACHE_ENTRIES or self._edges_charged + cost > self.budgets.edge:
            self._edges.clear()
            self._edges_charged = 0
        edge = self._edges[key] = _new_edge(Edge, key)
        self._edges_charged += cost
        return edge

    def _hold(self, flow: Flow, pending: PendingTable) -> None:
        protocol = flow.protocol
        icmp = protocol in ICMP_PROTOCOLS
        port = flow.icmp_type if icmp else flow.destination_port
        key = hash((flow.source_ip, flow.destination_ip, flow.source_port, port, protocol))

        def make() -> Unproven:
            src = self.component(flow.source, flow.source_ip, flow.source_names)
            dst = self.component(flow.destination, flow.destination_ip, flow.destination_names)
            return Unproven(flow, src, dst, None if icmp else port, protocol)

        pending.hold(key, flow.time, make)

    def flush(self) -> None:
        """End of input: every provisional connection still waiting for proof is unproven."""
        if self.pending is not None:
            self.pending.flush()

    def component(self, ep: Endpoint, ip: str, names: tuple[str, ...]) -> str:
        """The component (or fallback name) of one end of a flow.

        The cache entry used is kept in :attr:`resolved` (and the one before in :attr:`resolved_before`):
        after :meth:`process` judges a flow, they are its connection's source and destination ends."""
        ident, namespace, labels, _, workloads, _ = astuple(ep)  # one call, not a lookup per field
        if ident:
            r = self._ids.get(ident)
            if (
                r is None
                or not same_labels(r.labels, labels)
                or r.namespace != namespace
                or (self._use_workloads and r.workloads != workloads)
            ):
                r = self._resolve(ep)
                cost = _resolved_cost(r)
                if (
                    len(self._ids) >= _MAX_CACHE_ENTRIES
                    or self._charged["identity"] + cost > self.budgets.identity
                ):
                    self._ids.clear()
                    self._charged["identity"] = 0
                self._ids[ident] = r
                self._charged["identity"] += cost
        else:
            anon_key = (namespace, labels, workloads if self._use_workloads else ())
            r = self._anon.get(anon_key)
            if r is None:
                r = self._resolve(ep)
                cost = 2 * _resolved_cost(r)  # the key holds the labels too (shared, charged anyway)
                if len(self._anon) >= _MAX_CACHE_ENTRIES or self._charged["anon"] + cost > self.budgets.anon:
                    self._anon.clear()
                    self._charged["anon"] = 0
                self._anon[anon_key] = r
                self._charged["anon"] += cost
        self.resolved_before, self.resolved = self.resolved, r
        if r.direct is not None:
            return r.direct
        return pick(r.candidates, r.fallback, ip, names)

    # -- cache misses -------------------------------------------------------------------------------
    def _resolve(self, ep: Endpoint) -> Resolution:
        candidates, fallback = self.matrix.candidates(ep)
        direct: str | None = None
        if not candidates:
            direct = fallback
        elif not candidates[0].selector.has_address_part:
            direct = candidates[0].name
        return Resolution(ep.namespace, ep.labels, ep.workloads, candidates, fallback, direct)

    def _rule(self, key: tuple[str, str, str, int]) -> int:
        rule = self.matrix.rule_for(*key)
        cost = _ENTRY_OVERHEAD + len(key[0]) + len(key[1])
        if len(self._rules) >= _MAX_CACHE_ENTRIES or self._charged["rule"] + cost > self.budgets.rule:
            self._rules.clear()
            self._charged["rule"] = 0
        index = rule.index if rule is not None else 0
        self._rules[key] = index
        self._charged["rule"] += cost
        return index


def same_labels(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """``a == b`` for two label sets. Compiled, this compares string to string directly; a tuple compare
    dispatches through the generic rich comparison for every label (twice the instructions, measured)."""
    return len(a) == len(b) and all(a[i] == b[i] for i in range(len(a)))


def _resolved_cost(r: Resolution) -> int:
    """Estimated bytes of one resolution cache entry (labels dominate; they may be tens of KB)."""
    strings = sum(len(label) for label in r.labels) + len(r.namespace) + len(r.fallback)
    return _ENTRY_OVERHEAD + strings + _STRING_OVERHEAD * (len(r.labels) + len(r.workloads) + 2)
