"""One home for Hubble's enum names (auditor/names.py): both decoders and the metrics sink use it, and it
agrees with the numbers Cilium publishes for DropReason, LostEventSource and NodeState."""

from __future__ import annotations

import pytest

from auditor import decode, decode_pb
from auditor.names import drop_reason_name, lost_event_source_name, node_state_name
from auditor.sinks import metrics


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (0, ""),
        ("", ""),
        ("0", ""),
        ("DROP_REASON_UNKNOWN", ""),
        (133, "POLICY_DENIED"),  # Cilium's published number
        ("POLICY_DENIED", "POLICY_DENIED"),
        (9999, "9999"),  # a reason our proto lacks keeps its number, as protobuf JSON prints it
    ],
)
def test_drop_reason_names(value: int | str, name: str) -> None:
    assert drop_reason_name(value) == name


def test_lost_event_sources_and_node_states_by_number_and_name() -> None:
    assert [lost_event_source_name(n) for n in (0, 1, 2, 3, 42)] == [
        "UNKNOWN_LOST_EVENT_SOURCE",
        "PERF_EVENT_RING_BUFFER",
        "OBSERVER_EVENTS_QUEUE",
        "HUBBLE_RING_BUFFER",
        "UNKNOWN_LOST_EVENT_SOURCE",
    ]
    assert [node_state_name(n) for n in (0, 1, 2, 3, 4, 9)] == [
        "UNKNOWN_NODE_STATE",
        "NODE_CONNECTED",
        "NODE_UNAVAILABLE",
        "NODE_GONE",
        "NODE_ERROR",
        "UNKNOWN_NODE_STATE",
    ]
    assert node_state_name("NODE_CONNECTED") == "NODE_CONNECTED"


def test_decoders_and_metrics_share_the_tables() -> None:
    assert decode.drop_reason_name is decode_pb.drop_reason_name is drop_reason_name
    assert tuple(decode_pb.LOST_EVENT_SOURCE_NAMES[n] for n in range(4)) == metrics.LOST_EVENT_SOURCES
    assert metrics.NODE_STATES == ("NODE_CONNECTED", "NODE_UNAVAILABLE", "NODE_ERROR")
