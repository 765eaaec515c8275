"""Part (c) of ``bench/live.py``: memory of the in-process live path over a long stream.

Stage: measurement only. A base of generated messages (many distinct pods) is replayed in passes read
lazily from disk, each pass later in flow time and with its ephemeral ports rotated, so that every pass
brings new connections; the shift is a small protobuf suffix appended to each message (protobuf merge
semantics: the last value of a field wins). VmRSS and the sizes of the bounded structures are sampled
every ``--sample`` events, in a fresh child process (``bench/live.py --memory-child``), so that RSS holds
the pipeline's state only. Targets: RSS at the end within ±:data:`TARGET_RSS_DRIFT` of RSS after 1M events
and at most :data:`TARGET_RSS_MB`. The same child runs first with ``--pods`` (1,000) distinct pods over 1M
events (at most ``--events``): the rate over the first 1M events with ``--big-pods`` over that rate is the
cost of many pods (target :data:`TARGET_PODS_RATIO`; the decoder's endpoint cache must not thrash).

Error policy: a child that fails or outlives :data:`MEMORY_CHILD_TIMEOUT` raises ``RuntimeError`` (it is
killed by its PID); counts that do not add up abort the run (``AssertionError``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from live_common import (
    LIVE_SCRIPT,
    daemon_pipeline,
    decoder_cache_sizes,
    load_average,
    make_daemon,
    reset_decoder_caches,
    rss_mb,
)
from live_messages import (
    EPHEMERAL_MIN,
    EPHEMERAL_SPAN,
    NO_PORT,
    TCP_DESTINATION,
    TCP_SOURCE,
    UDP_SOURCE,
    read_records,
)

from auditor._proto.observer import observer_pb2
from auditor.daemon import Daemon
from auditor.sinks.log import LogSink

TARGET_RSS_DRIFT: Final = 0.10
TARGET_RSS_MB: Final = 250.0
TARGET_PODS_RATIO: Final = 0.8
MEMORY_CHILD_TIMEOUT: Final = 1800.0


def _suffix(seconds: int, kind: int, port: int) -> bytes:
    """``GetFlowsResponse`` bytes setting flow.time.seconds, time.seconds and the ephemeral port.

    Appended to a serialized response, protobuf's merge rules make these values win.
    """
    response = observer_pb2.GetFlowsResponse()
    response.time.seconds = response.flow.time.seconds = seconds
    if kind != NO_PORT:
        l4 = response.flow.l4
        ports = l4.TCP if kind in (TCP_SOURCE, TCP_DESTINATION) else l4.UDP
        if kind in (TCP_SOURCE, UDP_SOURCE):
            ports.source_port = port
        else:
            ports.destination_port = port
    return response.SerializeToString()


def shifted_stream(path: Path, base: int, total: int) -> Iterator[bytes]:
    """``total`` messages: passes over the base file, each later in flow time, with new ephemeral ports."""
    first = last = None
    for _, seconds, _, _ in read_records(path, base):
        first = seconds if first is None else first
        last = seconds
    assert first is not None and last is not None
    shift = last - first + 2  # each pass starts after the previous one ended
    produced, npass = 0, 0
    while produced < total:
        take = min(base, total - produced)
        if npass == 0:
            for message, *_ in read_records(path, take):
                yield message
        else:
            offset, rotate = npass * shift, npass * 7_919
            suffixes: dict[tuple[int, int, int], bytes] = {}  # events of a connection share one
            for message, seconds, kind, port in read_records(path, take):
                key = (seconds, kind, port)
                suffix = suffixes.get(key)
                if suffix is None:
                    moved = EPHEMERAL_MIN + (port - EPHEMERAL_MIN + rotate) % EPHEMERAL_SPAN if kind else 0
                    suffix = suffixes[key] = _suffix(seconds + offset, kind, moved)
                yield message + suffix
        produced += take
        npass += 1


def structure_sizes(daemon: Daemon) -> dict[str, int]:
    """Entries of every bounded structure of the daemon's pipeline, to tell what grows if RSS does."""
    auditor, metrics = daemon.pipeline.auditor, daemon.metrics
    violations = next(s for s in daemon.pipeline.sinks if isinstance(s, LogSink))
    caches, metric_caches = auditor.cache_info(), metrics.cache_info()
    return {
        "dedup_entries": len(auditor.dedup),
        "dedup_order": auditor.dedup.queued,
        **decoder_cache_sizes(),
        "identity_cache": caches["identity_entries"],
        "anonymous_cache": caches["anon_entries"],
        "rule_cache": caches["rule_entries"],
        "metric_series": metric_caches["series"],
        "metric_edge_slots": metric_caches["edge_slots"],
        "violation_log_edges": violations.cache_info()["edges"],
        "resume_keys": daemon.source.resume.keys,
    }


def part_c(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    print(f"\n(c) memory — load average {load_average():.2f}", flush=True)
    total, every = args.events, args.sample
    daemon = make_daemon()
    reset_decoder_caches()
    samples: list[dict[str, Any]] = [{"events": 0, "rss_mb": round(rss_mb(), 1)}]
    started = time.perf_counter()

    def sampled(stream: Iterator[bytes]) -> Iterator[bytes]:
        for count, message in enumerate(stream, 1):
            yield message
            if count % every == 0:  # the previous ``count`` messages are through the pipeline
                samples.append(
                    {
                        "events": count,
                        "rss_mb": round(rss_mb(), 1),
                        "seconds": round(time.perf_counter() - started, 1),
                        **structure_sizes(daemon),
                    }
                )
                print(f"  {count:>10,} events  RSS {samples[-1]['rss_mb']:.1f} MB", flush=True)

    received = daemon_pipeline(sampled(shifted_stream(path, args.base, total)), daemon)
    elapsed = time.perf_counter() - started
    final = {"events": received, "rss_mb": round(rss_mb(), 1), **structure_sizes(daemon)}
    if samples[-1]["events"] != received:
        samples.append(final)
    assert received == total, (received, total)
    at_1m = next((s for s in samples if s["events"] >= min(1_000_000, total)), samples[-1])
    return {
        "events": received,
        "distinct_pods": args.big_pods,
        "base_messages": args.base,
        "events_per_s": round(received / elapsed),
        "events_per_s_to_1m": round(at_1m["events"] / at_1m["seconds"]) if at_1m.get("seconds") else 0,
        "rss_mb_start": samples[0]["rss_mb"],
        "rss_mb_at_1m": at_1m["rss_mb"],
        "rss_mb_at_end": final["rss_mb"],
        "rss_mb_peak": max(sample["rss_mb"] for sample in [*samples, final]),
        "rss_ratio_end_to_1m": round(final["rss_mb"] / at_1m["rss_mb"], 3),
        "samples": samples,
        "load_average": round(load_average(), 2),
    }


def part_c_in_child(
    args: argparse.Namespace, path: Path, out_dir: Path, pods: int, events: int
) -> dict[str, Any]:
    """Part (c) in a fresh process of ``bench/live.py``, so that its RSS holds the pipeline's state only
    (not what parts (a) and (b) or the generation of the base left in this process's allocator)."""
    out = out_dir / "live-memory.json"
    cmd = [sys.executable, str(LIVE_SCRIPT), "--memory-child", str(path), "--memory-out", str(out)]
    cmd += ["--events", str(events), "--base", str(args.base), "--sample", str(args.sample)]
    cmd += ["--big-pods", str(pods)]
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait(timeout=MEMORY_CHILD_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    if code != 0:
        raise RuntimeError(f"part (c) failed (exit {code}): {' '.join(cmd)}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def part_c_both(args: argparse.Namespace, small: Path, big: Path, out_dir: Path) -> dict[str, Any]:
    """Part (c) with ``--pods`` over 1M events, then with ``--big-pods`` over ``--events``."""
    baseline = part_c_in_child(args, small, out_dir, args.pods, min(args.events, 1_000_000))
    result = part_c_in_child(args, big, out_dir, args.big_pods, args.events)
    result["few_pods"] = {key: baseline[key] for key in ("distinct_pods", "events", "events_per_s_to_1m")}
    few = baseline["events_per_s_to_1m"]
    result["pods_ratio"] = round(result["events_per_s_to_1m"] / few, 3) if few else 0.0
    return result


def print_summary(c: dict[str, Any]) -> None:
    """The summary lines of part (c), against its targets."""
    drift = c["rss_ratio_end_to_1m"] - 1
    few = c["few_pods"]
    print(f"(c) memory, {c['events']:,} events, {c['distinct_pods']:,} pods, {c['events_per_s']:,} events/s")
    first = min(1_000_000, c["events"]) / 1e6
    print(
        f"  rate over the first {first:g}M events: {c['events_per_s_to_1m']:,}/s with"
        f" {c['distinct_pods']:,} pods, {few['events_per_s_to_1m']:,}/s with {few['distinct_pods']:,}:"
        f" ratio {c['pods_ratio']:.2f} (target >= {TARGET_PODS_RATIO})"
    )
    print(
        f"  RSS {c['rss_mb_start']:.0f} MB at start, {c['rss_mb_at_1m']:.0f} MB at"
        f" {min(1_000_000, c['events']) / 1e6:g}M,"
        f" {c['rss_mb_at_end']:.0f} MB at {c['events'] / 1e6:g}M: {drift:+.1%}"
        f" ({'flat' if abs(drift) <= TARGET_RSS_DRIFT else 'GROWS'}, target ±{TARGET_RSS_DRIFT:.0%});"
        f" peak {c['rss_mb_peak']:.0f} MB (target <= {TARGET_RSS_MB:.0f})"
    )
