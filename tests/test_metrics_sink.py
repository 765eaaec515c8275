"""The Prometheus metrics sink (DESIGN §6): values, bounded labels, reloads, stream health, exposition.

Every test drives the sink through the real pipeline (or calls the Sink methods the pipeline calls) and
reads the values back from a real ``CollectorRegistry``, the way Prometheus would scrape them.
"""

from __future__ import annotations

import shutil
import subprocess
from itertools import count
from pathlib import Path

import pytest
from factory import DEBUG, REDIS, SCHEDULER, WORKER, flow, pod
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries
from prometheus_client.samples import Sample

import auditor
from auditor.classify import (
    CLASSES,
    EXPECTED_ALLOWED,
    EXPECTED_DROPPED,
    OUTCOMES,
    UNEXPECTED_ALLOWED,
    UNEXPECTED_DROPPED,
    Auditor,
    Edge,
    Judgement,
)
from auditor.matrix import Matrix, load_matrix, parse_matrix
from auditor.model import EventType, LostEvents, NodeStatus, Verdict
from auditor.pipeline import Pipeline
from auditor.sinks.metrics import DEFAULT_MAX_NAMESPACES, DEFAULT_MAX_SERIES, MetricsSink, StreamStats
from auditor.sinks.report import ReportSink
from auditor.sources.files import FlowFile

EXAMPLE = Path(__file__).parent.parent / "examples" / "airflow"
MATRIX = load_matrix(EXAMPLE / "matrix.yaml")
MATRIX_TEXT = (EXAMPLE / "matrix.yaml").read_text()

METRIC_NAMES = {
    "flow_auditor_connections",
    "flow_auditor_dropped_connections",
    "flow_auditor_flows",
    "flow_auditor_provisional_connections",
    "flow_auditor_edge_last_seen_timestamp_seconds",
    "flow_auditor_rule_last_seen_timestamp_seconds",
    "flow_auditor_hubble_up",
    "flow_auditor_hubble_reconnects",
    "flow_auditor_hubble_lost_events",
    "flow_auditor_last_flow_timestamp_seconds",
    "flow_auditor_hubble_nodes",
    "flow_auditor_matrix_rules",
    "flow_auditor_matrix_reloads",
    "flow_auditor_label_overflow",
    "flow_auditor_series_overflow",
    "flow_auditor_build_info",
    "flow_auditor_hubble_resent_events_skipped",
    "flow_auditor_hubble_stream_gaps",
    "flow_auditor_hubble_clock_anomalies",
}

_ports = count(41000)


class Rig:
    """A metrics sink and a report sink fed by one pipeline."""

    def __init__(self, matrix: Matrix = MATRIX, **limits: int) -> None:
        self.registry = CollectorRegistry()
        self.metrics = MetricsSink(matrix, self.registry, **limits)
        self.report = ReportSink(matrix)
        self.auditor = Auditor(matrix)
        self.pipeline = Pipeline(self.auditor, [self.metrics, self.report])

    def replay_example(self) -> None:
        source = FlowFile(str(EXAMPLE / "flows.jsonl"))
        try:
            self.pipeline.feed_lines(source.name, source)
        finally:
            source.close()

    def connect(self, **overrides: object) -> None:
        """Feed one flow of a new connection (fresh source port unless given)."""
        self.pipeline.feed(flow(**{"source_port": next(_ports), **overrides}))

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def connections(self, source: str, destination: str, port: str, protocol: str, cls: str) -> float:
        """Sum of connections_total over verdicts for one edge's labels."""
        edge = {
            "source": source,
            "destination": destination,
            "port": port,
            "protocol": protocol,
            "class": cls,
        }
        return sum(
            s.value
            for s in self.samples("flow_auditor_connections_total")
            if {k: s.labels[k] for k in edge} == edge
        )

    def samples(self, name: str) -> list[Sample]:
        return [s for family in self.registry.collect() for s in family.samples if s.name == name]


def edge_labels(source: str, destination: str, port: int | None, protocol: str, cls: str) -> dict[str, str]:
    port_label = "" if port is None else str(port)
    return {
        "source": source,
        "destination": destination,
        "port": port_label,
        "protocol": protocol,
        "class": cls,
    }


def matrix_with(rules: str) -> Matrix:
    """The example matrix with its allow list replaced."""
    head = MATRIX_TEXT[: MATRIX_TEXT.index("allow:")]
    return parse_matrix(head + "allow:\n" + rules, "reloaded.yaml")


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
    rig.pipeline.feed_lines("broken.jsonl", [(1, b"{not json")])
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


def rule_series(rig: Rig) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["rule"], s.labels["from"], s.labels["to"]): s.value
        for s in rig.samples("flow_auditor_rule_last_seen_timestamp_seconds")
    }


def rule_last_seen(rig: Rig, rule: int, source: str, destination: str) -> float | None:
    labels = {"rule": str(rule), "from": source, "to": destination}
    return rig.registry.get_sample_value("flow_auditor_rule_last_seen_timestamp_seconds", labels)


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


def test_unexpected_traffic_sets_no_rule_series() -> None:
    rig = Rig()
    rig.connect(source=DEBUG, destination=REDIS, destination_port=6379)
    assert set(rule_series(rig).values()) == {0.0}


# -- bounded labels ---------------------------------------------------------------------------------------


def test_namespaces_beyond_the_cap_become_other_and_are_counted() -> None:
    rig = Rig(max_namespaces=2)
    for i, ns in enumerate(("team-a", "team-b", "team-c", "team-d")):
        source = pod(ns, "shell", 3000 + i, "run=shell")
        for _ in range(2):
            rig.connect(source=source, destination=REDIS, destination_port=6379)
    for ns in ("team-a", "team-b"):
        assert rig.connections(f"ns:{ns}", "redis", "6379", "TCP", UNEXPECTED_ALLOWED) == 2
    assert rig.connections("other", "redis", "6379", "TCP", UNEXPECTED_ALLOWED) == 4
    assert rig.value("flow_auditor_label_overflow_total", label="source") == 4
    assert rig.value("flow_auditor_label_overflow_total", label="destination") == 0
    # An admitted namespace keeps its own series on later traffic, also as a destination.
    rig.connect(source=SCHEDULER, destination=pod("team-a", "api", 3100, "run=api"), destination_port=80)
    assert rig.connections("scheduler", "ns:team-a", "80", "TCP", UNEXPECTED_ALLOWED) == 1


def test_destination_namespaces_share_the_cap_with_sources() -> None:
    rig = Rig(max_namespaces=1)
    rig.connect(source=pod("team-a", "shell", 3000, "run=shell"), destination=REDIS, destination_port=6379)
    rig.connect(source=WORKER, destination=pod("team-b", "api", 3001, "run=api"), destination_port=80)
    assert rig.connections("worker", "other", "80", "TCP", UNEXPECTED_ALLOWED) == 1
    assert rig.value("flow_auditor_label_overflow_total", label="destination") == 1


PORT_MATRIX = parse_matrix(
    """
apiVersion: flow-auditor/v1alpha1
kind: CommunicationMatrix
metadata: {name: ports}
components:
  worker:     {namespace: airflow, labels: {component: worker}}
  postgresql: {namespace: airflow, labels: {app.kubernetes.io/name: postgresql}}
allow:
  - {from: worker, to: postgresql, ports: ["5432/TCP", "30000-32767/TCP", "ICMP"]}
""",
    "ports.yaml",
)


@pytest.mark.parametrize(
    ("protocol", "port", "label", "cls"),
    [
        ("TCP", 5432, "5432", EXPECTED_ALLOWED),
        ("TCP", 31000, "30000-32767", EXPECTED_ALLOWED),
        ("TCP", 30000, "30000-32767", EXPECTED_ALLOWED),
        ("UDP", 5432, "5432", UNEXPECTED_ALLOWED),  # not a rule port for UDP: an "other" port
        ("TCP", 8080, "8080", UNEXPECTED_ALLOWED),
    ],
)
def test_port_label_names_the_rule_port_or_range(protocol: str, port: int, label: str, cls: str) -> None:
    rig = Rig(PORT_MATRIX)
    rig.connect(protocol=protocol, destination_port=port)
    assert rig.connections("worker", "postgresql", label, protocol, cls) == 1


def test_icmp_has_an_empty_port_label() -> None:
    rig = Rig(PORT_MATRIX)
    rig.connect(protocol="ICMPv4", destination_port=0, source_port=0, icmp_type=8, tcp_flags=0)
    assert rig.connections("worker", "postgresql", "", "ICMPv4", EXPECTED_ALLOWED) == 1


def test_other_ports_beyond_the_cap_become_other_and_are_counted() -> None:
    rig = Rig(PORT_MATRIX, max_other_ports=2)
    for port in (8080, 8081, 8082, 8083, 8080):
        rig.connect(destination_port=port)
    rig.connect(destination_port=5432)  # rule ports and ranges never use up the cap
    rig.connect(destination_port=31000)
    assert rig.connections("worker", "postgresql", "8080", "TCP", UNEXPECTED_ALLOWED) == 2
    assert rig.connections("worker", "postgresql", "8081", "TCP", UNEXPECTED_ALLOWED) == 1
    assert rig.connections("worker", "postgresql", "other", "TCP", UNEXPECTED_ALLOWED) == 2
    assert rig.connections("worker", "postgresql", "5432", "TCP", EXPECTED_ALLOWED) == 1
    assert rig.connections("worker", "postgresql", "30000-32767", "TCP", EXPECTED_ALLOWED) == 1
    assert rig.value("flow_auditor_label_overflow_total", label="port") == 2


def test_overflow_counts_every_judged_event_of_a_folded_edge() -> None:
    rig = Rig(PORT_MATRIX, max_other_ports=0)
    rig.connect(destination_port=9000, source_port=50000)
    rig.connect(destination_port=9000, source_port=50000)  # same connection again: not new, still judged
    assert rig.connections("worker", "postgresql", "other", "TCP", UNEXPECTED_ALLOWED) == 1
    assert rig.value("flow_auditor_label_overflow_total", label="port") == 2


# -- series caps per metric family --------------------------------------------------------------------


TEAMS = [f"team-{i}" for i in range(DEFAULT_MAX_NAMESPACES)]
WIDE = parse_matrix(
    MATRIX_TEXT.replace("namespaces: [airflow]", f"namespaces: [airflow, {', '.join(TEAMS)}]"), "wide.yaml"
)


def namespace_pods(n: int) -> list[object]:
    return [pod(team, "shell", 20000 + i, "run=shell") for i, team in enumerate(TEAMS[:n])]


def series_overflow(rig: Rig, metric: str) -> float | None:
    return rig.value("flow_auditor_series_overflow_total", metric=metric)


def test_crafted_flows_within_the_label_caps_cannot_exceed_the_series_cap() -> None:
    """Before: 50 x 50 namespaces x 5 ports within the label caps made 12,500 series per edge family."""
    rig = Rig(WIDE)
    pods = namespace_pods(DEFAULT_MAX_NAMESPACES)
    sent = 0
    for port in range(7001, 7006):
        for src in pods:
            for dst in pods:
                rig.connect(source=src, destination=dst, destination_port=port)
                sent += 1
    assert rig.value("flow_auditor_label_overflow_total", label="source") == 0  # within the label caps
    edges = rig.samples("flow_auditor_edge_last_seen_timestamp_seconds")
    connections = rig.samples("flow_auditor_connections_total")
    assert DEFAULT_MAX_SERIES <= len(edges) <= DEFAULT_MAX_SERIES + 4
    assert DEFAULT_MAX_SERIES <= len(connections) <= DEFAULT_MAX_SERIES + 4
    assert sum(s.value for s in connections) == sent  # nothing lost: the rest is in the 'other' edge
    beyond = sent - DEFAULT_MAX_SERIES
    assert rig.connections("other", "other", "other", "other", UNEXPECTED_ALLOWED) == beyond
    assert series_overflow(rig, "flow_auditor_connections_total") == beyond
    assert series_overflow(rig, "flow_auditor_edge_last_seen_timestamp_seconds") == beyond


def test_series_cap_counts_verdict_and_reason_pairs_per_family() -> None:
    rig = Rig(WIDE, max_series=3)
    shells = namespace_pods(2)
    dropped = {"verdict": Verdict.DROPPED, "event_type": EventType.DROP, "drop_reason": "POLICY_DENIED"}
    audit = {"verdict": Verdict.AUDIT, "event_type": EventType.POLICY_VERDICT}
    for overrides in (dropped, audit):
        for src in shells:
            rig.connect(source=src, destination=REDIS, destination_port=6379, **overrides)  # type: ignore[arg-type]
    # Both edges fit; of the four (edge, verdict) and (edge, reason) pairs, the fourth overflows into
    # the 'other' edge of its class, which now exists too.
    assert len(rig.samples("flow_auditor_edge_last_seen_timestamp_seconds")) == 3
    own = [s for s in rig.samples("flow_auditor_connections_total") if s.labels["source"] != "other"]
    assert len(own) == 3
    assert rig.connections("other", "other", "other", "other", UNEXPECTED_DROPPED) == 1
    assert series_overflow(rig, "flow_auditor_connections_total") == 1
    assert series_overflow(rig, "flow_auditor_dropped_connections_total") == 1
    assert series_overflow(rig, "flow_auditor_edge_last_seen_timestamp_seconds") == 0
    # A new edge beyond the cap: each judged event counts as overflow, the 'other' edge's last seen moves.
    rig.connect(source=shells[0], destination=REDIS, destination_port=6380)  # the third edge fits
    rig.connect(source=shells[0], destination=REDIS, destination_port=6381, time=1_900_000_000.0)
    rig.connect(source=shells[0], destination=REDIS, destination_port=6381, time=1_900_000_000.0)
    edges = rig.samples("flow_auditor_edge_last_seen_timestamp_seconds")
    assert len(edges) == 5  # 3 + the 'other' edges of both classes
    assert series_overflow(rig, "flow_auditor_edge_last_seen_timestamp_seconds") == 2
    other = edge_labels("other", "other", None, "other", UNEXPECTED_ALLOWED) | {"port": "other"}
    assert rig.value("flow_auditor_edge_last_seen_timestamp_seconds", **other) == 1_900_000_000.0


def test_unknown_verdict_is_folded_into_other() -> None:
    rig = Rig()
    edge = Edge("worker", "postgresql", 5432, "TCP", EXPECTED_ALLOWED)
    rig.metrics.on_judgement(Judgement(flow(), edge, "42", 3, True))
    assert rig.value("flow_auditor_connections_total", **edge_labels(*edge), verdict="other") == 1
    assert rig.value("flow_auditor_label_overflow_total", label="verdict") == 1


# -- drop reasons -----------------------------------------------------------------------------------------


def test_drop_reason_labels_dropped_connections_and_audit_without_reason_uses_the_verdict() -> None:
    rig = Rig()
    rig.connect(verdict=Verdict.DROPPED, event_type=EventType.DROP, drop_reason="POLICY_DENIED")
    rig.connect(verdict=Verdict.DROPPED, event_type=EventType.DROP, drop_reason="POLICY_DENIED")
    rig.connect(verdict=Verdict.AUDIT, event_type=EventType.POLICY_VERDICT)
    labels = edge_labels("worker", "postgresql", 5432, "TCP", EXPECTED_DROPPED)
    assert rig.value("flow_auditor_dropped_connections_total", **labels, reason="POLICY_DENIED") == 2
    assert rig.value("flow_auditor_dropped_connections_total", **labels, reason="AUDIT") == 1
    assert rig.value("flow_auditor_connections_total", **labels, verdict="DROPPED") == 2
    assert rig.value("flow_auditor_connections_total", **labels, verdict="AUDIT") == 1


def test_delivered_connections_have_no_drop_reason_series() -> None:
    rig = Rig()
    rig.connect()
    assert rig.samples("flow_auditor_dropped_connections_total") == []
    assert rig.connections("worker", "postgresql", "5432", "TCP", EXPECTED_ALLOWED) == 1


def test_repeated_events_of_one_connection_count_once_but_move_last_seen() -> None:
    rig = Rig()
    rig.connect(source_port=45000, time=100.0)
    rig.connect(source_port=45000, time=101.0)
    rig.connect(source_port=45000, time=100.5)  # an older event arriving late does not go back in time
    labels = edge_labels("worker", "postgresql", 5432, "TCP", EXPECTED_ALLOWED)
    assert rig.value("flow_auditor_connections_total", **labels, verdict="FORWARDED") == 1
    assert rig.value("flow_auditor_edge_last_seen_timestamp_seconds", **labels) == 101.0
    assert rig.value("flow_auditor_flows_total", outcome="judged") == 3


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
    rig.pipeline.feed_lines("lost.jsonl", [(1, line)])
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


def test_build_info_carries_the_package_version() -> None:
    assert Rig().value("flow_auditor_build_info", version=auditor.__version__) == 1


# -- exposition -------------------------------------------------------------------------------------------


def scrape(rig: Rig) -> str:
    return generate_latest(rig.registry).decode()


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


def test_provisional_series_are_capped_per_family() -> None:
    from auditor.classify import Unproven

    rig = Rig(max_series=5)
    for i in range(20):
        rig.metrics.on_unproven(Unproven(flow(), "worker", "postgresql", 30000 + i, "TCP"))
    text = scrape(rig)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = [
        s for s in families["flow_auditor_provisional_connections"].samples if s.name.endswith("_total")
    ]
    assert len(samples) <= 6  # five series, then one "other"
    assert sum(s.value for s in samples) == 20
    overflow = {
        s.labels["metric"]: s.value
        for s in families["flow_auditor_series_overflow"].samples
        if s.name.endswith("_total")
    }
    assert overflow["flow_auditor_provisional_connections_total"] > 0
