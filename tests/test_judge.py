"""Each judging rule of DESIGN §5, table-driven on single events, cluster-wide and node-local."""

from __future__ import annotations

import pytest
from factory import HOST, POSTGRES, WORLD, flow

from auditor import judge as j
from auditor.model import (
    TCP_ACK,
    TCP_SYN,
    Direction,
    Endpoint,
    EventType,
    FlowType,
    ObservationPoint,
    Protocol,
    TraceReason,
    Verdict,
)

INGRESS, EGRESS, NODIR = Direction.INGRESS, Direction.EGRESS, Direction.UNKNOWN
TRACE, POLICY, DROP, L7 = EventType.TRACE, EventType.POLICY_VERDICT, EventType.DROP, EventType.ACCESS_LOG
P = ObservationPoint
UNREACHABLE = {
    "protocol": Protocol.ICMPV4,
    "icmp_type": 3,
    "source_port": 0,
    "destination_port": 0,
    "tcp_flags": 0,
}

REPLY_CASES = [
    # rule 1: a reply is never a connection of its own. Seen by an auditor of the whole cluster, a forwarded
    # L3/L4 reply proves delivery of the original connection (conntrack passes a reply only when the request
    # reached its destination); seen by a node-local auditor it proves nothing (delivery is counted on the
    # destination's side only). Columns: overrides, cluster-wide code, node-local code.
    ("forwarded reply at the client's endpoint", {"is_reply": True}, j.REPLY_DELIVERED, j.REPLY),
    (
        "forwarded reply leaving the server",
        {"is_reply": True, "traffic_direction": EGRESS, "observation_point": P.TO_STACK},
        j.REPLY_DELIVERED,
        j.REPLY,
    ),
    (
        "forwarded reply on an overlay hop without direction",
        {"is_reply": True, "traffic_direction": NODIR, "observation_point": P.TO_OVERLAY},
        j.REPLY_DELIVERED,
        j.REPLY,
    ),
    (
        "unknown reply bit, TCP SYN-ACK",
        {"is_reply": None, "tcp_flags": TCP_SYN | TCP_ACK},
        j.REPLY_DELIVERED,
        j.REPLY,
    ),
    ("dropped reply proves nothing", {"is_reply": True, "verdict": Verdict.DROPPED}, j.REPLY, j.REPLY),
    ("audited reply proves nothing", {"is_reply": True, "verdict": Verdict.AUDIT}, j.REPLY, j.REPLY),
    (
        "reply redirected to a proxy proves nothing",
        {"is_reply": True, "verdict": Verdict.REDIRECTED},
        j.REPLY,
        j.REPLY,
    ),
    (
        "L7 response record proves nothing",
        {"is_reply": True, "flow_type": FlowType.L7, "event_type": L7},
        j.REPLY,
        j.REPLY,
    ),
    ("socket-level reply proves nothing", {"is_reply": True, "event_type": 7}, j.REPLY, j.REPLY),
    (
        "L7 response without an event type (field mask) proves nothing",
        {"is_reply": True, "flow_type": FlowType.L7, "event_type": EventType.UNSPEC},
        j.REPLY,
        j.REPLY,
    ),
    ("reply without L4 proves nothing", {"is_reply": True, "protocol": ""}, j.REPLY, j.REPLY),
    (
        "ICMP echo reply",
        {"is_reply": True, "protocol": "ICMPv4", "icmp_type": 0, "destination_port": 0},
        j.REPLY_DELIVERED,
        j.REPLY,
    ),
    (
        "ICMPv6 echo reply",
        {"is_reply": True, "protocol": "ICMPv6", "icmp_type": 129, "destination_port": 0},
        j.REPLY_DELIVERED,
        j.REPLY,
    ),
    (
        "ICMP message answering no request",
        {"is_reply": True, "protocol": "ICMPv4", "icmp_type": 3, "destination_port": 0},
        j.REPLY,
        j.REPLY,
    ),
]


@pytest.mark.parametrize(
    ("overrides", "cluster", "node_local"), [c[1:] for c in REPLY_CASES], ids=[c[0] for c in REPLY_CASES]
)
def test_reply_rule_in_both_modes(overrides: dict[str, object], cluster: int, node_local: int) -> None:
    assert j.judge(flow(**overrides)) == cluster
    assert j.judge(flow(**overrides), node_local=True) == node_local


CASES = [
    ("unknown reply bit, TCP SYN", {"is_reply": None, "tcp_flags": TCP_SYN}, j.DELIVERED),
    # rule 2: drops and audits are final on either side
    ("drop at ingress", {"verdict": Verdict.DROPPED, "event_type": DROP}, j.DROPPED),
    (
        "drop at egress",
        {"verdict": Verdict.DROPPED, "event_type": DROP, "traffic_direction": EGRESS, "observation_point": 0},
        j.DROPPED,
    ),
    ("audit", {"verdict": Verdict.AUDIT, "event_type": POLICY, "observation_point": 0}, j.DROPPED),
    ("error counts as dropped", {"verdict": Verdict.ERROR}, j.DROPPED),
    (
        "L7 drop is a drop",
        {"verdict": Verdict.DROPPED, "flow_type": FlowType.L7, "event_type": L7},
        j.DROPPED,
    ),
    ("drop without L4 cannot be placed", {"verdict": Verdict.DROPPED, "protocol": ""}, j.IGNORED),
    # rule 3: delivery evidence
    ("trace to endpoint", {}, j.DELIVERED),
    ("ingress policy verdict", {"event_type": POLICY, "observation_point": 0}, j.DELIVERED),
    (
        "ingress redirect to proxy",
        {"verdict": Verdict.REDIRECTED, "observation_point": P.TO_PROXY},
        j.DELIVERED,
    ),
    (
        "egress policy verdict towards a pod is provisional",
        {"event_type": POLICY, "traffic_direction": EGRESS, "observation_point": 0},
        j.PROVISIONAL,
    ),
    (
        "egress trace towards a pod is provisional",
        {"traffic_direction": EGRESS, "observation_point": P.TO_OVERLAY},
        j.PROVISIONAL,
    ),
    (
        "egress trace towards the world is delivered",
        {"traffic_direction": EGRESS, "observation_point": P.TO_STACK, "destination": WORLD},
        j.DELIVERED,
    ),
    (
        "egress policy verdict towards the host is delivered",
        {"event_type": POLICY, "traffic_direction": EGRESS, "observation_point": 0, "destination": HOST},
        j.DELIVERED,
    ),
    (
        "egress to a CIDR identity is delivered",
        {
            "traffic_direction": EGRESS,
            "observation_point": P.TO_STACK,
            "destination": Endpoint(identity=16777217, labels=("cidr:140.82.112.0/20", "reserved:world")),
        },
        j.DELIVERED,
    ),
    (
        "egress to kube-apiserver is delivered",
        {"traffic_direction": EGRESS, "observation_point": P.TO_STACK, "destination": Endpoint(identity=7)},
        j.DELIVERED,
    ),
    (
        "egress to another cluster is delivered",
        {
            "traffic_direction": EGRESS,
            "observation_point": P.TO_OVERLAY,
            "source": Endpoint(identity=300, cluster_name="east"),
            "destination": Endpoint(identity=400, cluster_name="west"),
        },
        j.DELIVERED,
    ),
    (
        "ingress trace before the endpoint is provisional",
        {"observation_point": P.FROM_OVERLAY},
        j.PROVISIONAL,
    ),
    # rule 4: no usable direction, L7 records, other verdicts and events
    (
        "overlay hop without direction",
        {"traffic_direction": NODIR, "observation_point": P.TO_OVERLAY},
        j.IGNORED,
    ),
    ("L7 record of a judged connection", {"flow_type": FlowType.L7, "event_type": L7}, j.IGNORED),
    (
        "L7 record without an event type (field mask)",
        {"flow_type": FlowType.L7, "event_type": EventType.UNSPEC},
        j.IGNORED,
    ),
    ("socket trace", {"verdict": Verdict.TRACED, "event_type": 7}, j.IGNORED),
    ("translated", {"verdict": Verdict.TRANSLATED}, j.IGNORED),
    ("unknown verdict number", {"verdict": 42}, j.IGNORED),
    ("debug capture", {"event_type": EventType.CAPTURE, "observation_point": 0}, j.IGNORED),
    ("no L4", {"protocol": ""}, j.IGNORED),
    # rule 4, checked first: an ICMP error that conntrack tracked as RELATED answers other traffic
    ("related destination unreachable", {**UNREACHABLE, "trace_reason": TraceReason.RELATED}, j.IGNORED),
    (
        "related time exceeded, dropped",
        {**UNREACHABLE, "icmp_type": 11, "trace_reason": TraceReason.RELATED, "verdict": Verdict.DROPPED},
        j.IGNORED,
    ),
    (
        "related ICMPv6 packet too big",
        {**UNREACHABLE, "protocol": Protocol.ICMPV6, "icmp_type": 2, "trace_reason": TraceReason.RELATED},
        j.IGNORED,
    ),
    ("destination unreachable, new", {**UNREACHABLE, "trace_reason": TraceReason.NEW}, j.DELIVERED),
    ("destination unreachable, reason unknown (older Hubble)", UNREACHABLE, j.DELIVERED),
    (
        "related echo request is no error",
        {**UNREACHABLE, "icmp_type": 8, "trace_reason": TraceReason.RELATED},
        j.DELIVERED,
    ),
    (
        "related TCP is judged",
        {"trace_reason": TraceReason.RELATED, "icmp_type": 3},
        j.DELIVERED,
    ),
]


@pytest.mark.parametrize("node_local", [False, True], ids=["cluster", "node-local"])
@pytest.mark.parametrize(("overrides", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_judge_rules(overrides: dict[str, object], expected: int, node_local: bool) -> None:
    """Rules 2-4 are the same whether the auditor sees the cluster or one node."""
    assert j.judge(flow(**overrides), node_local=node_local) == expected


def test_pod_destination_with_reserved_looking_identity_is_not_external() -> None:
    assert not j.is_external(POSTGRES, WORLD)
    assert j.is_external(Endpoint(labels=("reserved:world-ipv6",)), POSTGRES)


# Egress-side evidence proves delivery exactly when the destination is outside Cilium's endpoints. Identity
# numbers: Cilium's reserved identities; 2**24 and above are CIDR/FQDN identities of the local node's
# selector cache; below are cluster-wide identities of endpoints (pods).
EXTERNAL_CASES = [
    ("host", Endpoint(identity=1), True),
    ("world", Endpoint(identity=2), True),
    ("unmanaged", Endpoint(identity=3), True),
    ("health is an endpoint", Endpoint(identity=4), False),
    ("init is an endpoint", Endpoint(identity=5), False),
    ("remote-node", Endpoint(identity=6), True),
    ("kube-apiserver", Endpoint(identity=7), True),
    ("ingress is an endpoint", Endpoint(identity=8), False),
    ("world-ipv4", Endpoint(identity=9), True),
    ("world-ipv6", Endpoint(identity=10), True),
    ("last cluster identity", Endpoint(identity=(1 << 24) - 1), False),
    ("first local CIDR identity", Endpoint(identity=1 << 24), True),
    ("pod identity", POSTGRES, False),
    ("labels only: unmanaged", Endpoint(labels=("reserved:unmanaged",)), True),
    ("labels only: remote-node", Endpoint(labels=("reserved:remote-node",)), True),
    ("labels only: kube-apiserver", Endpoint(labels=("reserved:kube-apiserver",)), True),
    ("labels only: fqdn", Endpoint(labels=("fqdn:api.example.com",)), True),
    ("labels only: a pod", Endpoint(labels=("k8s:app=web",)), False),
    ("same cluster", Endpoint(identity=400, cluster_name="east"), False),
]


@pytest.mark.parametrize(
    ("dst", "external"), [c[1:] for c in EXTERNAL_CASES], ids=[c[0] for c in EXTERNAL_CASES]
)
def test_egress_evidence_proves_delivery_only_outside_the_endpoints(dst: Endpoint, external: bool) -> None:
    src = Endpoint(identity=300, cluster_name="east")
    event = flow(source=src, destination=dst, traffic_direction=EGRESS, observation_point=P.TO_STACK)
    assert j.judge(event) == (j.DELIVERED if external else j.PROVISIONAL)
    assert j.is_external(dst, src) is external
