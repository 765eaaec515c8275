"""Exactly-once resumption of the live stream: per-node memory of the events seen, per-node clocks.

Stage: source (live), pure bookkeeping — no gRPC, no I/O. Input: for every flow received, its node, a key
that identifies the event exactly (the hash of the response's bytes: Relay re-sends the same bytes) and its
flow time; the auditor's own clock. Output: whether the event was seen before (then it is a re-sent one and
must be skipped), the newest plausible flow time per node, and counted clock anomalies.

Why no ``since`` on resume: Hubble applies ``since`` to live events too, so a ``since`` taken from flow
times loses everything a server stamps earlier — a server restarted with its clock behind, a node whose
clock is behind another's (Relay interleaves nodes), or after one flow stamped in the future. The source
therefore resumes with ``number`` = :attr:`ResumeState.share` (Relay asks every node for its newest
``number`` events, whatever their time) and this memory drops those already processed. The memory holds,
per node, the keys of the node's last ``share`` events, so every event the resumed backlog can repeat is
recognised, independent of clocks and of the order in which Relay interleaves nodes.

Clock anomalies (counted, never trusted): a flow stamped more than ``tolerance`` seconds ahead of the
auditor's clock (``ahead``: a node clock running ahead, or a time far from now) does not advance its node's
watermark; a flow more than ``tolerance`` seconds behind its node's watermark (``backwards``: a clock
stepped back, or a server restarted with a clock behind) is counted once per step and becomes the node's
new watermark.

Bounds: ``share`` = min(``backlog``, ``max_keys`` / nodes) keys per node — the more nodes, the shorter the
backlog asked for, so that memory and the work of a resumption stay bounded while every re-sent event is
still recognised — and at most ``max_nodes`` nodes. Past ``max_keys`` in all (nodes quiet since the share
shrank keep their older, longer memory until they speak), or past ``max_nodes``, the memory of the node
quiet for the longest is dropped (its re-sent events could then be counted twice; counted in
:attr:`ResumeState.evicted_nodes`). About 78 bytes per key (≈ 21 MB at the default 262,144 keys) plus
about 1 kB per node.

Error policy: never raises on input; node names are only used as dictionary keys (bounded as above).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

DEFAULT_BACKLOG: Final = 4096  # Hubble's default per-node event buffer holds 4095 events
DEFAULT_MAX_KEYS: Final = 262_144
DEFAULT_MAX_NODES: Final = 1024
DEFAULT_TOLERANCE: Final = 60.0  # seconds a node's clock may differ before it counts as an anomaly
AHEAD: Final = "ahead"
BACKWARDS: Final = "backwards"
ANOMALY_KINDS: Final = (AHEAD, BACKWARDS)


def plausible_time(t: float, clock: Callable[[], float], tolerance: float) -> tuple[float, float]:
    """``t``, or the auditor's clock when ``t`` is more than ``tolerance`` seconds ahead of it (a node clock
    running ahead, a time far from now); and the horizon: the clock plus ``tolerance``. A caller that keeps
    the horizon calls this only for a time beyond it (the clock is read once per such time, not per flow);
    a time up to the horizon is plausible, as the clock only moves forward."""
    now = clock()
    horizon = now + tolerance
    return (t if t <= horizon else now), horizon


class _Node:
    __slots__ = ("keys", "order", "watermark")

    def __init__(self) -> None:
        self.keys: set[int] = set()
        self.order: deque[int] = deque()
        self.watermark = 0.0


class ResumeState:
    """Per-node memory of the events processed; see the module docstring."""

    def __init__(
        self,
        backlog: int = DEFAULT_BACKLOG,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_nodes: int = DEFAULT_MAX_NODES,
        tolerance: float = DEFAULT_TOLERANCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if backlog < 1 or max_keys < backlog:
            raise ValueError(f"need 1 <= backlog ({backlog}) <= max_keys ({max_keys})")
        self.backlog = backlog
        self.max_keys = max_keys
        self.max_nodes = max(1, max_nodes)
        self.tolerance = tolerance
        self.clock = clock
        self._nodes: OrderedDict[str, _Node] = OrderedDict()  # quietest first (least recently spoke)
        self._keys = 0
        self.resent = 0  # re-sent events recognised (to be skipped)
        self.anomalies: dict[str, int] = dict.fromkeys(ANOMALY_KINDS, 0)
        self.evicted_nodes = 0
        self.newest = 0.0  # newest plausible flow time over all nodes
        self._share = backlog

    @property
    def keys(self) -> int:
        return self._keys

    @property
    def share(self) -> int:
        """Events remembered per node: the ``number`` to ask for when resuming."""
        return self._share

    def admit(self, node: str, key: int, t: float) -> bool:
        """False when this event (``key`` from ``node``) was processed before; else remember it, track
        its time and return True."""
        mem = self._nodes.get(node)
        if mem is None:
            mem = self._add_node(node)
        elif key in mem.keys:
            self.resent += 1
            return False
        else:
            self._nodes.move_to_end(node)  # O(1): the quietest node is always found first
        order, keys = mem.order, mem.keys
        while len(order) >= self._share:  # at most once, except right after the share shrank
            keys.discard(order.popleft())
            self._keys -= 1
        order.append(key)
        keys.add(key)
        self._keys += 1
        if self._keys > self.max_keys:
            self._evict(mem)
        if t:
            self._track(mem, t)
        return True

    def watermark(self, node: str) -> float:
        mem = self._nodes.get(node)
        return mem.watermark if mem is not None else 0.0

    def _track(self, mem: _Node, t: float) -> None:
        wm = mem.watermark
        if t > wm:
            if t > self.clock() + self.tolerance:
                self.anomalies[AHEAD] += 1
                return
            mem.watermark = t
            if t > self.newest:
                self.newest = t
        elif t < wm - self.tolerance:
            self.anomalies[BACKWARDS] += 1
            mem.watermark = t

    def _add_node(self, node: str) -> _Node:
        if len(self._nodes) >= self.max_nodes:
            self._drop_quietest(None)
        mem = _Node()
        self._nodes[node] = mem
        self._reshare()
        return mem

    def _reshare(self) -> None:
        self._share = max(1, min(self.backlog, self.max_keys // max(1, len(self._nodes))))

    def _evict(self, keep: _Node) -> None:
        """Drop the memory of the nodes quiet for the longest (never ``keep``) until under the bound."""
        while self._keys > self.max_keys and self._drop_quietest(keep):
            pass

    def _drop_quietest(self, keep: _Node | None) -> bool:
        nodes = self._nodes
        victim = next((n for n, m in nodes.items() if m is not keep), None)  # ``keep`` spoke last
        if victim is None:
            return False
        self._keys -= len(nodes.pop(victim).order)
        self.evicted_nodes += 1
        self._reshare()
        return True


__all__ = ["ANOMALY_KINDS", "DEFAULT_BACKLOG", "DEFAULT_TOLERANCE", "ResumeState"]
