"""``matrix learn`` against ``replay`` on the same recorded file (``make bench``; issue 10).

Stage: measurement only (never run by ``make test``). Both run in-process over the same generated file
(``bench/run.py``'s synthetic stream: 1M events, 1000 pods, generated under ``bench/out/`` and deleted at
the end unless ``--keep``; ``--smoke``: one run on 2,000 events, as ``make test`` does):

* replay — read → decode → judge → classify → report aggregation → the JSON report dict;
* learn  — read → decode → judge → classify (empty matrix) → learning sink → components, rules and the
  YAML text.

Reported as events/s and as the ratio learn/replay speed (the issue asks ≥ 0.8); best of ``--runs`` runs,
the runs taking turns so that both see the same machine load. Results: ``bench/out/learn-results.json``.

Error policy: a missing input file is generated (deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from run import OUT, generate, replay  # bench/run.py (this script's directory is on sys.path)

from auditor.learn.build import Options
from auditor.learn.run import learn_files, text_of


def learn(path: Path) -> int:
    learned = learn_files([str(path)], Options())
    text_of(learned)
    return sum(learned.observations.outcomes.values())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--pods", type=int, default=1000, help="distinct pods in the generated traffic")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (the best is reported)")
    parser.add_argument("--smoke", action="store_true", help="one run on 2,000 events (make test)")
    parser.add_argument("--keep", action="store_true", help="keep the generated input under bench/out/")
    parser.add_argument("--out", type=Path, default=OUT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.events, args.runs = 2000, 1

    path = generate(args.out / f"synthetic-{args.events}-{args.pods}.jsonl", args.events, args.pods)
    best = {"replay": float("inf"), "learn": float("inf")}
    counts = {}
    try:
        for _ in range(args.runs):
            for name, fn in (("replay", replay), ("learn", learn)):
                started = time.perf_counter()
                counts[name] = fn(path)
                best[name] = min(best[name], time.perf_counter() - started)
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
    assert counts["replay"] == counts["learn"], counts
    n = counts["replay"]
    results = {
        "events": n,
        "replay_events_per_s": round(n / best["replay"]),
        "learn_events_per_s": round(n / best["learn"]),
        "learn_speed_ratio_to_replay": round(best["replay"] / best["learn"], 3),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(f"learn vs replay: {n:,} events, best of {args.runs}")
    print(f"  replay  {results['replay_events_per_s']:>10,} events/s")
    print(
        f"  learn   {results['learn_events_per_s']:>10,} events/s"
        f"   speed ratio to replay {results['learn_speed_ratio_to_replay']:.2f} (goal ≥ 0.8)"
    )
    (args.out / ("learn-results-smoke.json" if args.smoke else "learn-results.json")).write_text(
        json.dumps(results, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
