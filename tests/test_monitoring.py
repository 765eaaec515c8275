"""Alert rules, PrometheusRule, Grafana dashboard and runbook: generated, valid, tested, consistent.

Real tools: ``promtool`` (Debian ``prometheus`` package, installed by ``scripts/install-test-deps.sh``) checks
and unit-tests the rules (``tests/monitoring/rules_test.yaml``); ``jsonschema`` validates the PrometheusRule
against the CRD schema in ``tests/data/crd-schemas/``; ``promql-parser`` parses every dashboard query.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from jsonschema import Draft7Validator

from monitoring import build, dashboard, panels_matrix, rules

ROOT = Path(__file__).resolve().parent.parent

UNIT_TESTS = ROOT / "tests" / "monitoring" / "rules_test.yaml"
CRD_SCHEMA = ROOT / "tests" / "data" / "crd-schemas" / "prometheusrule_v1.json"
RUNBOOK = ROOT / "docs" / "runbook.md"

# DESIGN §6: alert names (a contract) and the metrics the daemon exposes.
DESIGN_ALERTS = {
    "FlowAuditorLegitimateTrafficDropped",
    "FlowAuditorUnexpectedTrafficAllowed",
    "FlowAuditorPolicyWouldDropLegitimateTraffic",
    "FlowAuditorHubbleStreamDown",
    "FlowAuditorLostEvents",
    "FlowAuditorMatrixReloadFailed",
    "FlowAuditorExpectedEdgeSilent",
    "FlowAuditorDown",
}
DAEMON_METRICS = {
    "flow_auditor_connections_total",
    "flow_auditor_dropped_connections_total",
    "flow_auditor_flows_total",
    "flow_auditor_edge_last_seen_timestamp_seconds",
    "flow_auditor_rule_last_seen_timestamp_seconds",
    "flow_auditor_hubble_up",
    "flow_auditor_hubble_reconnects_total",
    "flow_auditor_hubble_lost_events_total",
    "flow_auditor_last_flow_timestamp_seconds",
    "flow_auditor_hubble_nodes",
    "flow_auditor_matrix_rules",
    "flow_auditor_matrix_reloads_total",
    "flow_auditor_label_overflow_total",
    "flow_auditor_series_overflow_total",
    "flow_auditor_build_info",
    "flow_auditor_hubble_resent_events_skipped_total",
    "flow_auditor_hubble_stream_gaps_total",
    "flow_auditor_hubble_clock_anomalies_total",
}
SEVERITIES = {"critical", "warning", "info"}
TRAFFIC_ALERTS = (
    "FlowAuditorLegitimateTrafficDropped",
    "FlowAuditorUnexpectedTrafficAllowed",
    "FlowAuditorPolicyWouldDropLegitimateTraffic",
)
_METRIC = re.compile(r"\bflow_auditor_\w+")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run scripts/install-test-deps.sh (Debian package prometheus)")
    return path


def _run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, check=False)


def _rule_file_rules(text: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load(text)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the headings of a Markdown page."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# -- generated files --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", build.OUTPUTS)
def test_committed_file_equals_a_fresh_build(name: str) -> None:
    committed = ROOT / name
    assert committed.is_file(), f"{name} is missing: run `python -m monitoring.build`"
    assert committed.read_text(encoding="utf-8") == build.generated_files()[name], (
        f"{name} is stale: run `python -m monitoring.build`"
    )


def test_both_dashboard_paths_hold_the_same_json() -> None:
    files = build.generated_files()
    assert files[build.DASHBOARD_FILE] == files[build.DASHBOARD_COPY]


def test_build_writes_every_file_and_check_detects_staleness(tmp_path: Path) -> None:
    assert build.main(["--root", str(tmp_path), "--check"]) == 1
    assert build.main(["--root", str(tmp_path)]) == 0
    assert build.main(["--root", str(tmp_path), "--check"]) == 0
    (tmp_path / build.RULES_FILE).write_text("groups: []\n", encoding="utf-8")
    assert build.stale_files(tmp_path) == [build.RULES_FILE]


def test_fast_rules_option_writes_only_the_test_rule_file(tmp_path: Path) -> None:
    out = tmp_path / "e2e" / "fast.rules.yaml"
    assert build.main(["--root", str(tmp_path / "repo"), "--fast-rules", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == rules.render_rules(fast=True)
    assert not (tmp_path / "repo").exists()


# -- rules: promtool ----------------------------------------------------------------------------------


def test_plain_rule_file_passes_promtool_check(tmp_path: Path) -> None:
    path = tmp_path / "flow-auditor.rules.yaml"
    path.write_text(rules.render_rules(), encoding="utf-8")
    result = _run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_spec_passes_promtool_check(tmp_path: Path) -> None:
    spec = yaml.safe_load(rules.render_prometheus_rule())["spec"]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    result = _run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass_against_the_generated_rules(tmp_path: Path) -> None:
    rule_file = tmp_path / "flow-auditor.rules.yaml"
    rule_file.write_text(rules.render_rules(), encoding="utf-8")
    unit_tests = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))
    assert unit_tests["rule_files"] == ["../../deploy/prometheus/flow-auditor.rules.yaml"]
    unit_tests["rule_files"] = [str(rule_file)]
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(unit_tests, sort_keys=False), encoding="utf-8")
    result = _run_promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_show_every_alert_firing_and_staying_silent() -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for name in rules.alert_names():
        assert any(c["alertname"] == name and c.get("exp_alerts") for c in cases), f"{name} never fires"
        assert any(c["alertname"] == name and not c.get("exp_alerts") for c in cases), f"{name} never silent"


def test_fast_rules_pass_promtool_check_and_never_wait(tmp_path: Path) -> None:
    text = rules.render_rules(fast=True)
    path = tmp_path / "fast.rules.yaml"
    path.write_text(text, encoding="utf-8")
    result = _run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    doc = yaml.safe_load(text)
    assert {g["interval"] for g in doc["groups"]} == {rules.FAST_INTERVAL}
    fast = _rule_file_rules(text)
    assert {r["for"] for r in fast} == {"0s"}
    windows = [w for r in fast for w in re.findall(r"\[(\w+)\]|offset (\w+)", r["expr"])]
    durations = {d for window in windows for d in window if d}
    assert durations == {rules.FAST_WINDOW}
    assert [r["alert"] for r in fast] == [r["alert"] for r in _rule_file_rules(rules.render_rules())]


# -- rules: contract and conventions ------------------------------------------------------------------


def test_every_alert_named_by_the_design_is_defined() -> None:
    assert set(rules.alert_names()) >= DESIGN_ALERTS
    assert "FlowAuditorNoFlows" in rules.alert_names()


def test_every_alert_has_severity_summary_description_and_runbook_url() -> None:
    for rule in _rule_file_rules(rules.render_rules()):
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and "{{" not in annotations["summary"], name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"{rules.RUNBOOK_BASE}#{name.lower()}"


def test_severities_follow_the_design() -> None:
    severity = {r["alert"]: r["labels"]["severity"] for r in _rule_file_rules(rules.render_rules())}
    assert severity["FlowAuditorLegitimateTrafficDropped"] == "critical"
    assert severity["FlowAuditorUnexpectedTrafficAllowed"] == "critical"
    assert severity["FlowAuditorPolicyWouldDropLegitimateTraffic"] == "warning"
    assert severity["FlowAuditorExpectedEdgeSilent"] == "info"


@pytest.mark.parametrize("name", TRAFFIC_ALERTS)
def test_traffic_alert_keeps_and_names_the_edge_labels(name: str) -> None:
    (rule,) = [r for r in _rule_file_rules(rules.render_rules()) if r["alert"] == name]
    for label in ("source", "destination", "port", "protocol", "verdict"):
        assert label in rule["expr"].split(")")[0], f"{name}: sum by (...) drops {label}"
        assert f"$labels.{label}" in rule["annotations"]["description"], f"{name}: description lacks {label}"


def test_rules_and_dashboard_use_only_metrics_the_daemon_exposes() -> None:
    exprs = [r["expr"] for r in _rule_file_rules(rules.render_rules())]
    exprs += [expr for _, expr in dashboard.panel_queries()]
    used = {m for expr in exprs for m in _METRIC.findall(expr)}
    assert used <= DAEMON_METRICS, used - DAEMON_METRICS


def test_runbook_has_a_section_for_every_alert() -> None:
    anchors = _github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in _rule_file_rules(rules.render_rules()):
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"docs/runbook.md has no section for {rule['alert']}"


def test_runbook_shows_how_to_confirm_traffic_alerts_with_hubble_and_replay() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    for name in TRAFFIC_ALERTS:
        body = sections[name]
        assert re.search(r"hubble observe .*--from-pod \S+ --to-pod \S+ --port \d+ --verdict", body), name
        assert "--namespace" in body and "flow-auditor replay" in body and "--matrix" in body, name
    for command in re.findall(r"^hubble observe .*$", text, flags=re.M):
        # The hubble CLI rejects --namespace together with --from-pod/--to-pod.
        assert not ("--namespace" in command and re.search(r"--(from|to)-pod\b", command)), command


# -- PrometheusRule -----------------------------------------------------------------------------------


def test_prometheus_rule_validates_against_the_crd_schema() -> None:
    doc = yaml.safe_load(rules.render_prometheus_rule())
    schema = json.loads(CRD_SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "flow-auditor"
    assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert doc["spec"]["groups"] == yaml.safe_load(rules.render_rules())["groups"]


def test_crd_schema_rejects_a_rule_with_an_unknown_field() -> None:
    doc = yaml.safe_load(rules.render_prometheus_rule())
    doc["spec"]["groups"][0]["rules"][0]["severity"] = "critical"
    schema = json.loads(CRD_SCHEMA.read_text(encoding="utf-8"))
    assert not Draft7Validator(schema).is_valid(doc)


# -- dashboard ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dashboard.to_dict()


def _all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for top in board["panels"] for p in (top, *top.get("panels", []))]


def test_dashboard_is_provisioning_ready(board: dict[str, Any]) -> None:
    assert board["uid"] == "flow-auditor"
    assert board["title"] and "flow-auditor" in board["tags"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for name in ("cluster", "job"):
        assert variables[name]["type"] == "query"
        assert re.fullmatch(
            rf"label_values\(flow_auditor_build_info(\{{.*\}})?, {name}\)", variables[name]["query"]
        )
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["allValue"] == ".*", "'All' must also match series without the label"


def test_every_panel_and_target_uses_the_datasource_variable(board: dict[str, Any]) -> None:
    for panel in _all_panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panel_ids_are_unique_and_panels_fit_the_grid(board: dict[str, Any]) -> None:
    panels = _all_panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


@pytest.mark.parametrize(("title", "expr"), dashboard.panel_queries())
def test_panel_query_parses_as_promql(title: str, expr: str) -> None:
    promql_parser.parse(dashboard.substitute_variables(expr))


@pytest.mark.parametrize(("title", "expr"), dashboard.panel_queries())
def test_panel_query_selects_by_job_and_cluster_and_hardcodes_no_range(title: str, expr: str) -> None:
    for match in _METRIC.finditer(expr):
        assert expr[match.end() :].startswith('{job=~"$job", cluster=~"$cluster"'), (title, match.group())
    for window in re.findall(r"\[([^\]]+)\]|offset (\$?\w+)", expr):
        assert set(window) - {""} <= {"$__rate_interval", "$__range"}, (title, window)


def test_rates_use_rate_interval_and_tables_the_time_range() -> None:
    queries = dashboard.panel_queries()
    assert any("rate(" in expr and "[$__rate_interval]" in expr for _, expr in queries)
    for _, expr in queries:
        if re.search(r"\brate\(", expr):
            assert "[$__rate_interval]" in expr


def test_dashboard_has_the_required_panels(board: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in _all_panels(board)}
    exprs = {t: " ".join(tg["expr"] for tg in p.get("targets", [])) for t, p in by_title.items()}
    violations = exprs["Violations over time by class"]
    assert "expected_dropped" in violations and "unexpected_allowed" in violations and "AUDIT" in violations
    edges = by_title["Violation edges (time range)"]
    assert "flow_auditor_dropped_connections_total" in exprs["Violation edges (time range)"]
    assert edges["transformations"][0]["id"] == "merge"
    matrix = by_title["Communication matrix: expected vs. observed (time range)"]
    assert matrix["transformations"][0]["id"] == "groupingToMatrix"
    assert (
        "flow_auditor_rule_last_seen_timestamp_seconds" in exprs["Allow rules without traffic (time range)"]
    )
    health = " ".join(
        exprs[t] for t in exprs if t in {"Hubble stream", "Last flow age", "Reconnects and lost events"}
    )
    for metric in ("hubble_up", "last_flow_timestamp_seconds", "reconnects_total", "lost_events_total"):
        assert metric in health, metric
    assert "time() - max(flow_auditor_last_flow_timestamp_seconds" in exprs["Last flow age"]
    assert "by (outcome)" in exprs["Classification throughput by outcome"]
    assert "flow_auditor_matrix_reloads_total" in exprs["Matrix reloads and label overflow"]
    assert "flow_auditor_series_overflow_total" in exprs["Matrix reloads and label overflow"]


def test_matrix_panel_ranks_every_class_once() -> None:
    ranks = [rank for _, rank, _, _ in panels_matrix.MATRIX_RANKS]
    assert sorted(cls for cls, _, _, _ in panels_matrix.MATRIX_RANKS) == sorted(
        ["expected_allowed", "expected_dropped", "unexpected_allowed", "unexpected_dropped"]
    )
    assert ranks == sorted(ranks, reverse=True), "the `or` chain must list the worst class first"


def test_substitute_variables_replaces_grafana_variables_but_not_regex_groups() -> None:
    expr = (
        'label_replace(rate(x{job=~"$job", cluster=~"${cluster}"}[$__rate_interval]), "a", "$1", "b", "(.*)")'
    )
    assert dashboard.substitute_variables(expr, {"job": "flow-auditor"}) == (
        'label_replace(rate(x{job=~"flow-auditor", cluster=~".*"}[5m]), "a", "$1", "b", "(.*)")'
    )
    assert dashboard.substitute_variables("x[$__range] offset $__range < time() - $__range_s") == (
        "x[1h] offset 1h < time() - 3600"
    )
    with pytest.raises(KeyError):
        dashboard.substitute_variables("$unknown")
