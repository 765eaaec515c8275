"""Every benchmark runs once in its tiny smoke mode, so that none of them can rot (speeds are not asserted).

``bench/run.py --smoke`` must print its one table (every stage, events/s, ratio to floor, peak RSS) and
leave nothing generated behind; ``bench/learn.py`` and ``bench/live.py`` print their summaries.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_run_prints_its_table_and_cleans_up(tmp_path: Path) -> None:
    out = bench("run.py", "--out", str(tmp_path))
    header = next(line for line in out.splitlines() if line.startswith("stage"))
    assert header.split()[:2] == ["stage", "events/s"] and "ratio to floor" in header and "peak RSS" in header
    rows = {
        line.split("  ")[0].strip(): line for line in out.splitlines()[out.splitlines().index(header) + 1 :]
    }
    assert set(rows) == {"floor", "orjson", "jq select", "replay", "replay -j 2", "learn"}
    assert all(row.rstrip().endswith("MB") for row in rows.values())
    assert "x one process" in rows["replay -j 2"]
    assert [p.name for p in tmp_path.iterdir()] == ["results-smoke.json"]  # the generated input is gone


def test_learn_prints_its_comparison(tmp_path: Path) -> None:
    out = bench("learn.py", "--out", str(tmp_path))
    assert "speed ratio to replay" in out
    assert [p.name for p in tmp_path.iterdir()] == ["learn-results-smoke.json"]


def test_live_prints_its_summary() -> None:
    before = set((ROOT / "bench" / "out").glob("*")) if (ROOT / "bench" / "out").exists() else set()
    out = bench("live.py")
    assert "msgs/s" in out and "(c) memory" in out
    after = set((ROOT / "bench" / "out").glob("*")) if (ROOT / "bench" / "out").exists() else set()
    assert after == before  # the smoke run works in a directory of its own


def test_instructions_runs_every_stage_and_reads_callgrind(tmp_path: Path) -> None:
    out = bench("instructions.py", "--out", str(tmp_path))
    found = re.search(r"setup under callgrind: ([\d,]+) instructions", out)
    assert found and int(found.group(1).replace(",", "")) > 1_000_000, out  # an interpreter's start, counted
    assert not any(tmp_path.iterdir())


def test_memory_reports_rss_and_every_cache(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    bench("memory.py", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["flows"] == 200 and result["rss_peak_mib"] > 0
    assert result["decoder_misses"] >= 200  # every source endpoint is new, as the bench means it to be
    assert {"auditor_identity_entries", "dedup_entries"} <= set(result)


def test_policies_diff_reports_its_rates(tmp_path: Path) -> None:
    bench("policies_diff.py", "--out", str(tmp_path))
    result = json.loads((tmp_path / "policies-diff.json").read_text())
    assert result["components"] >= 10 and result["policies"] >= 12 and result["pairs_per_second"] > 0


def test_soak_runs_every_driver_and_passes_its_checks(tmp_path: Path) -> None:
    bench("soak.py", "--out", str(tmp_path))
    result = json.loads((tmp_path / "soak.json").read_text())
    assert all(result["checks"].values()), result["checks"]
    assert min(result[k] for k in ("restarts", "sighup_storms", "reloads", "clock_steps")) >= 1, result
    assert (tmp_path / "soak" / "daemon.log").stat().st_size > 0


def test_a_stage_that_times_itself_is_taken_at_its_word() -> None:
    """jq's stage counts the lines jq reads before jq starts, outside jq's time: ``best_of`` takes the seconds
    a stage reports, not the wall time of the whole call."""
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    reported = iter([(10, 3.0), (10, 2.0), (10, 2.5)])
    assert run.best_of(3, lambda: next(reported)) == (2.0, 10)
    plain = iter([7, 7])
    assert run.best_of(2, lambda: next(plain))[1] == 7  # a count alone: timed by best_of
