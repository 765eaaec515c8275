"""Responses for the demo server: recorded jsonpb records and hand-made notices as ``GetFlowsResponse``.

Stage: none of the pipeline's — the input side of the embedded Hubble stand-in. Input: ``hubble observe -o
jsonpb`` records (exporter envelopes or bare ``Flow`` objects, proto or camelCase field names) from dicts or
JSON-lines files, or the few values of a ``lost_events``/``node_status`` notice. Output:
``observer.GetFlowsResponse`` messages, and a :class:`~auditor.demo.flowlog.FlowLog` holding them.

Error policy: :func:`response_from_event` raises ``json_format.ParseError`` for a record that does not fit
the schema (unknown fields and enum names are dropped: newer Hubble versions add them);
:func:`load_jsonl` raises :class:`ValueError` naming ``file:line``, or ``auditor.sources.files.SourceError``
(an ``OSError``) when the file cannot be read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from google.protobuf import json_format, timestamp_pb2

from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2
from auditor.demo.flowlog import DEFAULT_CAPACITY, FlowLog
from auditor.sources.files import FlowFile

__all__ = [
    "load_jsonl",
    "log_from_responses",
    "lost_events_response",
    "node_status_response",
    "response_from_event",
]

_ENVELOPE_KEYS: Final = frozenset({"flow", "lost_events", "lostEvents", "node_status", "nodeStatus"})


def response_from_event(event: dict[str, Any]) -> observer_pb2.GetFlowsResponse:
    """A jsonpb record (``hubble observe -o jsonpb`` / exporter envelope, or a bare Flow object, proto or
    camelCase field names) as a ``GetFlowsResponse``; unknown fields are dropped.

    Raises ``json_format.ParseError`` when the record does not fit the schema (unknown enum names are
    dropped like unknown fields: newer Hubble versions add values).
    """
    response = observer_pb2.GetFlowsResponse()
    if _ENVELOPE_KEYS.isdisjoint(event):
        json_format.ParseDict(event, response.flow, ignore_unknown_fields=True)
    else:
        json_format.ParseDict(event, response, ignore_unknown_fields=True)
    return response


def load_jsonl(path: str | Path) -> list[observer_pb2.GetFlowsResponse]:
    """Every record of a JSON-lines file (plain or gzip; ``-`` is stdin), in file order.

    Raises :class:`ValueError` naming ``file:line`` for a line that is not a jsonpb record, and
    ``auditor.sources.files.SourceError`` (an ``OSError``) when the file cannot be read.
    """
    out: list[observer_pb2.GetFlowsResponse] = []
    with FlowFile(str(path)) as source:
        for number, line in source:
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError(f"expected a JSON object, got {type(event).__name__}")
                out.append(response_from_event(event))
            except (ValueError, json_format.Error) as exc:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{number}: {exc}") from None
    return out


def log_from_responses(
    responses: Sequence[observer_pb2.GetFlowsResponse], capacity: int | None = None
) -> FlowLog:
    """A new log holding ``responses`` (capacity: at least their number and :data:`DEFAULT_CAPACITY`)."""
    log = FlowLog(capacity if capacity is not None else max(DEFAULT_CAPACITY, len(responses)))
    log.extend(responses)
    return log


def _timestamp(ns: int | None) -> dict[str, Any]:
    return {} if ns is None else {"time": _ts(ns)}


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def lost_events_response(
    num_events_lost: int,
    *,
    source: str | int = "PERF_EVENT_RING_BUFFER",
    node_name: str = "",
    cpu: int | None = None,
    time_ns: int | None = None,
) -> observer_pb2.GetFlowsResponse:
    """A ``lost_events`` notice as Hubble sends it (``source`` by ``LostEventSource`` name or number;
    ``time_ns`` defaults to now)."""
    lost = flow_pb2.LostEvent(
        source=flow_pb2.LostEventSource.Value(source) if isinstance(source, str) else source,  # type: ignore[arg-type]
        num_events_lost=num_events_lost,
    )
    if cpu is not None:
        lost.cpu.value = cpu
    return observer_pb2.GetFlowsResponse(
        lost_events=lost, node_name=node_name, **_timestamp(time.time_ns() if time_ns is None else time_ns)
    )


def node_status_response(
    state: str | int, node_names: Sequence[str], message: str = "", *, time_ns: int | None = None
) -> observer_pb2.GetFlowsResponse:
    """A Relay ``node_status`` notice (``state`` by ``NodeState`` name or number; ``time_ns`` defaults to
    now). Appending one also updates the node counts of ``ServerStatus``/``GetNodes``."""
    status = observer_pb2.NodeStatusEvent(
        state_change=observer_pb2.NodeState.Value(state) if isinstance(state, str) else state,  # type: ignore[arg-type]
        node_names=list(node_names),
        message=message,
    )
    return observer_pb2.GetFlowsResponse(
        node_status=status, **_timestamp(time.time_ns() if time_ns is None else time_ns)
    )
