"""``flow-auditor policies diff`` as a CI gate, through the CLI: the gaps the gate had, its inputs, its
report formats and exit codes, and invalid manifests.

Each truth is written out from Kubernetes' and Cilium's documented semantics, not from the code: e.g. "a
NetworkPolicy that allows 22/TCP next to 5432/TCP allows 22/TCP", so the matrix (5432 only) is broken on
22/TCP whatever ports the matrix happens to name.

Golden files under ``tests/golden/policies/`` pin the three report formats; regenerate them after an
intended change with ``UPDATE_GOLDEN=1 pytest tests/test_policies_diff.py``.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml

from auditor.cli import main

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = ROOT / "examples" / "airflow" / "matrix.yaml"
HEADER = "apiVersion: flow-auditor/v1alpha1\nkind: CommunicationMatrix\n"

SHOP = HEADER + dedent(
    """\
    metadata: {name: shop}
    scope: {namespaces: [shop]}
    components:
      api: {namespace: shop, labels: {app: api}}
      db:  {namespace: shop, labels: {app: db}}
    allow:
      - {from: api, to: db, ports: [5432, "8000-8010"]}
    """
)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    old = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(["policies", *args])
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None) -> dict[str, Any]:
    code, out, err = run(capsys, "diff", *args, "--format", "json", stdin=stdin)
    assert code in (0, 1), err
    doc: dict[str, Any] = json.loads(out)
    assert (code == 1) == (doc["result"] == "differences")
    return doc


def edges(doc: dict[str, Any], section: str = "differences") -> set[str]:
    return {f"{e['kind']} {e['source']} -> {e['destination']} {e['ports_text']}" for e in doc[section]}


def netpol(name: str, spec: dict[str, Any], namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def dump(*objects: dict[str, Any]) -> str:
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def shop_policies(ports: list[dict[str, Any]]) -> str:
    """Default deny in shop, api may reach db and db accepts api, both on ``ports``."""
    return dump(
        netpol("deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        netpol(
            "api-out",
            {
                "podSelector": {"matchLabels": {"app": "api"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": ports}],
            },
        ),
        netpol(
            "db-in",
            {
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": ports}],
            },
        ),
    )


EXACT = [{"port": 5432}, {"port": 8000, "endPort": 8010}]


# ==================================================================================================
# Gap 1: every port, not only the ports the matrix names


def test_exact_policies_give_no_difference_and_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = write(tmp_path, "m.yaml", SHOP)
    code, out, _ = run(capsys, "diff", write(tmp_path, "p.yaml", shop_policies(EXACT)), "-m", matrix)
    assert (code, out.splitlines()[-1]) == (0, "no difference")


def test_an_extra_port_next_to_an_allowed_one_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 22/TCP is in the policies (both sides), never in the matrix: api -> db on 22 is allowed and unexpected.
    policies = write(tmp_path, "p.yaml", shop_policies([*EXACT, {"port": 22}]))
    doc = as_json(capsys, policies, "-m", write(tmp_path, "m.yaml", SHOP))
    assert edges(doc) == {"unexpected_allowed api -> db 22/TCP"}
    assert doc["differences"][0]["policies"] == ["shop/api-out", "shop/db-in"]


def test_a_hole_inside_an_allowed_range_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The policies allow 8000-8004 and 8006-8010: 8005, inside the matrix's 8000-8010, is denied.
    holed = [{"port": 5432}, {"port": 8000, "endPort": 8004}, {"port": 8006, "endPort": 8010}]
    doc = as_json(
        capsys, write(tmp_path, "p.yaml", shop_policies(holed)), "-m", write(tmp_path, "m.yaml", SHOP)
    )
    assert edges(doc) == {"expected_denied api -> db 8005/TCP"}
    assert doc["differences"][0]["rules"] == [1]
    assert doc["differences"][0]["blocked_at"] == ["source egress", "destination ingress"]


def test_a_port_far_from_every_named_port_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A UDP range no rule and no other policy names: every port of it is reported, as one range.
    policies = write(
        tmp_path, "p.yaml", shop_policies([*EXACT, {"protocol": "UDP", "port": 40000, "endPort": 40100}])
    )
    doc = as_json(capsys, policies, "-m", write(tmp_path, "m.yaml", SHOP))
    assert edges(doc) == {"unexpected_allowed api -> db 40000-40100/UDP"}


# ==================================================================================================
# Gap 2: probe pods carry their namespace's labels; policyTypes [] / null


NS_LABELS = HEADER + dedent(
    """\
    metadata: {name: obs}
    scope: {namespaces: [shop]}
    components:
      db:      {namespace: shop, labels: {app: db}}
      scraper: {namespaceLabels: {team: obs}, labels: {app: scraper}}
    allow:
      - {from: scraper, to: db, ports: [9100]}
    """
)


def test_a_policy_admitting_a_labelled_namespace_is_caught_admitting_its_other_pods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # namespaceSelector alone admits every pod of the namespaces labelled team=obs, not only the scraper:
    # the namespace's other pods reach db on 9100, which the matrix does not allow.
    wide = netpol(
        "db-in",
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}], "ports": [{"port": 9100}]}
            ],
        },
    )
    deny = netpol("deny", {"podSelector": {}, "policyTypes": ["Ingress"]})
    matrix = write(tmp_path, "m.yaml", NS_LABELS)
    doc = as_json(capsys, write(tmp_path, "p.yaml", dump(deny, wide)), "-m", matrix)
    noise = [e for e in doc["noise"] if e["destination"] == "db"]
    assert [(e["kind"], e["ports_text"], e["policies"]) for e in noise] == [
        ("unexpected_allowed", "9100/TCP", ["shop/db-in"])
    ]
    assert noise[0]["noise"].startswith("other pods of ")
    # With the pod selector added, only the scraper gets in: nothing left.
    wide["spec"]["ingress"][0]["from"][0]["podSelector"] = {"matchLabels": {"app": "scraper"}}
    doc = as_json(capsys, write(tmp_path, "p.yaml", dump(deny, wide)), "-m", matrix)
    assert [e for e in doc["differences"] + doc["noise"] if e["destination"] == "db"] == []


@pytest.mark.parametrize("types", ["omitted", None, []], ids=["omitted", "null", "empty"])
def test_empty_or_null_policy_types_mean_the_same_as_omitted(
    types: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The API server defaults an empty or missing policyTypes from the rules: Ingress, plus Egress when
    # there are egress rules. So db is isolated for ingress and only api reaches it, on 5432.
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": 5432}]}],
    }
    if types != "omitted":
        spec["policyTypes"] = types
    matrix = write(tmp_path, "m.yaml", SHOP)
    doc = as_json(capsys, write(tmp_path, "p.yaml", dump(netpol("db", spec))), "-m", matrix)
    into_db = {e for e in edges(doc) | edges(doc, "noise") if " -> db " in e}
    # Only api -> db 8000-8010 is missing; nobody else reaches db (isolated for ingress).
    assert into_db == {"expected_denied api -> db 8000-8010/TCP"}


# ==================================================================================================
# Gap 3: Cilium policies are evaluated, not skipped


def generated(capsys: pytest.CaptureFixture[str], matrix: str, flavor: str) -> str:
    code, out, _ = run(capsys, "generate", "--matrix", matrix, "--flavor", flavor)
    assert code == 0
    return out


@pytest.mark.parametrize("flavor", ["cilium", "kubernetes"])
def test_generated_policies_round_trip_with_no_difference(
    flavor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = generated(capsys, str(AIRFLOW), flavor)
    code, out, err = run(capsys, "diff", "-", "--matrix", str(AIRFLOW), stdin=text)
    assert (code, out) == (0, "no difference\n")
    kind = "CiliumNetworkPolicy" if flavor == "cilium" else "NetworkPolicy"
    assert f"policies: {kind} 8" in err


def test_a_missing_default_deny_is_a_difference_in_words_and_exit_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Without the namespace's default-deny, pods no component selects talk to anything, and anything to
    # them: a zero-trust namespace broken. The components stay isolated by their own policies, so the
    # findings are all on unmatched endpoints — which the summary must not call "no difference".
    objects = list(yaml.safe_load_all(generated(capsys, str(AIRFLOW), "kubernetes")))
    kept = [o for o in objects if "default-deny" not in o["metadata"]["name"]]
    assert len(kept) == len(objects) - 1
    path = write(tmp_path, "p.yaml", dump(*kept))
    code, out, _ = run(capsys, "diff", path, "-m", str(AIRFLOW))
    assert code == 1
    verdict = out.splitlines()[-1]
    assert verdict.startswith("0 difference(s) between components, ") and "of unmatched endpoints" in verdict
    assert "unexpected_allowed ns:airflow -> internet" in out


def test_a_cilium_policy_opening_a_port_is_found(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    objects = list(yaml.safe_load_all(generated(capsys, str(AIRFLOW), "cilium")))
    pg = next(o for o in objects if o["metadata"]["name"] == "airflow-postgresql")
    pg["spec"]["ingress"][0]["toPorts"][0]["ports"].append({"port": "22", "protocol": "TCP"})
    doc = as_json(capsys, write(tmp_path, "p.yaml", dump(*objects)), "-m", str(AIRFLOW))
    # postgresql now accepts 22/TCP from the airflow components, but their own policies isolate their
    # egress and allow 5432 only: a connection needs both sides, so 22 stays denied.
    assert edges(doc) == set()
    # Opening 22 on the scheduler's egress as well makes scheduler -> postgresql 22/TCP pass both sides.
    sched = next(o for o in objects if o["metadata"]["name"] == "airflow-scheduler")
    rule = next(
        r
        for r in sched["spec"]["egress"]
        if r.get("toPorts", [{}])[0].get("ports") == [{"port": "5432", "protocol": "TCP"}]
    )
    rule["toPorts"][0]["ports"].append({"port": "22", "protocol": "TCP"})
    doc = as_json(capsys, write(tmp_path, "p.yaml", dump(*objects)), "-m", str(AIRFLOW))
    assert edges(doc) == {"unexpected_allowed scheduler -> postgresql 22/TCP"}
    assert doc["differences"][0]["policies"] == [
        "cnp:airflow/airflow-scheduler",
        "cnp:airflow/airflow-postgresql",
    ]


# ==================================================================================================
# Inputs: kubectl lists, multi-document files, directories, stdin; other objects skipped and counted


def test_a_gitops_directory_is_read_recursively_and_other_objects_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = list(yaml.safe_load_all(shop_policies(EXACT)))
    repo = tmp_path / "repo"
    write(repo, "apps/shop/deny.yaml", dump(objects[0]))
    # A kubectl-style List and a Deployment in one multi-document file, in a nested directory.
    listed = {"apiVersion": "v1", "kind": "List", "items": objects[1:]}
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"}}
    write(repo, "apps/shop/nested/rest.yml", dump(listed, deploy))
    write(repo, "apps/shop/config.json", json.dumps({"apiVersion": "v1", "kind": "ConfigMap"}))
    write(repo, "README.md", "not a manifest")
    write(repo, ".git/config.yaml", "this: {is: [not, read")
    doc = as_json(capsys, str(repo), "-m", write(tmp_path, "m.yaml", SHOP))
    assert doc["result"] == "no_difference"
    assert doc["inputs"]["files"] == 3
    assert doc["inputs"]["policies"] == {"NetworkPolicy": 3}
    assert doc["inputs"]["skipped"] == {"ConfigMap": 1, "Deployment": 1}


def test_stdin_and_files_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    objects = list(yaml.safe_load_all(shop_policies(EXACT)))
    path = write(tmp_path, "deny.yaml", dump(objects[0]))
    doc = as_json(capsys, path, "-", "-m", write(tmp_path, "m.yaml", SHOP), stdin=dump(*objects[1:]))
    assert (doc["result"], doc["inputs"]["files"]) == ("no_difference", 2)


INPUT_ERRORS: list[tuple[str, str, str]] = [
    (
        "invalid YAML names file and line",
        "---\nkind: NetworkPolicy\nspec: {podSelector: [\n",
        "p.yaml:4: invalid YAML",
    ),
    (
        "a document that is not an object",
        "---\n- a\n- b\n",
        "p.yaml:2: document 1: expected a Kubernetes object",
    ),
    (
        "an invalid policy names its file, line and object",
        "---\nkind: ConfigMap\n---\n"
        + dump(netpol("bad", {"podSelector": {"matchLabels": {"app": "a b"}}})).removeprefix("---\n"),
        "p.yaml:4: NetworkPolicy shop/bad: spec.podSelector.matchLabels.app: invalid label value 'a b'",
    ),
    (
        "duplicate policy names in one namespace",
        dump(netpol("x", {"podSelector": {}}), netpol("x", {"podSelector": {}})),
        "NetworkPolicy shop/x: metadata.name: duplicate policy name in this namespace",
    ),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in INPUT_ERRORS], ids=[c[0] for c in INPUT_ERRORS])
def test_invalid_input_exits_2_with_a_message_naming_where(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "diff", write(tmp_path, "p.yaml", text), "-m", write(tmp_path, "m.yaml", SHOP)
    )
    assert (code, out) == (2, "")
    assert message in err


def test_unknown_fields_are_rejected_under_strict_and_warned_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = shop_policies(EXACT).replace("policyTypes:", "policyTypo: [Ingress]\n  policyTypes:", 1)
    policies, matrix = write(tmp_path, "p.yaml", text), write(tmp_path, "m.yaml", SHOP)
    code, _, err = run(capsys, "diff", policies, "-m", matrix, "--strict")
    assert code == 2 and "NetworkPolicy shop/deny: spec: unknown field 'policyTypo'" in err
    doc = as_json(capsys, policies, "-m", matrix)
    assert any("unknown field 'policyTypo'" in w and "ignored" in w for w in doc["warnings"])


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "diff", str(tmp_path / "nope.yaml"), "-m", write(tmp_path, "m.yaml", SHOP))
    assert code == 2 and "nope.yaml: cannot read" in err


# ==================================================================================================
# Output: grouped by edge, noise summarised, three formats (golden), cluster data escaped


def broken_airflow(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    """The generated Airflow NetworkPolicies with mistakes, and a CiliumNetworkPolicy beside them:

    - the scheduler lost its database egress;
    - postgresql admits pods of every namespace on 5432 (``namespaceSelector: {}``);
    - the webserver's NetworkPolicy lost the Traefik rule, which a CiliumNetworkPolicy with an HTTP rule
      now provides (allowed at L4, L7-restricted).
    """
    objects = list(yaml.safe_load_all(generated(capsys, str(AIRFLOW), "kubernetes")))
    sched = next(o for o in objects if o["metadata"]["name"] == "airflow-scheduler")
    sched["spec"]["egress"] = [
        r for r in sched["spec"]["egress"] if r["ports"] != [{"protocol": "TCP", "port": 5432}]
    ]
    pg = next(o for o in objects if o["metadata"]["name"] == "airflow-postgresql")
    pg["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}], "ports": [{"port": 5432}]})
    web = next(o for o in objects if o["metadata"]["name"] == "airflow-webserver")
    web["spec"]["ingress"] = web["spec"]["ingress"][1:]  # rule 1: traefik -> webserver 8080
    l7 = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "webserver-http", "namespace": "airflow"},
        "spec": {
            "endpointSelector": {"matchLabels": {"component": "webserver"}},
            "ingress": [
                {
                    "fromEndpoints": [
                        {
                            "matchLabels": {
                                "k8s:io.kubernetes.pod.namespace": "kube-system",
                                "app.kubernetes.io/name": "traefik",
                            }
                        }
                    ],
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
    return write(tmp_path, "p.yaml", dump(*objects, l7))


@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
def test_report_formats_match_golden_files(
    fmt: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, golden: Callable[[str, str], None]
) -> None:
    policies = broken_airflow(capsys, tmp_path)
    code, out, _ = run(capsys, "diff", policies, "-m", str(AIRFLOW), "--format", fmt)
    assert code == 1
    golden(
        f"policies/airflow-diff.{ {'table': 'txt', 'json': 'json', 'markdown': 'md'}[fmt] }",
        out.replace(str(tmp_path), "<tmp>"),
    )


def test_the_broken_airflow_report_names_each_mistake(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = as_json(capsys, broken_airflow(capsys, tmp_path), "-m", str(AIRFLOW))
    # Pods outside airflow are not egress-isolated, so postgresql's open ingress lets them in on 5432
    # (not the world: a namespaceSelector selects pods only); inside airflow every pod's egress is
    # isolated and allows 5432 only to those the matrix names.
    assert edges(doc) == {
        "expected_denied scheduler -> postgresql 5432/TCP",
        "unexpected_allowed kube-dns -> postgresql 5432/TCP",
        "unexpected_allowed prometheus -> postgresql 5432/TCP",
        "unexpected_allowed traefik -> postgresql 5432/TCP",
    }
    by_edge = {(e["source"], e["destination"]): e for e in doc["differences"]}
    assert by_edge[("scheduler", "postgresql")]["rules"] == [3]
    # The scheduler lost its egress rule; postgresql still accepts it: blocked at the source only.
    assert by_edge[("scheduler", "postgresql")]["blocked_at"] == ["source egress"]
    assert by_edge[("prometheus", "postgresql")]["policies"] == ["airflow/airflow-postgresql"]
    assert {(e["noise"], e["source"]) for e in doc["noise"]} == {
        ("a namespace outside the matrix", "ns:flow-auditor-probe"),
        ("other pods of kube-system", "ns:kube-system"),
        ("other pods of monitoring", "ns:monitoring"),
    }
    assert [
        (e["source"], e["destination"], e["ports_text"], e["policies"]) for e in doc["l7_restricted"]
    ] == [("traefik", "webserver", "8080/TCP", ["cnp:airflow/webserver-http"])]
    assert doc["inputs"]["policies"] == {"CiliumNetworkPolicy": 1, "NetworkPolicy": 8}


def test_cluster_data_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A policy name is whatever the manifest says: terminal escapes and Markdown specials stay literal.
    policy = netpol("evil\x1b[31m|*x*", {"podSelector": {}, "ingress": [{"ports": [{"port": 22}]}]})
    policies, matrix = write(tmp_path, "p.yaml", dump(policy)), write(tmp_path, "m.yaml", SHOP)
    code, out, _ = run(capsys, "diff", policies, "-m", matrix)
    assert code == 1 and "\x1b" not in out and "evil\\x1b[31m|*x*" in out
    code, out, _ = run(capsys, "diff", policies, "-m", matrix, "--format", "markdown")
    assert code == 1 and "evil\\\\x1b\\[31m\\|\\*x\\*" in out


# ==================================================================================================
# Named ports: containerPorts in the matrix resolve them; otherwise a warning names the policy


NAMED = [{"port": "pg"}, {"port": 8000, "endPort": 8010}]


def test_a_named_port_is_resolved_through_container_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ingress named ports resolve on the pod the policy selects; egress ones on the destination pod:
    # both are db here, which declares pg = 5432/TCP.
    declared = SHOP.replace(
        "db:  {namespace: shop, labels: {app: db}}",
        "db:  {namespace: shop, labels: {app: db}, containerPorts: {pg: 5432}}",
    )
    doc = as_json(
        capsys, write(tmp_path, "p.yaml", shop_policies(NAMED)), "-m", write(tmp_path, "m.yaml", declared)
    )
    assert (doc["result"], doc["warnings"]) == ("no_difference", [])


def test_an_unresolvable_named_port_is_a_warning_naming_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = as_json(
        capsys, write(tmp_path, "p.yaml", shop_policies(NAMED)), "-m", write(tmp_path, "m.yaml", SHOP)
    )
    assert edges(doc) == {"expected_denied api -> db 5432/TCP"}
    assert any(
        w.startswith("NetworkPolicy shop/api-out: named port 'pg' cannot be resolved")
        for w in doc["warnings"]
    )
    assert any(
        w.startswith("NetworkPolicy shop/db-in: named port 'pg' cannot be resolved") for w in doc["warnings"]
    )


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ("{HTTP: 80}", "invalid port name 'HTTP'"),
        ("{http: 80-90}", "expected one port"),
        ("{http: ICMP}", "expected one port"),
    ],
)
def test_invalid_container_ports_are_matrix_errors(
    ports: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = SHOP.replace(
        "db:  {namespace: shop, labels: {app: db}}",
        f"db:  {{namespace: shop, labels: {{app: db}}, containerPorts: {ports}}}",
    )
    code, _, err = run(capsys, "diff", write(tmp_path, "p.yaml", ""), "-m", write(tmp_path, "m.yaml", bad))
    assert code == 2 and "m.yaml:7: components.db.containerPorts" in err and message in err


def test_a_matrix_without_scope_compares_every_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No scope and no component pinned to a namespace: every namespace is in scope, so a cluster
    # without policies allows what the matrix does not.
    unscoped = HEADER + dedent(
        """\
        metadata: {name: unscoped}
        components:
          api: {labels: {app: api}}
          db:  {labels: {app: db}}
        allow:
          - {from: api, to: db, ports: [5432]}
        """
    )
    doc = as_json(capsys, write(tmp_path, "p.yaml", ""), "-m", write(tmp_path, "m.yaml", unscoped))
    assert (
        "unexpected_allowed api -> db 1-5431/TCP, 5433-65535/TCP, any/UDP, any/SCTP, ICMPv4, ICMPv6"
        in edges(doc)
    )


def test_a_policy_without_namespace_is_evaluated_in_default_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = netpol("deny", {"podSelector": {}, "policyTypes": ["Ingress"]})
    del policy["metadata"]["namespace"]
    doc = as_json(capsys, write(tmp_path, "p.yaml", dump(policy)), "-m", write(tmp_path, "m.yaml", SHOP))
    assert doc["warnings"] == [
        "NetworkPolicy default/deny: no metadata.namespace: evaluated in namespace 'default' (render the "
        "manifests with their namespace to check them where they go)"
    ]
