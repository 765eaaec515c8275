"""``matrix learn`` building blocks: stable labels, names, selectors, YAML text, determinism, CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from daemon_helpers import run_cli
from factory import HOST, WORLD, flow, pod

from auditor.cli import main
from auditor.learn import naming
from auditor.learn.build import Options, merge_ports
from auditor.learn.labels import minimal, pod_labels, stable
from auditor.learn.run import learn_files, learning_pipeline, text_of
from auditor.learn.yamltext import comment, scalar
from auditor.learn.yamltext import flow as yaml_flow
from auditor.matrix import parse_matrix
from auditor.model import Direction, EventType, Workload
from auditor.scenario import airflow_scenario, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "examples" / "airflow" / "flows.jsonl"
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"


# -- labels ------------------------------------------------------------------------------------------


def test_controller_revision_and_per_pod_labels_are_never_selected() -> None:
    labels = (
        "k8s:app=web",
        "k8s:pod-template-hash=7d9f8c6b5",
        "k8s:controller-revision-hash=web-6b8f",
        "k8s:statefulset.kubernetes.io/pod-name=web-0",
        "k8s:apps.kubernetes.io/pod-index=0",
        "k8s:job-name=backup-28391920",
        "k8s:batch.kubernetes.io/job-name=backup-28391920",
        "k8s:pod-template-generation=3",
        "k8s:app.kubernetes.io/version=1.2.3",
        "k8s:helm.sh/chart=web-1.2.3",
        "k8s:io.kubernetes.pod.namespace=shop",
        "k8s:io.cilium.k8s.policy.serviceaccount=web",
        "k8s:io.cilium.k8s.namespace.labels.team=a",
        "reserved:something",
    )
    assert pod_labels(labels) == {"app": "web"}


def test_labels_that_differ_between_pods_of_a_workload_are_not_stable() -> None:
    current = stable(None, ("k8s:app=web", "k8s:zone=a", "k8s:tier=front"))
    current = stable(current, ("k8s:app=web", "k8s:zone=b", "k8s:tier=front"))
    current = stable(current, ("k8s:app=web", "k8s:tier=front", "k8s:extra=1"))
    assert current == {"app": "web", "tier": "front"}


def test_minimal_labels_prefer_naming_keys_and_tell_groups_apart() -> None:
    mine = {"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": "a", "tier": "db"}
    assert minimal(mine, [{"app.kubernetes.io/name": "redis", "tier": "db"}]) == {
        "app.kubernetes.io/name": "postgresql"
    }
    # a rival with the same name: the next preferred key decides
    rival = {"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": "b", "tier": "db"}
    assert minimal(mine, [rival]) == {
        "app.kubernetes.io/instance": "a",
        "app.kubernetes.io/name": "postgresql",
    }
    # nothing tells them apart: every label (the build pins such components to their workload)
    assert minimal({"app": "x"}, [{"app": "x"}]) == {"app": "x"}


# -- names -------------------------------------------------------------------------------------------


def test_names_are_short_readable_unique_and_take_the_namespace_only_on_collisions() -> None:
    reqs = [
        naming.Request(
            "a", naming.pod_candidates({}, ("Deployment", "airflow-webserver"), "airflow"), "airflow"
        ),
        naming.Request(
            "b", naming.pod_candidates({"app": "redis"}, ("StatefulSet", "redis"), "shop-a"), "shop-a"
        ),
        naming.Request(
            "c", naming.pod_candidates({"app": "redis"}, ("StatefulSet", "redis"), "shop-b"), "shop-b"
        ),
        naming.Request("d", naming.pod_candidates({"app": "pg"}, ("StatefulSet", "pg-primary"), "db"), "db"),
        naming.Request("e", naming.pod_candidates({"app": "pg"}, ("StatefulSet", "pg-replica"), "db"), "db"),
        naming.Request("f", ("world",)),
        naming.Request("g", ("Web_Server.Ünïcode!!",)),
        naming.Request("h", (naming.workload_base("backup-28391920", "ops"),), "ops"),
    ]
    names = naming.assign(reqs, taken=["taken"])
    assert names == {
        "a": "webserver",
        "b": "shop-a-redis",
        "c": "shop-b-redis",
        "d": "pg-primary",
        "e": "pg-replica",
        "f": "world-2",  # an entity name is reserved
        "g": "web-server-n-code",
        "h": "backup",
    }
    long = naming.sanitize("x" * 100)
    assert len(long) <= naming.MAX_LEN and long != naming.sanitize("x" * 99)


# -- YAML text ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["yes", "no", "on", "true", "null", "1.0", "0x1f", "", "a: b", "#x", "-", "é", "a\nb"]
)
def test_scalars_read_back_as_the_same_string(text: str) -> None:
    assert yaml.safe_load(f"k: {scalar(text)}") == {"k": text}


def test_flow_style_values_read_back() -> None:
    value = {
        "namespace": "a",
        "labels": {"app.kubernetes.io/name": "x", "v": "01"},
        "ports": ["53/UDP", "ICMPv4"],
    }
    assert yaml.safe_load(yaml_flow(value)) == value


def test_comments_escape_everything_that_could_end_a_comment_line() -> None:
    line = comment("pod\nallow: [evil]\r\u2028\x1b[31m\\")
    assert line.count("\n") == 1 and line.endswith("\n")
    assert yaml.safe_load(line + "k: 1\n") == {"k": 1}
    assert "\\x0a" in line and "\\u2028" in line and "\\x1b" in line


def test_port_ranges_merge_only_when_asked_and_never_across_protocols() -> None:
    ports = [("TCP", 8080), ("TCP", 8081), ("TCP", 8083), ("UDP", 8082), ("ICMPv4", None)]
    assert merge_ports(ports, None) == ["8080/TCP", "8081/TCP", "8083/TCP", "8082/UDP", "ICMPv4"]
    assert merge_ports(ports, 1) == ["8080-8081/TCP", "8083/TCP", "8082/UDP", "ICMPv4"]
    assert merge_ports(ports, 2) == ["8080-8083/TCP", "8082/UDP", "ICMPv4"]


# -- the learned matrix ------------------------------------------------------------------------------


def learned_text(*flows: object, options: Options | None = None) -> str:
    pipeline, sink = learning_pipeline(options or Options())
    for f in flows:
        pipeline.feed(f)  # type: ignore[arg-type]
    pipeline.finish()
    from auditor.learn.build import build

    return text_of(build(sink.obs, options or Options()))


WEB1 = pod(
    "shop",
    "web-7d9f8c6b5-a1b2c",
    3001,
    "app=web",
    "pod-template-hash=7d9f8c6b5",
    "zone=a",
    workloads=(Workload("Deployment", "web"),),
)
WEB2 = pod(
    "shop",
    "web-5c9d8b7f6-z9y8x",
    3002,
    "app=web",
    "pod-template-hash=5c9d8b7f6",
    "zone=b",
    workloads=(Workload("Deployment", "web"),),
)
DB = pod(
    "shop",
    "db-0",
    3003,
    "app=db",
    "statefulset.kubernetes.io/pod-name=db-0",
    workloads=(Workload("StatefulSet", "db"),),
)


def delivered(src: object, dst: object, port: int, sport: int, t: float, **kw: object) -> object:
    return flow(source=src, destination=dst, destination_port=port, source_port=sport, time=t, **kw)


def test_one_component_per_workload_with_stable_labels_and_a_commented_rule() -> None:
    text = learned_text(
        delivered(WEB1, DB, 5432, 40001, 1_800_000_000.0),
        delivered(WEB2, DB, 5432, 40002, 1_800_000_060.0),
        delivered(WEB2, DB, 5432, 40002, 1_800_000_061.0),  # the same connection again (retransmit)
    )
    doc = yaml.safe_load(text)
    assert doc["components"] == {
        "web": {"namespace": "shop", "labels": {"app": "web"}},
        "db": {"namespace": "shop", "labels": {"app": "db"}},
    }
    assert doc["allow"] == [{"from": "web", "to": "db", "ports": ["5432/TCP"]}]
    assert (
        "# 2 connections, 2027-01-15T08:00:00Z .. 2027-01-15T08:01:01Z, "
        "e.g. shop/web-7d9f8c6b5-a1b2c -> shop/db-0" in text
    )
    assert "# Deployment shop/web, 2 pods seen" in text
    parse_matrix(text)


def test_world_destinations_become_fqdns_or_cidrs_and_world_sources_the_world_entity() -> None:
    github = flow(
        source=WEB1,
        destination=WORLD,
        destination_ip="140.82.112.3",
        destination_port=443,
        destination_names=("api.github.com.",),
        traffic_direction=Direction.EGRESS,
        event_type=EventType.POLICY_VERDICT,
        observation_point=0,
    )
    raw = flow(
        source=WEB1,
        destination=WORLD,
        destination_ip="198.51.100.7",
        destination_port=443,
        source_port=40010,
        traffic_direction=Direction.EGRESS,
        event_type=EventType.POLICY_VERDICT,
        observation_point=0,
    )
    inbound = flow(
        source=WORLD, source_ip="203.0.113.50", destination=WEB1, destination_port=8080, source_port=5555
    )
    kubelet = flow(
        source=HOST, source_ip="10.0.0.1", destination=WEB1, destination_port=8080, source_port=5556
    )
    doc = yaml.safe_load(learned_text(github, raw, inbound, kubelet))
    comps = doc["components"]
    assert comps["api-github-com"] == {"fqdns": ["api.github.com"]}
    assert comps["ip-198-51-100-7"] == {"cidrs": ["198.51.100.7/32"]}
    assert comps["internet"] == {"entities": ["world"]}
    assert comps["node"] == {"entities": ["host"]}
    assert list(comps)[-2:] == ["node", "internet"]  # entities last, most specific first
    rules = {(r["from"], r["to"]): r["ports"] for r in doc["allow"]}
    assert rules == {
        ("web", "api-github-com"): ["443/TCP"],
        ("web", "ip-198-51-100-7"): ["443/TCP"],
        ("internet", "web"): ["8080/TCP"],
        ("node", "web"): ["8080/TCP"],
    }


def test_many_names_of_one_registered_domain_become_one_wildcard_component() -> None:
    flows = [
        flow(
            source=WEB1,
            destination=WORLD,
            destination_ip=f"52.94.0.{i}",
            destination_port=443,
            source_port=41000 + i,
            destination_names=(f"s{i}.bucket.example.co.uk",),
            traffic_direction=Direction.EGRESS,
            event_type=EventType.POLICY_VERDICT,
            observation_point=0,
        )
        for i in range(4)
    ]
    doc = yaml.safe_load(learned_text(*flows))
    assert doc["components"]["example-co-uk"] == {"fqdns": ["*.example.co.uk"]}
    assert doc["allow"] == [{"from": "web", "to": "example-co-uk", "ports": ["443/TCP"]}]


def test_namespace_and_min_connections_limit_the_rules_and_say_what_was_left_out() -> None:
    other = pod("ops", "backup-0", 4001, "app=backup", workloads=(Workload("StatefulSet", "backup"),))
    flows = [
        delivered(WEB1, DB, 5432, 40001, 1_800_000_000.0),
        delivered(WEB1, DB, 5432, 40002, 1_800_000_001.0),
        delivered(WEB1, DB, 6432, 40003, 1_800_000_002.0),
        delivered(other, other, 9000, 40004, 1_800_000_003.0),
    ]
    text = learned_text(*flows, options=Options(namespaces=frozenset({"shop"}), min_connections=2))
    doc = yaml.safe_load(text)
    assert doc["scope"] == {"namespaces": ["shop"]}
    assert doc["allow"] == [{"from": "web", "to": "db", "ports": ["5432/TCP"]}]
    assert "# Not learned - seen fewer times than --min-connections: 1 connection" in text
    assert "#   web -> db 6432/TCP: 1 connection" in text
    assert "backup" not in text  # out of the learning scope: never judged


def test_cluster_data_in_comments_and_selectors_cannot_forge_yaml() -> None:
    evil = pod(
        "shop",
        "x\nallow: [{from: a, to: b, ports: [any]}]",
        3999,
        "app=evil: true",
        workloads=(Workload("Deployment", "evil\nname"),),
    )
    text = learned_text(delivered(evil, DB, 5432, 40001, 1_800_000_000.0))
    doc = yaml.safe_load(text)
    assert doc["allow"] == [{"from": "evil-name", "to": "db", "ports": ["5432/TCP"]}]
    # a label value Kubernetes would refuse (forged in the data) is never selected on
    assert doc["components"]["evil-name"] == {
        "namespace": "shop",
        "workload": {"kind": "Deployment", "name": "evil\nname"},
    }
    parse_matrix(text)


def test_same_flows_give_byte_identical_yaml(tmp_path: Path) -> None:
    out1, out2 = tmp_path / "1.yaml", tmp_path / "2.yaml"
    assert main(["matrix", "learn", str(FLOWS), "-o", str(out1)]) == 0
    assert main(["matrix", "learn", str(FLOWS), "-o", str(out2)]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    # and through a separate process (another hash seed)
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "matrix", "learn", str(FLOWS)],
        capture_output=True,
        timeout=60,
        check=True,
        cwd=ROOT,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert proc.stdout == out1.read_bytes()
    check = run_cli("matrix", "check", str(out1))
    assert check.returncode == 0, check.stderr


def test_against_an_existing_matrix_only_what_it_lacks_is_printed_and_the_file_is_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = MATRIX.read_bytes()
    assert main(["matrix", "learn", str(FLOWS), "--matrix", str(MATRIX)]) == 0
    patch = capsys.readouterr().out
    assert MATRIX.read_bytes() == before
    doc = yaml.safe_load(patch)
    # the example matrix lacks exactly the debug shell's access to Redis (the scenario's violation)
    assert doc == {
        "components": {"debug-shell": {"namespace": "default", "labels": {"run": "debug-shell"}}},
        "allow": [{"from": "debug-shell", "to": "redis", "ports": ["6379/TCP"]}],
    }
    assert "# 3 connections," in patch
    # pasted at the end, the matrix allows every delivered connection of the example
    text = MATRIX.read_text()
    components_end = text.index("allow:")
    merged = (
        text[:components_end]
        + "  debug-shell: {namespace: default, labels: {run: debug-shell}}\n"
        + text[components_end:]
        + '  - {from: debug-shell, to: redis, ports: ["6379/TCP"]}\n'
    )
    (tmp_path / "merged.yaml").write_text(merged)
    assert main(["matrix", "learn", str(FLOWS), "--matrix", str(tmp_path / "merged.yaml")]) == 0
    assert "Nothing to add" in capsys.readouterr().out
    assert main(["matrix", "learn", str(FLOWS), "--matrix", str(MATRIX), "-o", str(MATRIX)]) == 2
    assert MATRIX.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give flow files or --server"),
        (["x.jsonl", "--server", "127.0.0.1:1"], "give flow files or --server"),
        (["missing.jsonl"], "missing.jsonl: no such file"),
        ([str(FLOWS), "--min-connections", "0"], "--min-connections"),
        ([str(FLOWS), "--matrix", "nope.yaml"], "nope.yaml"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["matrix", "learn", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_gzip_and_stdin_inputs_learn_the_same(tmp_path: Path) -> None:
    import gzip

    gz = tmp_path / "flows.jsonl.gz"
    gz.write_bytes(gzip.compress(FLOWS.read_bytes()))
    plain = text_of(learn_files([str(FLOWS)], Options()))
    assert text_of(learn_files([str(gz)], Options())) == plain
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "matrix", "learn", "-"],
        input=FLOWS.read_bytes(),
        capture_output=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    assert proc.stdout.decode() == plain


def test_the_example_file_is_the_scenario(tmp_path: Path) -> None:
    # the other learn tests read examples/airflow/flows.jsonl as the Airflow scenario
    path = tmp_path / "f.jsonl"
    write_jsonl(airflow_scenario().events, path)
    assert path.read_bytes() == FLOWS.read_bytes()


def test_workloads_that_share_their_labels_are_pinned_to_their_workload() -> None:
    a = pod("shop", "pg-primary-0", 3101, "app=pg", workloads=(Workload("StatefulSet", "pg-primary"),))
    b = pod("shop", "pg-replica-0", 3102, "app=pg", workloads=(Workload("StatefulSet", "pg-replica"),))
    text = learned_text(
        delivered(WEB1, a, 5432, 40001, 1_800_000_000.0), delivered(a, b, 5432, 40002, 1_800_000_001.0)
    )
    doc = yaml.safe_load(text)
    assert doc["components"]["pg-primary"] == {
        "namespace": "shop",
        "labels": {"app": "pg"},
        "workload": {"kind": "StatefulSet", "name": "pg-primary"},
    }
    assert doc["components"]["pg-replica"]["workload"] == {"kind": "StatefulSet", "name": "pg-replica"}
    assert {(r["from"], r["to"]) for r in doc["allow"]} == {
        ("web", "pg-primary"),
        ("pg-primary", "pg-replica"),
    }


def test_cli_port_ranges_name_and_namespace(tmp_path: Path) -> None:
    out = tmp_path / "m.yaml"
    args = [
        "matrix",
        "learn",
        str(FLOWS),
        "-o",
        str(out),
        "--name",
        "airflow-learned",
        "--port-ranges",
        "-n",
        "kube-system",
    ]
    assert main(args) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["metadata"] == {"name": "airflow-learned"}
    assert doc["scope"] == {"namespaces": ["kube-system"]}
    rules = {(r["from"], r["to"]): r["ports"] for r in doc["allow"]}
    assert rules[("node", "kube-dns")] == ["8080/TCP", "8181/TCP"]  # GAP 1: only contiguous ports merge
    assert main([*args[:-2], "--port-ranges", "200", "-n", "kube-system"]) == 0
    rules = {(r["from"], r["to"]): r["ports"] for r in yaml.safe_load(out.read_text())["allow"]}
    assert rules[("node", "kube-dns")] == ["8080-8181/TCP"]
