"""Round trips of ``matrix learn`` (issue 10): learn → replay, and learn → policies generate → diff.

For the Airflow scenario and for generated clusters (fixed seeds, hundreds of workloads, see
``tests/clusters.py``): replaying the same flows against the learned matrix gives no
``unexpected_allowed``, uses every learned rule, and no rule is on a client's ephemeral port. NetworkPolicies
generated from the learned matrix (``--flavor kubernetes``) differ from it, per ``policies diff``, only where
``policies generate`` announced a widening or narrowing (FQDNs, entities, ICMP cannot be expressed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from clusters import Peer, Pod, generate

from auditor.cli import main
from auditor.kube.diff import diff as policies_diff
from auditor.kube.policies import build
from auditor.matrix import Matrix, load_matrix
from auditor.model import Endpoint, Workload
from auditor.scenario import write_jsonl

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = ROOT / "examples" / "airflow" / "flows.jsonl"


def learn(flows: Path, out: Path) -> Matrix:
    assert main(["matrix", "learn", str(flows), "-o", str(out)]) == 0
    return load_matrix(out)


def replay(flows: Path, matrix: Path, tmp: Path) -> dict[str, Any]:
    report = tmp / "report.json"
    args = ["replay", str(flows), "-m", str(matrix), "-f", "json", "-o", str(report), "--fail-on", "none"]
    assert main(args) == 0
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def client_ports(flows: Path) -> set[int]:
    """Every port a client used: source ports of requests, destination ports of replies."""
    out: set[int] = set()
    for line in flows.read_bytes().splitlines():
        f = msgspec.json.decode(line).get("flow", {})
        l4 = next(iter(f.get("l4", {}).values()), {})
        if "source_port" in l4:
            out.add(l4["destination_port"] if f.get("is_reply") else l4["source_port"])
    return out


def rule_ports(matrix: Matrix) -> set[int]:
    return {p.lo for r in matrix.rules for p in r.ports if p.protocols and p.lo == p.hi} | {
        p.hi for r in matrix.rules for p in r.ports if p.protocols
    }


def check_replay_round_trip(flows: Path, tmp: Path) -> tuple[Matrix, dict[str, Any]]:
    learned = tmp / "learned.yaml"
    matrix = learn(flows, learned)
    report = replay(flows, learned, tmp)
    assert report["classes"]["unexpected_allowed"] == 0, [
        e for e in report["edges"] if e["class"] == "unexpected_allowed"
    ][:5]
    assert report["unused_rules"] == []
    assert report["flows"]["invalid"] == 0
    assert not rule_ports(matrix) & client_ports(flows)
    return matrix, report


def test_airflow_learn_then_replay_allows_everything_delivered_and_uses_every_rule(tmp_path: Path) -> None:
    matrix, report = check_replay_round_trip(AIRFLOW, tmp_path)
    assert len(matrix.rules) == 21
    # what the scenario dropped stays dropped: never learned
    assert report["classes"]["unexpected_dropped"] == 4  # the attacker
    assert "attacker" not in {c.name for c in matrix.components}


@pytest.mark.parametrize("seed", [1, 2])
def test_generated_cluster_learn_then_replay(tmp_path: Path, seed: int) -> None:
    cluster = generate(seed, workloads=200, connections=2000)
    flows = tmp_path / "flows.jsonl"
    write_jsonl(cluster.events, flows)
    matrix, report = check_replay_round_trip(flows, tmp_path)
    pods = [c for c in matrix.components if c.selector.namespaces]
    assert len(pods) > 150  # hundreds of workloads, one component each
    assert len({c.name for c in matrix.components}) == len(matrix.components)
    server_ports = {p for ports in cluster.ports.values() for p, _ in ports} | {443, 6443}
    assert rule_ports(matrix) <= server_ports
    # the attacker only ever had drops
    assert not any("attacker" in r for rule in matrix.rules for r in rule.sources)
    assert report["classes"]["unexpected_dropped"] >= len(cluster.dropped)
    # the truth: every delivered or audited (source, destination, port) has a rule, no drop has one
    for src, dst, port, proto in cluster.truth:
        a, b = resolve(matrix, cluster.ends[src]), resolve(matrix, cluster.ends[dst])
        assert matrix.rule_for(a, b, proto, port) is not None, (src, dst, port, proto)
    for src, dst, port, proto in cluster.dropped - cluster.truth:
        a, b = resolve(matrix, cluster.ends[src]), resolve(matrix, cluster.ends[dst])
        assert matrix.rule_for(a, b, proto, port) is None, (src, dst, port, proto)


def resolve(matrix: Matrix, end: Pod | Peer) -> str:
    ep = end.endpoint()
    workloads = tuple(Workload(w["kind"], w["name"]) for w in ep.get("workloads", ()))
    endpoint = Endpoint(
        identity=ep["identity"],
        namespace=ep.get("namespace", ""),
        labels=tuple(ep["labels"]),
        pod_name=ep.get("pod_name", ""),
        workloads=workloads,
    )
    return matrix.resolve(endpoint, end.ip, end.names if isinstance(end, Peer) else ())


@pytest.mark.parametrize("flavor", ["kubernetes", "cilium"])
@pytest.mark.parametrize("source", ["airflow", "seed-3", "seed-4"])
def test_learn_then_generate_policies_then_diff_shows_only_announced_widenings(
    tmp_path: Path, source: str, flavor: str
) -> None:
    if source == "airflow":
        flows = AIRFLOW
    else:
        flows = tmp_path / "flows.jsonl"
        write_jsonl(generate(int(source[-1]), workloads=12, connections=300).events, flows)
    matrix = learn(flows, tmp_path / "learned.yaml")
    generation = build(matrix, flavor)
    result = policies_diff(generation.objects, matrix)
    if flavor == "kubernetes":
        assert result.differences  # the FQDN components are wider as NetworkPolicies: announced, and shown
    unannounced = [
        (e.kind, e.source, e.destination, str(e.ports)) for e in result.differences if e.announced is None
    ]
    assert unannounced == []


def test_learned_matrix_of_two_hundred_workloads_round_trips_through_cilium_policies(tmp_path: Path) -> None:
    """Hundreds of workloads (fixed seed): learn → policies generate → policies diff. The Cilium flavour
    expresses every learned rule exactly (no difference); NetworkPolicies differ only where generate said
    they must (FQDN components as ipBlocks)."""
    flows = tmp_path / "flows.jsonl"
    write_jsonl(generate(1, workloads=200, connections=2000).events, flows)
    matrix = learn(flows, tmp_path / "learned.yaml")
    assert len(matrix.components) > 200
    assert policies_diff(build(matrix, "cilium").objects, matrix).differences == []
    kubernetes = policies_diff(build(matrix, "kubernetes").objects, matrix)
    assert [e for e in kubernetes.differences if e.announced is None] == []
