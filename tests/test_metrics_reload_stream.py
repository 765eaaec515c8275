"""The metrics sink across matrix reloads and stream events (DESIGN §6): counters kept and rule series and
port labels rebuilt on reload, a failed reload counted, lost events by source (unknown sources bounded), node
gauges following node states, stream up/down, reconnects, last flow time and the counters the source keeps.

Every test drives the sink through the real pipeline (or calls the Sink methods the pipeline calls) and
reads the values back from a real ``CollectorRegistry``."""

from metrics_rig import MATRIX, Rig, matrix_with, rule_last_seen, rule_series

from auditor.classify import EXPECTED_ALLOWED, UNEXPECTED_ALLOWED
from auditor.model import LostEvents, NodeStatus
from auditor.sinks.metrics import StreamStats

# -- matrix reload ----------------------------------------------------------------------------------------

RELOADED_RULES = """\
  - {from: traefik, to: webserver, ports: [8080]}
  - {from: [webserver, scheduler, worker, triggerer], to: postgresql, ports: ["5432/TCP", "30000-32767/TCP"]}
  - {from: prometheus, to: triggerer, ports: [8080]}
"""


def test_reload_keeps_counters_and_rebuilds_rule_series() -> None:
    rig = Rig()
    rig.replay_example()
    before_connections = {
        tuple(sorted(s.labels.items())): s.value for s in rig.samples("flow_auditor_connections_total")
    }
    before_rules = rule_series(rig)
    before_flows = rig.value("flow_auditor_flows_total", outcome="judged")
    reloaded = matrix_with(RELOADED_RULES)
    rig.metrics.set_matrix(reloaded)
    rig.metrics.matrix_reloaded(True)

    after_connections = {
        tuple(sorted(s.labels.items())): s.value for s in rig.samples("flow_auditor_connections_total")
    }
    assert after_connections == before_connections
    assert rig.value("flow_auditor_flows_total", outcome="judged") == before_flows
    assert rule_series(rig) == {
        ("1", "traefik", "webserver"): before_rules[("1", "traefik", "webserver")],  # same (rule, from, to)
        ("2", "webserver", "postgresql"): 0.0,  # rule 2 was kubelet → webserver before
        ("2", "scheduler", "postgresql"): 0.0,
        ("2", "worker", "postgresql"): 0.0,
        ("2", "triggerer", "postgresql"): 0.0,
        ("3", "prometheus", "triggerer"): 0.0,
    }
    assert before_rules[("1", "traefik", "webserver")] > 0  # the kept value is a real one
    assert rig.value("flow_auditor_matrix_rules") == 3
    assert rig.value("flow_auditor_matrix_reloads_total", result="success") == 1
    assert rig.value("flow_auditor_matrix_reloads_total", result="error") == 0


def test_reload_rebuilds_port_labels_and_counting_continues() -> None:
    rig = Rig()
    rig.connect(destination_port=31000, time=10.0)
    assert rig.connections("worker", "postgresql", "31000", "TCP", UNEXPECTED_ALLOWED) == 1
    reloaded = matrix_with(RELOADED_RULES)
    rig.auditor.set_matrix(reloaded)
    rig.metrics.set_matrix(reloaded)
    rig.connect(destination_port=31000, time=20.0)
    rig.connect(time=30.0)
    assert rig.connections("worker", "postgresql", "31000", "TCP", UNEXPECTED_ALLOWED) == 1
    assert rig.connections("worker", "postgresql", "30000-32767", "TCP", EXPECTED_ALLOWED) == 1
    assert rig.connections("worker", "postgresql", "5432", "TCP", EXPECTED_ALLOWED) == 1
    assert rule_last_seen(rig, 2, "worker", "postgresql") == 30.0


def test_failed_reload_is_counted_as_error_and_both_results_exist_from_the_start() -> None:
    rig = Rig()
    assert rig.value("flow_auditor_matrix_reloads_total", result="success") == 0
    assert rig.value("flow_auditor_matrix_reloads_total", result="error") == 0
    rig.metrics.matrix_reloaded(False)
    assert rig.value("flow_auditor_matrix_reloads_total", result="error") == 1
    assert rig.value("flow_auditor_matrix_rules") == len(MATRIX.rules) == 13


# -- stream health ----------------------------------------------------------------------------------------


def test_lost_events_are_counted_by_source_and_unknown_sources_are_bounded() -> None:
    rig = Rig()
    assert {s.labels["source"]: s.value for s in rig.samples("flow_auditor_hubble_lost_events_total")} == {
        "UNKNOWN_LOST_EVENT_SOURCE": 0.0,
        "PERF_EVENT_RING_BUFFER": 0.0,
        "OBSERVER_EVENTS_QUEUE": 0.0,
        "HUBBLE_RING_BUFFER": 0.0,
    }
    rig.pipeline.feed(LostEvents("PERF_EVENT_RING_BUFFER", 7, "kind-worker"))
    rig.pipeline.feed(LostEvents("PERF_EVENT_RING_BUFFER", 3, "kind-worker2"))
    rig.pipeline.feed(LostEvents("SOMETHING_NEW", 5))
    assert rig.value("flow_auditor_hubble_lost_events_total", source="PERF_EVENT_RING_BUFFER") == 10
    assert rig.value("flow_auditor_hubble_lost_events_total", source="UNKNOWN_LOST_EVENT_SOURCE") == 5
    assert rig.value("flow_auditor_hubble_lost_events_total", source="SOMETHING_NEW") is None
    assert sum(s.value for s in rig.samples("flow_auditor_flows_total")) == 0  # not flows


def test_lost_events_from_a_recorded_line_reach_the_counter() -> None:
    rig = Rig()
    line = b'{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"12"},"node_name":"n1"}'
    rig.pipeline.feed_blocks("lost.jsonl", [[line]])
    assert rig.value("flow_auditor_hubble_lost_events_total", source="HUBBLE_RING_BUFFER") == 12


def nodes(rig: Rig) -> dict[str, float]:
    return {s.labels["state"]: s.value for s in rig.samples("flow_auditor_hubble_nodes")}


def test_node_gauges_follow_node_states_and_gone_nodes_leave() -> None:
    rig = Rig()
    assert nodes(rig) == {"NODE_CONNECTED": 0.0, "NODE_UNAVAILABLE": 0.0, "NODE_ERROR": 0.0}
    rig.pipeline.feed(NodeStatus("NODE_CONNECTED", ("n1", "n2", "n3")))
    assert nodes(rig) == {"NODE_CONNECTED": 3.0, "NODE_UNAVAILABLE": 0.0, "NODE_ERROR": 0.0}
    rig.pipeline.feed(NodeStatus("NODE_UNAVAILABLE", ("n2",), "connection refused"))
    rig.pipeline.feed(NodeStatus("NODE_ERROR", ("n3",)))
    assert nodes(rig) == {"NODE_CONNECTED": 1.0, "NODE_UNAVAILABLE": 1.0, "NODE_ERROR": 1.0}
    rig.pipeline.feed(NodeStatus("NODE_GONE", ("n3", "never-seen")))
    rig.pipeline.feed(NodeStatus("NODE_CONNECTED", ("n2",)))
    assert nodes(rig) == {"NODE_CONNECTED": 2.0, "NODE_UNAVAILABLE": 0.0, "NODE_ERROR": 0.0}
    assert sum(s.value for s in rig.samples("flow_auditor_flows_total")) == 0


def test_stream_down_forgets_node_states() -> None:
    rig = Rig()
    rig.metrics.set_hubble_up(True)
    rig.pipeline.feed(NodeStatus("NODE_CONNECTED", ("n1", "n2")))
    rig.metrics.set_hubble_up(False)
    assert rig.value("flow_auditor_hubble_up") == 0
    assert nodes(rig)["NODE_CONNECTED"] == 0


def test_stream_health_methods_set_up_reconnects_and_last_flow_time() -> None:
    rig = Rig()
    assert rig.value("flow_auditor_hubble_up") == 0
    assert rig.value("flow_auditor_hubble_reconnects_total") == 0
    assert rig.value("flow_auditor_last_flow_timestamp_seconds") == 0
    rig.metrics.set_hubble_up(True)
    rig.metrics.inc_reconnects()
    rig.metrics.inc_reconnects()
    rig.metrics.set_last_flow_timestamp(1_800_000_123.25)
    assert rig.value("flow_auditor_hubble_up") == 1
    assert rig.value("flow_auditor_hubble_reconnects_total") == 2
    assert rig.value("flow_auditor_last_flow_timestamp_seconds") == 1_800_000_123.25


def test_stream_counters_kept_by_the_source_are_read_at_scrape_time() -> None:
    rig = Rig()
    assert rig.value("flow_auditor_hubble_clock_anomalies_total", kind="ahead") == 0
    assert rig.value("flow_auditor_hubble_stream_gaps_total") == 0
    counters = {"resent": 0}
    rig.metrics.stream_stats = lambda: StreamStats(counters["resent"], 2, {"ahead": 3, "backwards": 1})
    counters["resent"] = 7
    assert rig.value("flow_auditor_hubble_resent_events_skipped_total") == 7
    assert rig.value("flow_auditor_hubble_stream_gaps_total") == 2
    assert rig.value("flow_auditor_hubble_clock_anomalies_total", kind="ahead") == 3
    assert rig.value("flow_auditor_hubble_clock_anomalies_total", kind="backwards") == 1
