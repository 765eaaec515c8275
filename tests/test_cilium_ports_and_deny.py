"""The Cilium evaluator's L4 and L7 rules (``toPorts``, ANY, port 0, named ports, ICMP, L7 rules as
"allowed, L7-restricted"), default deny (``enableDefaultDeny``, isolation per direction), deny rules that win
over every allow, and mixed clusters where NetworkPolicies and Cilium policies apply together; the local node
always reaches its pods.

As in ``tests/test_cilium_policies.py``, every case states the rule of Cilium's policy language it pins, and
the expected verdict follows from that sentence, not from the code."""

from __future__ import annotations

from typing import Any

import pytest
from cilium_objects import CORP, CORP_EXCEPT, DB, MON, NODE, OTHER, WEB, WORLD, allows, cnp, db_ingress, knp

from auditor.kube.cluster import compile_cluster

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
