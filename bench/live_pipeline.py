"""Part (a) of ``bench/live.py``: the daemon's live pipeline in-process, on pre-serialized messages.

Stage: measurement only. Against a floor (``FromString`` and a read of every field judging needs), the
daemon's own consume loop (``HubbleSource.consume``: decode — the compiled wire reader, protobuf for what
it leaves —, resume check, ``Pipeline.feed``, the daemon's sinks); growing prefixes of that path (decode;
+ ``Auditor.process``; + ``Pipeline.feed`` under the lock), whose differences give µs/event per stage, and
the decoder alone as a second reference (faster than the floor when compiled); and a cProfile run of
the pipeline. Timed in CPU seconds of this single-threaded process. Targets: :data:`TARGET_RATE`
events/s on one core and :data:`TARGET_FLOOR_RATIO` of the floor.

Error policy: counts that do not add up abort the run (``AssertionError``).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from live_common import (
    MATRIX,
    counted,
    daemon_pipeline,
    decoder_cache_sizes,
    interleaved,
    load_average,
    make_daemon,
    reset_decoder_caches,
)
from live_messages import load_messages

from auditor._proto.live import live_pb2
from auditor._proto.observer import observer_pb2
from auditor.classify import OUTCOMES, Auditor
from auditor.daemon import Daemon
from auditor.decode_pb import record_from_response
from auditor.decode_wire import COMPILED as WIRE_READER
from auditor.decode_wire import flow_from_wire
from auditor.matrix import load_matrix
from auditor.model import Flow, Record

TARGET_RATE: Final = 150_000
TARGET_FLOOR_RATIO: Final = 0.85


def floor_decode(messages: list[bytes]) -> int:
    """Parse each message and read the fields judging needs; nothing else."""
    parse = observer_pb2.GetFlowsResponse.FromString
    n = 0
    for raw in messages:
        flow = parse(raw).flow
        ts = flow.time
        _ = ts.seconds, ts.nanos, flow.verdict
        l4 = flow.l4
        kind = l4.WhichOneof("protocol")
        if kind == "TCP" or kind == "UDP" or kind == "SCTP":
            ports = getattr(l4, kind)
            _ = ports.source_port, ports.destination_port
        elif kind is not None:
            _ = getattr(l4, kind).type
        ip = flow.IP
        _ = ip.source, ip.destination
        src, dst = flow.source, flow.destination
        _ = src.identity, src.namespace, tuple(src.labels), src.pod_name
        _ = dst.identity, dst.namespace, tuple(dst.labels), dst.pod_name
        _ = flow.traffic_direction, flow.trace_observation_point, flow.event_type.type
        _ = flow.is_reply.value if flow.HasField("is_reply") else None
        n += 1
    return n


def read_record(raw: bytes) -> Record:
    """A message as the live source reads it: the wire reader (compiled core), else protobuf."""
    record = flow_from_wire(raw) if WIRE_READER else None
    return record if record is not None else record_from_response(live_pb2.GetFlowsResponse.FromString(raw))


def stage_parse(messages: list[bytes]) -> int:
    parse, n = observer_pb2.GetFlowsResponse.FromString, 0
    for raw in messages:
        parse(raw)
        n += 1
    return n


def stage_decode(messages: list[bytes]) -> int:
    reset_decoder_caches()
    decode, n = read_record, 0
    for raw in messages:
        decode(raw)
        n += 1
    return n


def stage_judge(messages: list[bytes]) -> int:
    reset_decoder_caches()
    decode, n = read_record, 0
    process = Auditor(load_matrix(MATRIX)).process
    for raw in messages:
        record = decode(raw)
        if type(record) is Flow:
            process(record)
        n += 1
    return n


def stage_feed(messages: list[bytes]) -> int:
    """Parse, decode and ``Pipeline.feed`` under the lock (judge, classify, sinks): no source loop."""
    reset_decoder_caches()
    daemon = make_daemon()
    decode = read_record
    feed, lock = daemon.pipeline.feed, daemon.pipeline.lock
    for raw in messages:
        record = decode(raw)
        with lock:
            feed(record)
    return counted(daemon)


def profile_pipeline(messages: list[bytes]) -> dict[str, Any]:
    """cProfile of the daemon pipeline: µs/event per stage (inflated by the profiler: read the shares)
    and the top functions by own time."""
    daemon = make_daemon()
    reset_decoder_caches()
    profiler = cProfile.Profile()
    profiler.enable()
    daemon.source.consume(messages)
    profiler.disable()
    n = len(messages)
    table: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def us(predicate: Callable[[str, str], bool], cumulative: bool = True) -> float:
        total = 0.0
        for (file, _, func), (_, _, tt, ct, _) in table.items():
            if predicate(file, func):
                total += ct if cumulative else tt
        return total / n * 1e6

    def method(file_part: str, name: str) -> Callable[[str, str], bool]:
        return lambda file, func: file.endswith(file_part) and func == name

    def sink(file: str, func: str) -> bool:
        return func in ("on_judgement", "on_outcome") and ("sinks" in file or file.endswith("daemon.py"))

    total = us(method("hubble.py", "_consume"))
    parts = {
        "FromString": us(lambda file, func: "FromString" in func and file == "~"),
        "record_from_response": us(method("decode_pb.py", "record_from_response")),
        "Auditor.process": us(method("classify.py", "process")),
        "sinks": us(sink),
        "Pipeline.feed dispatch": us(method("pipeline.py", "feed"), cumulative=False),
        "source loop (_consume, _track_time)": us(method("hubble.py", "_consume"), cumulative=False)
        + us(method("hubble.py", "_track_time")),
    }
    stages = {k: {"us": round(v, 3), "share": round(v / total, 3)} for k, v in parts.items()}
    stages["total"] = {"us": round(total, 3), "share": 1.0}
    top = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    functions = [
        {
            "function": f"{Path(file).name}:{line}({func})",
            "calls_per_event": round(nc / n, 2),
            "own_us": round(tt / n * 1e6, 3),
            "cumulative_us": round(ct / n * 1e6, 3),
        }
        for (file, line, func), (_, nc, tt, ct, _) in top
    ]
    return {"events": n, "stages": stages, "top_functions": functions}


def part_a(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    print(f"\n(a) in-process pipeline — load average {load_average():.2f}", flush=True)
    messages = load_messages(path, args.messages)
    n = len(messages)
    last: dict[str, Daemon] = {}

    def pipeline() -> int:
        last["daemon"] = make_daemon()
        return daemon_pipeline(messages, last["daemon"])

    times = interleaved(
        args.runs,
        {
            "floor": lambda: floor_decode(messages),
            "parse": lambda: stage_parse(messages),
            "decode": lambda: stage_decode(messages),
            "judge": lambda: stage_judge(messages),
            "feed": lambda: stage_feed(messages),
            "pipeline": pipeline,
        },
    )
    assert counted(last["daemon"]) == n
    s = {name: min(seconds) for name, seconds in times.items()}
    per = 1e6 / n

    def stage(name: str, before: str) -> float:
        """µs/event of one stage: the median over runs of the difference between two timed prefixes of
        the path measured one after the other (more robust than the difference of two bests)."""
        return round(
            statistics.median(a - b for a, b in zip(times[name], times[before], strict=True)) * per, 3
        )

    caches = decoder_cache_sizes()  # after the last pipeline run (reset before each)
    get = last["daemon"].registry.get_sample_value
    outcomes = {o: round((get("flow_auditor_flows_total", {"outcome": o}) or 0) / n, 3) for o in OUTCOMES}
    profile = profile_pipeline(messages[: min(n, args.profile)])
    return {
        "messages": n,
        "distinct_pods": args.pods,
        "bytes_per_message": round(sum(map(len, messages)) / n),
        "floor_events_per_s": round(n / s["floor"]),
        "pipeline_events_per_s": round(n / s["pipeline"]),
        "pipeline_ratio_to_floor": round(s["floor"] / s["pipeline"], 3),
        "decoder_alone_events_per_s": round(n / s["decode"]),
        "pipeline_ratio_to_decoder_alone": round(s["decode"] / s["pipeline"], 3),
        "parse_only_events_per_s": round(n / s["parse"]),
        "wire_reader": WIRE_READER,
        "runs_events_per_s": {name: [round(n / t) for t in seconds] for name, seconds in times.items()},
        "stages_us_per_event": {
            "FromString (the floor's parse)": round(statistics.median(times["parse"]) * per, 3),
            "decode (wire reader; protobuf for the rest)": round(statistics.median(times["decode"]) * per, 3),
            "Auditor.process": stage("judge", "decode"),
            "Pipeline.feed + sinks + lock": stage("feed", "judge"),
            "source loop": stage("pipeline", "feed"),
            "total (median)": round(statistics.median(times["pipeline"]) * per, 3),
            "floor (median)": round(statistics.median(times["floor"]) * per, 3),
        },
        "decoder_caches": caches,
        "outcome_shares": outcomes,
        "profile": profile,
        "load_average": round(load_average(), 2),
    }


def print_summary(a: dict[str, Any]) -> None:
    """The summary lines of part (a), against its targets."""
    print(f"(a) in-process, {a['messages']:,} messages, {a['distinct_pods']:,} pods")
    print(f"  floor (FromString + field reads)    {a['floor_events_per_s']:>10,} events/s")
    rate_ok = a["pipeline_events_per_s"] >= TARGET_RATE
    ratio_ok = a["pipeline_ratio_to_floor"] >= TARGET_FLOOR_RATIO
    print(
        f"  daemon pipeline                     {a['pipeline_events_per_s']:>10,} events/s"
        f" ({'met' if rate_ok else 'MISSED'}: >= {TARGET_RATE:,})"
        f"   ratio to floor {a['pipeline_ratio_to_floor']:.2f}"
        f" ({'met' if ratio_ok else 'MISSED'}: >= {TARGET_FLOOR_RATIO})"
    )
    print(
        f"  the daemon's decoder alone          {a['decoder_alone_events_per_s']:>10,} events/s"
        f" ({'wire reader' if a['wire_reader'] else 'protobuf: pure Python build'})"
        f"   pipeline / decoder alone {a['pipeline_ratio_to_decoder_alone']:.2f}"
    )
    print(
        f"  decoder caches {a['decoder_caches']}; outcomes "
        + ", ".join(f"{k} {v:.0%}" for k, v in a["outcome_shares"].items() if v)
    )
    print("  µs/event by stage (differences of timed prefixes of the path):")
    for name, us in a["stages_us_per_event"].items():
        print(f"    {name:<36} {us:>7.2f}")
    print(f"  cProfile of {a['profile']['events']:,} events (inflated by the profiler: read the shares):")
    for name, stage in a["profile"]["stages"].items():
        print(f"    {name:<36} {stage['us']:>7.2f} µs  {stage['share']:>5.0%}")
