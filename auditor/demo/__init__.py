"""The embedded Hubble-compatible server behind ``flow-auditor demo`` (and the daemon's tests and benchmarks).

Stage: none of the pipeline's — a stand-in for Hubble Relay on loopback. :mod:`auditor.demo.server` wires
it and is its command line; each part lives in its own module (the log, the responses, the feed, the
request filters, the gRPC service), see there for their input, output and error policy.

The names below are loaded from their modules on first use, so that ``python -m auditor.demo.server`` does
not import that module twice (once through this package, once as ``__main__``) and importing the package
does not load gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from auditor.demo.feed import DEFAULT_SPEED, LiveScenario, Player
    from auditor.demo.flowlog import DEFAULT_CAPACITY, Entry, FlowLog, LogStats
    from auditor.demo.responses import (
        load_jsonl,
        log_from_responses,
        lost_events_response,
        node_status_response,
        response_from_event,
    )
    from auditor.demo.server import Demo, start_demo
    from auditor.demo.service import HubbleServer, ServerTls

_HOMES: Final = {
    "DEFAULT_CAPACITY": "flowlog",
    "DEFAULT_SPEED": "feed",
    "Demo": "server",
    "Entry": "flowlog",
    "FlowLog": "flowlog",
    "HubbleServer": "service",
    "LiveScenario": "feed",
    "LogStats": "flowlog",
    "Player": "feed",
    "ServerTls": "service",
    "load_jsonl": "responses",
    "log_from_responses": "responses",
    "lost_events_response": "responses",
    "node_status_response": "responses",
    "response_from_event": "responses",
    "start_demo": "server",
}

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_SPEED",
    "Demo",
    "Entry",
    "FlowLog",
    "HubbleServer",
    "LiveScenario",
    "LogStats",
    "Player",
    "ServerTls",
    "load_jsonl",
    "log_from_responses",
    "lost_events_response",
    "node_status_response",
    "response_from_event",
    "start_demo",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
