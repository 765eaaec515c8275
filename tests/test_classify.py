"""Classification, outcome accounting and connection dedup (DESIGN §5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from factory import DEBUG, POSTGRES, REDIS, SCHEDULER, WORKER, WORLD, flow, judged, pod

from auditor.classify import (
    EXPECTED_ALLOWED,
    EXPECTED_DROPPED,
    OUT_OF_SCOPE,
    PROVISIONAL,
    REPLY,
    UNEXPECTED_ALLOWED,
    UNEXPECTED_DROPPED,
    Auditor,
    DedupTable,
    Judgement,
    PendingTable,
    Unproven,
)
from auditor.matrix import load_matrix, parse_matrix
from auditor.model import Direction, Endpoint, EventType, ObservationPoint, Verdict
from auditor.pipeline import Pipeline
from auditor.sinks.report import ReportSink

MATRIX = load_matrix(Path(__file__).parent.parent / "examples" / "airflow" / "matrix.yaml")


def test_four_classes() -> None:
    a = Auditor(MATRIX)
    assert judged(a).edge == ("worker", "postgresql", 5432, "TCP", EXPECTED_ALLOWED)
    dropped = judged(
        a, verdict=Verdict.DROPPED, event_type=EventType.DROP, drop_reason="POLICY_DENIED", source_port=40001
    )
    assert dropped.edge == ("worker", "postgresql", 5432, "TCP", EXPECTED_DROPPED)
    assert judged(a, source=DEBUG, destination=REDIS, destination_port=6379).edge == (
        "ns:default",
        "redis",
        6379,
        "TCP",
        UNEXPECTED_ALLOWED,
    )
    attack = judged(a, source=DEBUG, verdict=Verdict.DROPPED, event_type=EventType.DROP)
    assert attack.edge == ("ns:default", "postgresql", 5432, "TCP", UNEXPECTED_DROPPED)
    assert attack.rule == 0 and dropped.rule == 3


def test_wrong_port_is_unexpected() -> None:
    j = judged(Auditor(MATRIX), destination_port=5433)
    assert j.edge.cls == UNEXPECTED_ALLOWED and j.rule == 0


def test_attacker_egress_forwarded_is_provisional_not_allowed() -> None:
    a = Auditor(MATRIX)
    egress = a.process(
        flow(source=DEBUG, traffic_direction=Direction.EGRESS, observation_point=ObservationPoint.TO_OVERLAY)
    )
    assert egress == PROVISIONAL
    drop = judged(a, source=DEBUG, verdict=Verdict.DROPPED, event_type=EventType.DROP)
    assert drop.cls == UNEXPECTED_DROPPED


def test_out_of_scope_when_neither_end_is_in_scope() -> None:
    a = Auditor(MATRIX)
    kube = pod("kube-system", "coredns-1", 77, "k8s-app=kube-dns")
    assert a.process(flow(source=DEBUG, destination=kube, destination_port=53)) == OUT_OF_SCOPE
    assert a.process(flow(source=WORLD, destination=kube)) == OUT_OF_SCOPE
    assert isinstance(a.process(flow(source=WORLD, destination=POSTGRES)), Judgement)


def test_endpoint_known_only_by_labels_gets_its_namespace() -> None:
    # Hubble sometimes sends identity + labels but no namespace (remote endpoints).
    remote_worker = Endpoint(identity=WORKER.identity, labels=WORKER.labels, namespace="airflow")
    j = judged(Auditor(MATRIX), source=remote_worker)
    assert j.edge.source == "worker"


def test_reply_is_never_an_edge_of_its_own_in_node_local_mode() -> None:
    assert Auditor(MATRIX, node_local=True).process(flow(is_reply=True)) == REPLY


def test_icmp_edges_have_no_port_and_match_by_protocol() -> None:
    m = parse_matrix("""\
apiVersion: flow-auditor/v1alpha1
kind: CommunicationMatrix
metadata: {name: icmp}
components:
  worker: {namespace: airflow, labels: {component: worker}}
  postgresql: {namespace: airflow, labels: {app.kubernetes.io/name: postgresql}}
allow:
  - {from: worker, to: postgresql, ports: [ICMP]}
""")
    j = judged(Auditor(m), protocol="ICMPv4", icmp_type=8, source_port=0, destination_port=0)
    assert j.edge == ("worker", "postgresql", None, "ICMPv4", EXPECTED_ALLOWED)


def test_dedup_same_five_tuple_and_class_within_window() -> None:
    a = Auditor(MATRIX, dedup_window=30)
    first = judged(a, time=100.0, event_type=EventType.POLICY_VERDICT, observation_point=0)
    again = judged(a, time=100.001)  # trace to endpoint of the same connection
    retransmit = judged(a, time=129.0)
    later = judged(a, time=131.0)
    other_port = judged(a, time=100.5, source_port=40002)
    assert [
        first.new_connection,
        again.new_connection,
        retransmit.new_connection,
        later.new_connection,
        other_port.new_connection,
    ] == [True, False, False, True, True]


def test_audit_then_delivery_counts_once_per_class() -> None:
    a = Auditor(MATRIX)
    audit = judged(a, verdict=Verdict.AUDIT, event_type=EventType.POLICY_VERDICT, observation_point=0)
    delivered = judged(a, time=1_800_000_000.001)
    assert (audit.cls, audit.verdict, audit.new_connection) == (EXPECTED_DROPPED, "AUDIT", True)
    assert (delivered.cls, delivered.new_connection) == (EXPECTED_ALLOWED, True)


def test_dedup_table_is_bounded_and_expires() -> None:
    d = DedupTable(window=10, max_entries=100)
    for i in range(1000):
        d.seen(i, float(i) / 1000)
    assert len(d) == 100 and d.queued == 100
    d.seen(-1, 50.0)
    assert len(d) == 1 and d.queued == 1
    assert d.seen(-1, 55.0) and not d.seen(-1, 61.0)
    assert len(d) == 1 and d.queued == 1  # its stale entry left the queue as the window passed
    late = DedupTable(window=10)
    late.seen(1, 100.0)
    assert not late.seen(2, 85.0) and not late.seen(2, 96.0)  # late times: no expiry runs
    assert len(late) == 2 and late.queued == 3  # key 2's first entry waits in the queue until it expires


def connection(t: float) -> Callable[[], Unproven]:
    """A provisional connection first seen at ``t``, as the pending table builds it."""
    return lambda: Unproven(flow(time=t), "worker", "postgresql", 5432, "TCP")


def test_a_proof_after_the_window_comes_too_late_whether_or_not_other_traffic_passed() -> None:
    # Proof 40 s after the provisional event (window 30): unproven, as when an unrelated flow at 35 s
    # had expired it first. Within the window it is proven.
    late, busy, timely = PendingTable(window=30), PendingTable(window=30), PendingTable(window=30)
    for p in (late, busy, timely):
        p.hold(7, 0.0, connection(0.0))
    busy.advance(35.0)
    late.resolve(7, 40.0)
    busy.resolve(7, 40.0)
    timely.resolve(7, 29.0)
    assert [u.flow.time for u in late.expired] == [u.flow.time for u in busy.expired] == [0.0]
    assert len(late) == len(busy) == len(timely) == 0 and timely.expired == []


@pytest.mark.parametrize(
    ("times", "connections"),
    [
        ((0, 60, 120), 3),
        ((120, 60, 0), 3),  # files given late first
        ((100, 80, 115), 2),  # 80 began the connection: 115 is 35 s after it, a new one
        ((100, 75, 80, 110), 2),
        ((100, 50, 115), 2),  # 50 is its own connection; 115 belongs to 100's
        ((0, 10, 20, 29), 1),
    ],
)
def test_dedup_counts_events_that_arrive_out_of_time_order_as_in_time_order(
    times: tuple[int, ...], connections: int
) -> None:
    # The window runs from a connection's first event in time (30 s), whatever order events arrive in.
    shuffled, ordered = DedupTable(window=30), DedupTable(window=30)
    assert sum(not shuffled.seen(7, float(t)) for t in times) == connections
    assert sum(not ordered.seen(7, float(t)) for t in sorted(times)) == connections


def test_a_provisional_event_stamped_long_before_its_proof_is_not_proven_by_it() -> None:
    # The proof (100 s) arrived first; provisional evidence stamped 50 s earlier is outside its window,
    # 20 s earlier within it.
    p = PendingTable(window=30)
    p.resolve(7, 100.0)
    p.hold(7, 80.0, connection(80.0))
    assert 7 not in p
    p.hold(7, 50.0, connection(50.0))
    assert 7 in p


def test_a_stale_queue_entry_does_not_forget_a_key_seen_again_since() -> None:
    # Late times leave an entry behind a newer one in the queue: key 7 first at 95 (behind 100), again at
    # 106 (past its window: a new connection). When the 95 entry leaves, 7 was seen at 106: still known.
    d = DedupTable(window=10)
    d.seen(1, 100.0)
    assert not d.seen(7, 95.0)
    assert not d.seen(7, 106.0)
    d.seen(2, 111.0)  # the queue's 100 and 95 entries leave
    assert d.seen(7, 112.0)  # within 10 s of 106: the same connection


def test_a_connection_held_again_after_its_proof_waits_its_own_window() -> None:
    # Held at 100, proven at 101 (it leaves), held again at 112 (the proof is past the window): the
    # queue's entry of 100 must not expire the new one (unproven at once, although proof follows at 113).
    p = PendingTable(window=10)
    p.hold(7, 100.0, connection(100.0))
    p.resolve(7, 101.0)
    p.hold(7, 112.0, connection(112.0))
    assert 7 in p and p.expired == []
    p.resolve(7, 113.0)
    assert len(p) == 0 and p.expired == []


def test_a_pod_inside_a_components_cidr_is_lateral_movement_not_that_component() -> None:
    # An office network reaches PostgreSQL through a VPN; the pod network lies inside the office's
    # 10.0.0.0/8. A compromised pod reaching PostgreSQL is not "office": it is unexpected.
    m = parse_matrix(
        """\
apiVersion: flow-auditor/v1alpha1
kind: CommunicationMatrix
metadata: {name: vpn}
components:
  postgresql: {namespace: airflow, labels: {app.kubernetes.io/name: postgresql}}
  office: {cidrs: [10.0.0.0/8]}
allow:
  - {from: office, to: postgresql, ports: ["5432/TCP"]}
""",
        "vpn.yaml",
    )
    evil = pod("airflow", "evil-0", 3003, "app=evil")
    j = judged(Auditor(m), source=evil, source_ip="10.244.1.30", destination=POSTGRES)
    assert (j.edge.source, j.edge.cls) == ("ns:airflow", UNEXPECTED_ALLOWED)
    office = Endpoint(identity=(1 << 24) + 1, labels=("cidr:10.20.0.0/16", "reserved:world"))
    j = judged(Auditor(m), source=office, source_ip="10.20.0.7", destination=POSTGRES)
    assert (j.edge.source, j.edge.cls) == ("office", EXPECTED_ALLOWED)


def test_reused_identity_with_new_labels_is_resolved_again() -> None:
    a = Auditor(MATRIX)
    assert judged(a, source=SCHEDULER).edge.source == "scheduler"
    impostor = Endpoint(identity=SCHEDULER.identity, namespace="default", labels=DEBUG.labels, pod_name="x")
    assert judged(a, source=impostor, source_port=1).edge.source == "ns:default"


def test_set_matrix_swaps_rules_and_keeps_dedup() -> None:
    a = Auditor(MATRIX)
    assert judged(a).cls == EXPECTED_ALLOWED
    strict = parse_matrix(MATRIX_TEXT_WITHOUT_POSTGRES, "strict.yaml")
    a.set_matrix(strict)
    again = judged(a, time=1_800_000_000.5)
    assert again.cls == UNEXPECTED_ALLOWED and again.new_connection  # new class → new connection
    assert not judged(a, time=1_800_000_001.0).new_connection


MATRIX_TEXT_WITHOUT_POSTGRES = """\
apiVersion: flow-auditor/v1alpha1
kind: CommunicationMatrix
metadata: {name: strict}
scope: {namespaces: [airflow]}
components:
  worker: {namespace: airflow, labels: {component: worker}}
  postgresql: {namespace: airflow, labels: {app.kubernetes.io/name: postgresql}}
allow: []
"""


def test_every_record_lands_in_exactly_one_outcome() -> None:
    sink = ReportSink(MATRIX)
    p = Pipeline(Auditor(MATRIX), [sink])
    flows = [
        flow(),
        flow(is_reply=True),
        flow(traffic_direction=Direction.EGRESS, observation_point=4),
        flow(traffic_direction=0, observation_point=4),
        flow(source=DEBUG, destination=DEBUG),
        flow(time=1e9 + 1),
    ]
    for f in flows:
        p.feed(f)
    p.invalid("x.jsonl:7", "garbage")
    report = sink.report()
    counts = report["flows"]
    assert counts == {
        "received": 7,
        "judged": 2,
        "reply": 1,
        "provisional": 1,
        "ignored": 1,
        "out_of_scope": 1,
        "invalid": 1,
    }
    assert counts["received"] == sum(v for k, v in counts.items() if k != "received")
    assert report["invalid_samples"] == [{"file": "x.jsonl", "line": 7, "error": "garbage"}]


API_MATRIX = """\
apiVersion: flow-auditor/v1alpha1
kind: CommunicationMatrix
metadata: {name: api}
scope: {namespaces: [airflow]}
components:
  worker: {namespace: airflow, labels: {component: worker}}
  control-plane: {entities: [host]}
  outside: {entities: [world]}
allow:
  - {from: worker, to: control-plane, ports: [6443]}
  - {from: worker, to: outside, ports: [443]}
"""


def test_audit_towards_the_api_server_on_a_control_plane_host_is_expected_dropped() -> None:
    # kind/kubeadm: the API server runs on a node, whose host identity (1) also carries
    # reserved:kube-apiserver. Cilium's toEntities [host] selects it, so the matrix's host rule applies.
    a = Auditor(parse_matrix(API_MATRIX, "api.yaml"))
    control_plane = Endpoint(identity=1, labels=("reserved:host", "reserved:kube-apiserver"))
    audit = judged(
        a,
        verdict=Verdict.AUDIT,
        event_type=EventType.POLICY_VERDICT,
        traffic_direction=Direction.EGRESS,
        observation_point=0,
        destination=control_plane,
        destination_port=6443,
    )
    assert audit.edge == ("worker", "control-plane", 6443, "TCP", EXPECTED_DROPPED)


def test_api_server_outside_the_cluster_is_world() -> None:
    a = Auditor(parse_matrix(API_MATRIX, "api.yaml"))
    api = Endpoint(
        identity=16777300, labels=("cidr:34.1.2.3/32", "reserved:kube-apiserver", "reserved:world")
    )
    j = judged(
        a,
        traffic_direction=Direction.EGRESS,
        observation_point=ObservationPoint.TO_STACK,
        destination=api,
        destination_port=443,
    )
    assert j.edge == ("worker", "outside", 443, "TCP", EXPECTED_ALLOWED)
