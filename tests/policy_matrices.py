"""The matrices and readers shared by the ``policies generate`` tests: the Airflow example, SHOP (only
pod-selectable components, every feature a NetworkPolicy expresses exactly) and EDGE (entities, CIDRs and
FQDNs, which a NetworkPolicy can only approximate), and small readers of generated objects and diffs."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from typing import Any

from auditor.kube.diff import DiffResult
from auditor.matrix import load_matrix, parse_matrix

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


def ports_of(rule: dict[str, Any]) -> list[tuple[str, int]]:
    return [(p["protocol"], p["port"]) for p in rule["ports"]]
