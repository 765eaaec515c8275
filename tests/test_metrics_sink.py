"""The Prometheus metrics sink (DESIGN §6): values on the example equal the report's, rule last-seen times,
build info and the exposition (exactly the documented metrics; promtool finds nothing). Label and series caps
are pinned in ``tests/test_metrics_caps.py``, reloads and stream health in
``tests/test_metrics_reload_stream.py``.

Every test drives the sink through the real pipeline (or calls the Sink methods the pipeline calls) and
reads the values back from a real ``CollectorRegistry``, the way Prometheus would scrape them."""

import shutil
import subprocess

import pytest
from factory import DEBUG, REDIS
from metrics_rig import MATRIX, METRIC_NAMES, Rig, edge_labels, rule_last_seen, rule_series, scrape
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries

import auditor
from auditor.classify import CLASSES, EXPECTED_DROPPED, OUTCOMES, UNEXPECTED_DROPPED
from auditor.model import EventType, LostEvents, NodeStatus, Verdict
from auditor.sinks.metrics import MetricsSink

# -- the example, compared with the report sink ----------------------------------------------------------


def test_connections_per_edge_and_verdict_equal_the_report_on_the_example() -> None:
    rig = Rig()
    rig.replay_example()
    edges = rig.report.report()["edges"]
    assert edges, "the example has judged connections"
    expected = {}
    for e in edges:
        labels = edge_labels(e["source"], e["destination"], e["port"], e["protocol"], e["class"])
        for verdict, n in e["verdicts"].items():
            expected[tuple(sorted({**labels, "verdict": verdict}.items()))] = float(n)
    exposed = {
        tuple(sorted(s.labels.items())): s.value for s in rig.samples("flow_auditor_connections_total")
    }
    assert exposed == expected
    assert sum(exposed.values()) == sum(rig.report.classes.values())


def test_edge_last_seen_is_the_newest_flow_time_of_each_edge_on_the_example() -> None:
    rig = Rig()
    rig.replay_example()
    exposed = {
        tuple(sorted(s.labels.items())): s.value
        for s in rig.samples("flow_auditor_edge_last_seen_timestamp_seconds")
    }
    expected = {
        tuple(sorted(edge_labels(*edge).items())): stats.last for edge, stats in rig.report.edges.items()
    }
    assert exposed == expected


def test_dropped_connections_by_reason_add_up_to_the_dropped_edges_on_the_example() -> None:
    rig = Rig()
    rig.replay_example()
    dropped = [
        e for e in rig.report.report()["edges"] if e["class"] in (EXPECTED_DROPPED, UNEXPECTED_DROPPED)
    ]
    assert dropped
    for e in dropped:
        labels = edge_labels(e["source"], e["destination"], e["port"], e["protocol"], e["class"])
        by_reason = {
            s.labels["reason"]: s.value
            for s in rig.samples("flow_auditor_dropped_connections_total")
            if {k: s.labels[k] for k in labels} == labels
        }
        assert sum(by_reason.values()) == e["connections"]
        for reason, n in e["drop_reasons"].items():
            assert by_reason[reason] == n
    allowed = {e["class"] for e in rig.report.report()["edges"]} - {EXPECTED_DROPPED, UNEXPECTED_DROPPED}
    assert not any(
        s.labels["class"] in allowed for s in rig.samples("flow_auditor_dropped_connections_total")
    )


def test_flows_total_sums_to_received_with_every_outcome_of_the_report() -> None:
    rig = Rig()
    rig.replay_example()
    rig.pipeline.feed_blocks("broken.jsonl", [[b"{not json"]])
    for outcome in OUTCOMES:
        assert rig.value("flow_auditor_flows_total", outcome=outcome) == rig.report.outcomes[outcome]
    assert rig.value("flow_auditor_flows_total", outcome="invalid") == 1
    total = sum(s.value for s in rig.samples("flow_auditor_flows_total"))
    assert total == rig.report.received == 876


def test_all_outcome_series_exist_at_zero_before_any_event() -> None:
    rig = Rig()
    assert {s.labels["outcome"]: s.value for s in rig.samples("flow_auditor_flows_total")} == dict.fromkeys(
        OUTCOMES, 0.0
    )


def test_example_needs_no_label_overflow() -> None:
    rig = Rig()
    rig.replay_example()
    assert {s.labels["label"]: s.value for s in rig.samples("flow_auditor_label_overflow_total")} == {
        "source": 0.0,
        "destination": 0.0,
        "port": 0.0,
        "verdict": 0.0,
        "reason": 0.0,
    }


# -- rule last seen ---------------------------------------------------------------------------------------


def test_rule_series_exist_for_every_rule_source_and_destination_at_zero() -> None:
    expected = {(str(r.index), s, d): 0.0 for r in MATRIX.rules for s in r.sources for d in r.destinations}
    assert len(expected) == 28
    assert rule_series(Rig()) == expected


def test_rule_last_seen_is_the_newest_flow_of_its_edges_on_the_example() -> None:
    rig = Rig()
    rig.replay_example()
    expected = {(str(r.index), s, d): 0.0 for r in MATRIX.rules for s in r.sources for d in r.destinations}
    for (source, destination, _port, _protocol, _cls), stats in rig.report.edges.items():
        if stats.rule:
            key = (str(stats.rule), source, destination)
            expected[key] = max(expected[key], stats.last)
    assert rule_series(rig) == expected
    unused = {r["rule"] for r in rig.report.report()["unused_rules"]}
    assert unused
    for r in MATRIX.rules:
        if r.index in unused:
            assert all(
                rule_series(rig)[(str(r.index), s, d)] == 0.0 for s in r.sources for d in r.destinations
            )


def test_traffic_dropped_by_the_network_sets_its_rule_last_seen_to_the_newest_flow() -> None:
    rig = Rig()
    dropped = {"verdict": Verdict.DROPPED, "event_type": EventType.DROP, "drop_reason": "POLICY_DENIED"}
    rig.connect(**dropped, time=1234.5)
    rig.connect(**dropped, time=1000.0)  # older, arriving late
    assert rule_last_seen(rig, 3, "worker", "postgresql") == 1234.5
    assert rule_last_seen(rig, 3, "scheduler", "postgresql") == 0.0


def test_a_flow_stamped_far_ahead_of_the_auditors_clock_counts_as_seen_at_the_clock() -> None:
    # A node clock a day ahead (or a time far from now) must not hold FlowAuditorExpectedEdgeSilent off
    # for a day: a flow more than the tolerance (60 s) ahead counts as seen at the auditor's clock; within
    # the tolerance a flow keeps its own time (clocks differ a little).
    now = [1_700_000_000.0]
    rig = Rig(clock=lambda: now[0])
    edge = (
        "flow_auditor_edge_last_seen_timestamp_seconds",
        edge_labels("worker", "postgresql", "5432", "TCP", "expected_allowed"),
    )

    def last_seen() -> tuple[float, float | None]:
        return rule_last_seen(rig, 3, "worker", "postgresql"), rig.value(edge[0], **edge[1])

    rig.connect(time=now[0] + 86_400)
    assert last_seen() == (now[0], now[0])
    rig.connect(time=now[0] + 30)
    assert last_seen() == (now[0] + 30, now[0] + 30)
    now[0] += 3600  # an hour later, the same node still a day ahead
    rig.connect(time=now[0] + 86_400)
    assert last_seen() == (now[0], now[0])
    rig.connect(time=now[0] - 10)  # older than what was seen: no change
    assert last_seen() == (now[0], now[0])


def test_unexpected_traffic_sets_no_rule_series() -> None:
    rig = Rig()
    rig.connect(source=DEBUG, destination=REDIS, destination_port=6379)
    assert set(rule_series(rig).values()) == {0.0}


# -- exposition -------------------------------------------------------------------------------------------


def test_build_info_carries_the_package_version() -> None:
    assert Rig().value("flow_auditor_build_info", version=auditor.__version__) == 1


def test_exposition_has_exactly_the_documented_metrics() -> None:
    rig = Rig()
    rig.replay_example()
    families = {f.name: f for f in text_string_to_metric_families(scrape(rig))}
    assert set(families) == METRIC_NAMES
    connections = families["flow_auditor_connections"]
    assert connections.type == "counter"
    sample = next(
        s
        for s in connections.samples
        if s.labels["source"] == "prometheus"
        and s.labels["destination"] == "postgresql"
        and s.labels["class"] == EXPECTED_DROPPED
    )
    assert sample.name == "flow_auditor_connections_total"
    assert sample.labels == {
        **edge_labels("prometheus", "postgresql", 9187, "TCP", EXPECTED_DROPPED),
        "verdict": "DROPPED",
    }
    assert sample.value == 7
    assert {s.labels["class"] for s in connections.samples} == set(CLASSES)


def test_one_registry_rejects_a_second_metrics_sink() -> None:
    registry = CollectorRegistry()
    MetricsSink(MATRIX, registry)
    with pytest.raises(DuplicateTimeseries):
        MetricsSink(MATRIX, registry)


def promtool_check_metrics(text: str) -> tuple[int, str, str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run scripts/install-test-deps.sh (make test does)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode, result.stdout, result.stderr


def test_promtool_finds_nothing_in_a_scrape_of_the_example() -> None:
    rig = Rig()
    rig.replay_example()
    rig.pipeline.feed(LostEvents("PERF_EVENT_RING_BUFFER", 2))
    rig.pipeline.feed(NodeStatus("NODE_CONNECTED", ("kind-worker", "kind-worker2")))
    rig.metrics.set_hubble_up(True)
    rig.metrics.set_last_flow_timestamp(rig.report.edges[next(iter(rig.report.edges))].last)
    assert promtool_check_metrics(scrape(rig)) == (0, "", "")


def test_promtool_finds_nothing_in_a_scrape_before_any_event() -> None:
    assert promtool_check_metrics(scrape(Rig())) == (0, "", "")
