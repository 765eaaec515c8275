"""The embedded Hubble-compatible server behind ``flow-auditor demo`` (and the daemon's tests and benchmarks).

Stage: none of the pipeline's — a stand-in for Hubble Relay on loopback; see :mod:`auditor.demo.server`
for the input (a :class:`FlowLog` of serialized responses), the output (``observer.Observer`` over gRPC)
and the error policy.

The names below are loaded on first use, so that ``python -m auditor.demo.server`` does not import the
module twice (once through this package, once as ``__main__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auditor.demo.server import (
        DEFAULT_CAPACITY,
        DEFAULT_SPEED,
        Demo,
        Entry,
        FlowLog,
        HubbleServer,
        LiveScenario,
        LogStats,
        Player,
        ServerTls,
        load_jsonl,
        log_from_responses,
        lost_events_response,
        node_status_response,
        response_from_event,
        start_demo,
    )

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
    if name in __all__:
        from auditor.demo import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
