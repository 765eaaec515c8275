"""Instructions per event of the replay stages under callgrind: figures that do not depend on the load.

Stage: measurement only. ``bench/run.py`` times stages on a machine that may be shared; this script counts
the instructions each stage executes (``valgrind --tool=callgrind``), which are the same on every run of
the same inputs whatever else the machine is doing. Each stage runs in a fresh interpreter under callgrind;
a stage that only imports and sets up (``setup``) is subtracted from the others:

  * floor   — read the file and parse every line with the replay path's typed decoder;
  * replay  — one process: read → decode → judge → classify → report (``feed_file`` and ``ReportSink``);
  * workers — what the ``--jobs`` workers execute in all: every chunk judged (``judge_chunk``'s work) and
              its result pickled; each chunk is given what the merge had noted as settled when a
              ``--jobs 2`` run would have sent it (four chunks behind: two queued per worker), noted
              beforehand by this script outside callgrind (:func:`settled_notes`);
  * merge   — what the main process of ``--jobs`` executes: results unpickled and merged in order
              (``workers + merge`` minus ``workers``);
  * live floor / live pipeline — the live path on the same number of pre-serialized ``GetFlowsResponse``
              messages (``bench/live.py``'s part (a): ``FromString`` and a read of the fields judging needs,
              against the daemon's ``HubbleSource.consume``), less a ``live setup`` stage of their own.

From them: the ratio of replay to the floor, the live pipeline's to its floor, and the ``--jobs N``
speed-up that N idle cores would give (the work of one process over the larger of the workers' share on
N cores and the serial merge plus its share of a core). Default 20,000 events (about two minutes on two
cores: the stages run side by side, as counts do not depend on the load). ``--smoke`` (``make test``)
runs every stage once on 300 events without valgrind and counts only the ``setup`` stage under it, so
that neither the stages nor the reading of callgrind's output can rot unnoticed.

Error policy: valgrind missing stops the run with a message (``make bench`` needs it; every machine kind
here has it); a stage that fails stops the run.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from auditor.matrix import Matrix
    from auditor.sinks.report import ReportSink

ROOT: Final = Path(__file__).resolve().parent.parent
MATRIX: Final = ROOT / "examples" / "airflow" / "matrix.yaml"
OUT: Final = ROOT / "bench" / "out"
STAGES: Final = ("setup", "floor", "replay", "workers", "workers+merge")
LIVE_STAGES: Final = ("live setup", "live floor", "live pipeline")
_COLLECTED: Final = re.compile(r"Collected : (\d+)")


def run_stage(stage: str, path: Path, chunk_bytes: int) -> None:
    """The stage's work in this process (the child that callgrind counts)."""
    if stage in LIVE_STAGES:
        run_live_stage(stage, path)
        return
    from auditor.classify import Auditor
    from auditor.decode import LINE_DECODER
    from auditor.matrix import load_matrix
    from auditor.pipeline import Pipeline
    from auditor.replay_input import UnjudgeableCheck, feed_file
    from auditor.replay_parallel import chunks, init_worker, judge_chunk
    from auditor.sinks.report import ReportSink
    from auditor.sources.files import FlowFile

    matrix = load_matrix(MATRIX)
    if stage == "floor":
        with FlowFile(str(path)) as f:  # read as replay reads (bench/run.py's floor)
            for block in f.blocks():
                for line in block:
                    LINE_DECODER.decode(line)
    elif stage == "replay":
        sink = ReportSink(matrix)
        with FlowFile(str(path)) as f:
            feed_file(Pipeline(Auditor(matrix), [sink]), str(path), f.blocks(), UnjudgeableCheck(matrix))
        sink.report()
    elif stage == "workers":
        init_worker(matrix, WINDOW, 10_000)
        notes = pickle.loads(Path(f"{path}.notes").read_bytes())
        for (a, b), news in zip(chunks(str(path), chunk_bytes), notes, strict=True):
            pickle.dumps(judge_chunk((str(path), a, b, news)))
    elif stage == "workers+merge":
        sink = ReportSink(matrix)
        merge_in_turn(matrix, sink, path, chunk_bytes)
        sink.report()


WINDOW: Final = 30.0
LAG: Final = 4
"""Chunks sent before the oldest one is merged, in a ``--jobs 2`` run (two queued per worker)."""


def merge_in_turn(matrix: Matrix, sink: ReportSink, path: Path, chunk_bytes: int) -> list[list[Any]]:
    """Judge and merge every chunk as a ``--jobs 2`` run does, in one process: chunk ``i`` judged once
    chunks before ``i - LAG`` are merged, with what their merge noted. Returns each chunk's notes."""
    from auditor.classify import Auditor
    from auditor.pipeline import Pipeline
    from auditor.replay_input import InputSummary, UnjudgeableCheck
    from auditor.replay_parallel import Merger, chunks, init_worker, judge_chunk

    init_worker(matrix, WINDOW, 10_000)
    merger = Merger(Pipeline(Auditor(matrix), [sink]), sink, UnjudgeableCheck(matrix))
    summary, base, told = InputSummary(str(path)), 0, 0
    waiting: list[bytes] = []
    sent: list[list[Any]] = []

    def merge_oldest() -> None:
        nonlocal base
        result = pickle.loads(waiting.pop(0))
        merger.apply(str(path), base, result, summary)
        base += result.lines

    for a, b in chunks(str(path), chunk_bytes):
        while len(waiting) >= LAG:
            merge_oldest()
        news = merger.settled[told:]
        told = len(merger.settled)
        sent.append(news)
        waiting.append(pickle.dumps(judge_chunk((str(path), a, b, news))))
    while waiting:
        merge_oldest()
    return sent


def settled_notes(path: Path, chunk_bytes: int) -> None:
    """What each chunk's task carries in a ``--jobs 2`` run, for the ``workers`` stage (``<path>.notes``)."""
    from auditor.matrix import load_matrix
    from auditor.sinks.report import ReportSink

    matrix = load_matrix(MATRIX)
    notes = merge_in_turn(matrix, ReportSink(matrix), path, chunk_bytes)
    Path(f"{path}.notes").write_bytes(pickle.dumps(notes))


def run_live_stage(stage: str, path: Path) -> None:
    from live_common import make_daemon, quiet_logging, reset_decoder_caches
    from live_messages import read_records
    from live_pipeline import floor_decode

    quiet_logging()
    messages = [message for message, *_ in read_records(path)]
    daemon = make_daemon()
    reset_decoder_caches()
    if stage == "live floor":
        floor_decode(messages)
    elif stage == "live pipeline":
        daemon.source.consume(messages)


def count(stage: str, path: Path, chunk_bytes: int) -> int:
    """Instructions of one stage in a fresh interpreter under callgrind."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--stage",
        stage,
        "--input",
        str(path),
        "--chunk-bytes",
        str(chunk_bytes),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise SystemExit(f"bench: no instruction count from callgrind for {stage}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def generate(path: Path, n: int) -> None:
    from auditor.scenario import synthetic_events

    encode = msgspec.json.Encoder().encode
    path.write_bytes(b"".join(encode(e) + b"\n" for e in synthetic_events(n, distinct_pods=1000, seed=1)))


def generate_messages(path: Path, n: int) -> None:
    """``n`` pre-serialized live messages (1,000 pods), as ``bench/live.py`` makes them."""
    from live_messages import generate as generate_live

    generate_live(path, n, 1000)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="generated events (default 20,000)")
    parser.add_argument("--jobs", type=int, default=2, help="cores of the --jobs speed-up (default 2)")
    parser.add_argument("--smoke", action="store_true", help="300 events (make test)")
    parser.add_argument("--out", type=Path, default=OUT, help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=STAGES + LIVE_STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.input, args.chunk_bytes)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("bench: valgrind not found (Debian package valgrind)")
    events = 300 if args.smoke else args.events
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        path = Path(tmp) / "events.jsonl"
        generate(path, events)
        live = Path(tmp) / "messages.pb"
        generate_messages(live, events)
        chunk = max(1, path.stat().st_size // 16)  # 16 chunks, as a large file gives many
        settled_notes(path, chunk)
        if args.smoke:
            for stage in STAGES:
                run_stage(stage, path, chunk)
            for stage in LIVE_STAGES:
                run_stage(stage, live, chunk)
            setup = count("setup", path, chunk)
            print(f"smoke: every stage ran; setup under callgrind: {setup:,} instructions")
            return 0
        # Counts do not depend on the load: the stages run side by side, one per core.
        inputs = [(stage, path) for stage in STAGES] + [(stage, live) for stage in LIVE_STAGES]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            counted = pool.map(lambda job: count(job[0], job[1], chunk), inputs)
            raw = dict(zip([stage for stage, _ in inputs], counted, strict=True))
    base = raw["setup"]
    per = {stage: (raw[stage] - base) / events for stage in STAGES[1:]}
    per.update({stage: (raw[stage] - raw["live setup"]) / events for stage in LIVE_STAGES[1:]})
    merge = per["workers+merge"] - per["workers"]
    single = per["replay"]
    # N idle cores: the workers' work spread over N, the merge serial beside them
    jobs_time = max((per["workers"] + merge) / args.jobs, merge)
    rows = [
        ("floor", per["floor"], "1.00"),
        ("replay", single, f"{per['floor'] / single:.2f}"),
        ("--jobs workers", per["workers"], f"{per['workers'] / single:.2f}x replay's work"),
        ("--jobs merge", merge, f"{merge / single:.2f}x replay's work"),
        ("live floor", per["live floor"], "1.00"),
        ("live pipeline", per["live pipeline"], f"{per['live floor'] / per['live pipeline']:.2f}"),
    ]
    print(f"instructions per event under callgrind ({events:,} events; repeatable whatever the load)")
    print(f"{'stage':<16}{'instr/event':>12}  ratio")
    for name, value, ratio in rows:
        print(f"{name:<16}{value:>12,.0f}  {ratio}")
    speedup = single / jobs_time
    print(f"--jobs {args.jobs} on {args.jobs} idle cores: {speedup:.2f}x one process (from the counts)")
    summary = {
        "events": events,
        "instructions_per_event": {k: round(v) for k, v in per.items()},
        "merge_per_event": round(merge),
        "replay_ratio_to_floor": round(per["floor"] / single, 3),
        "live_pipeline_ratio_to_floor": round(per["live floor"] / per["live pipeline"], 3),
        "jobs": args.jobs,
        "jobs_speedup_idle": round(speedup, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "instructions-smoke.json" if args.smoke else "instructions.json"
    (args.out / name).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
