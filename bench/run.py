"""Throughput and memory benchmarks (``make bench``).

Stage: measurement only (never run by ``make test``). Every number is reported as events/s and as a ratio
to a floor measured in the same run on the same machine, so results from different machines compare.

Replay (issue: core):
  * floor    — read the same file line by line and parse every line with the JSON decoder the replay
               path uses (msgspec, typed schema of the fields judging needs); nothing else.
  * replay   — the whole ``flow-auditor replay`` pipeline in-process: read → decode → judge → classify →
               report aggregation, through the CLI's own loop (``auditor.replay_input.feed_file``).
  * reference — the same lines through ``orjson.loads`` (a generic fast parser), for context.
  * peak RSS — ``flow-auditor replay`` as a child process on the full file and on a quarter of it: the
               pipeline streams, so the two must be close.

Error policy: a missing input file is generated (deterministic, cached under ``bench/out/``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import orjson

from auditor.classify import Auditor
from auditor.decode import _decoder
from auditor.matrix import load_matrix
from auditor.pipeline import Pipeline
from auditor.replay_input import UnjudgeableCheck, feed_file
from auditor.scenario import synthetic_events
from auditor.sinks.report import ReportSink
from auditor.sources.files import FlowFile

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"


def generate(path: Path, n: int, distinct_pods: int) -> Path:
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    encode = msgspec.json.Encoder().encode
    started = time.perf_counter()
    with tmp.open("wb") as f:
        batch: list[bytes] = []
        for event in synthetic_events(n, distinct_pods=distinct_pods, seed=1):
            batch.append(encode(event))
            if len(batch) == 10_000:
                f.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            f.write(b"\n".join(batch) + b"\n")
    tmp.rename(path)
    print(
        f"generated {n:,} events in {time.perf_counter() - started:.1f}s → {path} "
        f"({path.stat().st_size / n:.0f} bytes/event)",
        flush=True,
    )
    return path


def best_of(runs: int, fn: Callable[[], int]) -> tuple[float, int]:
    """Fastest wall time of ``runs`` runs (the least disturbed by other load) and the count returned."""
    best, count = float("inf"), 0
    for _ in range(runs):
        started = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - started)
    return best, count


def floor_parse(path: Path) -> int:
    decode, n = _decoder.decode, 0
    with FlowFile(str(path)) as f:
        for _, line in f:
            decode(line)
            n += 1
    return n


def reference_orjson(path: Path) -> int:
    loads, n = orjson.loads, 0
    with FlowFile(str(path)) as f:
        for _, line in f:
            loads(line)
            n += 1
    return n


def replay(path: Path) -> int:
    matrix = load_matrix(MATRIX)
    sink = ReportSink(matrix)
    with FlowFile(str(path)) as f:  # the loop `flow-auditor replay` runs, with its input checks
        feed_file(Pipeline(Auditor(matrix), [sink]), str(path), f, UnjudgeableCheck(matrix))
    report = sink.report()
    assert report["flows"]["invalid"] == 0, report["invalid_samples"]
    return int(report["flows"]["received"])


def peak_rss_mb(path: Path) -> float:
    """Peak RSS of ``flow-auditor replay`` on ``path``, measured in a wrapper that has only that child."""
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    cmd = [
        sys.executable,
        "-c",
        probe,
        sys.executable,
        "-m",
        "auditor",
        "replay",
        str(path),
        "--matrix",
        str(MATRIX),
        "--format",
        "json",
        "--fail-on",
        "none",
        "--no-progress",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip()) / 1024


def head(path: Path, n: int) -> Path:
    part = path.with_name(f"{path.stem}-head{n}.jsonl")
    if not part.exists():
        with path.open("rb") as src, part.open("wb") as dst:
            for i, line in enumerate(src):
                if i == n:
                    break
                dst.write(line)
    return part


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--pods", type=int, default=1000, help="distinct pods in the generated traffic")
    parser.add_argument("--runs", type=int, default=2, help="runs per measurement (the best is reported)")
    args = parser.parse_args()

    path = generate(OUT / f"synthetic-{args.events}-{args.pods}.jsonl", args.events, args.pods)
    floor_s, n = best_of(args.runs, lambda: floor_parse(path))
    ref_s, _ = best_of(args.runs, lambda: reference_orjson(path))
    replay_s, received = best_of(args.runs, lambda: replay(path))
    assert received == n, (received, n)
    rss_full = peak_rss_mb(path)
    quarter = head(path, n // 4)
    rss_quarter = peak_rss_mb(quarter)

    results = {
        "events": n,
        "bytes_per_event": round(path.stat().st_size / n),
        "floor_events_per_s": round(n / floor_s),
        "orjson_events_per_s": round(n / ref_s),
        "replay_events_per_s": round(n / replay_s),
        "replay_ratio_to_floor": round(floor_s / replay_s, 3),
        "replay_ratio_to_orjson": round(ref_s / replay_s, 3),
        "peak_rss_mb_full": round(rss_full, 1),
        "peak_rss_mb_quarter": round(rss_quarter, 1),
    }
    print()
    print(f"replay benchmark: {n:,} events, {results['bytes_per_event']} bytes/event, best of {args.runs}")
    print(f"  floor (read + typed msgspec parse)  {results['floor_events_per_s']:>10,} events/s")
    print(f"  reference (read + orjson.loads)     {results['orjson_events_per_s']:>10,} events/s")
    print(
        f"  replay pipeline                     {results['replay_events_per_s']:>10,} events/s"
        f"   ratio to floor {results['replay_ratio_to_floor']:.2f}"
        f"   ratio to orjson {results['replay_ratio_to_orjson']:.2f}"
    )
    print(f"  peak RSS: {rss_full:.0f} MB for {n:,} events, {rss_quarter:.0f} MB for {n // 4:,} events")
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
