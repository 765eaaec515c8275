"""The generate → diff round trip, and mutations of the matrix that ``diff`` must notice.

- ``policies generate --flavor cilium`` then ``policies diff`` reports no difference for the example matrix
  and for random matrices (fixed seeds); with ``--flavor kubernetes`` every difference is one that
  ``generate`` announced in a note, and ``diff`` labels it so.
- Mutation-style checks: the policies generated for a matrix are compared with the same matrix missing one
  edge, one port, or with one port or edge added; every such change must show up as a difference on that
  edge (the truth: the policies still implement the original matrix, so they allow the dropped edge and
  deny the added one).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.kube.cluster import compile_cluster
from auditor.kube.diff import diff
from auditor.kube.model import Pod
from auditor.kube.policies import Flavor, build, generate
from auditor.kube.probes import expected_ports, probes
from auditor.matrix import Matrix, parse_matrix

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_DOC: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "airflow" / "matrix.yaml").read_text())
SEEDS = range(12)
PORT_POOL = [
    "80",
    "443",
    "5432",
    "8000-8010",
    "53/UDP",
    "9999/SCTP",
    "6379",
    "any",
    "ICMP",
    "30000-30100/UDP",
]


def compile_doc(doc: dict[str, Any]) -> Matrix:
    return parse_matrix(yaml.safe_dump(doc, sort_keys=False), "random.yaml")


def random_matrix(seed: int) -> dict[str, Any]:
    """Pod components (one or two namespaces, labels, sometimes matchExpressions or namespaceLabels, some
    not pinned to a namespace), CIDR and entity components, random rules."""
    rnd = random.Random(seed)
    namespaces = ["alpha", "beta", "gamma"]
    scope = sorted(rnd.sample(namespaces, rnd.randint(1, 2)))
    comps: dict[str, Any] = {}
    for i in range(rnd.randint(3, 7)):
        sel: dict[str, Any] = {"labels": {"app": f"c{i}"}}
        r = rnd.random()
        if r < 0.6:
            sel["namespace"] = rnd.choice(namespaces)
        elif r < 0.8:
            sel["namespaces"] = sorted(rnd.sample(namespaces, 2))
        else:
            sel["namespaceLabels"] = {"team": rnd.choice(["x", "y"])}
        if rnd.random() < 0.3:
            sel["matchExpressions"] = [{"key": "canary", "operator": "DoesNotExist"}]
        if rnd.random() < 0.2 and "namespace" in sel:
            sel["namespaceLabels"] = {"tier": "t"}
        comps[f"c{i}"] = sel
    if rnd.random() < 0.5:
        comps["corp"] = {"cidrs": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}
    if rnd.random() < 0.7:
        comps["internet"] = {"entities": ["world"]}
    if rnd.random() < 0.4:
        comps["apiserver"] = {"entities": ["kube-apiserver"]}
    names = list(comps)
    pods = [n for n in names if n.startswith("c")]
    rules = []
    for _ in range(rnd.randint(2, 8)):
        src = rnd.sample(names, rnd.randint(1, 2))
        dst = rnd.sample(names, rnd.randint(1, 2))
        if not any(n in pods for n in (*src, *dst)):
            src = [rnd.choice(pods)]
        rules.append({"from": src, "to": dst, "ports": rnd.sample(PORT_POOL, rnd.randint(1, 3))})
    return {
        "apiVersion": "flow-auditor/v1alpha1",
        "kind": "CommunicationMatrix",
        "metadata": {"name": f"random-{seed}"},
        "scope": {"namespaces": scope},
        "components": comps,
        "allow": rules,
    }


def describe(result: Any) -> str:
    return "\n".join(
        f"{e.kind} {e.source} -> {e.destination} {e.ports} [{e.announced}]" for e in result.edges
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_cilium_round_trip_of_random_matrices_has_no_difference(seed: int) -> None:
    # Exact, except where the world entity also covers a CIDR component the matrix names first: Cilium
    # cannot say "the world but not that CIDR" with an entity; generate announces it and diff says so.
    doc = random_matrix(seed)
    matrix = compile_doc(doc)
    result = diff(generate(matrix, "cilium"), matrix)
    if not {"corp", "internet"} <= set(doc["components"]):
        assert result.edges == [], describe(result)
    assert [e for e in result.edges if e.announced is None] == [], describe(result)
    assert all("the world also covers corp" in (e.announced or "") for e in result.edges)


def test_the_random_matrices_cover_what_they_should() -> None:
    docs = [random_matrix(seed) for seed in SEEDS]
    exact = [d for d in docs if not {"corp", "internet"} <= set(d["components"])]
    assert len(exact) >= 4 and len(exact) < len(docs)
    kinds = {k for d in docs for c in d["components"].values() for k in c}
    assert kinds >= {"namespace", "namespaces", "namespaceLabels", "matchExpressions", "cidrs", "entities"}


def test_cilium_round_trip_of_the_example_matrix_has_no_difference() -> None:
    matrix = compile_doc(AIRFLOW_DOC)
    result = diff(generate(matrix, "cilium"), matrix)
    assert (result.edges, result.warnings) == ([], [])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("flavor", ["cilium", "kubernetes"])
def test_generated_policies_pass_strict_validation_without_warnings(seed: int, flavor: Flavor) -> None:
    # No Cilium CRD schema is available offline; the compiler's strict mode (unknown fields, label syntax,
    # one peer kind per rule, L7 only where Cilium accepts it…) is the check generated objects must pass.
    matrix = compile_doc(random_matrix(seed))
    cluster = compile_cluster(generate(matrix, flavor), strict=True)
    assert list(cluster.notes) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_kubernetes_round_trip_differences_are_all_announced(seed: int) -> None:
    matrix = compile_doc(random_matrix(seed))
    generation = build(matrix, "kubernetes")
    result = diff(generation.objects, matrix)
    unannounced = [e for e in result.edges if e.announced is None]
    assert unannounced == [], describe(result)
    for edge in result.edges:  # the label quotes a note generate printed
        assert edge.announced in {n for obj in generation.objects for n in _notes(obj)}


def _notes(obj: dict[str, Any]) -> list[str]:
    text = obj["metadata"]["annotations"].get("flow-auditor.io/notes", "")
    return [text, *text.split("; ")] if text else []


def test_kubernetes_round_trip_labels_a_known_widening() -> None:
    # An FQDN component becomes 0.0.0.0/0 and ::/0 in a NetworkPolicy: wider, and announced.
    doc = copy.deepcopy(AIRFLOW_DOC)
    doc["components"] = {"pypi": {"fqdns": ["pypi.org"]}, **doc["components"]}
    doc["allow"].append({"from": "worker", "to": "pypi", "ports": ["8443/TCP"]})
    matrix = compile_doc(doc)
    result = diff(generate(matrix, "kubernetes"), matrix)
    assert all(e.announced for e in result.edges), describe(result)
    by_edge = {(e.source, e.destination): e for e in result.edges}
    # The ipBlock for pypi.org stands for every address: worker reaches the whole world on 8443.
    assert str(by_edge["worker", "internet"].ports) == "8443/TCP"
    assert "FQDNs (pypi.org) have no NetworkPolicy equivalent" in (
        by_edge["worker", "internet"].announced or ""
    )
    # And the world rule (443) covers pypi.org, which the matrix names first.
    assert "the world also covers pypi" in (by_edge["scheduler", "pypi"].announced or "")


# ==================================================================================================
# Mutations: dropping or adding any one edge or port is detected


def mutations(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], str, str]]:
    """(description, mutated matrix, source, destination) for every edge and port dropped, plus one
    port added to every edge and one new edge."""
    out = []
    for i, rule in enumerate(doc["allow"]):
        srcs = rule["from"] if isinstance(rule["from"], list) else [rule["from"]]
        dsts = rule["to"] if isinstance(rule["to"], list) else [rule["to"]]
        for s in srcs:
            for d in dsts:
                m = copy.deepcopy(doc)
                m["allow"][i]["from"], m["allow"][i]["to"] = [s], [d]
                others = [(a, b) for a in srcs for b in dsts if (a, b) != (s, d)]
                m["allow"].extend({"from": [a], "to": [b], "ports": rule["ports"]} for a, b in others)
                dropped = copy.deepcopy(m)
                del dropped["allow"][i]
                out.append((f"drop edge {s}->{d} of rule {i + 1}", dropped, s, d))
                added = copy.deepcopy(m)
                added["allow"][i]["ports"] = [*rule["ports"], "4444/TCP"]
                out.append((f"add 4444/TCP to {s}->{d}", added, s, d))
        if len(rule["ports"]) > 1:
            for j, port in enumerate(rule["ports"]):
                m = copy.deepcopy(doc)
                m["allow"][i]["ports"] = [p for k, p in enumerate(rule["ports"]) if k != j]
                out.append((f"drop port {port} of rule {i + 1}", m, srcs[0], dsts[0]))
    return out


def _check_mutation(
    original: Matrix, policies: list[dict[str, Any]], mutated_doc: dict[str, Any], src: str, dst: str
) -> str | None:
    """``None`` when diff reports the mutated edge; "unchanged" when the mutation cannot be seen: it
    changes nothing the matrix means (another rule covers that edge and port), neither end has a pod in a
    scoped namespace (no policy of the matrix applies), or an end is the node (not compared)."""
    mutated = compile_doc(mutated_doc)
    if expected_ports(original, src, dst)[0] == expected_ports(mutated, src, dst)[0]:
        return "unchanged"
    scope = original.scope_namespaces or frozenset()
    in_scope = {
        p.name for p in probes(original) if isinstance(p.subject, Pod) and p.subject.namespace in scope
    }
    if not ({src, dst} & in_scope) or "kubelet" in (src, dst):
        return "unchanged"
    result = diff(policies, mutated)
    if not any(e.source == src and e.destination == dst for e in result.edges):
        return f"not detected: {describe(result)}"
    return None


def test_every_single_edge_and_port_mutation_of_the_example_matrix_is_detected() -> None:
    original = compile_doc(AIRFLOW_DOC)
    policies = generate(original, "cilium")
    checked, failures = 0, []
    for what, doc, src, dst in mutations(AIRFLOW_DOC):
        outcome = _check_mutation(original, policies, doc, src, dst)
        if outcome == "unchanged":
            continue
        checked += 1
        if outcome is not None:
            failures.append(f"{what}: {outcome}")
    assert not failures, "\n".join(failures)
    assert checked >= 50  # every edge dropped and extended, every port of multi-port rules dropped


def test_a_new_edge_is_detected() -> None:
    original = compile_doc(AIRFLOW_DOC)
    doc = copy.deepcopy(AIRFLOW_DOC)
    doc["allow"].append({"from": "triggerer", "to": "redis", "ports": ["6379/TCP"]})
    result = diff(generate(original, "kubernetes"), compile_doc(doc))
    assert [(e.kind, e.source, e.destination, str(e.ports)) for e in result.edges] == [
        ("expected_denied", "triggerer", "redis", "6379/TCP")
    ]


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_mutations_of_random_matrices_are_detected(seed: int) -> None:
    doc = random_matrix(seed)
    original = compile_doc(doc)
    policies = generate(original, "cilium")
    failures = []
    for what, mutated, src, dst in mutations(doc)[:30]:
        outcome = _check_mutation(original, policies, mutated, src, dst)
        if outcome not in (None, "unchanged"):
            failures.append(f"{what}: {outcome}")
    assert not failures, "\n".join(failures)


EDGE_DOC: dict[str, Any] = {
    "apiVersion": "flow-auditor/v1alpha1",
    "kind": "CommunicationMatrix",
    "metadata": {"name": "edge"},
    "scope": {"namespaces": ["web"]},
    "components": {
        "frontend": {"namespace": "web", "labels": {"app": "frontend"}},
        "backend": {"namespace": "web", "labels": {"app": "backend"}},
        "s3": {"fqdns": ["*.s3.amazonaws.com"]},
        "dns": {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
    },
    "allow": [
        {"from": "frontend", "to": "backend", "ports": [9000, "ICMP"]},
        {"from": "backend", "to": "s3", "ports": [443]},
        {"from": "backend", "to": "dns", "ports": ["53/UDP"]},
    ],
}


def test_an_edge_is_announced_only_when_every_port_of_it_is() -> None:
    matrix = compile_doc(EDGE_DOC)
    objects = generate(matrix, "kubernetes")
    result = diff(objects, matrix)
    # ICMP cannot be written in a NetworkPolicy: announced ("rule 1: ICMP cannot be expressed…").
    assert [
        (e.kind, e.source, e.destination, str(e.ports)) for e in result.edges if e.destination == "backend"
    ] == [("expected_denied", "frontend", "backend", "ICMPv4, ICMPv6")]
    assert all(e.announced for e in result.edges)
    # Break 9000 as well: the edge now has a port no note announces.
    backend = next(o for o in objects if o["metadata"]["name"] == "edge-backend")
    backend["spec"]["ingress"] = []
    edge = next(e for e in diff(objects, matrix).edges if e.destination == "backend")
    assert (str(edge.ports), edge.announced) == ("9000/TCP, ICMPv4, ICMPv6", None)


def test_a_single_label_fqdn_pattern_is_narrower_than_a_matrix_wildcard() -> None:
    # In the matrix "*.s3.amazonaws.com" matches names at any depth; in Cilium "*" never crosses a dot, so
    # a policy with matchPattern "*.s3.amazonaws.com" misses a.probe.s3.amazonaws.com.
    matrix = compile_doc(EDGE_DOC)
    objects = generate(matrix, "cilium")
    backend = next(o for o in objects if o["metadata"]["name"] == "edge-backend")
    for rule in backend["spec"]["egress"]:
        for sel in rule.get("toFQDNs", []):
            sel["matchPattern"] = sel["matchPattern"].replace("**.", "*.")
    assert diff(generate(matrix, "cilium"), matrix).edges == []
    edges = [(e.kind, e.source, e.destination, str(e.ports)) for e in diff(objects, matrix).edges]
    assert edges == [("expected_denied", "backend", "s3", "443/TCP")]
