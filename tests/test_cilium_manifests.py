"""Cilium and Kubernetes policy manifests as the evaluator reads them: invalid ones rejected naming the
object and the field, duplicate names per kind and namespace, unknown fields ignored with a warning unless
strict, constructs that depend on the running cluster warned, ``specs`` lists evaluated each, and a
clusterwide ``nodeSelector`` applying to the node only."""

from __future__ import annotations

from typing import Any

import pytest
from cilium_objects import DB, NODE, OTHER, REMOTE, WEB, WORLD, allows, ccnp, cnp, knp, web_egress

from auditor.kube.checks import PolicyError
from auditor.kube.cluster import compile_cluster

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
