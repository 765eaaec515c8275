"""A ``GetFlows`` request compiled into a plan: which entries of the demo server's log it is sent, and how.

Stage: none of the pipeline's — the request side of the embedded Hubble stand-in
(:mod:`auditor.demo.service` streams what the plan selects). Input: an ``observer.GetFlowsRequest``.
Output: a :class:`Plan`, compiled once per call, that decides per :class:`~auditor.demo.flowlog.Entry`.

Semantics (those of Hubble, restricted to what the auditor and its tests use):

- the backlog: without ``follow``, the matching retained entries (the last ``number`` when ``number > 0``,
  the first ``number`` when ``first`` is also set, else all); with ``follow``, all matching entries with
  time >= ``since`` when ``since`` is set (the last ``number`` of them when ``number`` is set too), else the
  last ``number`` when set, else nothing. ``first`` with ``follow`` is refused;
- ``since``/``until`` compare with the flow time (the envelope time when the flow has none); entries
  without any time pass;
- ``whitelist``/``blacklist``: an entry passes if it matches any whitelist filter (or there is none) and
  no blacklist filter; all set fields of one filter must match, any value of one field. Fields
  implemented: ``source_pod``/``destination_pod`` (prefix of ``"namespace/pod"``; ``"ns/"`` is a whole
  namespace; an endpoint without namespace never matches), ``source_label``/``destination_label`` (label
  selectors over the endpoint's labels, see :mod:`auditor.demo.labels`), ``verdict`` and ``node_name``
  (prefix). Filters apply to flows only: ``lost_events``, ``node_status`` and raw entries always pass;
- ``field_mask``: filters see the whole flow; only a flow that passed is masked
  (:mod:`auditor.demo.fieldmask`).

Error policy: :meth:`Plan.from_request` raises :class:`RequestError` (the service answers
``INVALID_ARGUMENT``) for a filter field that is not implemented — refused rather than silently ignored —,
a label selector it cannot read, or ``first`` with ``follow``; and
:class:`~auditor.demo.fieldmask.InvalidFieldMask` for a bad mask. Deciding on an entry never raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2
from auditor.demo.fieldmask import FlowMask
from auditor.demo.flowlog import Entry, timestamp_ns
from auditor.demo.labels import Selector, compile_selector, selects_any

__all__ = ["SUPPORTED_FILTER_FIELDS", "Criteria", "Plan", "RequestError"]

SUPPORTED_FILTER_FIELDS: Final = frozenset(
    {"source_pod", "destination_pod", "source_label", "destination_label", "verdict", "node_name"}
)


class RequestError(ValueError):
    """A GetFlows request this server cannot honour (becomes ``INVALID_ARGUMENT``)."""


@dataclass(frozen=True, slots=True)
class Criteria:
    """One ``FlowFilter``: every non-empty field must match."""

    source_pods: tuple[str, ...]
    destination_pods: tuple[str, ...]
    verdicts: frozenset[int]
    node_names: tuple[str, ...]
    source_labels: tuple[Selector, ...] = ()
    destination_labels: tuple[Selector, ...] = ()

    @classmethod
    def compile(cls, flt: flow_pb2.FlowFilter) -> Criteria:
        unsupported = sorted(f.name for f, _ in flt.ListFields() if f.name not in SUPPORTED_FILTER_FIELDS)
        if unsupported:
            raise RequestError(
                f"filter field(s) not implemented by the demo server: {', '.join(unsupported)} "
                f"(supported: {', '.join(sorted(SUPPORTED_FILTER_FIELDS))})"
            )
        try:
            source_labels = tuple(compile_selector(s) for s in flt.source_label)
            destination_labels = tuple(compile_selector(s) for s in flt.destination_label)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return cls(
            tuple(flt.source_pod),
            tuple(flt.destination_pod),
            frozenset(flt.verdict),
            tuple(flt.node_name),
            source_labels,
            destination_labels,
        )

    def matches(self, e: Entry) -> bool:
        if self.source_pods and not (e.source_pod and e.source_pod.startswith(self.source_pods)):
            return False
        if self.destination_pods and not (
            e.destination_pod and e.destination_pod.startswith(self.destination_pods)
        ):
            return False
        if self.verdicts and e.verdict not in self.verdicts:
            return False
        if self.source_labels and not selects_any(self.source_labels, e.source_labels):
            return False
        if self.destination_labels and not selects_any(self.destination_labels, e.destination_labels):
            return False
        return not (self.node_names and not e.node_name.startswith(self.node_names))


@dataclass(frozen=True, slots=True)
class Plan:
    """One ``GetFlows`` call's request, compiled: its time window, backlog choice, filters and mask."""

    follow: bool
    number: int
    first: bool
    since_ns: int | None
    until_ns: int | None
    whitelist: tuple[Criteria, ...]
    blacklist: tuple[Criteria, ...]
    mask: FlowMask | None = None

    @classmethod
    def from_request(cls, req: observer_pb2.GetFlowsRequest) -> Plan:
        if req.first and req.follow:
            raise RequestError("first cannot be combined with follow")
        return cls(
            follow=req.follow,
            number=req.number,
            first=req.first,
            since_ns=timestamp_ns(req.since) if req.HasField("since") else None,
            until_ns=timestamp_ns(req.until) if req.HasField("until") else None,
            whitelist=tuple(Criteria.compile(f) for f in req.whitelist),
            blacklist=tuple(Criteria.compile(f) for f in req.blacklist),
            mask=FlowMask.from_request(req),
        )

    def data(self, e: Entry) -> bytes:
        """The bytes to send for an entry that passed: a flow masked when the request has a mask."""
        mask = self.mask
        return mask.response(e.data) if mask is not None and e.is_flow else e.data

    @property
    def filtered(self) -> bool:
        return bool(self.whitelist or self.blacklist)

    def passes(self, e: Entry) -> bool:
        """Filters only (time bounds are checked by the callers)."""
        if not e.is_flow:
            return True
        if self.whitelist and not any(c.matches(e) for c in self.whitelist):
            return False
        return not any(c.matches(e) for c in self.blacklist)

    def in_window(self, e: Entry) -> bool:
        t = e.time_ns
        if not t:
            return True
        if self.since_ns is not None and t < self.since_ns:
            return False
        return self.until_ns is None or t <= self.until_ns

    def needs_backlog(self) -> bool:
        return not self.follow or self.number > 0 or self.since_ns is not None

    def backlog(self, retained: list[Entry]) -> list[Entry]:
        if not self.needs_backlog():
            return []
        chosen: list[Entry]
        if self.number and not self.first:
            chosen = []
            for e in reversed(retained):
                if self.in_window(e) and self.passes(e):
                    chosen.append(e)
                    if len(chosen) == self.number:
                        break
            chosen.reverse()
            return chosen
        chosen = [e for e in retained if self.in_window(e) and self.passes(e)]
        return chosen[: self.number] if self.number else chosen
