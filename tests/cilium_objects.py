"""Subjects and policy objects shared by the Cilium evaluator tests: pods of a small shop cluster, world,
corporate and FQDN addresses, the node and reserved identities; CiliumNetworkPolicy,
CiliumClusterwideNetworkPolicy and NetworkPolicy objects built from a spec; and ``allows`` with the port the
tests mostly ask about (5432/TCP)."""

from __future__ import annotations

from typing import Any

from auditor.kube.cluster import Cluster
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


def manifest(api_version: str, kind: str, metadata: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}


def cnp(spec: dict[str, Any], name: str = "p", namespace: str = "shop") -> dict[str, Any]:
    return manifest("cilium.io/v2", "CiliumNetworkPolicy", {"name": name, "namespace": namespace}, spec)


def ccnp(spec: dict[str, Any], name: str = "c") -> dict[str, Any]:
    return manifest("cilium.io/v2", "CiliumClusterwideNetworkPolicy", {"name": name}, spec)


def knp(spec: dict[str, Any], name: str = "k", namespace: str = "shop") -> dict[str, Any]:
    return manifest("networking.k8s.io/v1", "NetworkPolicy", {"name": name, "namespace": namespace}, spec)


def db_ingress(rule: dict[str, Any]) -> dict[str, Any]:
    return cnp({"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [rule]})


def web_egress(rule: dict[str, Any]) -> dict[str, Any]:
    return cnp({"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": [rule]})


def allows(cluster: Cluster, src: Subject, dst: Subject, proto: str = "TCP", port: int = 5432) -> bool:
    return cluster.allows(src, dst, proto, port)
