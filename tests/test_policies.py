"""``policies generate``, kubernetes flavor (matrix → NetworkPolicies), and ``policies diff`` of generated
policies.

The decisive tests evaluate the generated kubernetes-flavor policies with :mod:`auditor.kube.netpol` on
synthetic pods built from the components' selectors, for every ordered pair of endpoints and every port the
matrix mentions (plus one it does not, and ICMP), and require exactly the matrix's verdict. Entities, CIDRs
and FQDNs, which a NetworkPolicy can only approximate, are pinned separately. The manifests validate strictly
against the Kubernetes schemas. The evaluator itself is pinned in ``tests/test_netpol.py``, the cilium flavor
in ``tests/test_policies_cilium.py``.

Golden files under ``tests/golden/policies/`` pin the Airflow output (both flavors); regenerate them after an
intended change with ``UPDATE_GOLDEN=1 pytest tests/test_policies.py``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from textwrap import dedent
from typing import Any

import pytest
import yaml
from policy_matrices import AIRFLOW, EDGE, HEADER, SHOP, by_name, edge_lines, ports_of

from auditor.kube.diff import diff
from auditor.kube.manifests import load_documents
from auditor.kube.model import External, Node, Pod, Subject
from auditor.kube.netpol import compile_policies
from auditor.kube.policies import Flavor, build, generate, to_yaml
from auditor.kube.probes import expected_ports, probes
from auditor.matrix import Matrix, parse_matrix

# ==================================================================================================
# Generation: the Airflow reference set


def peer_of(rule_peers: list[dict[str, Any]], namespace: str, **labels: str) -> bool:
    return {
        "podSelector": {"matchLabels": labels},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    } in rule_peers


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
    world = (
        "rule 7: internet: entity world is 0.0.0.0/0 and ::/0, which on some network plugins also matches "
        "pod and service addresses (wider): give --cluster-cidr to except them"
    )
    assert result.notes == [
        "rule 2: kubelet: entity host cannot be selected by a NetworkPolicy; traffic between a pod and "
        "its own node is always allowed, other nodes are denied",
        world,
    ]
    annotations = by_name(result.objects, "airflow-webserver")["metadata"]["annotations"]
    assert annotations["flow-auditor.io/notes"] == "; ".join(result.notes)
    assert annotations["flow-auditor.io/rules"] == "1,3,4,5,6,7,8,9"
    # with the cluster's networks given, world excepts them and says nothing more
    excepted = build(AIRFLOW, "kubernetes", cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/56"))
    assert world not in excepted.notes
    egress = by_name(excepted.objects, "airflow-worker")["spec"]["egress"]
    blocks = [p["ipBlock"] for rule in egress for p in rule.get("to", []) if "ipBlock" in p]
    assert {"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]} in blocks
    assert {"cidr": "::/0", "except": ["fd00:10:244::/56"]} in blocks


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
