"""A forwarded reply proves the original connection was delivered (DESIGN §5 rule 1), and connections
that nothing proves are shown as provisional edges.

The semantics spelled out here: conntrack passes a reply only when the request reached its destination,
so a FORWARDED reply is delivery evidence for the reversed 5-tuple — source = the reply's destination,
destination port = the reply's source port. Dedup merges it with the other evidence of the same
connection, so nothing counts twice, and a reply never becomes an edge of its own. A node-local auditor
(one per node, metrics summed over nodes) counts delivery only on the destination's side, never from a
reply. Single events are built from the Hubble field semantics (``tests/factory.py``); the real captures
are ``tests/data/hubble-samples/`` (provenance there).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from factory import POSTGRES, WORKER, flow, pod
from prometheus_client import CollectorRegistry

from auditor.classify import EXPECTED_ALLOWED, PROVISIONAL, REPLY, Auditor, Judgement
from auditor.matrix import load_matrix, parse_matrix
from auditor.model import Direction, Endpoint, EventType, Flow, ObservationPoint, Verdict
from auditor.pipeline import Pipeline
from auditor.sinks.metrics import MetricsSink
from auditor.sinks.report import ReportSink
from auditor.sources.files import FlowFile

MATRIX = load_matrix(Path(__file__).parent.parent / "examples" / "airflow" / "matrix.yaml")
SAMPLES = Path(__file__).parent / "data" / "hubble-samples" / "hubble-otel"
EGRESS, INGRESS = Direction.EGRESS, Direction.INGRESS
P = ObservationPoint

# One TCP connection worker (node a, 10.244.1.10:40000) → postgresql (node b, 10.244.2.20:5432), as the
# two nodes' Hubble servers report it: the request leaves the worker (egress, provisional), arrives at
# PostgreSQL (ingress policy verdict + trace to the endpoint), the SYN+ACK leaves PostgreSQL and reaches
# the worker (replies, seen on both nodes).
T0 = 1_800_000_000.0
REQUEST_EGRESS = flow(time=T0, traffic_direction=EGRESS, observation_point=P.TO_STACK, node_name="a")
REQUEST_INGRESS_VERDICT = flow(
    time=T0 + 0.001, event_type=EventType.POLICY_VERDICT, observation_point=0, node_name="b"
)
REQUEST_TO_ENDPOINT = flow(time=T0 + 0.002, node_name="b")


def reply(**overrides: object) -> Flow:
    """PostgreSQL's SYN+ACK to the worker (the reversed 5-tuple)."""
    fields: dict[str, object] = {
        "source": POSTGRES,
        "destination": WORKER,
        "source_ip": "10.244.2.20",
        "destination_ip": "10.244.1.10",
        "source_port": 5432,
        "destination_port": 40000,
        "tcp_flags": 18,
        "is_reply": True,
    }
    fields.update(overrides)
    return flow(**fields)


REPLY_LEAVES_SERVER = reply(
    time=T0 + 0.003, traffic_direction=EGRESS, observation_point=P.TO_STACK, node_name="b"
)
REPLY_AT_CLIENT = reply(
    time=T0 + 0.004, traffic_direction=INGRESS, observation_point=P.TO_ENDPOINT, node_name="a"
)
NODE_A = (REQUEST_EGRESS, REPLY_AT_CLIENT)
NODE_B = (REQUEST_INGRESS_VERDICT, REQUEST_TO_ENDPOINT, REPLY_LEAVES_SERVER)


def replay(flows: Iterable[Flow], *, node_local: bool = False) -> dict[str, object]:
    sink = ReportSink(MATRIX)
    pipeline = Pipeline(Auditor(MATRIX, node_local=node_local), [sink])
    for f in flows:
        pipeline.feed(f)
    pipeline.finish()
    return sink.report()


def test_forwarded_reply_proves_the_reversed_connection() -> None:
    a = Auditor(MATRIX)
    assert a.process(REQUEST_EGRESS) == PROVISIONAL
    j = a.process(REPLY_AT_CLIENT)
    assert isinstance(j, Judgement)
    assert j.edge == ("worker", "postgresql", 5432, "TCP", EXPECTED_ALLOWED)
    assert (j.reply, j.outcome, j.new_connection, j.rule) == (True, REPLY, True, 3)
    assert (j.source, j.destination) == (WORKER, POSTGRES)
    assert (j.source_ip, j.destination_ip) == ("10.244.1.10", "10.244.2.20")


def test_one_node_capture_proves_the_connection_and_uses_the_rule() -> None:
    report = replay(NODE_A)
    assert report["classes"] == {
        "expected_allowed": 1,
        "expected_dropped": 0,
        "unexpected_allowed": 0,
        "unexpected_dropped": 0,
    }
    assert report["flows"] == {
        "received": 2,
        "judged": 0,
        "reply": 1,
        "provisional": 1,
        "ignored": 0,
        "out_of_scope": 0,
        "invalid": 0,
    }
    assert report["provisional"] == []  # proven by the reply
    assert 3 not in [r["rule"] for r in report["unused_rules"]]
    (edge,) = report["edges"]
    assert edge["examples"] == [
        {
            "source_pod": "airflow/airflow-worker-0",
            "destination_pod": "airflow/airflow-postgresql-0",
            "node": "a",
        }
    ]


def test_all_evidence_of_one_connection_counts_once() -> None:
    events = sorted(NODE_A + NODE_B, key=lambda f: f.time)
    report = replay(events)
    assert report["classes"]["expected_allowed"] == 1
    (edge,) = report["edges"]
    assert (edge["connections"], edge["flows"]) == (1, 4)  # 2 ingress events + 2 replies
    assert report["flows"]["received"] == 5


def test_reply_first_then_request_evidence_is_one_connection() -> None:
    # Relay interleaves nodes: the reply may be reported before the request's ingress evidence.
    report = replay([REQUEST_EGRESS, REPLY_LEAVES_SERVER, REQUEST_INGRESS_VERDICT, REQUEST_TO_ENDPOINT])
    assert report["classes"]["expected_allowed"] == 1
    assert report["provisional"] == []


def test_node_local_auditor_never_counts_a_reply() -> None:
    report = replay(NODE_A, node_local=True)
    assert report["classes"]["expected_allowed"] == 0
    assert report["flows"]["reply"] == 1 and report["flows"]["provisional"] == 1
    assert report["provisional"] == []  # the destination's node judges it, not this one


def scrape_connections(registry: CollectorRegistry) -> float:
    total = 0.0
    for family in registry.collect():
        if family.name == "flow_auditor_connections":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


def test_cross_node_connection_summed_over_two_node_local_auditors_counts_once() -> None:
    totals = []
    for events in (NODE_A, NODE_B):
        registry = CollectorRegistry()
        pipeline = Pipeline(Auditor(MATRIX, node_local=True), [MetricsSink(MATRIX, registry)])
        for f in events:
            pipeline.feed(f)
        totals.append(scrape_connections(registry))
    assert totals == [0.0, 1.0]
    # The same events through cluster-wide auditors (one per node) would count it twice: the mode matters.
    cluster = []
    for events in (NODE_A, NODE_B):
        registry = CollectorRegistry()
        pipeline = Pipeline(Auditor(MATRIX), [MetricsSink(MATRIX, registry)])
        for f in events:
            pipeline.feed(f)
        cluster.append(scrape_connections(registry))
    assert sum(cluster) == 2.0


def test_dropped_reply_proves_nothing() -> None:
    report = replay([REQUEST_EGRESS, reply(verdict=Verdict.DROPPED, event_type=EventType.DROP)])
    assert report["classes"]["expected_allowed"] == 0
    assert [(p["source"], p["destination"], p["port"], p["connections"]) for p in report["provisional"]] == [
        ("worker", "postgresql", 5432, 1)
    ]


def test_unproven_connections_are_provisional_edges_with_examples() -> None:
    events = [
        flow(time=T0 + i, source_port=41000 + i, traffic_direction=EGRESS, observation_point=P.TO_STACK)
        for i in range(3)
    ]
    report = replay(events)
    assert report["flows"]["provisional"] == 3
    assert report["provisional"] == [
        {
            "source": "worker",
            "destination": "postgresql",
            "port": 5432,
            "protocol": "TCP",
            "connections": 3,
            "examples": [
                {
                    "source_pod": "airflow/airflow-worker-0",
                    "destination_pod": "airflow/airflow-postgresql-0",
                    "node": "kind-worker2",
                }
            ],
        }
    ]


def test_provisional_connection_expires_after_the_window_and_reaches_the_metrics() -> None:
    registry = CollectorRegistry()
    pipeline = Pipeline(Auditor(MATRIX, dedup_window=10), [MetricsSink(MATRIX, registry)])
    pipeline.feed(REQUEST_EGRESS)
    later = flow(time=T0 + 11, source=pod("airflow", "x", 1005, "component=worker"), source_port=1)
    pipeline.feed(later)  # flow time moves past the window: the first connection is unproven
    samples = {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect()
        if family.name == "flow_auditor_provisional_connections"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples == {
        (("destination", "postgresql"), ("port", "5432"), ("protocol", "TCP"), ("source", "worker")): 1.0
    }


def test_snat_between_nodes_is_named_as_the_likely_cause() -> None:
    # Pods' connections to PostgreSQL stay unproven while PostgreSQL receives connections on the same port
    # from the remote-node identity: what masquerading between nodes looks like.
    remote_node = Endpoint(identity=6, labels=("reserved:remote-node",))
    remote = flow(time=T0 + 0.5, source=remote_node, source_ip="10.0.0.2", source_port=50000)
    report = replay([REQUEST_EGRESS, remote])
    (edge,) = [e for e in report["edges"] if e["source"] == "remote-node"]
    assert edge["hint"] is not None and "source NAT" in edge["hint"]
    other = replay([remote])
    assert [e["hint"] for e in other["edges"]] == [None]


# -- real captures ----------------------------------------------------------------------------------

BOOKINFO_DNS = parse_matrix(
    """\
apiVersion: flow-auditor/v1alpha1
kind: CommunicationMatrix
metadata: {name: bookinfo-dns}
scope: {namespaces: [bookinfo]}
components:
  productpage: {namespace: bookinfo, labels: {app: productpage}}
  ratings: {namespace: bookinfo, labels: {app: ratings}}
  kube-dns: {namespace: kube-system, labels: {k8s-app: kube-dns}}
allow:
  - {from: [productpage, ratings], to: kube-dns, ports: ["53/UDP"]}
""",
    "bookinfo-dns.yaml",
)


def answered_queries(path: Path) -> set[tuple[str, str, int]]:
    """Ground truth from the capture itself: DNS queries (client ip, server ip, client port) that got a
    forwarded reply."""
    answered = set()
    for line in path.read_text().splitlines():
        f = json.loads(line)["flow"]
        udp = f.get("l4", {}).get("UDP")
        forwarded_reply = f.get("is_reply") and f["verdict"] == "FORWARDED" and f.get("Type") == "L3_L4"
        if forwarded_reply and udp and udp["source_port"] == 53:
            answered.add((f["IP"]["destination"], f["IP"]["source"], udp["destination_port"]))
    return answered


def test_real_one_node_capture_answered_dns_queries_are_delivered() -> None:
    path = SAMPLES / "basic-sample-400-udp-flows.json"
    sink = ReportSink(BOOKINFO_DNS)
    pipeline = Pipeline(Auditor(BOOKINFO_DNS), [sink])
    with FlowFile(str(path)) as f:
        pipeline.feed_blocks(str(path), f.blocks())
    pipeline.finish()
    report = sink.report()
    answered = answered_queries(path)
    assert len(answered) > 10
    assert report["classes"]["expected_allowed"] == len(answered)
    assert report["unused_rules"] == []
    assert report["classes"]["unexpected_allowed"] == 0
    assert all(p["destination"] == "kube-dns" for p in report["provisional"])  # unanswered queries only


def test_real_tcp_capture_completed_connections_are_delivered() -> None:
    path = SAMPLES / "basic-sample-400-tcp-flows.json"
    matrix = parse_matrix(
        """\
apiVersion: flow-auditor/v1alpha1
kind: CommunicationMatrix
metadata: {name: bookinfo}
components:
  productpage: {namespace: bookinfo, labels: {app: productpage}}
  details: {namespace: bookinfo, labels: {app: details}}
  reviews: {namespace: bookinfo, labels: {app: reviews}}
  ratings: {namespace: bookinfo, labels: {app: ratings}}
allow:
  - {from: productpage, to: [details, reviews], ports: [9080]}
  - {from: reviews, to: ratings, ports: [9080]}
""",
        "bookinfo.yaml",
    )
    cluster, node_local = ReportSink(matrix), ReportSink(matrix)
    for sink, local in ((cluster, False), (node_local, True)):
        pipeline = Pipeline(Auditor(matrix, node_local=local), [sink])
        with FlowFile(str(path)) as f:
            pipeline.feed_blocks(str(path), f.blocks())
        pipeline.finish()
    used = {e["rule"] for e in cluster.report()["edges"] if e["rule"]}
    assert used == {1, 2}
    # Counting the same capture node-locally never takes a reply as evidence: at most as many connections.
    assert (
        node_local.report()["classes"]["expected_allowed"] <= cluster.report()["classes"]["expected_allowed"]
    )
