"""The metrics sink's bounds (DESIGN §6): namespaces and ports beyond their caps become ``other`` and are
counted, crafted flows within the label caps cannot exceed the series cap, series caps per family (verdict and
reason pairs, provisional connections), unknown verdicts and drop reasons folded, and one connection counted
once however many of its events arrive. Cluster data is attacker-controlled: no label grows without bound.

Every test drives the sink through the real pipeline (or calls the Sink methods the pipeline calls) and
reads the values back from a real ``CollectorRegistry``."""

import pytest
from factory import REDIS, SCHEDULER, WORKER, flow, pod
from metrics_rig import MATRIX_TEXT, Rig, edge_labels, scrape
from prometheus_client.parser import text_string_to_metric_families

from auditor.classify import (
    EXPECTED_ALLOWED,
    EXPECTED_DROPPED,
    UNEXPECTED_ALLOWED,
    UNEXPECTED_DROPPED,
    Edge,
    Judgement,
)
from auditor.matrix import parse_matrix
from auditor.model import EventType, Verdict
from auditor.sinks.metrics import DEFAULT_MAX_NAMESPACES, DEFAULT_MAX_SERIES

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
