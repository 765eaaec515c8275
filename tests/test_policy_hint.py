"""The policy change per ``expected_dropped`` edge (issue 10, item 3): the objects of ``policies generate``
that implement the allowing rule, in both flavors, whether they admit the observed pods, the label changes
of the ends and the likely cause — in replay's report and its renderers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from factory import POSTGRES, denied_scrape, flow, pod

from auditor.classify import Auditor, Judgement
from auditor.kube.cluster import compile_cluster
from auditor.learn.policy_hint import PolicyAdvisor, advice_text, subject
from auditor.matrix import load_matrix
from auditor.model import Endpoint, EventType, Verdict
from auditor.render import render
from auditor.sinks.label_history import LabelHistory
from auditor.sinks.report import ReportSink

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "examples" / "airflow" / "flows.jsonl"
MATRIX_FILE = ROOT / "examples" / "airflow" / "matrix.yaml"
MATRIX = load_matrix(MATRIX_FILE)


def cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


def example_report() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        cli("replay", str(FLOWS), "-m", str(MATRIX_FILE), "-f", "json", "--fail-on", "none")
    )
    return report


def by_edge(report: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(e["source"], e["destination"], e["port"]): e for e in report["edges"] if e["policy_change"]}


def test_the_airflow_drops_name_the_generated_objects_and_the_lost_namespace_label() -> None:
    report = example_report()
    edges = by_edge(report)
    assert all(
        (e["policy_change"] is not None) == (e["class"] == "expected_dropped") for e in report["edges"]
    )
    change = edges[("prometheus", "postgresql", 9187)]["policy_change"]
    assert change["rule"] == 12
    k8s, cilium = change["flavors"]["kubernetes"], change["flavors"]["cilium"]
    assert [(o["kind"], o["namespace"], o["name"], o["direction"]) for o in k8s["apply"]] == [
        ("NetworkPolicy", "airflow", "airflow-postgresql", "ingress")
    ]
    assert k8s["apply"][0]["entries"] == [
        {
            "from": [
                {
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 9187}],
        }
    ]
    assert [(o["kind"], o["name"], o["direction"]) for o in cilium["apply"]] == [
        ("CiliumNetworkPolicy", "airflow-postgresql", "ingress")
    ]
    assert k8s["admits"] is True and cilium["admits"] is True
    # The monitoring namespace carried `name: monitoring` while Prometheus' scrapes were delivered.
    assert change["label_changes"] == [
        {
            "end": "source",
            "component": "prometheus",
            "namespace": "monitoring",
            "namespace_labels": {"name": ["monitoring", None]},
        }
    ]
    assert change["cause"].startswith(
        "namespace monitoring lost label name=monitoring since earlier delivered"
    )
    # Traefik's upgrade changed its pod labels; the triggerer's audited egress policy simply lacks the rule.
    traefik = edges[("traefik", "webserver", 8080)]["policy_change"]
    assert traefik["label_changes"][0]["labels"] == {
        "app.kubernetes.io/instance": ["traefik", "traefik-kube-system"],
        "helm.sh/chart": ["traefik-27.0.2", "traefik-28.0.0"],
    }
    triggerer = edges[("triggerer", "postgresql", 5432)]["policy_change"]
    assert [o["direction"] for o in triggerer["flavors"]["kubernetes"]["apply"]] == ["egress", "ingress"]
    assert triggerer["label_changes"] == []
    assert triggerer["cause"].startswith("the policy under audit lacks this allowance")


def test_the_named_entries_are_those_policies_generate_writes() -> None:
    """Every object and entry the report names is in `policies generate`'s output, in both flavors."""
    report = example_report()
    for flavor in ("kubernetes", "cilium"):
        objects = {
            (o["metadata"]["namespace"], o["metadata"]["name"]): o
            for o in yaml.safe_load_all(
                cli("policies", "generate", "--matrix", str(MATRIX_FILE), "--flavor", flavor)
            )
        }
        named = 0
        for edge in report["edges"]:
            for item in (edge["policy_change"] or {"flavors": {flavor: {"apply": []}}})["flavors"][flavor][
                "apply"
            ]:
                obj = objects[(item["namespace"], item["name"])]
                assert obj["kind"] == item["kind"]
                for entry in item["entries"]:
                    assert entry in obj["spec"][item["direction"]]
                named += 1
        assert named == 5  # 4 dropped edges, the triggerer's on both ends


def test_admits_is_the_static_evaluation_of_the_observed_pods() -> None:
    """The pods as Hubble saw them: Prometheus' namespace without any label still matches the generated
    policy (it selects by kubernetes.io/metadata.name), a pod with other labels does not."""
    prometheus = pod("monitoring", "prometheus-0", 3001, "app.kubernetes.io/name=prometheus")
    impostor = pod("monitoring", "grafana-0", 3003, "app.kubernetes.io/name=grafana")
    for flavor in ("kubernetes", "cilium"):
        objects = list(
            yaml.safe_load_all(cli("policies", "generate", "--matrix", str(MATRIX_FILE), "--flavor", flavor))
        )
        cluster = compile_cluster(objects)
        dst = subject(POSTGRES, "10.244.2.20", ())
        assert cluster.allows(subject(prometheus, "10.244.1.1", ()), dst, "TCP", 9187)
        assert not cluster.allows(subject(impostor, "10.244.1.2", ()), dst, "TCP", 9187)


REMOTE_MATRIX = """\
apiVersion: flow-auditor/v1alpha1
kind: CommunicationMatrix
metadata: {name: app}
scope: {namespaces: [app]}
components:
  api: {namespace: app, labels: {app: api}}
  nodes: {entities: [remote-node]}
allow:
  - {from: nodes, to: api, ports: [8080]}
"""


def test_what_a_flavor_cannot_express_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(REMOTE_MATRIX)
    matrix = load_matrix(path)
    api = pod("app", "api-0", 1100, "app=api")
    remote = Endpoint(identity=6, labels=("reserved:remote-node",))
    j = Auditor(matrix).process(
        flow(
            source=remote,
            destination=api,
            destination_port=8080,
            verdict=Verdict.DROPPED,
            event_type=EventType.DROP,
            drop_reason="POLICY_DENIED",
        )
    )
    assert isinstance(j, Judgement) and j.edge.cls == "expected_dropped"
    advice = PolicyAdvisor(matrix).advise(j, [])
    assert advice is not None
    k8s, cilium = advice["flavors"]["kubernetes"], advice["flavors"]["cilium"]
    assert k8s["admits"] is False and cilium["admits"] is True
    assert k8s["apply"] == []  # the api's NetworkPolicy exists but cannot carry this rule
    assert k8s["notes"] == [
        "rule 1: nodes: entity remote-node cannot be selected by a NetworkPolicy (not allowed)"
    ]
    assert cilium["apply"][0]["entries"] == [
        {"fromEntities": ["remote-node"], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}
    ]
    assert advice["cause"] == (
        "a policy in force lacks this allowance while the generated CiliumNetworkPolicies admit these very "
        "pods (the generated NetworkPolicies do not: rule 1: nodes: entity remote-node cannot be selected by "
        "a NetworkPolicy (not allowed))"
    )
    assert advice_text(advice, "m.yaml").startswith(
        "matrix rule 1: apply no NetworkPolicies from `flow-auditor policies generate --matrix m.yaml`, or "
        "CiliumNetworkPolicy app/app-api (ingress from nodes on 8080/TCP) with `--flavor cilium`; the "
        "CiliumNetworkPolicies admit "
        "these pods, the NetworkPolicies do not; likely cause: "
    )


PROM = ("app.kubernetes.io/name=prometheus",)
WEB = pod("airflow", "airflow-webserver-1", 1005, "tier=airflow", "component=webserver")


def test_labels_seen_on_delivered_connections_are_not_a_cause() -> None:
    history = LabelHistory()
    auditor = Auditor(MATRIX)
    prom = pod("monitoring", "prometheus-0", 3001, *PROM)
    canary = pod("monitoring", "prometheus-1", 3002, *PROM, "track=canary")
    for i, source in enumerate((prom, canary)):  # two label sets delivered
        delivered = auditor.process(
            flow(source=source, destination=WEB, destination_port=8080, source_port=i)
        )
        assert isinstance(delivered, Judgement)
        history.on_delivered(delivered)
    for i, source in enumerate((prom, canary)):
        same = auditor.process(denied_scrape(source, 40001 + i))
        assert isinstance(same, Judgement)
        assert history.changes_of(same) == []
    other = pod("monitoring", "prometheus-0", 3001, *PROM, "team=obs")
    changed = auditor.process(denied_scrape(other, 40003))
    assert isinstance(changed, Judgement)
    assert history.changes_of(changed) == [  # against the first set remembered
        {
            "end": "source",
            "component": "prometheus",
            "namespace": "monitoring",
            "labels": {"team": [None, "obs"]},
        }
    ]


def test_the_label_history_is_bounded() -> None:
    history = LabelHistory(max_entries=3, per_key=2)
    auditor = Auditor(MATRIX)
    for i in range(20):
        source = pod(f"ns-{i}", "p", 4000 + i, f"run=x{i}", f"v=v{i}")
        j = auditor.process(
            flow(source=source, destination=WEB, destination_port=8080, source_port=30000 + i)
        )
        assert isinstance(j, Judgement)
        history.on_delivered(j)
    assert len(history.labels) == 3 and all(len(v) <= 2 for v in history.labels.values())
    # many label keys changed: at most 8 reported, long values clipped in the sentence
    many = pod("monitoring", "p", 5000, *PROM, *(f"k{i}={'x' * 500}" for i in range(30)))
    history.labels[("prometheus", "monitoring")] = [pod("monitoring", "p", 5001, *PROM).labels]
    j = auditor.process(denied_scrape(many, 40003))
    assert isinstance(j, Judgement)
    (change,) = history.changes_of(j)
    assert len(change["labels"]) == 8
    advice = PolicyAdvisor(MATRIX).advise(j, [change])
    assert advice is not None and len(advice["cause"]) < 8 * 300


def test_the_label_history_keeps_the_first_label_sets_of_a_component() -> None:
    history = LabelHistory(per_key=2)
    sets = [("k8s:app=web", f"k8s:v={i}") for i in range(5)]
    for labels in (sets[0], sets[0], *sets[1:]):  # a set seen again takes no second place
        history.remember("webserver", "airflow", labels)
    history.remember("webserver", "", sets[4])  # an end outside a namespace: not remembered
    assert history.labels == {("webserver", "airflow"): [sets[0], sets[1]]}


def test_cluster_text_in_the_cause_is_escaped_in_every_format() -> None:
    hostile = "<script>x</script>|*"
    sink = ReportSink(MATRIX)
    auditor = Auditor(MATRIX)
    before = pod("monitoring", "prometheus-0", 3001, *PROM, f"io.cilium.k8s.namespace.labels.team={hostile}")
    for j in (
        auditor.process(flow(source=before, destination=WEB, destination_port=8080)),
        auditor.process(denied_scrape(pod("monitoring", "prometheus-0", 3001, *PROM), 40001)),
    ):
        assert isinstance(j, Judgement)
        sink.on_judgement(j)
    report = sink.report()
    (edge,) = [e for e in report["edges"] if e["policy_change"]]
    assert f"lost label team={hostile}" in edge["policy_change"]["cause"]
    html = render(report, "html")
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;|*" in html
    markdown = render(report, "markdown")
    assert "<script>" not in markdown and "\\<script\\>x\\</script\\>\\|\\*" in markdown


def test_per_namespace_rendering_equals_policies_generate_on_a_generated_cluster(tmp_path: Path) -> None:
    """The advisor renders only the ends' namespaces: exactly `policies generate`'s objects there."""
    from clusters import generate

    from auditor.kube.policies import build
    from auditor.learn.build import Options
    from auditor.learn.run import learn_files, text_of
    from auditor.scenario import write_jsonl

    flows = tmp_path / "flows.jsonl"
    write_jsonl(generate(3, workloads=80, connections=600).events, flows)
    path = tmp_path / "learned.yaml"
    path.write_text(text_of(learn_files([str(flows)], Options())))
    matrix = load_matrix(path)
    namespaces = sorted(matrix.scope_namespaces or ())
    assert len(namespaces) >= 3
    advisor = PolicyAdvisor(matrix)
    for flavor in ("kubernetes", "cilium"):
        objects = build(matrix, flavor).objects
        for ns in namespaces:
            mine = advisor.flavor(flavor).namespace(ns).objects
            assert mine == [o for o in objects if o["metadata"]["namespace"] == ns]


def test_label_changes_compare_with_connections_delivered_before_the_drop_only() -> None:
    labelled = pod(
        "monitoring", "prometheus-0", 3001, *PROM, "io.cilium.k8s.namespace.labels.name=monitoring"
    )
    unlabelled = pod("monitoring", "prometheus-0", 3001, *PROM)

    def report_of(first: Any, then: Any) -> dict[str, Any]:
        sink = ReportSink(MATRIX)
        auditor = Auditor(MATRIX)
        for f in (first, then):
            j = auditor.process(f)
            assert isinstance(j, Judgement)
            sink.on_judgement(j)
        (edge,) = [e for e in sink.report()["edges"] if e["policy_change"]]
        change: dict[str, Any] = edge["policy_change"]
        return change

    delivered = flow(source=labelled, destination=WEB, destination_port=8080)
    after = report_of(denied_scrape(unlabelled, 40001), delivered)
    assert after["label_changes"] == [] and after["cause"].startswith("a policy in force lacks")
    before = report_of(delivered, denied_scrape(unlabelled, 40001))
    assert before["label_changes"][0]["namespace_labels"] == {"name": ["monitoring", None]}
