"""Exactly-once resumption bookkeeping (``auditor.sources.resume``) and the reconnect backoff."""

from __future__ import annotations

import random

import pytest

from auditor.sources.hubble import Backoff
from auditor.sources.resume import AHEAD, BACKWARDS, ResumeState, plausible_time

NOW = 1_800_000_000.0


def state(backlog: int = 4, max_keys: int = 64, tolerance: float = 60.0) -> ResumeState:
    return ResumeState(backlog, max_keys=max_keys, tolerance=tolerance, clock=lambda: NOW)


def test_an_event_is_admitted_once_per_node_and_re_sent_ones_are_counted() -> None:
    s = state()
    assert [s.admit("a", k, NOW) for k in (1, 2, 3)] == [True, True, True]
    assert s.admit("b", 1, NOW)  # the same key from another node is another event
    assert not s.admit("a", 2, NOW) and not s.admit("b", 1, NOW)
    assert s.resent == 2 and s.keys == 4


def test_each_node_remembers_its_last_backlog_events_whatever_the_other_nodes_do() -> None:
    s = state(backlog=3, max_keys=64)
    s.admit("quiet", 100, NOW)
    for k in range(50):  # a busy node does not push the quiet node's event out
        s.admit("busy", k, NOW)
    assert not s.admit("quiet", 100, NOW)
    assert not s.admit("busy", 49, NOW) and not s.admit("busy", 47, NOW)
    assert s.admit("busy", 46, NOW)  # older than the last three: forgotten (Hubble would not re-send it)
    assert s.keys == 4


def test_total_memory_is_bounded_by_dropping_the_node_quiet_for_the_longest() -> None:
    s = state(backlog=4, max_keys=8)
    for node in ("n1", "n2", "n3"):
        for k in range(4):
            s.admit(node, k, NOW)
    assert s.keys <= 8 and s.evicted_nodes == 1
    assert s.admit("n1", 0, NOW)  # n1 was the oldest: forgotten
    assert not s.admit("n3", 3, NOW)


def test_the_backlog_asked_for_shrinks_with_the_nodes_so_that_memory_still_covers_it() -> None:
    s = ResumeState(100, max_keys=200, clock=lambda: NOW)
    assert s.share == 100
    for k in range(150):
        s.admit("a", k, NOW)
    assert s.keys == 100  # one node: its last 100
    for node in ("b", "c", "d"):
        s.admit(node, 0, NOW)
    assert s.share == 50  # four nodes: 200 keys cover the newest 50 of each
    s.admit("a", 1000, NOW)  # a node trims itself to the share when it speaks
    assert s.keys == 53
    assert not s.admit("a", 149, NOW) and s.admit("a", 99, NOW)


def test_the_number_of_nodes_remembered_is_bounded_too() -> None:
    s = ResumeState(4, max_keys=64, max_nodes=3, clock=lambda: NOW)
    for node in ("n1", "n2", "n3", "n4"):
        s.admit(node, 1, NOW)
    assert s.evicted_nodes == 1 and s.keys == 3
    assert s.admit("n1", 1, NOW)  # n1 was the quietest: forgotten
    assert not s.admit("n4", 1, NOW)


def test_a_flow_ahead_of_the_clock_is_an_anomaly_not_the_watermark() -> None:
    s = state()
    s.admit("a", 1, NOW - 5)
    s.admit("a", 2, float(2**40))  # beyond year 9999
    s.admit("a", 3, NOW + 3600)
    assert s.anomalies[AHEAD] == 2
    assert s.watermark("a") == NOW - 5 and s.newest == NOW - 5
    s.admit("a", 4, NOW + 30)  # within the tolerance: a normal flow
    assert s.watermark("a") == NOW + 30 and s.anomalies[AHEAD] == 2


def test_a_node_clock_stepping_back_is_counted_once_and_followed() -> None:
    s = state()
    s.admit("a", 1, NOW)
    s.admit("b", 1, NOW - 2)  # two seconds behind another node: not an anomaly
    s.admit("a", 2, NOW - 600)  # restarted with its clock ten minutes behind
    s.admit("a", 3, NOW - 599)
    assert s.anomalies == {AHEAD: 0, BACKWARDS: 1}
    assert s.watermark("a") == NOW - 599 and s.watermark("b") == NOW - 2
    assert s.newest == NOW  # the newest plausible time ever seen (the metric)


def test_flows_without_time_are_remembered_but_move_no_watermark() -> None:
    s = state()
    assert s.admit("a", 1, 0.0) and not s.admit("a", 1, 0.0)
    assert s.watermark("a") == 0.0 and s.anomalies == {AHEAD: 0, BACKWARDS: 0}


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="backlog"):
        ResumeState(0)
    with pytest.raises(ValueError, match="max_keys"):
        ResumeState(10, max_keys=5)


def test_backoff_stays_capped_after_thousands_of_attempts() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(1))
    backoff.attempt = 5000  # days of outage: 0.5 * 2**5000 would not fit a float
    delays = [backoff.next_delay() for _ in range(3)]
    assert all(15.0 <= d <= 30.0 for d in delays)
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5


def test_a_time_within_the_tolerance_is_plausible_and_one_beyond_counts_at_the_clock() -> None:
    assert plausible_time(NOW + 60, lambda: NOW, 60) == (NOW + 60, NOW + 60)
    assert plausible_time(NOW + 61, lambda: NOW, 60) == (NOW, NOW + 60)
    assert plausible_time(NOW - 3600, lambda: NOW, 60) == (NOW - 3600, NOW + 60)
