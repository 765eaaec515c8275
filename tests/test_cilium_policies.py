"""The CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy evaluator: endpoint selection, L3 peers
(endpoints, namespaces, clusterwide selectors, entities, CIDRs) and ``toFQDNs``, including what it cannot
decide and namespace-label selectors in generated policies. L4/L7, default deny, deny rules and mixed clusters
are in ``tests/test_cilium_ports_and_deny.py``; invalid manifests in ``tests/test_cilium_manifests.py``.

Every case states the rule of Cilium's policy language it pins (documentation: Policy Enforcement Modes,
Layer 3/4/7 policies, Deny policies, Kubernetes namespaces; ``enableDefaultDeny`` in the CRD reference),
and the expected verdict follows from that sentence, not from the code."""

from __future__ import annotations

from typing import Any

import pytest
from cilium_objects import (
    APISERVER,
    CORP,
    CORP_EXCEPT,
    DB,
    DEV,
    MON,
    NODE,
    OTHER,
    REMOTE,
    S3,
    S3_DEEP,
    VAULT,
    WEB,
    WORLD,
    WORLD6,
    allows,
    ccnp,
    cnp,
    db_ingress,
    web_egress,
)

from auditor.kube.cluster import compile_cluster
from auditor.kube.model import Pod, Subject

# ==================================================================================================
# Selection and L3 peers

INGRESS_PEERS: list[tuple[str, dict[str, Any], Subject, bool]] = [
    (
        "fromEndpoints selects pods of the policy's namespace",
        {"fromEndpoints": [{"matchLabels": {"app": "web"}}]},
        WEB,
        True,
    ),
    (
        "fromEndpoints without namespace key: not another namespace",
        {"fromEndpoints": [{"matchLabels": {"app": "web"}}]},
        DEV,
        False,
    ),
    (
        "an empty endpoint selector in a namespaced policy: every pod of the namespace",
        {"fromEndpoints": [{}]},
        OTHER,
        True,
    ),
    (
        "an empty endpoint selector in a namespaced policy: not other namespaces",
        {"fromEndpoints": [{}]},
        DEV,
        False,
    ),
    ("an empty endpoint selector never selects the world", {"fromEndpoints": [{}]}, WORLD, False),
    (
        "the namespace label opens other namespaces",
        {"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "dev", "app": "web"}}]},
        DEV,
        True,
    ),
    (
        "the namespace label with Exists: any namespace",
        {
            "fromEndpoints": [
                {
                    "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}],
                    "matchLabels": {"app": "prom"},
                }
            ]
        },
        MON,
        True,
    ),
    (
        "namespace labels with a namespace key: the labelled namespace",
        {
            "fromEndpoints": [
                {
                    "matchLabels": {"k8s:io.cilium.k8s.namespace.labels.team": "obs"},
                    "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}],
                }
            ]
        },
        MON,
        True,
    ),
    (
        "matchExpressions NotIn with the k8s source",
        {
            "fromEndpoints": [
                {"matchExpressions": [{"key": "k8s:app", "operator": "NotIn", "values": ["web"]}]}
            ]
        },
        WEB,
        False,
    ),
    (
        "a key without source matches the k8s label (any source)",
        {"fromEndpoints": [{"matchLabels": {"any:app": "web"}}]},
        WEB,
        True,
    ),
    (
        "a reserved label selects the node",
        {"fromEndpoints": [{"matchLabels": {"reserved:host": ""}}]},
        NODE,
        True,
    ),
    ("fromEntities world: an outside address", {"fromEntities": ["world"]}, WORLD, True),
    ("fromEntities world: not a pod", {"fromEntities": ["world"]}, WEB, False),
    ("fromEntities world-ipv4: not an IPv6 address", {"fromEntities": ["world-ipv4"]}, WORLD6, False),
    ("fromEntities world-ipv6: an IPv6 address", {"fromEntities": ["world-ipv6"]}, WORLD6, True),
    ("fromEntities cluster: a pod of any namespace", {"fromEntities": ["cluster"]}, MON, True),
    ("fromEntities cluster: remote nodes", {"fromEntities": ["cluster"]}, REMOTE, True),
    ("fromEntities cluster: not the world", {"fromEntities": ["cluster"]}, WORLD, False),
    ("fromEntities all: the world too", {"fromEntities": ["all"]}, WORLD6, True),
    ("fromEntities remote-node", {"fromEntities": ["remote-node"]}, REMOTE, True),
    ("fromEntities host: not a remote node", {"fromEntities": ["host"]}, REMOTE, False),
    ("fromEntities kube-apiserver", {"fromEntities": ["kube-apiserver"]}, APISERVER, True),
    ("fromCIDR: inside", {"fromCIDR": ["10.0.0.0/8"]}, CORP, True),
    ("fromCIDR: outside", {"fromCIDR": ["10.0.0.0/8"]}, WORLD, False),
    (
        "fromCIDR never matches a pod (CIDR rules are for outside the cluster)",
        {"fromCIDR": ["0.0.0.0/0"]},
        Pod("dev", {}, ip="10.2.3.4"),
        False,
    ),
    (
        "fromCIDRSet: inside, outside except",
        {"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]},
        CORP,
        True,
    ),
    (
        "fromCIDRSet: inside except",
        {"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]},
        CORP_EXCEPT,
        False,
    ),
    ("an empty rule allows nothing", {}, WEB, False),
    ("a rule with only toPorts: every peer", {"toPorts": [{"ports": [{"port": "5432"}]}]}, WORLD, True),
    ("an empty toPorts list is no L4 part (every port)", {"fromEndpoints": [{}], "toPorts": []}, WEB, True),
    (
        "an empty fromEndpoints list is no L3 part",
        {"fromEndpoints": [], "toPorts": [{"ports": [{"port": "5432"}]}]},
        WORLD,
        True,
    ),
]


@pytest.mark.parametrize(
    ("rule", "src", "expected"), [c[1:] for c in INGRESS_PEERS], ids=[c[0] for c in INGRESS_PEERS]
)
def test_ingress_peers(rule: dict[str, Any], src: Subject, expected: bool) -> None:
    assert allows(compile_cluster([db_ingress(rule)]), src, DB) is expected


CLUSTERWIDE: list[tuple[str, dict[str, Any], Subject, Subject, bool]] = [
    (
        "a clusterwide endpointSelector selects pods of every namespace",
        {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]},
        WORLD,
        DEV,
        False,
    ),
    (
        "a clusterwide selector without namespace key: pods of every namespace",
        {"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "prom"}}]}]},
        MON,
        DB,
        True,
    ),
    (
        "a clusterwide empty selector: every pod, not the world",
        {"endpointSelector": {}, "ingress": [{"fromEndpoints": [{}]}]},
        WORLD,
        DB,
        False,
    ),
    (
        "a clusterwide namespace-label selector",
        {
            "endpointSelector": {},
            "ingress": [
                {"fromEndpoints": [{"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.team": "obs"}}]}
            ],
        },
        MON,
        DB,
        True,
    ),
    (
        "a clusterwide namespace-label selector: another namespace",
        {
            "endpointSelector": {},
            "ingress": [
                {"fromEndpoints": [{"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.team": "obs"}}]}
            ],
        },
        DEV,
        DB,
        False,
    ),
]


@pytest.mark.parametrize(
    ("spec", "src", "dst", "expected"), [c[1:] for c in CLUSTERWIDE], ids=[c[0] for c in CLUSTERWIDE]
)
def test_clusterwide_policies(spec: dict[str, Any], src: Subject, dst: Subject, expected: bool) -> None:
    assert allows(compile_cluster([ccnp(spec)]), src, dst) is expected


def test_a_namespaced_endpoint_selector_never_leaves_its_namespace() -> None:
    # "The endpointSelector always applies to pods of the namespace associated with the policy."
    cluster = compile_cluster([cnp({"endpointSelector": {}, "ingress": [{}]})])
    assert not allows(cluster, WORLD, DB)
    assert allows(cluster, WORLD, DEV)


def test_a_namespace_label_selector_in_a_namespaced_policy_is_evaluated_as_the_code_does_and_warned() -> None:
    rule = {"fromEndpoints": [{"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.team": "obs"}}]}
    cluster = compile_cluster([db_ingress(rule)])
    assert allows(cluster, MON, DB)
    assert any("documentation supports it in clusterwide policies only" in n for n in cluster.notes)


def test_generated_cilium_peers_with_namespace_labels_always_name_the_namespace_key() -> None:
    # Cilium's docs and code disagree on namespace-label selectors without the namespace key inside a
    # namespaced policy; generate must never write one.
    from auditor.kube.policies import generate
    from auditor.matrix import parse_matrix

    matrix = parse_matrix(
        "apiVersion: flow-auditor/v1alpha1\nkind: CommunicationMatrix\nmetadata: {name: m}\n"
        "scope: {namespaces: [shop]}\ncomponents:\n"
        "  db: {namespace: shop, labels: {app: db}}\n"
        "  scraper: {namespaceLabels: {team: obs}, labels: {app: scraper}}\n"
        "allow:\n  - {from: scraper, to: db, ports: [9100]}\n  - {from: db, to: scraper, ports: [53]}\n"
    )
    selectors = [
        sel
        for obj in generate(matrix, "cilium")
        for direction in ("ingress", "egress")
        for rule in obj["spec"].get(direction, [])
        for sel in rule.get("fromEndpoints", rule.get("toEndpoints", []))
    ]
    with_ns_labels = [s for s in selectors if any("namespace.labels" in k for k in s.get("matchLabels", {}))]
    assert len(with_ns_labels) == 2
    for sel in with_ns_labels:
        keys = {*sel.get("matchLabels", {}), *(e["key"] for e in sel.get("matchExpressions", []))}
        assert "k8s:io.kubernetes.pod.namespace" in keys
    cluster = compile_cluster(generate(matrix, "cilium"))
    assert not any("namespace-label selector" in n for n in cluster.notes)


# ==================================================================================================
# FQDNs (egress)

FQDN_CASES: list[tuple[str, list[dict[str, str]], Subject, bool]] = [
    ("matchName: the name", [{"matchName": "vault.example.com"}], VAULT, True),
    ("matchName: case and trailing dot do not matter", [{"matchName": "Vault.Example.com."}], VAULT, True),
    ("matchName: another name", [{"matchName": "vault.example.org"}], VAULT, False),
    ("matchPattern '*.d': one label", [{"matchPattern": "*.s3.amazonaws.com"}], S3, True),
    (
        "matchPattern '*.d': not two labels (a '*' never crosses a dot)",
        [{"matchPattern": "*.s3.amazonaws.com"}],
        S3_DEEP,
        False,
    ),
    ("matchPattern '**.d': any depth", [{"matchPattern": "**.s3.amazonaws.com"}], S3_DEEP, True),
    ("matchPattern '*': every name", [{"matchPattern": "*"}], VAULT, True),
    ("toFQDNs never matches an address known only by IP", [{"matchPattern": "*"}], WORLD, False),
]


@pytest.mark.parametrize(
    ("fqdns", "dst", "expected"), [c[1:] for c in FQDN_CASES], ids=[c[0] for c in FQDN_CASES]
)
def test_to_fqdns(fqdns: list[dict[str, str]], dst: Subject, expected: bool) -> None:
    cluster = compile_cluster(
        [web_egress({"toFQDNs": fqdns, "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]})]
    )
    assert allows(cluster, WEB, dst, "TCP", 443) is expected


def test_what_fqdns_cannot_decide_is_said() -> None:
    # Whether vault.example.com resolves into 10.0.0.0/8 is not known statically; without a DNS rule,
    # Cilium never learns the name's addresses at all.
    cluster = compile_cluster(
        [
            web_egress({"toCIDR": ["10.0.0.0/8"]}),
            cnp(
                {
                    "endpointSelector": {"matchLabels": {"app": "web"}},
                    "egress": [{"toFQDNs": [{"matchName": "vault.example.com"}]}],
                },
                "f",
            ),
        ]
    )
    assert allows(cluster, WEB, VAULT, "TCP", 8200)  # by toFQDNs
    notes = list(cluster.notes)
    assert any(
        "whether vault.example.com resolves into 10.0.0.0/8" in n and "cannot be decided statically" in n
        for n in notes
    )
    assert any("toFQDNs without a DNS rule" in n for n in notes)
