"""A suggestion per ``unexpected_allowed`` edge of ``replay``'s report (issue 10, item 3): the rule and the
components the matrix lacks, computed by the learning code. Pasting every suggestion into the matrix makes
the same flows replay without ``unexpected_allowed``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clusters import generate

from auditor.cli import main
from auditor.learn.yamltext import flow
from auditor.scenario import write_jsonl

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "examples" / "airflow" / "flows.jsonl"
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"


def replay(flows: Path, matrix: Path, tmp: Path) -> dict[str, Any]:
    out = tmp / "report.json"
    assert (
        main(["replay", str(flows), "-m", str(matrix), "-f", "json", "-o", str(out), "--fail-on", "none"])
        == 0
    )
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def apply(matrix_text: str, report: dict[str, Any]) -> str:
    """The matrix with every suggestion pasted: components before ``allow:``, rules at the end."""
    components: dict[str, Any] = {}
    rules = []
    for e in report["edges"]:
        if e["suggestion"]:
            components.update(e["suggestion"]["components"])
            rules.extend(e["suggestion"]["rules"])
    head, sep, tail = matrix_text.partition("\nallow:")
    added = "".join(f"\n  {name}: {flow(sel)}" for name, sel in components.items())
    return head + added + sep + tail.rstrip("\n") + "".join(f"\n  - {flow(r)}" for r in rules) + "\n"


def test_the_example_violation_gets_the_rule_and_component_that_would_allow_it(tmp_path: Path) -> None:
    report = replay(FLOWS, MATRIX, tmp_path)
    suggested = {(e["source"], e["destination"], e["port"]): e["suggestion"] for e in report["edges"]}
    assert suggested[("ns:default", "redis", 6379)] == {
        "components": {"debug-shell": {"namespace": "default", "labels": {"run": "debug-shell"}}},
        "rules": [{"from": "debug-shell", "to": "redis", "ports": ["6379/TCP"]}],
    }
    # only unexpected_allowed edges carry one
    assert all((e["suggestion"] is not None) == (e["class"] == "unexpected_allowed") for e in report["edges"])
    patched = tmp_path / "patched.yaml"
    patched.write_text(apply(MATRIX.read_text(), report))
    assert replay(FLOWS, patched, tmp_path)["classes"]["unexpected_allowed"] == 0


def test_pasting_every_suggestion_into_a_partial_matrix_allows_every_delivered_connection(
    tmp_path: Path,
) -> None:
    flows = tmp_path / "flows.jsonl"
    write_jsonl(generate(5, workloads=60, connections=800).events, flows)
    partial = tmp_path / "partial.yaml"
    assert main(["matrix", "learn", str(flows), "--min-connections", "3", "-o", str(partial)]) == 0
    report = replay(flows, partial, tmp_path)
    violations = [e for e in report["edges"] if e["class"] == "unexpected_allowed"]
    assert len(violations) > 20
    assert all(e["suggestion"] and not e["suggestion"].get("partial") for e in violations)
    patched = tmp_path / "patched.yaml"
    patched.write_text(apply(partial.read_text(), report))
    assert replay(flows, patched, tmp_path)["classes"]["unexpected_allowed"] == 0
