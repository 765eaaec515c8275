"""The ``flow-auditor replay`` and ``matrix check`` command lines, end to end (real files, real processes).

Golden files under ``tests/golden/`` pin the reports of the Airflow example; regenerate them after an
intended change with ``UPDATE_GOLDEN=1 pytest tests/test_replay_cli.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import run_cli

from auditor.cli import main
from auditor.scenario import airflow_scenario

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "airflow"
FLOWS = EXAMPLE / "flows.jsonl"
MATRIX = EXAMPLE / "matrix.yaml"


def replay_json(*files: str, extra: tuple[str, ...] = ()) -> tuple[int, dict[str, Any]]:
    # The matrix as a path relative to the repository (the report names it): the same in every checkout.
    proc = run_cli("replay", *files, "--matrix", "examples/airflow/matrix.yaml", "--format", "json", *extra)
    return proc.returncode, json.loads(proc.stdout)


def test_example_report_matches_golden_json_and_exits_1(golden: Callable[[str, str], None]) -> None:
    code, report = replay_json("examples/airflow/flows.jsonl")
    assert code == 1
    golden("airflow-report.json", json.dumps(report, indent=2) + "\n")


@pytest.mark.parametrize(("fmt", "suffix"), [("markdown", "md"), ("table", "txt"), ("html", "html")])
def test_example_report_matches_golden_text_formats(
    fmt: str, suffix: str, golden: Callable[[str, str], None]
) -> None:
    proc = run_cli(
        "replay", "examples/airflow/flows.jsonl", "--matrix", "examples/airflow/matrix.yaml", "--format", fmt
    )
    assert proc.returncode == 1, proc.stderr
    golden(f"airflow-report.{suffix}", proc.stdout)


def test_example_report_equals_the_scenario_ground_truth() -> None:
    """The generator declares what each connection is meant to be; the auditor must find exactly that."""
    scenario = airflow_scenario(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    _, report = replay_json("examples/airflow/flows.jsonl")
    expected = sorted(
        (json.dumps(e.as_dict(), sort_keys=True) for e in scenario.expected_edges),
    )
    keys = (
        "source",
        "destination",
        "port",
        "protocol",
        "class",
        "connections",
        "verdicts",
        "drop_reasons",
        "rule",
    )
    got = sorted(json.dumps({k: e[k] for k in keys}, sort_keys=True) for e in report["edges"])
    assert got == expected
    intended = {k: v for k, v in scenario.outcome_counts().items() if k != "lost"}
    assert {k: v for k, v in report["flows"].items() if k in intended} == intended
    assert report["flows"]["invalid"] == 0
    assert report["classes"] == scenario.class_counts()
    assert [r["rule"] for r in report["unused_rules"]] == scenario.unused_rules


def test_every_class_of_the_scenario_is_reported() -> None:
    _, report = replay_json("examples/airflow/flows.jsonl")
    assert all(count > 0 for count in report["classes"].values()), report["classes"]
    assert report["flows"]["received"] == sum(v for k, v in report["flows"].items() if k != "received")


@pytest.mark.parametrize(
    ("fail_on", "code"),
    [
        ("unexpected_dropped", 1),
        ("expected_allowed,unexpected_dropped", 1),
        ("none", 0),
    ],
)
def test_fail_on_changes_the_exit_code(fail_on: str, code: int) -> None:
    assert (
        main(
            [
                "replay",
                str(FLOWS),
                "--matrix",
                str(MATRIX),
                "--format",
                "json",
                "--fail-on",
                fail_on,
                "-o",
                os.devnull,
            ]
        )
        == code
    )


def test_no_violation_exits_0(tmp_path: Path) -> None:
    clean = tmp_path / "clean.jsonl"
    with FLOWS.open() as src, clean.open("w") as dst:
        for line in src:
            if "debug-shell" in line or "prometheus" in line or "traefik" in line or "triggerer" in line:
                continue
            dst.write(line)
    code, report = replay_json(str(clean))
    assert report["classes"]["expected_dropped"] == report["classes"]["unexpected_allowed"] == 0
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("replay", "missing.jsonl", "--matrix", str(MATRIX)), "missing.jsonl: no such file"),
        (("replay", str(FLOWS), "--matrix", "missing.yaml"), "missing.yaml: cannot read file"),
        (
            ("replay", str(FLOWS), "--matrix", str(MATRIX), "--fail-on", "bad_class"),
            "unknown class bad_class",
        ),
        (("matrix", "check", "missing.yaml"), "missing.yaml: cannot read file"),
    ],
)
def test_usage_and_input_errors_exit_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_bad_matrix_exits_2_naming_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        MATRIX.read_text().replace("to: webserver, ports: [8080]", "to: webservr, ports: [8080]", 1)
    )
    proc = run_cli("replay", str(FLOWS), "--matrix", str(bad))
    assert proc.returncode == 2
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "webservr" in text)
    assert proc.stderr.strip() == (
        f"flow-auditor: error: {bad}:{line}: allow[0].to: unknown component 'webservr' (declared: "
        "internet, kube-dns, kubelet, postgresql, prometheus, redis, scheduler, statsd, traefik, triggerer, "
        "webserver, worker)"
    )


def test_garbage_lines_in_the_middle_are_counted_with_line_numbers(tmp_path: Path) -> None:
    lines = FLOWS.read_text().splitlines(keepends=True)
    damaged = tmp_path / "damaged.jsonl"
    middle = len(lines) // 2
    damaged.write_text(
        "".join(lines[:middle])
        + lines[middle][: len(lines[middle]) // 2]
        + "\n"
        + "not json at all\n"
        + "".join(lines[middle + 1 :])
    )
    _, clean = replay_json(str(FLOWS))
    _, report = replay_json(str(damaged))
    assert report["flows"]["invalid"] == 2
    assert [(s["file"], s["line"]) for s in report["invalid_samples"]] == [
        (str(damaged), middle + 1),
        (str(damaged), middle + 2),
    ]
    # everything else is still judged: exactly one event (the truncated one) is missing
    assert report["flows"]["received"] == clean["flows"]["received"] + 1
    assert sum(report["classes"].values()) >= sum(clean["classes"].values()) - 1


def test_gzip_and_stdin_give_the_same_report(tmp_path: Path) -> None:
    gz = tmp_path / "flows.jsonl.gz"
    gz.write_bytes(gzip.compress(FLOWS.read_bytes()))
    _, plain = replay_json(str(FLOWS))
    _, compressed = replay_json(str(gz))
    proc = run_cli("replay", "-", "--matrix", str(MATRIX), "--format", "json", stdin=FLOWS.read_bytes())
    from_stdin = json.loads(proc.stdout)
    assert [r.pop("inputs")["files"] for r in (plain, compressed, from_stdin)] == [
        [str(FLOWS)],
        [str(gz)],
        ["-"],
    ]
    assert compressed == plain
    assert from_stdin == plain


def test_several_files_are_one_replay(tmp_path: Path) -> None:
    lines = FLOWS.read_text().splitlines(keepends=True)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(lines[:400]))
    second.write_text("".join(lines[400:]))
    _, whole = replay_json(str(FLOWS))
    _, split = replay_json(str(first), str(second))
    assert split["classes"] == whole["classes"] and split["flows"] == whole["flows"]


def test_truncated_gzip_is_an_input_error(tmp_path: Path) -> None:
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(gzip.compress(FLOWS.read_bytes())[:5000])
    proc = run_cli("replay", str(gz), "--matrix", str(MATRIX))
    assert proc.returncode == 2 and "compressed stream is damaged" in proc.stderr


def test_matrix_check_prints_the_compiled_matrix() -> None:
    proc = run_cli("matrix", "check", str(MATRIX))
    assert proc.returncode == 0
    assert "matrix 'airflow'" in proc.stdout and "12 components, 13 rules" in proc.stdout
    assert "12. prometheus -> postgresql [9187/TCP]" in proc.stdout


def test_matrix_env_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(os.environ, FLOW_AUDITOR_MATRIX=str(MATRIX), FLOW_AUDITOR_FORMAT="json")
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "replay", str(FLOWS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 1 and json.loads(proc.stdout)["matrix"] == "airflow"


def test_policies_generate_and_diff_round_trip(tmp_path: Path) -> None:
    generated = run_cli("policies", "generate", "--matrix", str(MATRIX))
    assert generated.returncode == 0, generated.stderr
    assert "kind: NetworkPolicy" in generated.stdout and "name: airflow-default-deny" in generated.stdout
    policies = tmp_path / "policies.yaml"
    policies.write_text(generated.stdout)
    same = run_cli("policies", "diff", str(policies), "--matrix", str(MATRIX))
    assert (same.returncode, same.stdout.strip()) == (0, "no difference")
    # Deleting the PostgreSQL policy must show the legitimate traffic it no longer allows.
    documents = generated.stdout.split("\n---\n")
    kept = [d for d in documents if "name: airflow-postgresql\n" not in d]
    assert len(kept) == len(documents) - 1
    policies.write_text("\n---\n".join(kept))
    broken = run_cli("policies", "diff", str(policies), "--matrix", str(MATRIX))
    assert broken.returncode == 1
    assert "postgresql" in broken.stdout


def test_policies_generate_cilium_flavor() -> None:
    proc = run_cli("policies", "generate", "--matrix", str(MATRIX), "--flavor", "cilium")
    assert proc.returncode == 0, proc.stderr
    assert "kind: CiliumNetworkPolicy" in proc.stdout and "toFQDNs" not in proc.stdout


def test_demo_matrix_shipped_in_the_package_is_the_example() -> None:
    from auditor.commands.demo import DEMO_MATRIX

    assert DEMO_MATRIX.read_bytes() == MATRIX.read_bytes()


# -- the table report: literal cluster data, the terminal's width, its terms, bounded edges ---------------


def hostile_report() -> dict[str, Any]:
    """A report whose cluster-supplied strings look like terminal markup, Markdown and HTML."""
    from auditor.classify import Auditor
    from auditor.matrix import load_matrix
    from auditor.model import Endpoint
    from auditor.pipeline import Pipeline
    from auditor.sinks.report import ReportSink

    sys.path.insert(0, str(Path(__file__).parent))
    from factory import POSTGRES, flow

    matrix = load_matrix(MATRIX)
    sink = ReportSink(matrix)
    pipeline = Pipeline(Auditor(matrix), [sink])
    evil = Endpoint(identity=4242, namespace="default", pod_name="[/oops][bold red]x[/] <b>*y*</b> | z")
    pipeline.feed(flow(source=evil, destination=POSTGRES))
    pipeline.finish()
    return sink.report()


def test_terminal_markup_in_cluster_data_is_literal_text() -> None:
    from auditor.render import render

    text = render(hostile_report(), "table", color=True, width=300)
    assert "default/[/oops][bold red]x[/] <b>*y*</b> | z" in text


def test_markdown_and_html_reports_escape_cluster_data() -> None:
    from auditor.render import render

    md = render(hostile_report(), "markdown")
    row = next(line for line in md.splitlines() if "oops" in line)
    assert "<b>" not in row and "\\<b\\>" in row
    assert row.count(" | ") == 7  # the pipe in the pod name does not add a column
    html_text = render(hostile_report(), "html")
    assert "<b>*y*</b>" not in html_text and "&lt;b&gt;*y*&lt;/b&gt;" in html_text


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_table_report_fits_the_terminal_width(columns: int) -> None:
    proc = run_cli("replay", str(FLOWS), "--matrix", str(MATRIX), "--fail-on", "none", columns=columns)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) > 20
    assert max(len(line.rstrip()) for line in lines) <= columns


def test_table_report_explains_its_terms() -> None:
    from auditor.render import render

    text = render(hostile_report(), "table")
    for term in ("reply:", "provisional:", "ignored:"):
        assert sum(line.startswith(term) for line in text.splitlines()) == 1, term


def test_edges_past_the_cap_are_aggregated_with_exact_totals() -> None:
    path = FLOWS
    code, full = replay_json(str(path), extra=("--fail-on", "none"))
    assert code == 0 and len(full["edges"]) > 8
    code, capped = replay_json(str(path), extra=("--fail-on", "none", "--max-edges", "5"))
    assert code == 0
    assert capped["classes"] == full["classes"] and capped["flows"] == full["flows"]
    detailed = [e for e in capped["edges"] if e["source"] != "other"]
    others = [e for e in capped["edges"] if e["source"] == "other"]
    assert len(detailed) == 5 and 1 <= len(others) <= 4
    assert sum(e["connections"] for e in capped["edges"]) == sum(e["connections"] for e in full["edges"])
    assert capped["edge_limit"]["aggregated_connections"] == sum(e["connections"] for e in others)
    assert capped["edge_limit"]["aggregated_connections"] > 0
    proc = run_cli("replay", str(path), "--matrix", str(MATRIX), "--max-edges", "5", "--fail-on", "none")
    assert "aggregated into 'other'" in proc.stdout


def test_replay_judges_under_the_batch_collector(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``replay`` runs its inputs with the setup frozen and the young generation collected rarely
    (``batch_collector``), and leaves the collector as it found it."""
    import gc

    import auditor.commands.replay as command
    from auditor.commands.common import BATCH_YOUNG_COLLECTION

    seen: list[tuple[int, int]] = []
    feed = command.feed_file

    def watched(*args: Any) -> Any:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        return feed(*args)

    monkeypatch.setattr(command, "feed_file", watched)
    before = gc.get_threshold()
    out = tmp_path / "report.json"
    code = main(["replay", str(FLOWS), "--matrix", str(MATRIX), "--format", "json", "--output", str(out)])
    assert code in (0, 1) and json.loads(out.read_text())["flows"]["received"] > 0
    assert len(seen) == 1 and seen[0][0] == BATCH_YOUNG_COLLECTION and seen[0][1] > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
