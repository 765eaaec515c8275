"""Time of ``policies diff`` on a large cluster: 50 components x 200 policies (not part of ``make bench``'s
default targets' numbers; run it directly).

Stage: measurement only (never run by ``make test``; no test asserts a speed).

Input (deterministic, seed 7): a matrix of 50 components — 44 pod components in 6 namespaces (4 scoped),
a world, a CIDR, a kube-apiserver and 3 FQDN components — with 120 allow rules; 200 policies: the
kubernetes flavor generated from it, the cilium flavor generated from it (a mixed cluster), and extra
policies until 200 (NetworkPolicies opening random ports from random peers, CiliumNetworkPolicies with
deny rules and L7 rules). Measured: compiling the policies, and the whole ``diff`` (probes x probes x
every port), best of ``--runs`` runs; the number of probe pairs and edges found. Results are printed
and written to ``bench/out/policies-diff.json``.

Error policy: none beyond what the code under measurement raises.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import yaml

from auditor.kube.cluster import compile_cluster
from auditor.kube.diff import diff
from auditor.kube.policies import generate
from auditor.matrix import Matrix, parse_matrix

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
NAMESPACES = ["shop", "pay", "search", "ops", "monitoring", "kube-system"]
SCOPE = NAMESPACES[:4]
PORTS = ["80", "443", "5432", "6379", "8080", "9090", "8000-8100", "53/UDP", "9999/SCTP", "ICMP", "any"]


def build_matrix(rnd: random.Random, components: int = 50, rules: int = 120) -> Matrix:
    comps: dict[str, Any] = {}
    for i in range(components - 6):
        comps[f"app{i}"] = {"namespace": NAMESPACES[i % len(NAMESPACES)], "labels": {"app": f"app{i}"}}
    comps["corp"] = {"cidrs": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}
    comps["pypi"] = {"fqdns": ["pypi.org"]}
    comps["s3"] = {"fqdns": ["*.s3.amazonaws.com"]}
    comps["github"] = {"fqdns": ["github.com"]}
    comps["apiserver"] = {"entities": ["kube-apiserver"]}
    comps["internet"] = {"entities": ["world"]}
    names = list(comps)
    pods = [n for n in names if n.startswith("app")]
    allow = []
    for _ in range(rules):
        allow.append(
            {
                "from": rnd.sample(pods, rnd.randint(1, 3)),
                "to": rnd.sample(names, rnd.randint(1, 3)),
                "ports": rnd.sample(PORTS, rnd.randint(1, 3)),
            }
        )
    doc = {
        "apiVersion": "flow-auditor/v1alpha1",
        "kind": "CommunicationMatrix",
        "metadata": {"name": "bench"},
        "scope": {"namespaces": SCOPE},
        "components": comps,
        "allow": allow,
    }
    return parse_matrix(yaml.safe_dump(doc, sort_keys=False), "bench-matrix.yaml")


def extra_policy(rnd: random.Random, i: int) -> dict[str, Any]:
    ns = rnd.choice(SCOPE)
    if i % 3:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"extra-{i}", "namespace": ns},
            "spec": {
                "podSelector": {"matchLabels": {"app": f"app{rnd.randrange(44)}"}},
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {},
                                "podSelector": {"matchLabels": {"app": f"app{rnd.randrange(44)}"}},
                            }
                        ],
                        "ports": [
                            {"port": rnd.randrange(1, 65000)},
                            {"port": 30000, "endPort": 30000 + rnd.randrange(500)},
                        ],
                    }
                ],
            },
        }
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": f"extra-{i}", "namespace": ns},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": f"app{rnd.randrange(44)}"}},
            "enableDefaultDeny": {"ingress": False, "egress": False},
            "ingressDeny": [
                {"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}
            ],
            "ingress": [
                {
                    "fromEndpoints": [{"matchLabels": {"app": f"app{rnd.randrange(44)}"}}],
                    "toPorts": [
                        {
                            "ports": [{"port": "8080", "protocol": "TCP"}],
                            "rules": {"http": [{"method": "GET"}]},
                        }
                    ],
                }
            ],
        },
    }


def policies_for(matrix: Matrix, rnd: random.Random, total: int = 200) -> list[dict[str, Any]]:
    objects = generate(matrix, "kubernetes") + generate(matrix, "cilium")
    # Several generated objects share names across flavors (different kinds): fine. Trim or pad to total.
    objects = objects[:total]
    objects += [extra_policy(rnd, i) for i in range(total - len(objects))]
    return objects


def best(runs: int, fn: Any) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--components", type=int, default=50)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="1 run, 10 components, 12 policies (make test)")
    parser.add_argument("--out", type=Path, default=OUT, help="the directory of policies-diff.json")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.components, args.policies = 1, 10, 12
    rnd = random.Random(7)
    matrix = build_matrix(rnd, args.components)
    objects = policies_for(matrix, rnd, args.policies)
    compile_s, cluster = best(args.runs, lambda: compile_cluster(objects))
    diff_s, result = best(args.runs, lambda: diff(objects, matrix))
    out = {
        "components": len(matrix.components),
        "rules": len(matrix.rules),
        "policies": len(objects),
        "policies_by_kind": cluster.counts,
        "probes": result.probes,
        "pairs": result.pairs,
        "edges": len(result.edges),
        "compile_seconds": round(compile_s, 4),
        "diff_seconds": round(diff_s, 3),
        "pairs_per_second": round(result.pairs / diff_s),
        "load_average": os.getloadavg()[0],
        "runs": args.runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policies-diff.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
