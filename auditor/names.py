"""Hubble's enum names the auditor reports: drop reasons, lost-event sources and Relay node states.

Stage: none (tables shared by both decoders and the metrics sink). Input: numbers or names from a flow
event. Output: the names Hubble users know, taken from our own subset protos (``proto/``), so there is one
home for each table.

Error policy: never raises; a drop reason our proto lacks keeps its decimal number (as protobuf JSON prints
it), an unknown lost-event source or node state maps to the proto's ``UNKNOWN_…`` name.
"""

from __future__ import annotations

from typing import Final

from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2

DROP_REASON_NAMES: Final[dict[int, str]] = {number: name for name, number in flow_pb2.DropReason.items()}
LOST_EVENT_SOURCE_NAMES: Final[dict[int, str]] = {
    number: name for name, number in flow_pb2.LostEventSource.items()
}
NODE_STATE_NAMES: Final[dict[int, str]] = {number: name for name, number in observer_pb2.NodeState.items()}
UNKNOWN_LOST_EVENT_SOURCE: Final = LOST_EVENT_SOURCE_NAMES[0]
UNKNOWN_NODE_STATE: Final = NODE_STATE_NAMES[0]
NODE_GONE: Final = "NODE_GONE"
_NO_DROP_REASON: Final = frozenset({"", "0", DROP_REASON_NAMES[0]})


def drop_reason_name(value: int | str) -> str:
    """The ``DropReason`` name of a number or a name: ``""`` for none (0, ``DROP_REASON_UNKNOWN``), the
    decimal number when our proto lacks it, a name as it is."""
    if isinstance(value, int):
        return (DROP_REASON_NAMES.get(value) or str(value)) if value else ""
    return "" if value in _NO_DROP_REASON else value


def lost_event_source_name(value: int | str) -> str:
    """A lost-event source by number (unknown numbers → ``UNKNOWN_LOST_EVENT_SOURCE``) or name."""
    if isinstance(value, int):
        return LOST_EVENT_SOURCE_NAMES.get(value, UNKNOWN_LOST_EVENT_SOURCE)
    return value


def node_state_name(value: int | str) -> str:
    """A Relay node state by number (unknown numbers → ``UNKNOWN_NODE_STATE``) or name."""
    if isinstance(value, int):
        return NODE_STATE_NAMES.get(value, UNKNOWN_NODE_STATE)
    return value
