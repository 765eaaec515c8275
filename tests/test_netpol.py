"""The NetworkPolicy evaluator (:mod:`auditor.kube.netpol`) on small hand-written policies: peer and port
semantics, isolation, policy types, rules adding up, node-local traffic, and malformed policies rejected
naming the policy and the field. ``policies generate`` is checked with this evaluator, so its semantics are
pinned case by case here."""

from __future__ import annotations

from textwrap import dedent
from typing import Any

import pytest

from auditor.kube.checks import PolicyError
from auditor.kube.cluster import compile_cluster
from auditor.kube.manifests import load_documents
from auditor.kube.model import External, Node, Pod, Subject
from auditor.kube.netpol import compile_policies

# ==================================================================================================
# The evaluator, on small hand-written policies


def netpol(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


DB = Pod("prod", {"role": "db"}, named_ports={"metrics": ("TCP", 9090)})
APP = Pod("prod", {"app": "a"})


def db_ingress_from(peers: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": peers}
    if ports is not None:
        rule["ports"] = ports
    return netpol(
        "db",
        "prod",
        {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"], "ingress": [rule]},
    )


PEER_CASES: list[tuple[str, dict[str, Any], Subject, bool]] = [
    (
        "podSelector alone: a pod of the policy's namespace",
        {"podSelector": {"matchLabels": {"app": "a"}}},
        APP,
        True,
    ),
    (
        "podSelector alone: not a pod of another namespace",
        {"podSelector": {"matchLabels": {"app": "a"}}},
        Pod("dev", {"app": "a"}),
        False,
    ),
    (
        "namespaceSelector alone: every pod of the namespace",
        {"namespaceSelector": {"matchLabels": {"env": "dev"}}},
        Pod("dev", {"app": "x"}, {"env": "dev"}),
        True,
    ),
    (
        "pod and namespace selectors are AND-ed: the namespace does not match",
        {"podSelector": {"matchLabels": {"app": "a"}}, "namespaceSelector": {"matchLabels": {"env": "dev"}}},
        Pod("prod", {"app": "a"}, {"env": "prod"}),
        False,
    ),
    (
        "pod and namespace selectors are AND-ed: the pod does not match",
        {"podSelector": {"matchLabels": {"app": "a"}}, "namespaceSelector": {"matchLabels": {"env": "dev"}}},
        Pod("dev", {"app": "b"}, {"env": "dev"}),
        False,
    ),
    (
        "pod and namespace selectors are AND-ed: both match",
        {"podSelector": {"matchLabels": {"app": "a"}}, "namespaceSelector": {"matchLabels": {"env": "dev"}}},
        Pod("dev", {"app": "a"}, {"env": "dev"}),
        True,
    ),
    (
        "an empty namespaceSelector selects every namespace",
        {"podSelector": {"matchLabels": {"app": "a"}}, "namespaceSelector": {}},
        Pod("elsewhere", {"app": "a"}),
        True,
    ),
    (
        "every namespace has its kubernetes.io/metadata.name label",
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}},
        Pod("dev"),
        True,
    ),
    (
        "matchExpressions NotIn matches an absent key",
        {"podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}},
        APP,
        True,
    ),
    (
        "matchExpressions DoesNotExist",
        {"podSelector": {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}},
        APP,
        False,
    ),
    (
        "ipBlock: inside the CIDR",
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
        External("10.2.3.4"),
        True,
    ),
    (
        "ipBlock: inside except",
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
        External("10.1.2.3"),
        False,
    ),
    ("ipBlock: outside the CIDR", {"ipBlock": {"cidr": "10.0.0.0/8"}}, External("192.168.0.1"), False),
    (
        "ipBlock: 0.0.0.0/0 does not hold IPv6",
        {"ipBlock": {"cidr": "0.0.0.0/0"}},
        External("2001:db8::1"),
        False,
    ),
    ("ipBlock: ::/0 holds IPv6", {"ipBlock": {"cidr": "::/0"}}, External("2001:db8::1"), True),
    ("ipBlock: a pod without address (Cilium's semantics)", {"ipBlock": {"cidr": "0.0.0.0/0"}}, APP, False),
    (
        "ipBlock: a pod with an address (plugins that match pod IPs)",
        {"ipBlock": {"cidr": "0.0.0.0/0"}},
        Pod("prod", {}, ip="10.2.3.4"),
        True,
    ),
    ("selectors never match an external address", {"namespaceSelector": {}}, External("10.0.0.1"), False),
]


@pytest.mark.parametrize(
    ("peer", "source", "expected"), [c[1:] for c in PEER_CASES], ids=[c[0] for c in PEER_CASES]
)
def test_peer_semantics(peer: dict[str, Any], source: Subject, expected: bool) -> None:
    pset = compile_policies([db_ingress_from([peer])])
    assert pset.allows(source, DB, "TCP", 5432) is expected


def test_several_peers_are_alternatives() -> None:
    pset = compile_policies(
        [
            db_ingress_from(
                [
                    {"podSelector": {"matchLabels": {"app": "a"}}},
                    {"namespaceSelector": {"matchLabels": {"env": "dev"}}},
                ]
            )
        ]
    )
    assert pset.allows(APP, DB, "TCP", 1)
    assert pset.allows(Pod("dev", {"app": "x"}, {"env": "dev"}), DB, "TCP", 1)
    assert not pset.allows(Pod("prod", {"app": "x"}), DB, "TCP", 1)


PORT_CASES: list[tuple[str, list[dict[str, Any]] | None, str, int, bool]] = [
    ("no ports: every port", None, "UDP", 9999, True),
    ("no ports: every protocol, ICMP included", None, "ICMPv4", 0, True),
    ("empty ports: every port", [], "SCTP", 1, True),
    ("protocol defaults to TCP", [{"port": 80}], "TCP", 80, True),
    ("protocol defaults to TCP, so not UDP", [{"port": 80}], "UDP", 80, False),
    ("a single port is exact", [{"protocol": "TCP", "port": 80}], "TCP", 81, False),
    ("endPort range: lower end", [{"port": 30000, "endPort": 32767}], "TCP", 30000, True),
    ("endPort range: upper end is inclusive", [{"port": 30000, "endPort": 32767}], "TCP", 32767, True),
    ("endPort range: above", [{"port": 30000, "endPort": 32767}], "TCP", 32768, False),
    ("endPort range: below", [{"port": 30000, "endPort": 32767}], "TCP", 29999, False),
    ("protocol without port: every port of it", [{"protocol": "UDP"}], "UDP", 5353, True),
    ("protocol without port: not another protocol", [{"protocol": "UDP"}], "TCP", 5353, False),
    ("ICMP never matches a port entry", [{"protocol": "TCP"}], "ICMPv4", 0, False),
    ("SCTP", [{"protocol": "SCTP", "port": 9091}], "SCTP", 9091, True),
    ("named port resolved on the destination pod", [{"port": "metrics"}], "TCP", 9090, True),
    ("named port: another number", [{"port": "metrics"}], "TCP", 9091, False),
    ("named port: unknown name", [{"port": "http"}], "TCP", 9090, False),
]


@pytest.mark.parametrize(
    ("ports", "protocol", "port", "expected"), [c[1:] for c in PORT_CASES], ids=[c[0] for c in PORT_CASES]
)
def test_port_semantics(ports: list[dict[str, Any]] | None, protocol: str, port: int, expected: bool) -> None:
    pset = compile_policies([db_ingress_from([{"podSelector": {}}], ports)])
    assert pset.allows(APP, DB, protocol, port) is expected


def test_a_pod_selected_by_no_policy_is_not_isolated() -> None:
    pset = compile_policies([netpol("other", "prod", {"podSelector": {"matchLabels": {"role": "web"}}})])
    decision = pset.evaluate(APP, DB)
    assert decision.allows("TCP", 5432)
    assert not decision.egress.isolated and not decision.ingress.isolated


def test_a_policy_of_another_namespace_does_not_isolate() -> None:
    pset = compile_policies(
        [netpol("deny", "dev", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})]
    )
    assert pset.allows(APP, DB, "TCP", 5432)


def test_ingress_isolation_without_rules_denies_ingress_but_not_egress() -> None:
    pset = compile_policies([netpol("deny-in", "prod", {"podSelector": {}, "policyTypes": ["Ingress"]})])
    assert not pset.allows(APP, DB, "TCP", 5432)
    assert pset.allows(DB, External("203.0.113.1"), "TCP", 443)


@pytest.mark.parametrize(
    ("spec", "isolates_egress"),
    [
        ({"podSelector": {}, "egress": [{"to": [{"podSelector": {}}]}]}, True),
        ({"podSelector": {}, "egress": []}, False),
        ({"podSelector": {}, "ingress": [{}]}, False),
    ],
    ids=["egress rules imply Egress", "an empty egress list does not", "ingress only"],
)
def test_policy_types_default_from_the_rules(spec: dict[str, Any], isolates_egress: bool) -> None:
    pol = compile_policies([netpol("p", "prod", spec)]).policies[0]
    assert pol.isolates_ingress
    assert pol.isolates_egress is isolates_egress


def test_both_sides_must_allow() -> None:
    egress_ok = netpol(
        "app-out",
        "prod",
        {
            "podSelector": {"matchLabels": {"app": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"role": "db"}}}], "ports": [{"port": 5432}]}],
        },
    )
    deny_db = netpol(
        "db-in", "prod", {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"]}
    )
    decision = compile_policies([egress_ok, deny_db]).evaluate(APP, DB)
    assert decision.egress.allows_port("TCP", 5432)
    assert decision.egress.allowed_by("TCP", 5432) == ("prod/app-out",)
    assert not decision.ingress.allows_port("TCP", 5432) and decision.ingress.isolated
    assert not decision.allows("TCP", 5432)
    assert not compile_policies([egress_ok]).allows(APP, DB, "TCP", 5433)


def test_policies_add_up() -> None:
    a = db_ingress_from([{"podSelector": {}}], [{"port": 80}])
    b = netpol("db-2", "prod", {**a["spec"], "ingress": [{"ports": [{"port": 443}]}]})
    pset = compile_policies([a, b])
    assert pset.allows(APP, DB, "TCP", 80) and pset.allows(APP, DB, "TCP", 443)
    assert not pset.allows(APP, DB, "TCP", 8080)
    assert pset.evaluate(APP, DB).ingress.allowed_by("TCP", 443) == ("prod/db-2",)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [([{}], True), ([], False), ([{"from": []}], True), ([{"from": [], "ports": [{"port": 1}]}], False)],
    ids=[
        "an empty rule allows all",
        "no rule allows nothing",
        "empty from = every source",
        "empty from, ports",
    ],
)
def test_empty_rule_parts_mean_everything(rules: list[dict[str, Any]], expected: bool) -> None:
    pset = compile_policies(
        [netpol("db", "prod", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": rules})]
    )
    assert pset.allows(Pod("anywhere", {"x": "y"}), DB, "TCP", 5432) is expected


def test_empty_to_means_every_destination() -> None:
    pset = compile_policies(
        [
            netpol(
                "out",
                "prod",
                {
                    "podSelector": {},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [], "ports": [{"port": 443}]}],
                },
            )
        ]
    )
    assert pset.allows(APP, External("198.51.100.1"), "TCP", 443)
    assert not pset.allows(APP, External("198.51.100.1"), "TCP", 80)


def test_node_local_traffic_is_always_allowed() -> None:
    pset = compile_policies(
        [netpol("deny", "prod", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})]
    )
    assert pset.allows(Node(), DB, "TCP", 8080)
    assert pset.allows(DB, Node(), "TCP", 10250)
    assert not pset.allows(External("192.0.2.1"), DB, "TCP", 8080)


POLICY_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("misspelt field", {"podSelector": {}, "ingres": []}, "spec: unknown field 'ingres'"),
    (
        "ipBlock with a selector",
        {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
        "spec.ingress[0].from[0]: ipBlock cannot be combined",
    ),
    (
        "an empty peer",
        {"podSelector": {}, "ingress": [{"from": [{}]}]},
        "spec.ingress[0].from[0]: a peer needs",
    ),
    (
        "except outside the CIDR",
        {
            "podSelector": {},
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}],
        },
        "spec.egress[0].to[0].ipBlock.except[0]: 11.0.0.0/8 is not inside 10.0.0.0/8",
    ),
    (
        "endPort without a numeric port",
        {"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
        "spec.ingress[0].ports[0].endPort: endPort needs a numeric port",
    ),
    (
        "endPort below port",
        {"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
        "spec.ingress[0].ports[0].endPort",
    ),
    (
        "a quoted number",
        {"podSelector": {}, "ingress": [{"ports": [{"port": "80"}]}]},
        "invalid port name '80'",
    ),
    (
        "ICMP as protocol",
        {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
        "unknown protocol 'ICMP'",
    ),
    (
        "bad operator",
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}},
        "spec.podSelector.matchExpressions[0].operator: unknown operator 'Equals'",
    ),
    (
        "In without values",
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        "operator In needs values",
    ),
    (
        "Exists with values",
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}},
        "spec.podSelector.matchExpressions[0].values: operator Exists takes no values",
    ),
    (
        "an expression without an operator",
        {"podSelector": {"matchExpressions": [{"key": "a"}]}},
        "spec.podSelector.matchExpressions[0]: key and operator are required",
    ),
    ("unknown policy type", {"podSelector": {}, "policyTypes": ["Both"]}, "unknown policy type 'Both'"),
]


@pytest.mark.parametrize(
    ("spec", "message"), [c[1:] for c in POLICY_ERRORS], ids=[c[0] for c in POLICY_ERRORS]
)
def test_malformed_policies_are_rejected_with_policy_and_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as e:
        compile_policies([netpol("bad", "prod", spec)], strict=True)
    assert str(e.value).startswith("NetworkPolicy prod/bad: ")
    assert message in str(e.value)


def test_other_kinds_are_skipped_and_lists_are_flattened() -> None:
    text = dedent(
        """\
        apiVersion: v1
        kind: List
        items:
        - apiVersion: networking.k8s.io/v1
          kind: NetworkPolicy
          metadata: {name: a, namespace: x}
          spec: {podSelector: {}}
        - apiVersion: cilium.io/v2
          kind: CiliumNetworkPolicy
          metadata: {name: c, namespace: x}
          spec: {endpointSelector: {}}
        ---
        {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: b}, spec: {podSelector: {}}}
        """
    )
    objects = [m.obj for m in load_documents(text)]
    cluster = compile_cluster([*objects, {"apiVersion": "v1", "kind": "ConfigMap"}])
    assert [p.ref for p in cluster.knp.policies] == ["x/a", "default/b"]
    assert [p.ref for p in cluster.cnp.policies] == ["CiliumNetworkPolicy x/c"]
    assert cluster.skipped == {"ConfigMap": 1}
