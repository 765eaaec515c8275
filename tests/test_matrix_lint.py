"""Warnings about a matrix that loads but cannot mean what it says (auditor.matrix.lint).

The truth of each case is first-match-wins spelled out: a later component is dead when every endpoint it
selects is selected by an earlier one (a pod matching the later selector also matches the earlier)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from factory import pod

from auditor.matrix import load_matrix, parse_matrix
from auditor.matrix.lint import warnings

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = pod("a", "p-0", 4242, "tier=x", "c=s")  # selected by every later selector of the dead cases
HEADER = "apiVersion: flow-auditor/v1alpha1\nkind: CommunicationMatrix\nmetadata: {name: t}\n"

CASES = [
    # (what, earlier selector, later selector, later is dead)
    (
        "more labels, same namespace",
        "{namespace: a, labels: {tier: x}}",
        "{namespace: a, labels: {tier: x, c: s}}",
        True,
    ),
    ("the same selector twice", "{namespace: a, labels: {c: s}}", "{namespace: a, labels: {c: s}}", True),
    ("a namespace of the earlier's", "{namespaces: [a, b]}", "{namespace: a, labels: {c: s}}", True),
    ("any namespace before one", "{labels: {c: s}}", "{namespace: a, labels: {c: s}}", True),
    (
        "an expression added",
        "{namespace: a}",
        "{namespace: a, matchExpressions: [{key: c, operator: Exists}]}",
        True,
    ),
    (
        "fewer labels later",
        "{namespace: a, labels: {tier: x, c: s}}",
        "{namespace: a, labels: {tier: x}}",
        False,
    ),
    ("another namespace", "{namespace: a, labels: {c: s}}", "{namespace: b, labels: {c: s}}", False),
    ("one namespace before any", "{namespace: a, labels: {c: s}}", "{labels: {c: s}}", False),
    ("another label value", "{namespace: a, labels: {c: s}}", "{namespace: a, labels: {c: t}}", False),
    ("a workload first", "{namespace: a, workload: {name: w}}", "{namespace: a, labels: {c: s}}", False),
    (
        "a service account first",
        "{namespace: a, serviceAccount: sa}",
        "{namespace: a, labels: {c: s}}",
        False,
    ),
    ("an address part first", "{labels: {c: s}, cidrs: [10.0.0.0/8]}", "{labels: {c: s}}", False),
    ("entities, then a pod", "{entities: [world]}", "{namespace: a}", False),
]


@pytest.mark.parametrize(("earlier", "later", "dead"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_component_an_earlier_one_covers_is_reported(earlier: str, later: str, dead: bool) -> None:
    m = parse_matrix(HEADER + f"components:\n  first: {earlier}\n  second: {later}\nallow: []\n", "m.yaml")
    found = warnings(m)
    assert bool(found) is dead, found
    if dead:
        assert found == [
            "m.yaml:6: components.second can never match: every endpoint it selects matches "
            "components.first (line 5) first, as the first match wins — move it above first or narrow first"
        ]
        # and it is so: a pod the later selector selects resolves to the earlier component
        alone = parse_matrix(HEADER + f"components:\n  second: {later}\nallow: []\n", "m.yaml")
        assert alone.resolve(SAMPLE) == "second" and m.resolve(SAMPLE) == "first"


def test_the_examples_and_the_deployed_matrix_have_no_dead_component() -> None:
    files = [*sorted(ROOT.glob("examples/*/matrix.yaml")), ROOT / "deploy" / "base" / "matrix.yaml"]
    assert files and all(warnings(load_matrix(f)) == [] for f in files)


def test_matrix_check_prints_the_warning_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        HEADER + "components:\n  web: {namespace: a, labels: {tier: x}}\n"
        "  scheduler: {namespace: a, labels: {tier: x, c: s}}\nallow: []\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "matrix", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        f"flow-auditor: warning: {path}:6: components.scheduler can never match: every endpoint it selects "
        "matches components.web (line 5) first, as the first match wins — move it above web or narrow web\n"
    )
