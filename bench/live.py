"""Live-path benchmarks of the daemon (``make bench``, after ``bench/run.py``).

Stage: measurement only (never run by ``make test``). Rates are events/s and ratios to a floor measured in
the same run on the same machine; each is the best of ``--runs`` runs, and the measurements of one part
take turns (a slow spell of the machine hits them alike). The 1-minute load average is recorded.

(a) In-process daemon pipeline on pre-serialized ``GetFlowsResponse`` bytes (``--messages``, built once
    from ``auditor.scenario.synthetic_events`` with ``--pods`` distinct pods, cached under ``bench/out/``):
  * floor    — ``GetFlowsResponse.FromString`` of every message, then a read of each field judging needs
               (verdict, the l4 oneof and its ports, IPs, both endpoints' identity/namespace/labels/pod name,
               direction, observation point, event type, is_reply, time); no classification, no metrics.
  * pipeline — the daemon's own ``HubbleSource.consume`` over the same bytes: ``decode_wire`` (compiled;
               protobuf's ``FromString`` → ``decode_pb.record_from_response`` for what it leaves, and in a
               pure Python build) → ``Pipeline.feed`` under ``pipeline.lock`` → ``Auditor``
               (``examples/airflow/matrix.yaml``) → the daemon's sinks (``MetricsSink``, ``LogSink``
               with logging configured to discard, the invalid-log sink). Built by ``auditor.daemon.Daemon``.
  * decoder  — the daemon's decoder alone (a second reference: compiled, it is faster than the floor).
  * stages   — the same bytes through growing prefixes of the path (decode; + ``Auditor.process``;
               + ``Pipeline.feed`` under the lock), whose differences (median over runs) give µs/event per
               stage without profiler overhead; then a cProfile run of the pipeline (shares of the time per
               stage and the top functions; absolute µs are inflated by the profiler).
  Part (a) is timed in CPU seconds of this single-threaded process (``time.process_time``).
  Targets: pipeline >= 150,000 events/s on one core and >= 0.85 of the floor.

(b) End to end over loopback gRPC (``--stream`` messages, the first of the same cached messages): a
    ``HubbleServer`` (``auditor.demo``: pre-serialized bytes, one worker thread per stream) in a
    subprocess, so that it does not share the GIL, streams its backlog (``since`` = 0) to
  * bare     — a client that only receives and parses (``unary_stream(..., response_deserializer=None)`` +
               ``GetFlowsResponse.FromString``) with the daemon's channel options;
  * daemon   — the real ``Daemon`` (HubbleSource + Pipeline + sinks, HTTP and reload threads) in-process,
               timed from ``start()`` until the N-th message was received;
  with and without the channel option ``SingleThreadedUnaryStream``. Ratio daemon/bare (target >= 0.85).
  The server subprocess is this script (``--serve``): it loads the cached bytes in seconds, where
  ``python -m auditor.demo.server --jsonl`` would spend minutes in ``json_format``. Which side bounded a
  rate: CPU time of each side's threads (``/proc/PID/task/*/stat``) over the wall time; a side whose Python
  threads use most of one core is bound by its GIL (gRPC's C threads are counted apart).

(c) Memory: the in-process pipeline over ``--events`` (5M) events with ``--big-pods`` (100,000) distinct
    pods. A base of ``--base`` messages is generated once (cached); the stream replays it in passes read
    lazily from disk (nothing big is held in memory), each pass later in flow time than the previous one and
    with its ephemeral ports rotated, so that every pass brings new connections. The shift is a small
    protobuf suffix appended to each message (protobuf merge semantics: the last value of a field wins),
    so the decoder sees ordinary wire bytes. VmRSS (``/proc/self/status``) and the sizes of the bounded
    structures (dedup table, endpoint LRU, identity and rule caches, metric series, violation-log edges)
    are sampled every ``--sample`` events, in a fresh child process (RSS then holds the pipeline's state
    only). Target: RSS at the end within ±10 % of RSS after 1M events.

Messages are built with a descriptor-driven jsonpb → protobuf converter (``json_format.ParseDict`` runs at
≈ 4k events/s here, too slow for a million messages); it is checked byte for byte against
``auditor.demo.response_from_event`` on the first 500 events, and replaced by it if they differ.

Modules: this entry point (arguments, the order of the parts, the summary); (a) ``live_pipeline.py``, (b)
``live_grpc.py``, (c) ``live_memory.py``; the generated inputs ``live_messages.py``; shared helpers
``live_common.py``.

Error policy: missing inputs are generated (deterministic, cached under ``bench/out/``); a server that
does not start, a stream that stalls or counts that do not add up abort the run with an error. Every
process started here is stopped by its PID. Results: printed, and written to ``bench/out/live-results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import live_grpc
import live_memory
import live_pipeline
from live_common import OUT, load_average, quiet_logging
from live_messages import generate


def _summary(results: dict[str, Any], runs: int) -> None:
    print(f"\nlive benchmark, best of {runs} (load average at start {results['load_average_start']:.2f})")
    for part, module in (("a", live_pipeline), ("b", live_grpc), ("c", live_memory)):
        if results.get(part):
            module.print_summary(results[part])
    print(f"total {results['seconds']:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=300_000, help="(a) messages")
    parser.add_argument("--stream", type=int, default=100_000, help="(b) messages streamed over gRPC")
    parser.add_argument("--events", type=int, default=5_000_000, help="(c) events")
    parser.add_argument("--pods", type=int, default=1000, help="(a, b) distinct pods")
    parser.add_argument("--big-pods", type=int, default=100_000, help="(c) distinct pods")
    parser.add_argument("--base", type=int, default=200_000, help="(c) distinct messages replayed in passes")
    parser.add_argument("--sample", type=int, default=500_000, help="(c) events between RSS samples")
    parser.add_argument("--profile", type=int, default=200_000, help="(a) messages in the cProfile run")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (the best is reported)")
    parser.add_argument("--only", choices=("a", "b", "c"), action="append", help="run only these parts")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--listen", default="127.0.0.1:0", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="every part once on tiny sizes (make test)")
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs under bench/out/")
    args = parser.parse_args()
    out = OUT
    if args.smoke:  # tiny sizes, in a directory of its own that is removed at the end
        out = Path(tempfile.mkdtemp(prefix="bench-live-smoke-"))
        args.messages = args.stream = args.base = args.profile = 2000
        args.events, args.big_pods, args.sample, args.runs = 20_000, 1000, 5000, 1
    if args.serve is not None:
        return live_grpc.serve(args.serve, args.serve_count, args.listen)
    quiet_logging()
    if args.memory_child is not None:
        args.memory_out.write_text(json.dumps(live_memory.part_c(args, args.memory_child)) + "\n")
        return 0

    try:
        return _run(args, out)
    finally:
        if args.smoke:
            shutil.rmtree(out, ignore_errors=True)
        elif not args.keep:
            for generated in out.glob("live-*.pb"):
                generated.unlink()


def _run(args: argparse.Namespace, out: Path) -> int:
    parts = args.only or ["a", "b", "c"]
    started = time.perf_counter()
    results: dict[str, Any] = {"load_average_start": round(load_average(), 2), "cpus": os.cpu_count()}
    if "a" in parts or "b" in parts:
        size = max(args.messages if "a" in parts else 0, args.stream if "b" in parts else 0)
        size = max(size, args.messages)  # one cache file serves both parts
        path = generate(out / f"live-{size}-{args.pods}.pb", size, args.pods)
        if "a" in parts:
            results["a"] = live_pipeline.part_a(args, path)
        if "b" in parts:
            results["b"] = live_grpc.part_b(args, path)
    if "c" in parts:
        small = generate(out / f"live-{args.base}-{args.pods}-c.pb", args.base, args.pods, seed=2)
        big = generate(out / f"live-{args.base}-{args.big_pods}.pb", args.base, args.big_pods, seed=2)
        results["c"] = live_memory.part_c_both(args, small, big, out)
    results["seconds"] = round(time.perf_counter() - started, 1)
    _summary(results, args.runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "live-results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
