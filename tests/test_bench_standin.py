"""bench/standin.py runs end to end in a tiny smoke mode (so that it cannot rot); its figures are not
asserted (speed is measured by ``make bench``, never by tests). The Python server stands in for the C++ one,
which ``make test`` does not build. Loopback only; every process is stopped by PID by the script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_stand_in_benchmark_runs_and_reports_both_mask_settings(tmp_path: Path) -> None:
    args = ["--python-server", "--messages", "300", "--runs", "1", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "standin.py"), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "standin-results.json").read_text())
    assert results["server"].startswith("Python HubbleServer")
    for name in ("full", "masked"):
        assert results[name]["bare"]["msgs_per_s"] > 0 and results[name]["daemon"]["msgs_per_s"] > 0
        assert results[name]["daemon_receiver_process"]["msgs_per_s"] > 0  # --receiver process
        assert results[name]["daemon_receiver_process"]["receiver_cpu"] >= 0  # reported (10 ms ticks)
    assert results["masked"]["bytes_per_message"] < results["full"]["bytes_per_message"]
    assert 0 < results["demo_traffic"]["ratio"] < 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["standin-results.json"]  # inputs cleaned up
