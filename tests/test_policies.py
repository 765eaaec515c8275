"""``policies generate`` (matrix → NetworkPolicies, kubernetes and cilium flavors), the NetworkPolicy
evaluator it is checked with, and ``policies diff``.

The decisive tests evaluate the generated kubernetes-flavor policies with :mod:`auditor.kube.netpol` on
synthetic pods built from the components' selectors, for every ordered pair of endpoints and every port the
matrix mentions (plus one it does not, and ICMP), and require exactly the matrix's verdict. Entities, CIDRs
and FQDNs, which a NetworkPolicy can only approximate, are pinned separately.

Golden files under ``tests/golden/policies/`` pin the Airflow output; regenerate them after an intended
change with ``UPDATE_GOLDEN=1 pytest tests/test_policies.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml

from auditor.kube.checks import PolicyError
from auditor.kube.cluster import compile_cluster
from auditor.kube.diff import DiffResult, diff
from auditor.kube.manifests import load_documents
from auditor.kube.model import External, Node, Pod, Subject
from auditor.kube.netpol import compile_policies
from auditor.kube.policies import Flavor, build, generate, to_yaml
from auditor.kube.probes import expected_ports, probes
from auditor.matrix import Matrix, load_matrix, parse_matrix

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = load_matrix(ROOT / "examples" / "airflow" / "matrix.yaml")

HEADER = "apiVersion: flow-auditor/v1alpha1\nkind: CommunicationMatrix\n"

# Only pod-selectable components: every feature a NetworkPolicy expresses exactly (matchExpressions,
# several namespaces, namespaceLabels and any-namespace peers, ranges, "any", UDP/SCTP, self rules).
SHOP = parse_matrix(
    HEADER
    + dedent(
        """\
        metadata: {name: shop}
        scope: {namespaces: [shop, shop-batch]}
        components:
          front:   {namespace: shop, labels: {app: front}}
          api:     {namespace: shop, matchExpressions: [{key: app, operator: In, values: [api, api-canary]}]}
          workers:
            namespaces: [shop, shop-batch]
            labels: {role: worker}
            matchExpressions: [{key: debug, operator: DoesNotExist}]
          cache:   {namespace: shop, labels: {app: cache}}
          scraper: {namespaceLabels: {team: observability}, labels: {app: scraper}}
          client:  {labels: {app: client}}
          gateway: {namespace: ingress, labels: {app: gw}}
        allow:
          - {from: gateway, to: front, ports: [8080]}
          - {from: front, to: api, ports: ["8000-8010/TCP"]}
          - {from: [api, workers], to: cache, ports: ["6379", "6380/UDP", "9999/SCTP"]}
          - {from: api, to: workers, ports: [any]}
          - {from: workers, to: workers, ports: ["7000-7001"]}
          - {from: scraper, to: [front, api, cache], ports: [9100]}
          - {from: client, to: api, ports: [8000]}
        """
    ),
    "shop.yaml",
)

# Entities, CIDRs and FQDNs: what a NetworkPolicy can only approximate.
EDGE = parse_matrix(
    HEADER
    + dedent(
        """\
        metadata: {name: edge}
        scope: {namespaces: [web]}
        components:
          frontend:  {namespace: web, labels: {app: frontend}}
          backend:   {namespace: web, labels: {app: backend}, serviceAccount: backend}
          corp:      {cidrs: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}
          vault:     {fqdns: [vault.example.com, "*.s3.amazonaws.com"]}
          apiserver: {entities: [kube-apiserver]}
          kubelet:   {entities: [host]}
          internet:  {entities: [world]}
          dns:       {namespace: kube-system, labels: {k8s-app: kube-dns}}
        allow:
          - {from: internet, to: frontend, ports: [8443]}
          - {from: kubelet, to: frontend, ports: [8080]}
          - {from: frontend, to: backend, ports: [9000, ICMP]}
          - {from: backend, to: corp, ports: ["5432"]}
          - {from: backend, to: internet, ports: [443]}
          - {from: backend, to: vault, ports: [8200]}
          - {from: backend, to: apiserver, ports: [6443]}
          - {from: backend, to: dns, ports: ["53/UDP", "53/TCP"]}
          - {from: frontend, to: frontend, ports: [ICMPv4]}
        """
    ),
    "edge.yaml",
)


def edge_lines(result: DiffResult) -> list[str]:
    """Every edge of a diff as ``kind: source -> destination ports (policies or rules)``."""
    out = []
    for e in result.edges:
        why = (
            ", ".join(e.policies) if e.kind == "unexpected_allowed" else "rule " + ",".join(map(str, e.rules))
        )
        out.append(f"{e.kind}: {e.source} -> {e.destination} {e.ports} ({why or '-'})")
    return out


def by_name(objects: list[dict[str, Any]], name: str, namespace: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objects
        if o["metadata"]["name"] == name and namespace in (None, o["metadata"]["namespace"])
    ]
    assert len(found) == 1, f"{name}: {len(found)} objects"
    return found[0]


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


# ==================================================================================================
# Generation: the Airflow reference set


def peer_of(rule_peers: list[dict[str, Any]], namespace: str, **labels: str) -> bool:
    return {
        "podSelector": {"matchLabels": labels},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    } in rule_peers


def ports_of(rule: dict[str, Any]) -> list[tuple[str, int]]:
    return [(p["protocol"], p["port"]) for p in rule["ports"]]


AIRFLOW_K8S = generate(AIRFLOW, "kubernetes")
AIRFLOW_LABELS = {
    name: {"tier": "airflow", "component": name}
    for name in ("webserver", "scheduler", "worker", "redis", "statsd")
}


def test_airflow_namespace_gets_a_default_deny_of_ingress_and_egress() -> None:
    deny = by_name(AIRFLOW_K8S, "airflow-default-deny", "airflow")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert AIRFLOW_K8S[0] is deny


def test_airflow_webserver_ingress_from_traefik_and_monitoring_on_8080() -> None:
    ingress = by_name(AIRFLOW_K8S, "airflow-webserver")["spec"]["ingress"]
    assert len(ingress) == 2
    assert peer_of(ingress[0]["from"], "kube-system", **{"app.kubernetes.io/name": "traefik"})
    assert peer_of(ingress[1]["from"], "monitoring", **{"app.kubernetes.io/name": "prometheus"})
    assert all(ports_of(r) == [("TCP", 8080)] for r in ingress)


@pytest.mark.parametrize("component", ["scheduler", "worker", "webserver"])
def test_airflow_components_egress_to_databases_workers_dns_and_https(component: str) -> None:
    egress = by_name(AIRFLOW_K8S, f"airflow-{component}")["spec"]["egress"]

    def ports_to(predicate: Any) -> list[tuple[str, int]]:
        return [p for rule in egress if predicate(rule["to"]) for p in ports_of(rule)]

    assert ports_to(lambda to: peer_of(to, "airflow", **{"app.kubernetes.io/name": "postgresql"})) == [
        ("TCP", 5432)
    ]
    assert ports_to(lambda to: peer_of(to, "airflow", **AIRFLOW_LABELS["redis"])) == [
        ("TCP", 6379),
        ("TCP", 26379),
    ]
    assert ports_to(lambda to: peer_of(to, "kube-system", **{"k8s-app": "kube-dns"})) == [
        ("UDP", 53),
        ("TCP", 53),
    ]
    world = [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
    assert ports_to(lambda to: to == world) == [("TCP", 443)]
    to_workers = ports_to(lambda to: peer_of(to, "airflow", **AIRFLOW_LABELS["worker"]))
    assert to_workers == ([] if component == "worker" else [("TCP", 8793)])


@pytest.mark.parametrize(
    ("component", "airflow_sources", "service_ports", "exporter_port"),
    [
        ("postgresql", ["webserver", "scheduler", "worker", "triggerer"], [("TCP", 5432)], 9187),
        ("redis", ["webserver", "scheduler", "worker"], [("TCP", 6379), ("TCP", 26379)], 9121),
    ],
)
def test_airflow_databases_accept_airflow_components_and_their_exporter_scrapes(
    component: str, airflow_sources: list[str], service_ports: list[tuple[str, int]], exporter_port: int
) -> None:
    ingress = by_name(AIRFLOW_K8S, f"airflow-{component}")["spec"]["ingress"]
    assert len(ingress) == 2
    assert ingress[0]["from"] == [
        {
            "podSelector": {"matchLabels": {"tier": "airflow", "component": c}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "airflow"}},
        }
        for c in airflow_sources
    ]
    assert ports_of(ingress[0]) == service_ports
    assert peer_of(ingress[1]["from"], "monitoring", **{"app.kubernetes.io/name": "prometheus"})
    assert ports_of(ingress[1]) == [("TCP", exporter_port)]
    assert by_name(AIRFLOW_K8S, f"airflow-{component}")["spec"]["egress"] == []


@pytest.mark.parametrize("flavor", ["kubernetes", "cilium"])
def test_every_object_is_labelled_managed_by_and_annotated_with_matrix_and_rules(flavor: Flavor) -> None:
    objects = generate(AIRFLOW, flavor)
    assert [o["metadata"]["name"] for o in objects] == [
        "airflow-default-deny",
        *(
            f"airflow-{c}"
            for c in ("webserver", "scheduler", "worker", "triggerer", "statsd", "redis", "postgresql")
        ),
    ]
    for obj in objects:
        assert obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "flow-auditor"}
        assert obj["metadata"]["annotations"]["flow-auditor.io/matrix"] == "airflow"
    rules = {o["metadata"]["name"]: o["metadata"]["annotations"]["flow-auditor.io/rules"] for o in objects}
    assert rules["airflow-default-deny"] == "none"
    assert rules["airflow-postgresql"] == "3,12"
    assert rules["airflow-redis"] == "4,13"


def test_kubernetes_flavor_notes_what_it_cannot_express_for_airflow() -> None:
    result = build(AIRFLOW, "kubernetes")
    assert result.notes == [
        "rule 2: kubelet: entity host cannot be selected by a NetworkPolicy; traffic between a pod and "
        "its own node is always allowed, other nodes are denied"
    ]
    annotations = by_name(result.objects, "airflow-webserver")["metadata"]["annotations"]
    assert annotations["flow-auditor.io/notes"] == result.notes[0]
    assert annotations["flow-auditor.io/rules"] == "1,3,4,5,6,7,8,9"


@pytest.mark.parametrize("flavor", ["kubernetes", "cilium"])
def test_airflow_output_matches_golden_file(flavor: Flavor, golden: Callable[[str, str], None]) -> None:
    text = to_yaml(generate(AIRFLOW, flavor))
    golden(f"policies/airflow-{flavor}.yaml", text)


@pytest.mark.parametrize("flavor", ["kubernetes", "cilium"])
def test_output_is_deterministic_and_round_trips_as_plain_yaml(flavor: Flavor) -> None:
    text = to_yaml(generate(EDGE, flavor))
    assert text == to_yaml(generate(EDGE, flavor))
    assert "&id" not in text and "*id" not in text  # no anchors/aliases for shared sub-objects
    assert list(yaml.safe_load_all(text)) == generate(EDGE, flavor)


# ==================================================================================================
# Validation of the manifests


def kubernetes_validate(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("matrix", [AIRFLOW, SHOP, EDGE], ids=lambda m: m.name)
def test_kubernetes_flavor_validates_strictly_against_the_kubernetes_schemas(matrix: Matrix) -> None:
    objects = generate(matrix, "kubernetes", cluster_cidrs=["10.244.0.0/16", "fd00:10:244::/56"])
    proc = kubernetes_validate(to_yaml(objects))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARN" not in proc.stdout and "ERROR" not in proc.stdout
    assert proc.stdout.count(" passed for resource networkpolicy/") == len(objects)


def test_kubernetes_validate_catches_an_unknown_field() -> None:
    obj = generate(AIRFLOW, "kubernetes")[1]
    obj["spec"]["ingress"][0]["sources"] = []
    proc = kubernetes_validate(to_yaml([obj]))
    assert proc.returncode == 1 and "ERROR" in proc.stdout


# ==================================================================================================
# The decisive test: generated kubernetes policies allow exactly what the matrix allows


@pytest.mark.parametrize("matrix", [AIRFLOW, SHOP], ids=lambda m: m.name)
def test_probes_of_pod_components_are_named_after_their_component(matrix: Matrix) -> None:
    pods = [
        p
        for p in probes(matrix)
        if isinstance(p.subject, Pod) and p.origin in {c.name for c in matrix.components}
    ]
    assert {p.origin for p in pods} == {c.name for c in matrix.components if c.selector.entities is None}
    assert all(p.name == p.origin for p in pods)


@pytest.mark.parametrize("matrix", [AIRFLOW, SHOP], ids=lambda m: m.name)
def test_generated_policies_allow_exactly_what_the_matrix_allows(matrix: Matrix) -> None:
    pset = compile_policies(generate(matrix, "kubernetes"))
    scope = matrix.scope_namespaces or frozenset()
    pods = [p for p in probes(matrix) if isinstance(p.subject, Pod)]
    mismatches: list[str] = []
    allowed_rules: set[int] = set()
    for src in pods:
        for dst in pods:
            assert isinstance(src.subject, Pod) and isinstance(dst.subject, Pod)
            if src.subject.namespace not in scope and dst.subject.namespace not in scope:
                continue  # neither end in scope: no policy of the matrix applies
            allowed = pset.evaluate(src.subject, dst.subject).allowed_ports
            expected, rules = expected_ports(matrix, src.name, dst.name)
            if allowed != expected:
                mismatches.append(f"{src.name} -> {dst.name}: policies {allowed}, matrix {expected}")
            allowed_rules.update(r.index for r in rules)
    assert not mismatches, "\n".join(mismatches[:20])
    components = {c.name: c for c in matrix.components}
    pod_rules = {
        r.index
        for r in matrix.rules
        if all(components[n].selector.entities is None for n in (*r.sources, *r.destinations))
    }
    assert pod_rules <= allowed_rules  # every rule between pods was exercised


# ==================================================================================================
# Entities, CIDRs and FQDNs (kubernetes flavor): ipBlock approximations, pinned case by case

FRONTEND = Pod("web", {"app": "frontend"})
BACKEND = Pod("web", {"app": "backend"})
WORLD4, WORLD6 = External("203.0.113.10"), External("2001:db8::10")

EDGE_CASES: list[tuple[str, Subject, Subject, str, int, bool]] = [
    ("world reaches frontend on its rule port (IPv4)", WORLD4, FRONTEND, "TCP", 8443, True),
    ("world reaches frontend on its rule port (IPv6)", WORLD6, FRONTEND, "TCP", 8443, True),
    ("world cannot reach frontend on another port", WORLD4, FRONTEND, "TCP", 8080, False),
    ("world cannot reach backend", WORLD4, BACKEND, "TCP", 9000, False),
    ("backend reaches corp inside the CIDR", BACKEND, External("10.0.0.1"), "TCP", 5432, True),
    ("backend cannot reach corp's except range", BACKEND, External("10.1.2.3"), "TCP", 5432, False),
    ("backend reaches the world on 443", BACKEND, WORLD4, "TCP", 443, True),
    ("backend reaches the world on 443 (IPv6)", BACKEND, WORLD6, "TCP", 443, True),
    ("frontend cannot reach the world", FRONTEND, WORLD4, "TCP", 443, False),
    (
        "FQDN: any world address on the FQDN rule's port (wider)",
        BACKEND,
        External("198.51.100.7"),
        "TCP",
        8200,
        True,
    ),
    ("world ipBlock also covers CIDR components (wider)", BACKEND, External("10.0.0.1"), "TCP", 443, True),
    ("kube-apiserver cannot be expressed: denied", BACKEND, External("192.0.2.1"), "TCP", 6443, False),
    ("kubelet probes: node-local traffic is always allowed", Node(), FRONTEND, "TCP", 8080, True),
    ("node-local traffic is allowed to pods without a host rule too", Node(), BACKEND, "TCP", 9000, True),
    ("ICMP cannot be expressed: denied", FRONTEND, BACKEND, "ICMPv4", 0, False),
    ("pods are reached by pod peers, not by ipBlocks", BACKEND, FRONTEND, "TCP", 443, False),
]


@pytest.mark.parametrize(
    ("source", "destination", "protocol", "port", "expected"),
    [c[1:] for c in EDGE_CASES],
    ids=[c[0] for c in EDGE_CASES],
)
def test_entities_cidrs_and_fqdns_are_approximated_with_ip_blocks(
    source: Subject, destination: Subject, protocol: str, port: int, expected: bool
) -> None:
    assert (
        compile_policies(generate(EDGE, "kubernetes")).allows(source, destination, protocol, port) is expected
    )


def test_edge_ip_blocks_and_notes() -> None:
    result = build(EDGE, "kubernetes")
    backend = by_name(result.objects, "edge-backend")
    egress = backend["spec"]["egress"]
    assert egress[0]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]
    assert (
        egress[1]["to"]
        == egress[2]["to"]
        == [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
    )
    assert [ports_of(r) for r in egress] == [
        [("TCP", 5432)],
        [("TCP", 443)],
        [("TCP", 8200)],
        [("UDP", 53), ("TCP", 53)],
    ]
    notes = backend["metadata"]["annotations"]["flow-auditor.io/notes"]
    assert "FQDNs (vault.example.com, *.s3.amazonaws.com) have no NetworkPolicy equivalent" in notes
    assert "entity kube-apiserver cannot be selected" in notes
    assert "serviceAccount cannot be expressed in a podSelector" in notes
    frontend = by_name(result.objects, "edge-frontend")
    assert "entity host cannot be selected" in frontend["metadata"]["annotations"]["flow-auditor.io/notes"]
    assert frontend["metadata"]["annotations"]["flow-auditor.io/rules"] == "1,3"
    assert any("ICMPv4 cannot be expressed" in n for n in result.notes)


def test_no_rule_is_emitted_without_peers_or_ports() -> None:
    """A rule whose peers or ports cannot be expressed is left out: an empty list would mean 'all'."""
    for obj in generate(EDGE, "kubernetes"):
        for direction, peers in (("ingress", "from"), ("egress", "to")):
            for rule in obj["spec"].get(direction, []):
                assert rule[peers], obj["metadata"]["name"]
                assert rule.get("ports", ["any"]), obj["metadata"]["name"]
    frontend = by_name(generate(EDGE, "kubernetes"), "edge-frontend")
    assert [ports_of(r) for r in frontend["spec"]["ingress"]] == [
        [("TCP", 8443)]
    ]  # the ICMP-only rule 9 is gone


def test_cluster_cidrs_are_excepted_from_world_ip_blocks() -> None:
    plain = compile_policies(generate(EDGE, "kubernetes"))
    excepted = compile_policies(
        generate(EDGE, "kubernetes", cluster_cidrs=["10.244.0.0/16", "fd00:10:244::/56"])
    )
    pod_with_ip = Pod("elsewhere", {}, ip="10.244.1.7")  # for plugins whose ipBlocks match pod addresses
    assert plain.allows(BACKEND, pod_with_ip, "TCP", 443)
    assert not excepted.allows(BACKEND, pod_with_ip, "TCP", 443)
    assert excepted.allows(BACKEND, WORLD4, "TCP", 443)
    world = by_name(
        generate(EDGE, "kubernetes", cluster_cidrs=["10.244.0.0/16", "fd00:10:244::/56"]), "edge-backend"
    )
    assert world["spec"]["egress"][1]["to"] == [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]}},
        {"ipBlock": {"cidr": "::/0", "except": ["fd00:10:244::/56"]}},
    ]


def test_any_ports_and_ranges_in_the_kubernetes_flavor() -> None:
    objects = generate(SHOP, "kubernetes")
    api = by_name(objects, "shop-api")["spec"]
    assert api["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000, "endPort": 8010}]
    assert "ports" not in api["egress"][1]  # rule 4, ports: [any]
    assert by_name(objects, "shop-workers", "shop-batch")["metadata"]["namespace"] == "shop-batch"


def test_overlapping_components_are_noted_and_found_by_diff() -> None:
    matrix = parse_matrix(
        HEADER
        + dedent(
            """\
            metadata: {name: overlap}
            components:
              db:    {namespace: app, labels: {app: db}}
              other: {namespace: app}
            allow:
              - {from: other, to: other, ports: [8080]}
            """
        )
    )
    result = build(matrix, "kubernetes")
    assert any("components db and other can select the same pods" in n for n in result.notes)
    differences = diff(result.objects, matrix)
    assert edge_lines(differences) == [
        "unexpected_allowed: db -> db 8080/TCP (app/overlap-other)",
        "unexpected_allowed: db -> other 8080/TCP (app/overlap-other)",
        "unexpected_allowed: other -> db 8080/TCP (app/overlap-other)",
    ]


def test_names_are_valid_and_unique_per_namespace() -> None:
    matrix = parse_matrix(
        HEADER
        + dedent(
            """\
            metadata: {name: Team_A}
            components:
              api_v2: {namespace: app, labels: {app: v2}}
              api-v2: {namespace: app, labels: {app: v2b}}
              default-deny: {namespaces: [app, other], labels: {app: d}}
            allow: []
            """
        )
    )
    names = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in generate(matrix)]
    assert names == [
        ("app", "team-a-default-deny"),
        ("other", "team-a-default-deny"),
        ("app", "team-a-api-v2"),
        ("app", "team-a-api-v2-2"),
        ("app", "team-a-default-deny-2"),
        ("other", "team-a-default-deny-2"),
    ]


def test_unknown_flavor_and_bad_cluster_cidr_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown flavor 'calico'"):
        build(AIRFLOW, "calico")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"invalid cluster CIDR '10\.0\.0\.1/8'"):
        build(AIRFLOW, "kubernetes", cluster_cidrs=["10.0.0.1/8"])


# ==================================================================================================
# The cilium flavor

PEER_FIELDS = {
    "ingress": {"fromEndpoints", "fromEntities", "fromCIDRSet"},
    "egress": {"toEndpoints", "toEntities", "toCIDRSet", "toFQDNs"},
}


@pytest.mark.parametrize("matrix", [AIRFLOW, SHOP, EDGE], ids=lambda m: m.name)
def test_every_cilium_rule_names_exactly_one_kind_of_peer(matrix: Matrix) -> None:
    """Cilium allows one peer kind per rule, and a rule with toPorts but no peer would allow every peer."""
    for obj in generate(matrix, "cilium"):
        assert (obj["apiVersion"], obj["kind"]) == ("cilium.io/v2", "CiliumNetworkPolicy")
        assert obj["spec"]["enableDefaultDeny"] == {"ingress": True, "egress": True}
        for direction, fields in PEER_FIELDS.items():
            for rule in obj["spec"][direction]:
                if rule == {}:
                    continue  # the empty rule: default deny, allows nothing
                assert len(fields & rule.keys()) == 1, (obj["metadata"]["name"], rule)


def test_cilium_default_deny_selects_every_endpoint_and_allows_nothing() -> None:
    deny = by_name(generate(AIRFLOW, "cilium"), "airflow-default-deny")
    assert deny["spec"] == {
        "description": "flow-auditor matrix airflow: default deny in airflow",
        "endpointSelector": {},
        "enableDefaultDeny": {"ingress": True, "egress": True},
        "ingress": [{}],
        "egress": [{}],
    }


def test_cilium_peers_carry_their_namespace_and_entities() -> None:
    webserver = by_name(generate(AIRFLOW, "cilium"), "airflow-webserver")["spec"]
    assert webserver["endpointSelector"] == {
        "matchLabels": {"k8s:tier": "airflow", "k8s:component": "webserver"}
    }
    assert webserver["ingress"][0]["fromEndpoints"] == [
        {
            "matchLabels": {
                "k8s:io.kubernetes.pod.namespace": "kube-system",
                "k8s:app.kubernetes.io/name": "traefik",
            }
        }
    ]
    assert webserver["ingress"][1] == {
        "fromEntities": ["host"],
        "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}],
    }
    assert {
        "toEntities": ["world"],
        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
    } in webserver["egress"]


def test_cilium_peer_without_namespace_matches_any_namespace() -> None:
    api = by_name(generate(SHOP, "cilium"), "shop-api")["spec"]
    scraper = {
        "matchLabels": {"k8s:io.cilium.k8s.namespace.labels.team": "observability", "k8s:app": "scraper"},
        "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}],
    }
    assert any(scraper in r.get("fromEndpoints", []) for r in api["ingress"])
    assert api["endpointSelector"] == {
        "matchExpressions": [{"key": "k8s:app", "operator": "In", "values": ["api", "api-canary"]}]
    }
    assert api["ingress"][0]["toPorts"] == [{"ports": [{"port": "8000", "protocol": "TCP", "endPort": 8010}]}]


def test_cilium_fqdns_get_to_fqdns_and_the_dns_proxy_rule() -> None:
    result = build(EDGE, "cilium")
    backend = by_name(result.objects, "edge-backend")["spec"]
    assert backend["endpointSelector"] == {
        "matchLabels": {"k8s:app": "backend", "k8s:io.cilium.k8s.policy.serviceaccount": "backend"}
    }
    egress = backend["egress"]
    assert {
        "toFQDNs": [{"matchName": "vault.example.com"}, {"matchPattern": "**.s3.amazonaws.com"}],
        "toPorts": [{"ports": [{"port": "8200", "protocol": "TCP"}]}],
    } in egress
    assert egress[-1] == {
        "toEndpoints": [
            {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}
        ],
        "toPorts": [
            {
                # UDP and TCP, not ANY: ANY would also open 53/SCTP, which the matrix does not allow
                "ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}],
                "rules": {"dns": [{"matchPattern": "*"}]},
            }
        ],
    }
    assert {
        "toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}],
        "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}],
    } in egress
    assert {
        "toEntities": ["kube-apiserver"],
        "toPorts": [{"ports": [{"port": "6443", "protocol": "TCP"}]}],
    } in egress
    assert any("DNS proxy rule towards dns (matrix rule 8)" in n for n in result.notes)
    # only components with FQDN egress get the DNS proxy rule
    frontend = by_name(result.objects, "edge-frontend")["spec"]
    assert not any("rules" in p for r in frontend["egress"] for p in r.get("toPorts", []))


def test_cilium_icmp_becomes_echo_request_rules() -> None:
    frontend = by_name(generate(EDGE, "cilium"), "edge-frontend")["spec"]
    assert {
        "toEndpoints": [
            {
                "matchLabels": {
                    "k8s:io.kubernetes.pod.namespace": "web",
                    "k8s:app": "backend",
                    "k8s:io.cilium.k8s.policy.serviceaccount": "backend",
                }
            }
        ],
        "icmps": [{"fields": [{"type": 8, "family": "IPv4"}, {"type": 128, "family": "IPv6"}]}],
    } in frontend["egress"]
    assert {
        "fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "web", "k8s:app": "frontend"}}],
        "icmps": [{"fields": [{"type": 8, "family": "IPv4"}]}],
    } in frontend["ingress"]
    assert {
        "fromEntities": ["world"],
        "toPorts": [{"ports": [{"port": "8443", "protocol": "TCP"}]}],
    } in frontend["ingress"]


def test_cilium_any_port_means_no_to_ports() -> None:
    api = by_name(generate(SHOP, "cilium"), "shop-api")["spec"]
    workers = {
        "matchLabels": {"k8s:role": "worker"},
        "matchExpressions": [
            {"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["shop", "shop-batch"]},
            {"key": "k8s:debug", "operator": "DoesNotExist"},
        ],
    }
    assert api["egress"][1] == {"toEndpoints": [workers]}  # rule 4, ports: [any]


# ==================================================================================================
# policies diff


@pytest.mark.parametrize("matrix", [AIRFLOW, SHOP], ids=lambda m: m.name)
def test_diff_of_generated_policies_is_empty(matrix: Matrix) -> None:
    assert diff(generate(matrix, "kubernetes"), matrix).edges == []


def test_diff_without_policies_reports_unexpected_allowed_traffic() -> None:
    result = diff([], AIRFLOW)
    assert {e.kind for e in result.edges} == {"unexpected_allowed"}
    lines = edge_lines(result)
    # every port but the matrix's own, as ranges
    worker_db = "worker -> postgresql 1-5431/TCP, 5433-65535/TCP, any/UDP, any/SCTP, ICMPv4, ICMPv6 (-)"
    assert f"unexpected_allowed: {worker_db}" in lines
    noise = {(e.source, e.destination, e.noise) for e in result.noise}
    assert ("ns:flow-auditor-probe", "postgresql", "a namespace outside the matrix") in noise
    assert ("ns:airflow", "postgresql", "other pods of airflow") in noise


def test_diff_reports_a_missing_allowance_with_its_rule() -> None:
    objects = generate(AIRFLOW, "kubernetes")
    scheduler = by_name(objects, "airflow-scheduler")
    scheduler["spec"]["egress"] = [r for r in scheduler["spec"]["egress"] if ports_of(r) != [("TCP", 5432)]]
    result = diff(objects, AIRFLOW)
    assert edge_lines(result) == ["expected_denied: scheduler -> postgresql 5432/TCP (rule 3)"]


def test_diff_reads_policies_as_kubectl_lists_them() -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": generate(AIRFLOW, "kubernetes")}
    assert diff([m.obj for m in load_documents(yaml.safe_dump(listed))], AIRFLOW).edges == []
