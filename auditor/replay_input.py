"""Replay input: feeding recorded files into the pipeline, and what the input itself says about them.

Stage: source → decode → pipeline, for ``replay`` (the live source has its own loop). Input: the lines of
one file at a time, in blocks (``FlowFile.blocks`` in ``auditor.sources.files``), each decoded whole by
:func:`auditor.decode.decode_block` (which numbers the lines and skips the blank ones) and judged whole
before its results go to the sinks (see :func:`feed_file`). Output: the records fed to the
:class:`Pipeline`, plus an :class:`InputSummary` per file and an :class:`UnjudgeableCheck` over all files,
from which the CLI tells the user two things the report's numbers alone do not:

* **No Hubble event in a file** (:func:`no_events_reason`): an empty file or stdin, blank lines only,
  ``hubble observe`` default/compact/table output, a YAML file passed by mistake, JSON that is not Hubble's.
  A line counts as a Hubble event when it decodes to a flow, lost events, node status, or an agent/debug
  event: a file of lost-event records only is valid input. The CLI makes this an input error (exit 2),
  judged per file, so that the message can name the file.
* **Events a field mask left unjudgeable** (:class:`UnjudgeableCheck`): a Hubble exporter or observer
  field mask that drops ``event_type``, ``traffic_direction`` and ``trace_observation_point`` turns every
  forwarded event into ``ignored``; judging silently sees nothing. Counted only where it matters: an
  in-scope ``FORWARDED``/``REDIRECTED`` L3/L4 event, not a reply, that the judge ignores and that lacks
  ``event_type`` (every datapath event has one) or both ``traffic_direction`` and
  ``trace_observation_point`` (a trace event has a point, a policy verdict a direction).

The per-line cost of the check is a test of two ints for each flow; the judge runs a second time only for
events that lack those fields.

Error policy: undecodable lines are counted as ``invalid`` (with ``file:line``) and skipped, as in
``Pipeline.feed_blocks``; nothing here raises on input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from auditor import judge
from auditor.classify import Judgement
from auditor.decode import decode_block
from auditor.matrix import Matrix
from auditor.model import Flow, FlowType, OtherRecord, Record, Verdict
from auditor.pipeline import Pipeline, Sink

RECORD_HINT: Final = "record flows with `hubble observe -o jsonpb`"
UNKNOWN_KIND: Final = "unknown"  # the OtherRecord kind of a JSON object that is no Hubble event
_PASS_VERDICTS: Final = frozenset({Verdict.FORWARDED, Verdict.REDIRECTED})
_NOT_L3_L4: Final = frozenset({FlowType.L7, FlowType.SOCK})
MASKABLE_FIELDS: Final = ("event_type", "traffic_direction", "trace_observation_point")


@dataclass
class InputSummary:
    """What one input file contained."""

    name: str
    lines: int = 0  # non-blank lines
    events: int = 0  # lines that decoded to a Hubble event
    first_error: tuple[int, str] | None = None  # (line, reason) of the first undecodable line


@dataclass
class UnjudgeableCheck:
    """Counts in-scope forwarded events the judge ignored because fields a field mask removes are missing."""

    matrix: Matrix
    events: int = 0
    missing: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MASKABLE_FIELDS, 0))

    def check(self, flow: Flow) -> None:
        """Look at a flow that lacks ``event_type``, or both direction and observation point."""
        in_scope = self.matrix.in_scope
        if (
            flow.verdict not in _PASS_VERDICTS
            or not flow.protocol
            or flow.flow_type in _NOT_L3_L4
            or not (in_scope(flow.source.namespace) or in_scope(flow.destination.namespace))
            or judge.judge(flow) != judge.IGNORED
        ):
            return
        self.events += 1
        missing = self.missing
        if not flow.event_type:
            missing["event_type"] += 1
        if not flow.traffic_direction:
            missing["traffic_direction"] += 1
        if not flow.observation_point:
            missing["trace_observation_point"] += 1

    def warning(self) -> list[str]:
        """One or two lines for stderr, or none when every event could be judged on its fields."""
        if not self.events:
            return []
        lacking = ", ".join(f"{name} ({count})" for name, count in self.missing.items() if count)
        return [
            f"{self.events} forwarded events could not be judged (counted as ignored): they lack {lacking}",
            "a field mask on the Hubble exporter or observer is the likely cause: keep event_type, "
            f"traffic_direction and trace_observation_point in it, or {RECORD_HINT}",
        ]


def feed_file(
    pipeline: Pipeline, name: str, blocks: Iterable[list[bytes]], unjudgeable: UnjudgeableCheck
) -> InputSummary:
    """Decode and feed the lines of one input, given in blocks (``FlowFile.blocks``): every line, blank ones
    included, numbered from 1 across blocks; ``name`` is used in invalid reports.

    A block goes through in passes, each over all its lines, so that each pass's code stays in the core's
    instruction cache from one line to the next: decoding (:func:`~auditor.decode.decode_block`: parse,
    then records), judging the flows, and handing the results over to the sinks. Sinks never feed back
    into the auditor, so the sinks receive the very calls, in the very order, of a line-by-line loop:
    the results gathered so far are handed over before a connection that expired unproven
    (:meth:`Pipeline.emit_unproven`), an undecodable line and a record that is not a flow."""
    summary = InputSummary(name)
    # Flows, the common line, skip Pipeline.feed's dispatch: the same calls, made here. Compiled functions
    # and methods are called by name: a local alias would be a generic call that parses its arguments.
    auditor = pipeline.auditor
    sinks, pending = pipeline.sinks, auditor.pending
    number = count = events = 0
    records: list[Record] = []
    errors: list[tuple[int, int, str]] = []
    results: list[Judgement | str] = []
    for block in blocks:
        count += decode_block(block, 0, len(block), number + 1, records, errors)
        number += len(block)
        if errors and summary.first_error is None:
            summary.first_error = (errors[0][1], errors[0][2])
        e = 0  # the next undecodable line to report
        for k in range(len(records)):
            if e < len(errors) and errors[e][0] == k:
                hand_over(sinks, results)
                e = pipeline.invalid_before(name, errors, e, k)
            record = records[k]
            if type(record) is Flow:
                events += 1
                if not record.event_type or not (record.traffic_direction or record.observation_point):
                    unjudgeable.check(record)
                results.append(auditor.process(record))
                if pending is not None and pending.expired:
                    hand_over(sinks, results)
                    pipeline.emit_unproven()
                continue
            if type(record) is not OtherRecord or record.kind != UNKNOWN_KIND:
                events += 1
            hand_over(sinks, results)
            pipeline.feed(record)
        hand_over(sinks, results)
        pipeline.invalid_before(name, errors, e, len(records))
        errors.clear()
        records.clear()
    summary.lines, summary.events = count, events
    return summary


def hand_over(sinks: tuple[Sink, ...], results: list[Judgement | str]) -> None:
    """The sinks' calls for ``results`` (outcome names and judgements, in order), which it empties."""
    for result in results:
        if type(result) is str:
            for sink in sinks:
                sink.on_outcome(result)
        else:
            for sink in sinks:
                sink.on_judgement(result)  # type: ignore[arg-type]  # a Judgement
    results.clear()


def no_events_reason(summary: InputSummary) -> str | None:
    """The one-line input error for a file without a single Hubble event, or ``None``."""
    if summary.events:
        return None
    where = "standard input" if summary.name == "-" else summary.name
    if not summary.lines:
        return f"{where}: no flow records (the input is empty); {RECORD_HINT}"
    if summary.first_error is not None:
        line, reason = summary.first_error
        found = f"line {line}: {reason}"
    else:
        found = "JSON, but no flow, lost_events or node_status"
    if summary.lines == 1:
        return f"{where}: its only line is not a Hubble event ({found}); {RECORD_HINT}"
    return f"{where}: none of its {summary.lines} lines is a Hubble event ({found}); {RECORD_HINT}"
