"""The live source's per-message loop: read each message, skip re-sent events, feed the pipeline.

Stage: source (live), the per-message half, compiled with the judging core; no gRPC here. Input: any
iterable of raw ``GetFlowsResponse`` bytes — a gRPC call, or memory in benchmarks. Output: records fed
into the one pipeline (under its lock), ``received`` counted over every stream.

Reading: flows straight from the bytes (:mod:`auditor.decode_wire`) when that reader is compiled; whatever
it leaves (not a flow, or unusual), and everything in a pure Python build, protobuf parses with the lean
live schema (``proto/live/live.proto``) and :func:`auditor.decode_pb.record_from_response` decodes. A
flow is admitted by :class:`~auditor.sources.resume.ResumeState` (its node, the hash of its bytes, its
time) before it is fed: one re-sent after a resume is skipped.

Error policy: a message protobuf cannot parse, a well-formed one with a value out of its domain (also
remembered, so that its re-send counts once) and any exception while judging one event are counted as
``invalid`` (where: ``target#n``) and skipped; the loop goes on. Exceptions raised by the iterable itself
(the transport's errors) propagate to the caller, which maps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from google.protobuf.message import DecodeError as ProtobufDecodeError

from auditor._proto.live import live_pb2
from auditor.decode_pb import DomainError, record_from_response
from auditor.decode_wire import COMPILED as WIRE_READER
from auditor.decode_wire import flow_from_wire
from auditor.model import Flow, Record
from auditor.pipeline import Pipeline
from auditor.sources.resume import ResumeState


class MessageLoop:
    """Reads messages into a pipeline; ``received`` counts every message over every stream."""

    def __init__(self, pipeline: Pipeline, resume: ResumeState, target: str) -> None:
        self.pipeline = pipeline
        self.resume = resume
        self.target = target
        self.received = 0

    def run(self, messages: Iterable[bytes], first: Callable[[], None]) -> None:
        """Until ``messages`` ends (or raises); ``first`` is called once, at the first message."""
        parse = live_pb2.GetFlowsResponse.FromString  # the lean view: only what the auditor reads
        pipeline = self.pipeline
        lock = pipeline.lock
        admit = self.resume.admit
        delivered = False
        for raw in messages:
            self.received += 1
            if not delivered:
                delivered = True
                first()
            try:
                record: Record | None = flow_from_wire(raw) if WIRE_READER else None
                if record is None:  # not a flow, or unusual: protobuf reads it (and names any error)
                    record = record_from_response(parse(raw))
            except ProtobufDecodeError as e:
                self._invalid(f"undecodable message: {e}")
                continue
            except DomainError as e:  # a well-formed event out of its domain: remembered like any
                if admit(_node_of(raw), hash(raw), 0.0):  # other, so that a re-send counts once
                    self._invalid(f"undecodable message: {e}")
                continue
            try:
                if type(record) is Flow and not admit(record.node_name, hash(raw), record.time):
                    continue  # re-sent after a resume: processed already
                with lock:
                    pipeline.feed(record)
            except Exception as e:  # one event must never break the stream (nor be re-requested)
                self._invalid(f"{type(e).__name__}: {e}")

    def _invalid(self, reason: str) -> None:
        with self.pipeline.lock:
            self.pipeline.invalid(f"{self.target}#{self.received}", reason)


def _node_of(raw: bytes) -> str:
    """The node a (parseable) response came from: the flow's own, else the envelope's."""
    response = live_pb2.GetFlowsResponse.FromString(raw)
    if response.HasField("flow") and response.flow.node_name:
        return str(response.flow.node_name)
    return str(response.node_name)
