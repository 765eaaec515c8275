"""Live path against a stand-in server faster than the client, with and without the field mask.

Stage: measurement only (``make bench``; never run by ``make test``). The server is ``bench/out/standin``, a
small C++ gRPC server (``bench/standin/standin.cc``, built by ``make bench-server`` from Debian's
``libgrpc++-dev``) that streams pre-serialized ``GetFlowsResponse`` messages over loopback: the messages of
``bench/live.py``'s cache (``auditor.scenario.synthetic_events``, ``--pods`` distinct pods), once whole and
once cut by the live source's field mask with the demo server's Hubble-faithful masking
(``auditor.demo.fieldmask``). For each of the two files:

* bytes/message — the mean size of what travels;
* bare   — a client that only receives and parses (``FromString``), with the daemon's channel options;
* daemon — the real ``Daemon`` (HubbleSource + pipeline + sinks) until it counted every message, receiving
  in its stream thread (``--receiver thread``);
* daemon, receiver process — the same with ``--receiver process``: the call received in a second process
  (started before the clock starts; its CPU is reported as ``receiver``);
* ratio daemon/bare for each (target >= 0.8): the stand-in must not be the bound — its CPU is reported;
* in-process — the daemon's consume loop over the same bytes from memory (no gRPC), for reference.

The Airflow demo traffic (``examples/airflow/flows.jsonl``, what ``flow-auditor demo`` plays) gives the
mask's bytes ratio on the demo traffic (target <= 0.7). Each rate is the best of ``--runs``; runs of one
measurement take turns. With ``--python-server`` the stand-in is ``bench/live.py``'s Python
``HubbleServer`` subprocess instead (labelled so: it is slower than the client).

Error policy: a stand-in that is not built, does not start or stalls aborts the run with an error naming
it; every process started here is stopped by its PID. Results: printed, and written to
``bench/out/standin-results.json``; the message files are deleted at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import live_grpc
from google.protobuf import field_mask_pb2
from live_common import daemon_pipeline, interleaved, load_average, quiet_logging
from live_grpc import ServerProcess, StreamRun, bare_client, measure_stream, server_command
from live_messages import HEADER, generate, load_messages

from auditor.demo import load_jsonl
from auditor.demo.fieldmask import FlowMask
from auditor.sources.hubble import FIELD_MASK_PATHS

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
BINARY = OUT / "standin"
DEMO_FLOWS = ROOT / "examples" / "airflow" / "flows.jsonl"
TARGET_RATIO = 0.8
TARGET_BYTES = 0.7
START_TIMEOUT = 60.0
_LENGTH = struct.Struct("<I")


def mask() -> FlowMask:
    return FlowMask(field_mask_pb2.FieldMask(paths=FIELD_MASK_PATHS))


def write_messages(path: Path, messages: list[bytes]) -> None:
    with path.open("wb") as f:
        for m in messages:
            f.write(_LENGTH.pack(len(m)))
            f.write(m)


def stand_in(messages_file: Path, pb_cache: Path, count: int, python: bool) -> ServerProcess:
    """The C++ stand-in (or, with ``python``, bench/live.py's HubbleServer) as a subprocess to start."""
    if python:
        return ServerProcess(server_command(pb_cache, count), "stand-in", START_TIMEOUT)
    if not BINARY.is_file():
        raise RuntimeError(f"{BINARY} is not built: run `make bench-server`")
    return ServerProcess([str(BINARY), "--file", str(messages_file)], "stand-in", START_TIMEOUT)


def daemon_client(field_mask: bool, receiver: str = "thread") -> Callable[[str, int, bool], StreamRun]:
    """bench/live.py's daemon client, with the field mask setting of the run (the stand-in ignores the
    request; the setting keeps the daemon's configuration honest) and the receiver."""

    def client(address: str, n: int, single: bool) -> StreamRun:
        return live_grpc.daemon_client(address, n, single, field_mask=field_mask, receiver=receiver)

    return client


def demo_bytes() -> dict[str, Any]:
    cut = mask()
    full = [r.SerializeToString() for r in load_jsonl(DEMO_FLOWS)]
    small = [cut.response(m) for m in full]
    return {
        "messages": len(full),
        "full_bytes_per_message": round(sum(map(len, full)) / len(full)),
        "masked_bytes_per_message": round(sum(map(len, small)) / len(small)),
        "ratio": round(sum(map(len, small)) / sum(map(len, full)), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000, help="messages streamed per run")
    parser.add_argument("--pods", type=int, default=1000, help="distinct pods in the synthetic traffic")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (the best is reported)")
    parser.add_argument("--python-server", action="store_true", help="the Python HubbleServer instead")
    parser.add_argument("--out", type=Path, default=OUT, help="where inputs and results go (bench/out)")
    args = parser.parse_args()
    quiet_logging()
    started = time.perf_counter()
    n = args.messages
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cache = out / f"live-{n}-{args.pods}.pb"
    made_cache = not cache.exists()
    generate(cache, n, args.pods)
    full = load_messages(cache, n)
    cut = mask()
    small = [cut.response(m) for m in full]
    files = {"full": out / "standin-full.bin", "masked": out / "standin-masked.bin"}
    write_messages(files["full"], full)
    write_messages(files["masked"], small)
    server_kind = "Python HubbleServer (slower than the client)" if args.python_server else "C++ stand-in"
    results: dict[str, Any] = {
        "server": server_kind,
        "messages": n,
        "distinct_pods": args.pods,
        "load_average_start": round(load_average(), 2),
        "demo_traffic": demo_bytes(),
    }
    try:
        for name, messages in (("full", full), ("masked", small)):
            if args.python_server and name == "masked":
                pb = out / "standin-masked.pb"
                with pb.open("wb") as f:  # bench/live.py's cache format, for its --serve mode
                    for m in small:
                        f.write(HEADER.pack(len(m), 0, 0, 0) + m)
            else:
                pb = cache
            server = stand_in(files[name], pb, n, args.python_server)
            server.start()
            try:
                bare = measure_stream(server, args.runs, bare_client, n, True)
                daemon = measure_stream(server, args.runs, daemon_client(name == "masked"), n, True)
                process = measure_stream(
                    server, args.runs, daemon_client(name == "masked", "process"), n, True
                )
            finally:
                server.stop()
            times = interleaved(args.runs, {"pipeline": functools.partial(daemon_pipeline, messages)})
            results[name] = {
                "bytes_per_message": round(sum(map(len, messages)) / n),
                "bare": bare,
                "daemon": daemon,
                "ratio": round(daemon["msgs_per_s"] / bare["msgs_per_s"], 3),
                "daemon_receiver_process": process,
                "ratio_receiver_process": round(process["msgs_per_s"] / bare["msgs_per_s"], 3),
                "in_process_events_per_s": round(n / min(times["pipeline"])),
            }
    finally:
        for path in [*files.values(), out / "standin-masked.pb", *([cache] if made_cache else [])]:
            path.unlink(missing_ok=True)
    results["masked_bytes_ratio"] = round(
        results["masked"]["bytes_per_message"] / results["full"]["bytes_per_message"], 3
    )
    results["seconds"] = round(time.perf_counter() - started, 1)
    summary(results)
    (out / "standin-results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def summary(r: dict[str, Any]) -> None:
    demo = r["demo_traffic"]
    print(f"\nlive path against the {r['server']}, {r['messages']:,} messages, {r['distinct_pods']:,} pods")
    met = "met" if demo["ratio"] <= TARGET_BYTES else "MISSED"
    print(
        f"  demo traffic: {demo['full_bytes_per_message']} → {demo['masked_bytes_per_message']} bytes/message"
        f" with the field mask = {demo['ratio']:.2f}x ({met}: <= {TARGET_BYTES})"
    )
    for name in ("full", "masked"):
        x = r[name]
        bare, daemon, process = x["bare"], x["daemon"], x["daemon_receiver_process"]
        print(
            f"  {name:<6} {x['bytes_per_message']:>5} B/msg  bare {bare['msgs_per_s']:>7,}/s"
            f"  server {bare['server_cpu']:.2f} cores, machine idle {bare['machine_idle_cores']:.2f}"
            f"  in-process {x['in_process_events_per_s']:,}/s"
        )
        for row, run, ratio in (
            ("daemon", daemon, x["ratio"]),
            ("daemon, receiver process", process, x["ratio_receiver_process"]),
        ):
            receiver = f" + receiver {run['receiver_cpu']:.2f}" if row != "daemon" else ""
            print(
                f"    {row:<25} {run['msgs_per_s']:>7,}/s  ratio {ratio:.2f}"
                f" ({'met' if ratio >= TARGET_RATIO else 'MISSED'}: >= {TARGET_RATIO})"
                f"  server {run['server_cpu']:.2f} cores, client {run['client_cpu']:.2f}{receiver},"
                f" machine idle {run['machine_idle_cores']:.2f}"
            )
    print(f"  synthetic traffic: masked/full bytes {r['masked_bytes_ratio']:.2f}; total {r['seconds']:.0f}s")


if __name__ == "__main__":
    raise SystemExit(main())
