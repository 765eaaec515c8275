"""``policies generate``, cilium flavor (matrix → CiliumNetworkPolicies): one kind of peer per rule, the
default deny, namespaced and any-namespace peers, entities, ``toFQDNs`` with the DNS proxy rule, ICMP as
echo-request rules and ``any`` ports as rules without ``toPorts``."""

from __future__ import annotations

import pytest
from policy_matrices import AIRFLOW, EDGE, SHOP, by_name

from auditor.kube.policies import build, generate
from auditor.matrix import Matrix

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
