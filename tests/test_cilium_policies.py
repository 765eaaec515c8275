"""The CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy evaluator, and mixed clusters.

Every case states the rule of Cilium's policy language it pins (documentation: Policy Enforcement Modes,
Layer 3/4/7 policies, Deny policies, Kubernetes namespaces; ``enableDefaultDeny`` in the CRD reference),
and the expected verdict follows from that sentence, not from the code.
"""

from __future__ import annotations

from typing import Any

import pytest

from auditor.kube.checks import PolicyError
from auditor.kube.cluster import Cluster, compile_cluster
from auditor.kube.model import External, Node, Pod, Reserved, Subject

WEB = Pod("shop", {"app": "web"}, {"team": "shop"})
DB = Pod("shop", {"app": "db"}, {"team": "shop"}, named_ports={"pg": ("TCP", 5432)})
OTHER = Pod("shop", {"app": "other"}, {"team": "shop"})
DEV = Pod("dev", {"app": "web"}, {"team": "dev"})
MON = Pod("monitoring", {"app": "prom"}, {"team": "obs"})
WORLD = External("203.0.113.10")
WORLD6 = External("2001:db8::10")
CORP = External("10.2.3.4")
CORP_EXCEPT = External("10.1.0.1")
VAULT = External("", ("vault.example.com",))
S3 = External("", ("bucket.s3.amazonaws.com",))
S3_DEEP = External("", ("a.bucket.s3.amazonaws.com",))
NODE = Node()
APISERVER = Reserved("kube-apiserver")
REMOTE = Reserved("remote-node")


def cnp(spec: dict[str, Any], name: str = "p", namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def ccnp(spec: dict[str, Any], name: str = "c") -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def knp(spec: dict[str, Any], name: str = "k", namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def db_ingress(rule: dict[str, Any]) -> dict[str, Any]:
    return cnp({"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [rule]})


def web_egress(rule: dict[str, Any]) -> dict[str, Any]:
    return cnp({"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": [rule]})


def allows(cluster: Cluster, src: Subject, dst: Subject, proto: str = "TCP", port: int = 5432) -> bool:
    return cluster.allows(src, dst, proto, port)


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


# ==================================================================================================
# L4 and L7

PORT_CASES: list[tuple[str, dict[str, Any], str, int, bool]] = [
    (
        "a port without protocol: every transport protocol (ANY)",
        {"ports": [{"port": "53"}]},
        "SCTP",
        53,
        True,
    ),
    ("protocol ANY: UDP", {"ports": [{"port": "53", "protocol": "ANY"}]}, "UDP", 53, True),
    ("protocol TCP: not UDP", {"ports": [{"port": "53", "protocol": "TCP"}]}, "UDP", 53, False),
    ("toPorts never allows ICMP", {"ports": [{"port": "0", "protocol": "ANY"}]}, "ICMPv4", 0, False),
    ("port 0: every port", {"ports": [{"port": "0", "protocol": "TCP"}]}, "TCP", 65535, True),
    ("endPort: inside", {"ports": [{"port": "8000", "endPort": 8010, "protocol": "TCP"}]}, "TCP", 8005, True),
    ("endPort: above", {"ports": [{"port": "8000", "endPort": 8010, "protocol": "TCP"}]}, "TCP", 8011, False),
    (
        "a numeric port may be written as a number",
        {"ports": [{"port": 5432, "protocol": "TCP"}]},
        "TCP",
        5432,
        True,
    ),
    (
        "a named port is resolved on the destination pod",
        {"ports": [{"port": "pg", "protocol": "TCP"}]},
        "TCP",
        5432,
        True,
    ),
    ("a named port: another number", {"ports": [{"port": "pg", "protocol": "TCP"}]}, "TCP", 5433, False),
]


@pytest.mark.parametrize(
    ("port_rule", "proto", "port", "expected"), [c[1:] for c in PORT_CASES], ids=[c[0] for c in PORT_CASES]
)
def test_to_ports(port_rule: dict[str, Any], proto: str, port: int, expected: bool) -> None:
    cluster = compile_cluster([db_ingress({"fromEndpoints": [{}], "toPorts": [port_rule]})])
    assert allows(cluster, WEB, DB, proto, port) is expected


def test_a_rule_without_ports_allows_every_protocol_including_icmp() -> None:
    cluster = compile_cluster([db_ingress({"fromEndpoints": [{}]})])
    assert allows(cluster, WEB, DB, "ICMPv6", 0) and allows(cluster, WEB, DB, "UDP", 1)


def test_icmps_allow_the_echo_request_of_their_family() -> None:
    cluster = compile_cluster(
        [db_ingress({"fromEndpoints": [{}], "icmps": [{"fields": [{"type": 8, "family": "IPv4"}]}]})]
    )
    assert allows(cluster, WEB, DB, "ICMPv4", 0)
    assert allows(cluster, WEB, DB, "ICMPv4", 5432)  # an echo request: the port asked about is ignored
    assert not allows(cluster, WEB, DB, "ICMPv6", 0)
    assert not allows(cluster, WEB, DB, "TCP", 80)


def test_an_unresolvable_named_port_is_a_warning_naming_the_policy() -> None:
    cluster = compile_cluster(
        [db_ingress({"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "http"}]}]})]
    )
    assert not allows(cluster, WEB, DB, "TCP", 80)
    assert any(
        n.startswith("CiliumNetworkPolicy shop/p: named port 'http' cannot be resolved")
        for n in cluster.notes
    )


def test_l7_rules_allow_the_port_at_l4_and_are_reported_as_l7_restricted() -> None:
    http = {
        "fromEndpoints": [{}],
        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{"method": "GET"}]}}],
    }
    decision = compile_cluster([db_ingress(http)]).evaluate(WEB, DB)
    assert decision.allows("TCP", 80)
    assert str(decision.l7_ports) == "80/TCP"
    # A plain L4 allowance of the same port (another policy) lifts the L7 restriction.
    plain = cnp(
        {
            "endpointSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "80"}]}]}],
        },
        "plain",
    )
    assert not compile_cluster([db_ingress(http), plain]).evaluate(WEB, DB).l7_ports


# ==================================================================================================
# Default deny, deny rules, mixed clusters


def test_an_endpoint_selected_for_ingress_is_isolated_for_ingress_only() -> None:
    cluster = compile_cluster([db_ingress({"fromEndpoints": [{"matchLabels": {"app": "web"}}]})])
    assert not allows(cluster, OTHER, DB)  # ingress default deny
    assert allows(cluster, DB, WORLD, "TCP", 443)  # egress untouched


@pytest.mark.parametrize(
    ("default_deny", "other_allowed"),
    [({"ingress": False}, True), ({"ingress": True}, False), ({}, False)],
    ids=["enableDefaultDeny false: rules only add", "true", "unset: default from the rules"],
)
def test_enable_default_deny(default_deny: dict[str, bool], other_allowed: bool) -> None:
    spec: dict[str, Any] = {
        "endpointSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}],
    }
    if default_deny:
        spec["enableDefaultDeny"] = default_deny
    cluster = compile_cluster([cnp(spec)])
    assert allows(cluster, WEB, DB)
    assert allows(cluster, OTHER, DB) is other_allowed


def test_default_deny_is_on_when_any_policy_asks_for_it() -> None:
    # "If multiple policies apply to an endpoint, that endpoint's default deny will be enabled if any
    # policy requests it."
    additive = cnp(
        {
            "endpointSelector": {},
            "enableDefaultDeny": {"ingress": False},
            "ingress": [{"fromEntities": ["world"]}],
        },
        "add",
    )
    strict = cnp(
        {
            "endpointSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}],
        },
        "strict",
    )
    cluster = compile_cluster([additive, strict])
    assert allows(cluster, WORLD, DB) and allows(cluster, WEB, DB)
    assert not allows(cluster, OTHER, DB)
    assert allows(cluster, OTHER, WEB)  # web: only the additive policy selects it


def test_an_empty_ingress_list_does_not_isolate() -> None:
    cluster = compile_cluster([cnp({"endpointSelector": {}, "ingress": []})])
    assert allows(cluster, WORLD, DB)


def test_deny_wins_over_every_allow() -> None:
    allow_all = cnp({"endpointSelector": {}, "ingress": [{"fromEntities": ["all"]}]}, "all")
    deny_web = cnp(
        {
            "endpointSelector": {"matchLabels": {"app": "db"}},
            "ingressDeny": [
                {
                    "fromEndpoints": [{"matchLabels": {"app": "web"}}],
                    "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}],
                }
            ],
        },
        "deny",
    )
    cluster = compile_cluster([allow_all, deny_web])
    assert not allows(cluster, WEB, DB, "TCP", 5432)
    assert allows(cluster, WEB, DB, "TCP", 5433)
    assert allows(cluster, OTHER, DB, "TCP", 5432)
    assert cluster.evaluate(WEB, DB).denied_by("TCP", 5432) == ("cnp:shop/deny",)


def test_a_deny_only_policy_puts_the_endpoint_in_default_deny() -> None:
    # Unset enableDefaultDeny defaults to true for a direction that has rules, IngressDeny included.
    deny = cnp(
        {"endpointSelector": {"matchLabels": {"app": "db"}}, "ingressDeny": [{"fromEntities": ["world"]}]}
    )
    cluster = compile_cluster([deny])
    assert not allows(cluster, WORLD, DB) and not allows(cluster, WEB, DB)


def test_egress_deny() -> None:
    allow_all = cnp({"endpointSelector": {}, "egress": [{"toEntities": ["all"]}]}, "all")
    deny = cnp(
        {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "egressDeny": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}],
        },
        "deny",
    )
    cluster = compile_cluster([allow_all, deny])
    assert (
        not allows(cluster, WEB, CORP) and allows(cluster, WEB, CORP_EXCEPT) and allows(cluster, WEB, WORLD)
    )


def test_mixed_a_networkpolicy_and_a_cilium_policy_add_up() -> None:
    # db is isolated by the NetworkPolicy (ingress from web on 5432); a Cilium policy adds 9187 from mon.
    k = knp(
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}
            ],
        }
    )
    c = db_ingress(
        {
            "fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "monitoring"}}],
            "toPorts": [{"ports": [{"port": "9187"}]}],
        }
    )
    cluster = compile_cluster([k, c])
    assert allows(cluster, WEB, DB, "TCP", 5432) and allows(cluster, MON, DB, "TCP", 9187)
    assert not allows(cluster, MON, DB, "TCP", 5432) and not allows(cluster, WEB, DB, "TCP", 9187)
    assert not allows(cluster, OTHER, DB)


def test_mixed_a_cilium_deny_beats_a_networkpolicy_allow() -> None:
    k = knp({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]})
    deny = cnp(
        {
            "endpointSelector": {"matchLabels": {"app": "db"}},
            "enableDefaultDeny": {"ingress": False},
            "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}],
        }
    )
    cluster = compile_cluster([k, deny])
    assert not allows(cluster, WEB, DB) and allows(cluster, OTHER, DB)


def test_mixed_a_cilium_policy_isolates_what_no_networkpolicy_selects() -> None:
    k = knp({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]})
    c = db_ingress({"fromEndpoints": [{"matchLabels": {"app": "web"}}]})
    cluster = compile_cluster([k, c])
    assert allows(cluster, WEB, DB) and not allows(cluster, OTHER, DB)


def test_the_local_node_always_reaches_its_pods_and_egress_to_it_needs_a_rule() -> None:
    deny = cnp({"endpointSelector": {}, "ingress": [{}], "egress": [{}]})
    cluster = compile_cluster([deny])
    assert allows(cluster, NODE, DB, "TCP", 8080)
    assert not allows(cluster, DB, NODE, "TCP", 10250)
    host = cnp({"endpointSelector": {}, "egress": [{"toEntities": ["host"]}]}, "host")
    assert allows(compile_cluster([deny, host]), DB, NODE, "TCP", 10250)


# ==================================================================================================
# Invalid manifests: rejected, naming the object and the field

INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "two peer kinds in one rule",
        cnp({"endpointSelector": {}, "ingress": [{"fromEndpoints": [{}], "fromEntities": ["world"]}]}),
        "CiliumNetworkPolicy shop/p: spec.ingress[0]: "
        "Cilium does not accept fromEndpoints and fromEntities in one rule",
    ),
    (
        "an unknown entity",
        cnp({"endpointSelector": {}, "egress": [{"toEntities": ["internet"]}]}),
        "spec.egress[0].toEntities[0]: unknown entity 'internet'",
    ),
    (
        "no selector",
        cnp({"ingress": [{}]}),
        "spec: exactly one of endpointSelector and nodeSelector is required",
    ),
    (
        "nodeSelector in a namespaced policy",
        cnp({"nodeSelector": {}}),
        "only a CiliumClusterwideNetworkPolicy can select nodes",
    ),
    (
        "an invalid label key",
        cnp({"endpointSelector": {"matchLabels": {"app/": "x"}}}),
        "spec.endpointSelector.matchLabels: invalid label key 'app/'",
    ),
    (
        "an invalid label value",
        cnp({"endpointSelector": {"matchLabels": {"app": "-x"}}}),
        "spec.endpointSelector.matchLabels.app: invalid label value '-x'",
    ),
    (
        "an unknown selector operator",
        cnp({"endpointSelector": {"matchExpressions": [{"key": "k8s:app", "operator": "Equals"}]}}),
        "spec.endpointSelector.matchExpressions[0].operator: unknown operator 'Equals'",
    ),
    (
        "NotIn without values",
        cnp({"endpointSelector": {"matchExpressions": [{"key": "k8s:app", "operator": "NotIn"}]}}),
        "spec.endpointSelector.matchExpressions[0].values: operator NotIn needs values",
    ),
    (
        "DoesNotExist with values",
        cnp(
            {
                "endpointSelector": {
                    "matchExpressions": [{"key": "k8s:app", "operator": "DoesNotExist", "values": ["x"]}]
                }
            }
        ),
        "spec.endpointSelector.matchExpressions[0].values: operator DoesNotExist takes no values",
    ),
    (
        "an unknown label source",
        cnp({"endpointSelector": {"matchLabels": {"k9s:app": "x"}}}),
        "unknown label source 'k9s'",
    ),
    (
        "a named port towards an address",
        cnp(
            {
                "endpointSelector": {},
                "egress": [{"toCIDR": ["10.0.0.0/8"], "toPorts": [{"ports": [{"port": "http"}]}]}],
            }
        ),
        "spec.egress[0].toPorts[0].ports[0].port: named port 'http' towards an address",
    ),
    (
        "L7 in a deny rule",
        cnp(
            {
                "endpointSelector": {},
                "ingressDeny": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{}]}}]}],
            }
        ),
        "spec.ingressDeny[0].toPorts[0]: unknown field 'rules'",
    ),
    (
        "DNS rules on ingress",
        cnp(
            {
                "endpointSelector": {},
                "ingress": [
                    {"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": [{"matchPattern": "*"}]}}]}
                ],
            }
        ),
        "spec.ingress[0].toPorts[0].rules.dns: DNS rules apply to egress only",
    ),
    (
        "endPort below port",
        cnp({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "90", "endPort": 80}]}]}]}),
        "endPort must be a number from 90 to 65535",
    ),
    (
        "a CIDR except outside its CIDR",
        cnp(
            {
                "endpointSelector": {},
                "egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}]}],
            }
        ),
        "11.0.0.0/8 is not inside 10.0.0.0/8",
    ),
    (
        "an unknown protocol",
        cnp(
            {
                "endpointSelector": {},
                "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "ICMP"}]}]}],
            }
        ),
        "unknown protocol 'ICMP'",
    ),
    (
        "a misspelt field under --strict",
        cnp({"endpointSelector": {}, "ingres": [{}]}),
        "spec: unknown field 'ingres'",
    ),
    (
        "a NetworkPolicy named port towards an ipBlock",
        knp(
            {
                "podSelector": {},
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": "http"}]}],
            }
        ),
        "NetworkPolicy shop/k: spec.egress[0].ports[0].port: named port 'http' towards an ipBlock",
    ),
    (
        "a NetworkPolicy invalid label key",
        knp({"podSelector": {"matchLabels": {"a b": "x"}}}),
        "NetworkPolicy shop/k: spec.podSelector.matchLabels: invalid label key 'a b'",
    ),
]


@pytest.mark.parametrize(("obj", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_manifests_are_rejected_naming_the_object(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as e:
        compile_cluster([obj], strict=True)
    assert message in str(e.value)


def test_duplicate_names_in_one_namespace_are_rejected_per_kind() -> None:
    with pytest.raises(
        PolicyError,
        match=r"CiliumNetworkPolicy shop/p: metadata\.name: duplicate policy name in this namespace",
    ):
        compile_cluster([cnp({"endpointSelector": {}}), cnp({"endpointSelector": {}})])
    with pytest.raises(PolicyError, match=r"NetworkPolicy shop/k: metadata\.name: duplicate"):
        compile_cluster([knp({"podSelector": {}}), knp({"podSelector": {}})])
    # Same name, other namespace or other kind: fine.
    compile_cluster(
        [
            cnp({"endpointSelector": {}}),
            cnp({"endpointSelector": {}}, namespace="dev"),
            knp({"podSelector": {}}, name="p"),
        ]
    )


def test_unknown_fields_without_strict_are_ignored_with_a_warning() -> None:
    cluster = compile_cluster([cnp({"endpointSelector": {}, "ingres": [{}]})])
    assert allows(cluster, WORLD, DB)  # the misspelt ingress section does not isolate
    assert any("spec: unknown field 'ingres'" in n and "--strict" in n for n in cluster.notes)


def test_constructs_that_depend_on_the_running_cluster_are_warned() -> None:
    cluster = compile_cluster(
        [web_egress({"toServices": [{"k8sService": {"serviceName": "x", "namespace": "y"}}]})]
    )
    assert not allows(cluster, WEB, WORLD)
    assert any("toServices" in n and "not evaluated" in n for n in cluster.notes)


def test_specs_lists_are_evaluated_each() -> None:
    obj = cnp({})
    del obj["spec"]
    obj["specs"] = [
        {
            "endpointSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}],
        },
        {"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"fromEntities": ["world"]}]},
    ]
    cluster = compile_cluster([obj])
    assert allows(cluster, WEB, DB) and allows(cluster, WORLD, DB) and not allows(cluster, OTHER, DB)


def test_a_clusterwide_node_selector_applies_to_the_node_only() -> None:
    # nodeSelector (host firewall) selects nodes; an empty one every node, never a pod.
    host_fw = ccnp({"nodeSelector": {}, "ingress": [{"fromEntities": ["remote-node"]}]})
    cluster = compile_cluster([host_fw])
    assert allows(cluster, REMOTE, NODE, "TCP", 10250)
    assert not allows(cluster, DB, NODE, "TCP", 10250)
    assert allows(cluster, WORLD, DB)  # pods are not selected


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
