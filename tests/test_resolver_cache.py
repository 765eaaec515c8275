"""The classifier's cached resolution of endpoints equals the matrix's uncached resolver.

Property test with fixed seeds: random matrices (every selector kind, with and without an address part,
in random order) and random streams of endpoints that reuse identity numbers with other labels, namespaces
and workloads, reserved and CIDR identities, identity 0, and addresses/DNS names that differ between flows
of one identity. For every flow, ``Auditor.component`` must name the same component as
``Matrix.resolve``, whatever the cache holds.
"""

from __future__ import annotations

import json
import random

import msgspec
import pytest

from auditor.classify import Auditor
from auditor.matrix import Matrix, parse_matrix
from auditor.model import Endpoint, Workload

NAMESPACES = ("airflow", "monitoring", "default", "kube-system")
LABELS = {"app": ("web", "db", "cache"), "tier": ("front", "back"), "team": ("a", "b")}
ENTITY_SETS = (
    ("reserved:world",),
    ("reserved:host",),
    ("reserved:host", "reserved:kube-apiserver"),
    ("reserved:remote-node",),
    ("reserved:kube-apiserver", "reserved:remote-node"),
    ("reserved:world", "reserved:kube-apiserver"),
    ("reserved:health",),
)
IPS = ("10.0.0.5", "10.0.1.7", "192.0.2.10", "198.51.100.3", "2001:db8::5", "")
NAMES = ((), ("api.example.com",), ("db.internal.example.org",), ("x.example.com", "api.example.com"))


def random_selector(rng: random.Random) -> dict[str, object]:
    kinds = rng.sample(
        [
            "namespace",
            "labels",
            "matchExpressions",
            "namespaceLabels",
            "serviceAccount",
            "workload",
            "entities",
            "cidrs",
            "fqdns",
        ],
        k=rng.choice((1, 1, 2, 3)),
    )
    sel: dict[str, object] = {}
    for kind in kinds:
        if kind == "namespace":
            sel["namespace"] = rng.choice(NAMESPACES)
        elif kind == "labels":
            key = rng.choice(sorted(LABELS))
            sel["labels"] = {key: rng.choice(LABELS[key])}
        elif kind == "matchExpressions":
            key = rng.choice(sorted(LABELS))
            op = rng.choice(("In", "NotIn", "Exists", "DoesNotExist"))
            expr: dict[str, object] = {"key": key, "operator": op}
            if op in ("In", "NotIn"):
                expr["values"] = rng.sample(LABELS[key], k=1)
            sel["matchExpressions"] = [expr]
        elif kind == "namespaceLabels":
            sel["namespaceLabels"] = {"name": rng.choice(NAMESPACES)}
        elif kind == "serviceAccount":
            sel["serviceAccount"] = rng.choice(("sa-a", "sa-b"))
        elif kind == "workload":
            sel["workload"] = {"kind": "Deployment", "name": rng.choice(("w1", "w2"))}
        elif kind == "entities":
            sel["entities"] = rng.sample(["world", "host", "remote-node", "kube-apiserver", "health"], k=2)
        elif kind == "cidrs":
            sel["cidrs"] = rng.choice(
                (
                    ["10.0.0.0/16"],
                    [{"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}],
                    ["192.0.2.0/24"],
                    ["2001:db8::/32"],
                )
            )
        else:
            sel["fqdns"] = rng.choice((["api.example.com"], ["*.example.com"], ["*.internal.example.org"]))
    return sel


def random_matrix(rng: random.Random) -> Matrix:
    components = {f"c{i}": random_selector(rng) for i in range(rng.randint(1, 8))}
    doc = {
        "apiVersion": "flow-auditor/v1alpha1",
        "kind": "CommunicationMatrix",
        "metadata": {"name": "random"},
        "components": components,
        "allow": [],
    }
    return parse_matrix(json.dumps(doc), "random.yaml")


def random_endpoint(rng: random.Random) -> Endpoint:
    shape = rng.random()
    if shape < 0.2:
        labels = rng.choice(ENTITY_SETS)
        reserved = {"reserved:world": 2, "reserved:host": 1, "reserved:remote-node": 6, "reserved:health": 4}
        identity = rng.choice((0, reserved.get(labels[0], 7), 16777217 + rng.randint(0, 3)))
        if "reserved:kube-apiserver" in labels and rng.random() < 0.5:
            identity = 7
        return Endpoint(identity=identity, labels=tuple(sorted(labels)))
    namespace = rng.choice(NAMESPACES)
    labels = [f"k8s:{k}={rng.choice(v)}" for k, v in LABELS.items() if rng.random() < 0.7]
    labels.append(f"k8s:io.cilium.k8s.namespace.labels.name={rng.choice(NAMESPACES)}")
    labels.append(f"k8s:io.cilium.k8s.policy.serviceaccount={rng.choice(('sa-a', 'sa-b'))}")
    if rng.random() < 0.7:  # Hubble may give the namespace without the label (field masks, remote endpoints)
        labels.append(f"k8s:io.kubernetes.pod.namespace={namespace}")
    workloads = (Workload("Deployment", rng.choice(("w1", "w2"))),) if rng.random() < 0.6 else ()
    # A small identity pool: the same number comes back with other labels, as after identity reuse.
    identity = rng.choice((0, 300, 301, 302, 303))
    return Endpoint(identity=identity, namespace=namespace, labels=tuple(sorted(labels)), workloads=workloads)


@pytest.mark.parametrize("seed", range(20))
def test_cached_resolution_equals_the_uncached_resolver(seed: int) -> None:
    rng = random.Random(seed)
    matrix = random_matrix(rng)
    auditor = Auditor(matrix)
    endpoints = [random_endpoint(rng) for _ in range(40)]
    # Identity reuse that only the namespace or the workload tells apart.
    for ep in endpoints[:10]:
        endpoints.append(msgspec.structs.replace(ep, namespace=rng.choice(NAMESPACES)))
        endpoints.append(
            msgspec.structs.replace(ep, workloads=(Workload("Deployment", rng.choice(("w1", "w2"))),))
        )
    for _ in range(1500):
        ep = rng.choice(endpoints)
        ip, names = rng.choice(IPS), rng.choice(NAMES)
        assert auditor.component(ep, ip, names) == matrix.resolve(ep, ip, names), (seed, ep, ip, names)


def test_the_generator_reaches_every_kind_of_answer() -> None:
    """The property above is only as good as its inputs: components, entities and ns: fallbacks all occur."""
    answers: set[str] = set()
    for seed in range(20):
        rng = random.Random(seed)
        matrix = random_matrix(rng)
        endpoints = [random_endpoint(rng) for _ in range(40)]
        for _ in range(300):
            answers.add(matrix.resolve(rng.choice(endpoints), rng.choice(IPS), rng.choice(NAMES)))
    assert {"world", "host", "remote-node", "kube-apiserver"} <= answers
    assert any(a.startswith("ns:") for a in answers) and any(a.startswith("c") for a in answers)


@pytest.mark.parametrize("grows", [True, False], ids=["label added", "label removed"])
def test_an_identity_whose_label_set_gains_or_loses_its_last_label_is_resolved_again(grows: bool) -> None:
    """The cache checks an identity's labels on every use; a set that is the other's prefix is not equal."""
    doc = {
        "apiVersion": "flow-auditor/v1alpha1",
        "kind": "CommunicationMatrix",
        "metadata": {"name": "prefix"},
        "components": {"front": {"namespace": "a", "labels": {"app": "web", "tier": "front"}}},
        "allow": [],
    }
    matrix = parse_matrix(json.dumps(doc), "prefix.yaml")
    short = Endpoint(identity=300, namespace="a", labels=("k8s:app=web",))
    long = Endpoint(identity=300, namespace="a", labels=("k8s:app=web", "k8s:tier=front"))
    first, then = (short, long) if grows else (long, short)
    auditor = Auditor(matrix)
    assert auditor.component(first, "10.0.0.1", ()) == matrix.resolve(first, "10.0.0.1", ())
    assert auditor.component(then, "10.0.0.1", ()) == matrix.resolve(then, "10.0.0.1", ())
    assert {matrix.resolve(short, "10.0.0.1", ()), matrix.resolve(long, "10.0.0.1", ())} == {"front", "ns:a"}
