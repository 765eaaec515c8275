"""The one pipeline: source → decode → judge → classify → sinks (DESIGN §2).

Stage: wiring. Input: decoded records (from any source). Output: calls on the sinks — one per record,
so that every received flow lands in exactly one outcome (``received`` = sum of outcomes).
``replay`` (files) and ``run``/``demo`` (live gRPC) build this same object; only the source differs.

Connections seen only through provisional evidence leave the auditor as :class:`Unproven` when their
window expires (or at :meth:`Pipeline.finish`) and reach the sinks through ``on_unproven``.

A new matrix (hot reload) is swapped in with :meth:`Pipeline.set_matrix` from any thread, between two
records (a live source feeds under :attr:`Pipeline.lock`), for the auditor and every sink that has
``set_matrix``.

Error policy: never raises on a record. Undecodable input is reported through :meth:`Pipeline.invalid`
by the source loop, counted as ``invalid`` and skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from mypy_extensions import mypyc_attr

from auditor.classify import IGNORED, INVALID, Auditor, Judgement, Unproven
from auditor.decode import decode_block
from auditor.matrix import Matrix
from auditor.model import Flow, LostEvents, NodeStatus, Record


class Sink(Protocol):
    """Receives the pipeline's results. Sinks do I/O (metrics, reports, events), never judging."""

    def on_outcome(self, outcome: str) -> None: ...
    def on_judgement(self, judgement: Judgement) -> None:
        """A final verdict; the record's own outcome is ``judgement.outcome`` (``judged`` or ``reply``)."""

    def on_unproven(self, connection: Unproven) -> None:
        """A connection seen only through provisional evidence (not an outcome: its events were counted)."""

    def on_lost(self, record: LostEvents) -> None: ...
    def on_node_status(self, record: NodeStatus) -> None: ...
    def on_invalid(self, where: str, reason: str) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)
class QuietSink:
    """A sink that takes everything and does nothing: a base for sinks that react to a few calls only
    (plain Python subclasses are welcome when this module is compiled)."""

    def on_outcome(self, outcome: str) -> None:
        pass

    def on_judgement(self, judgement: Judgement) -> None:
        pass

    def on_unproven(self, connection: Unproven) -> None:
        pass

    def on_lost(self, record: LostEvents) -> None:
        pass

    def on_node_status(self, record: NodeStatus) -> None:
        pass

    def on_invalid(self, where: str, reason: str) -> None:
        pass


class Pipeline:
    """Feeds records through the :class:`~auditor.classify.Auditor` into the sinks."""

    def __init__(self, auditor: Auditor, sinks: Sequence[Sink]) -> None:
        self.auditor = auditor
        self.sinks = tuple(sinks)
        self.lock = threading.Lock()

    def set_matrix(self, matrix: Matrix) -> None:
        """Swap the matrix (hot reload) for the auditor and every sink that has ``set_matrix``.

        Takes :attr:`lock`, which a live source holds while it feeds a record: the swap happens between
        two records and is in effect when this returns, even while the stream is quiet.
        """
        with self.lock:
            self.auditor.set_matrix(matrix)
            for sink in self.sinks:
                set_matrix = getattr(sink, "set_matrix", None)
                if set_matrix is not None:
                    set_matrix(matrix)

    def feed(self, record: Record) -> None:
        if type(record) is Flow:
            result = self.auditor.process(record)
            if type(result) is str:
                for sink in self.sinks:
                    sink.on_outcome(result)
            else:
                assert isinstance(result, Judgement)
                for sink in self.sinks:
                    sink.on_judgement(result)
            self.emit_unproven()
        elif type(record) is LostEvents:
            for sink in self.sinks:
                sink.on_lost(record)
        elif type(record) is NodeStatus:
            for sink in self.sinks:
                sink.on_node_status(record)
        else:
            for sink in self.sinks:
                sink.on_outcome(IGNORED)

    def finish(self) -> None:
        """End of the input (replay): provisional connections still waiting for proof are unproven."""
        self.auditor.flush()
        self.emit_unproven()

    def emit_unproven(self) -> None:
        """Pass the provisional connections that expired unproven (``auditor.pending.expired``) on."""
        pending = self.auditor.pending
        if pending is None or not pending.expired:
            return
        items = pending.expired[:]
        pending.expired.clear()
        for item in items:
            for sink in self.sinks:
                sink.on_unproven(item)

    def invalid(self, where: str, reason: str) -> None:
        for sink in self.sinks:
            sink.on_invalid(where, reason)
            sink.on_outcome(INVALID)

    def feed_blocks(self, name: str, blocks: Iterable[list[bytes]]) -> None:
        """Decode and feed the lines of one input given in blocks (``FlowFile.blocks``: every line, blank
        ones included, numbered from 1 across blocks); blank lines are skipped. Each block is decoded
        whole (:func:`~auditor.decode.decode_block`) before its records are fed, in line order with its
        undecodable lines."""
        number = 0  # compiled: decode_block and self.feed called by name are native calls
        records: list[Record] = []
        errors: list[tuple[int, int, str]] = []
        for block in blocks:
            decode_block(block, 0, len(block), number + 1, records, errors)
            number += len(block)
            e = 0  # the next undecodable line to report
            for k in range(len(records)):
                e = self.invalid_before(name, errors, e, k)
                self.feed(records[k])
            self.invalid_before(name, errors, e, len(records))
            errors.clear()
            records.clear()

    def invalid_before(self, name: str, errors: list[tuple[int, int, str]], e: int, position: int) -> int:
        """Report the undecodable lines of ``errors`` (``(position, number, reason)``, from
        :func:`~auditor.decode.decode_block`), from the ``e``-th on, that stand before the record at
        ``position``; returns the index of the first one left."""
        while e < len(errors) and errors[e][0] <= position:
            self.invalid(f"{name}:{errors[e][1]}", errors[e][2])
            e += 1
        return e
