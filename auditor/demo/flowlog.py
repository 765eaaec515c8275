"""The demo server's store: a bounded ring of serialized ``GetFlowsResponse`` entries, shared across threads.

Stage: none of the pipeline's — the memory of the embedded Hubble stand-in (:mod:`auditor.demo.service`
reads it, :mod:`auditor.demo.feed` and :mod:`auditor.demo.responses` fill it). Input: ``GetFlowsResponse``
messages (or raw bytes), appended by any thread while streams are open. Output: :class:`Entry` tuples —
the serialized response plus the few fields the request filters read (:mod:`auditor.demo.filters`),
extracted once at append time — by absolute sequence number, and :class:`LogStats` for ``ServerStatus``
and ``GetNodes`` (flow counts, and the nodes that flows and ``node_status`` records named).

Bounds: the ring keeps the last ``capacity`` entries; a reader that falls further behind learns how many it
missed (:meth:`FlowLog.read`). Node names are kept as long as no ``NODE_GONE`` removes them.

Error policy: a capacity below 1 raises :class:`ValueError`; appending and reading never raise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2

__all__ = ["DEFAULT_CAPACITY", "IDLE_WAIT_S", "NS_PER_S", "Entry", "FlowLog", "LogStats", "timestamp_ns"]

DEFAULT_CAPACITY: Final = 65_536
NS_PER_S: Final = 1_000_000_000
IDLE_WAIT_S: Final = 0.5  # upper bound on a reader's or player's sleep; wake-ups normally come sooner

_READ_BATCH: Final = 512  # entries taken from the ring per lock acquisition
_NODE_CONNECTED: Final = observer_pb2.NODE_CONNECTED
_NODE_GONE: Final = observer_pb2.NODE_GONE


class Entry(NamedTuple):
    """One stored response with the fields the filters read, extracted once at append time.

    ``source_pod``/``destination_pod`` are ``"namespace/pod"`` (``""`` without namespace); ``time_ns`` is
    0 when the response carries no time; ``is_flow`` is false for lost-event, node-status and raw entries.
    """

    time_ns: int
    data: bytes
    is_flow: bool
    source_pod: str
    destination_pod: str
    verdict: int
    node_name: str
    source_labels: tuple[str, ...] = ()
    destination_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogStats:
    """Counters of a :class:`FlowLog` at one moment; ``nodes`` maps node name to ``NodeState`` number."""

    capacity: int
    retained: int
    flows_retained: int
    flows_seen: int
    appended: int
    nodes: dict[str, int]


def timestamp_ns(ts: Any) -> int:
    """A protobuf ``Timestamp`` in nanoseconds since the epoch (0 for an unset one)."""
    return int(ts.seconds) * NS_PER_S + int(ts.nanos)


def _pod_key(endpoint: flow_pb2.Endpoint) -> str:
    return f"{endpoint.namespace}/{endpoint.pod_name}" if endpoint.namespace else ""


def _entry(response: observer_pb2.GetFlowsResponse) -> Entry:
    data = response.SerializeToString()
    if response.WhichOneof("response_types") != "flow":
        return Entry(timestamp_ns(response.time), data, False, "", "", 0, response.node_name)
    flow = response.flow
    time_ns = timestamp_ns(flow.time) or timestamp_ns(response.time)
    return Entry(
        time_ns,
        data,
        True,
        _pod_key(flow.source),
        _pod_key(flow.destination),
        flow.verdict,
        flow.node_name or response.node_name,
        tuple(flow.source.labels),
        tuple(flow.destination.labels),
    )


class FlowLog:
    """Append-only bounded ring of serialized ``GetFlowsResponse`` entries, safe across threads.

    Entries have absolute sequence numbers (0, 1, 2, …); the ring keeps the last ``capacity`` of them.
    Writers call :meth:`append`/:meth:`extend`/:meth:`append_raw`; readers (one per open stream) take
    :meth:`snapshot` once and then :meth:`read` forward from a cursor, sleeping in :meth:`wait`.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._slots: list[Entry | None] = [None] * capacity
        self._next = 0
        self._cond = threading.Condition(threading.Lock())
        self._flows_retained = 0
        self._flows_seen = 0
        self._nodes: dict[str, int] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def end(self) -> int:
        """Sequence number the next append will get (= entries appended so far)."""
        return self._next

    @property
    def start(self) -> int:
        """Sequence number of the oldest retained entry."""
        return max(0, self._next - self._capacity)

    # -- writing -------------------------------------------------------------------------------

    def append(self, response: observer_pb2.GetFlowsResponse) -> int:
        """Store one response (serialized now); returns its sequence number."""
        entry = _entry(response)
        with self._cond:
            seq = self._put(entry)
            if response.WhichOneof("response_types") == "node_status":
                self._node_status(response.node_status)
            self._cond.notify_all()
        return seq

    def extend(self, responses: Iterable[observer_pb2.GetFlowsResponse]) -> int:
        """Store many responses under one lock acquisition; returns :attr:`end` afterwards."""
        items = [(_entry(r), r.node_status if r.HasField("node_status") else None) for r in responses]
        with self._cond:
            for entry, status in items:
                self._put(entry)
                if status is not None:
                    self._node_status(status)
            self._cond.notify_all()
            return self._next

    def append_raw(self, data: bytes, *, time_ns: int = 0) -> int:
        """Store arbitrary bytes as one response (e.g. an undecodable message for error-path tests).

        Raw entries are not flows: filters do not apply to them and they do not count in flow statistics.
        """
        with self._cond:
            seq = self._put(Entry(time_ns, bytes(data), False, "", "", 0, ""))
            self._cond.notify_all()
        return seq

    def _put(self, entry: Entry) -> int:
        seq = self._next
        slot = seq % self._capacity
        old = self._slots[slot]
        if old is not None and old.is_flow:
            self._flows_retained -= 1
        self._slots[slot] = entry
        self._next = seq + 1
        if entry.is_flow:
            self._flows_retained += 1
            self._flows_seen += 1
            if entry.node_name and entry.node_name not in self._nodes:
                self._nodes[entry.node_name] = _NODE_CONNECTED
        return seq

    def _node_status(self, status: observer_pb2.NodeStatusEvent) -> None:
        for name in status.node_names:
            if status.state_change == _NODE_GONE:
                self._nodes.pop(name, None)
            else:
                self._nodes[name] = status.state_change

    # -- reading -------------------------------------------------------------------------------

    def snapshot(self, *, entries: bool = True) -> tuple[int, list[Entry]]:
        """``(end, retained entries oldest first)``; with ``entries=False`` only ``end`` is meaningful."""
        with self._cond:
            end = self._next
            if not entries:
                return end, []
            start = max(0, end - self._capacity)
            return end, self._copy(start, end)

    def read(self, cursor: int, limit: int = _READ_BATCH) -> tuple[int, int, list[Entry]]:
        """Entries from ``cursor`` on, at most ``limit``: ``(next cursor, entries missed, entries)``.

        ``entries missed`` is how many entries were overwritten before this reader got to them.
        Never blocks (beyond the lock).
        """
        with self._cond:
            start = max(0, self._next - self._capacity)
            missed = start - cursor if cursor < start else 0
            cursor += missed
            stop = min(self._next, cursor + limit)
            return stop, missed, self._copy(cursor, stop)

    def wait(self, cursor: int, timeout: float, *interrupts: threading.Event) -> bool:
        """Sleep until an entry at or after ``cursor`` exists, any of ``interrupts`` is set (then
        :meth:`wake` was called), or ``timeout`` seconds passed; true when there is something to read."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._next > cursor or any(e.is_set() for e in interrupts), timeout=timeout
            )
            return self._next > cursor

    def wake(self) -> None:
        """Wake every reader sleeping in :meth:`wait` (so it re-checks its interrupts)."""
        with self._cond:
            self._cond.notify_all()

    def _copy(self, start: int, stop: int) -> list[Entry]:
        if start >= stop:
            return []
        first, last = start % self._capacity, (stop - 1) % self._capacity
        slots = self._slots
        chunk = slots[first : last + 1] if first <= last else slots[first:] + slots[: last + 1]
        return chunk  # type: ignore[return-value]  # every slot in [start, stop) is filled

    # -- statistics ----------------------------------------------------------------------------

    def stats(self) -> LogStats:
        with self._cond:
            return LogStats(
                capacity=self._capacity,
                retained=min(self._next, self._capacity),
                flows_retained=self._flows_retained,
                flows_seen=self._flows_seen,
                appended=self._next,
                nodes=dict(self._nodes),
            )

    def flows_since(self, time_ns: int) -> int:
        """Retained flows with a time >= ``time_ns``, counted from the newest backwards until the first
        older flow (appends are in time order in every feeder of this module)."""
        count = 0
        with self._cond:
            seq = self._next - 1
            start = max(0, self._next - self._capacity)
            while seq >= start:
                entry = self._slots[seq % self._capacity]
                seq -= 1
                if entry is None or not entry.is_flow:
                    continue
                if entry.time_ns < time_ns:
                    break
                count += 1
        return count
