"""Live-path benchmarks of the daemon (``make bench``, after ``bench/run.py``).

Stage: measurement only (never run by ``make test``). Rates are events/s and ratios to a floor measured in
the same run on the same machine; each is the best of ``--runs`` runs, and the measurements of one part
take turns (a slow spell of the machine hits them alike). The 1-minute load average is recorded.

(a) In-process daemon pipeline on pre-serialized ``GetFlowsResponse`` bytes (``--messages``, built once
    from ``auditor.scenario.synthetic_events`` with ``--pods`` distinct pods, cached under ``bench/out/``):
  * floor    — ``GetFlowsResponse.FromString`` of every message, then a read of each field judging needs
               (verdict, the l4 oneof and its ports, IPs, both endpoints' identity/namespace/labels/pod name,
               direction, observation point, event type, is_reply, time); no classification, no metrics.
  * pipeline — the daemon's own ``HubbleSource.consume`` over the same bytes: ``FromString`` →
               ``decode_pb.record_from_response`` → ``Pipeline.feed`` under ``pipeline.lock`` → ``Auditor``
               (``examples/airflow/matrix.yaml``) → the daemon's sinks (``MetricsSink``, ``LogSink``
               with logging configured to discard, the invalid-log sink). Built by ``auditor.daemon.Daemon``.
  * stages   — the same bytes through growing prefixes of the path (parse; + decode; + ``Auditor.process``;
               + ``Pipeline.feed`` under the lock), whose differences (median over runs) give µs/event per
               stage without profiler overhead; then a cProfile run of the pipeline (shares of the time per
               stage and the top functions; absolute µs are inflated by the profiler).
  Part (a) is timed in CPU seconds of this single-threaded process (``time.process_time``).
  Targets: pipeline >= 150,000 events/s on one core and >= 0.5 of the floor.

(b) End to end over loopback gRPC (``--stream`` messages, the first of the same cached messages): a
    ``HubbleServer`` (``auditor.demo.server``: pre-serialized bytes, one worker thread per stream) in a
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
``auditor.demo.server.response_from_event`` on the first 500 events, and replaced by it if they differ.

Error policy: missing inputs are generated (deterministic, cached under ``bench/out/``); a server that
does not start, a stream that stalls or counts that do not add up abort the run with an error. Every
process started here is stopped by its PID. Results: printed, and written to ``bench/out/live-results.json``.
"""

from __future__ import annotations

import argparse
import base64
import calendar
import cProfile
import io
import itertools
import json
import os
import pstats
import resource
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple

import grpc
import structlog
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from auditor import decode_pb
from auditor._proto.observer import observer_pb2
from auditor.classify import OUTCOMES, Auditor
from auditor.daemon import Daemon, DaemonConfig, configure_logging
from auditor.decode_pb import record_from_response
from auditor.demo.server import DEFAULT_CAPACITY, FlowLog, HubbleServer, response_from_event
from auditor.matrix import load_matrix
from auditor.model import Flow
from auditor.scenario import synthetic_events
from auditor.sinks.log import LogSink
from auditor.sources.hubble import GET_FLOWS, HubbleConfig

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"

TARGET_RATE: Final = 150_000
TARGET_FLOOR_RATIO: Final = 0.5
TARGET_LIVE_RATIO: Final = 0.85
TARGET_RSS_DRIFT: Final = 0.10
BOUND_CPU: Final = 0.75  # Python threads of one process above this share of a core: GIL-bound
SERVER_START_TIMEOUT: Final = 180.0
STREAM_TIMEOUT: Final = 300.0
MEMORY_CHILD_TIMEOUT: Final = 1800.0

# ------------------------------------------------------------------------------------------------
# Building messages: jsonpb dicts → GetFlowsResponse bytes, cached as records
# ------------------------------------------------------------------------------------------------

_F = FieldDescriptor
_INTEGER_TYPES: Final = frozenset(
    {
        _F.TYPE_INT32,
        _F.TYPE_INT64,
        _F.TYPE_UINT32,
        _F.TYPE_UINT64,
        _F.TYPE_SINT32,
        _F.TYPE_SINT64,
        _F.TYPE_FIXED32,
        _F.TYPE_FIXED64,
        _F.TYPE_SFIXED32,
        _F.TYPE_SFIXED64,
    }
)
_WRAPPERS: Final = frozenset(
    f"google.protobuf.{t}Value"
    for t in ("Bool", "Int32", "Int64", "UInt32", "UInt64", "String", "Double", "Float", "Bytes")
)
_ENVELOPE_KEYS: Final = frozenset({"flow", "lost_events", "lostEvents", "node_status", "nodeStatus"})
_SCALAR, _REPEATED_SCALAR, _MESSAGE, _REPEATED_MESSAGE, _TIMESTAMP, _WRAPPER, _SHARED = range(7)

Converter = Callable[[Any], Any] | None  # None: the JSON value is the protobuf value
Table = dict[str, tuple[str, int | None, Any]]


class Unsupported(Exception):
    """A jsonpb value the fast converter does not handle (the caller falls back to ``ParseDict``)."""


def _scalar_converter(fd: FieldDescriptor) -> Converter:
    kind = fd.type
    if kind == _F.TYPE_ENUM:
        enum_type = fd.enum_type
        assert enum_type is not None
        numbers = {v.name: v.number for v in enum_type.values}

        def enum(value: Any) -> int:
            if isinstance(value, str):
                number = numbers.get(value)
                if number is None:
                    raise Unsupported(f"enum value {value!r}")
                return number
            return int(value)

        return enum
    if kind in _INTEGER_TYPES:

        def integer(value: Any) -> int:
            if isinstance(value, bool | float):
                raise Unsupported(f"integer {value!r}")
            return value if type(value) is int else int(value)

        return integer
    if kind == _F.TYPE_BOOL:

        def boolean(value: Any) -> bool:
            if type(value) is not bool:
                raise Unsupported(f"bool {value!r}")
            return value

        return boolean
    if kind == _F.TYPE_STRING:
        return None
    if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return float
    if kind == _F.TYPE_BYTES:
        return base64.b64decode
    raise Unsupported(f"field type {kind}")


class FastJsonpb:
    """jsonpb dict → ``GetFlowsResponse``, the subset of ``json_format.ParseDict`` the scenarios use.

    Endpoint objects are shared between the generator's events: each is converted once (kept alive with
    its serialized bytes, so its ``id`` cannot be reused) and merged from bytes afterwards.
    """

    SHARED_TYPES: Final = frozenset({"flow.Endpoint"})

    def __init__(self, max_shared: int = 1_000_000) -> None:
        self._tables: dict[str, Table] = {}
        self._shared: dict[int, tuple[object, bytes]] = {}
        self._max_shared = max_shared
        self._epoch: dict[str, int] = {}

    def response(self, event: dict[str, Any]) -> observer_pb2.GetFlowsResponse:
        response = observer_pb2.GetFlowsResponse()
        if _ENVELOPE_KEYS.isdisjoint(event):
            response.flow.SetInParent()
            self._fill(response.flow, event)
        else:
            self._fill(response, event)
        return response

    def _table(self, desc: Any) -> Table:
        table = self._tables.get(desc.full_name)
        if table is None:
            table = {}
            for fd in desc.fields:
                kind: int | None
                extra: Any = None
                if fd.type == _F.TYPE_MESSAGE:
                    message_type = fd.message_type
                    assert message_type is not None
                    full = message_type.full_name
                    if full == "google.protobuf.Timestamp":
                        kind = _TIMESTAMP
                    elif full in _WRAPPERS:
                        kind, extra = _WRAPPER, _scalar_converter(message_type.fields_by_name["value"])
                    elif full.startswith("google.protobuf."):
                        kind, extra = None, full
                    elif full in self.SHARED_TYPES and not fd.is_repeated:
                        kind = _SHARED
                    else:
                        kind = _REPEATED_MESSAGE if fd.is_repeated else _MESSAGE
                    if fd.is_repeated and kind not in (_REPEATED_MESSAGE, None):
                        kind, extra = None, full
                else:
                    kind = _REPEATED_SCALAR if fd.is_repeated else _SCALAR
                    extra = _scalar_converter(fd)
                table[fd.name] = table[fd.json_name] = (fd.name, kind, extra)
            self._tables[desc.full_name] = table
        return table

    def _fill(self, msg: Message, obj: dict[str, Any]) -> None:
        table = self._table(msg.DESCRIPTOR)
        for key, value in obj.items():
            entry = table.get(key)
            if entry is None or value is None:
                continue  # unknown field (ignore_unknown_fields) or JSON null
            name, kind, extra = entry
            if kind == _SCALAR:
                setattr(msg, name, value if extra is None else extra(value))
            elif kind == _MESSAGE:
                sub = getattr(msg, name)
                sub.SetInParent()
                self._fill(sub, value)
            elif kind == _SHARED:
                sub = getattr(msg, name)
                sub.SetInParent()
                hit = self._shared.get(id(value))
                if hit is not None and hit[0] is value:
                    sub.MergeFromString(hit[1])
                else:
                    self._fill(sub, value)
                    if len(self._shared) >= self._max_shared:
                        self._shared.clear()
                    self._shared[id(value)] = (value, sub.SerializeToString())
            elif kind == _TIMESTAMP:
                self._timestamp(getattr(msg, name), value)
            elif kind == _WRAPPER:
                getattr(msg, name).value = value if extra is None else extra(value)
            elif kind == _REPEATED_SCALAR:
                getattr(msg, name).extend(value if extra is None else [extra(v) for v in value])
            elif kind == _REPEATED_MESSAGE:
                field = getattr(msg, name)
                for item in value:
                    self._fill(field.add(), item)
            else:
                raise Unsupported(f"{msg.DESCRIPTOR.full_name}.{name}: {extra}")

    def _timestamp(self, ts: Any, text: str) -> None:
        # RFC 3339 with a 'Z' and 1-9 fractional digits (what Hubble writes), else protobuf's own parser.
        head, dot, tail = text.partition(".")
        if dot and len(head) == 19 and tail.endswith("Z") and 1 < len(tail) <= 10 and tail[:-1].isdigit():
            seconds = self._epoch.get(head)
            if seconds is None:
                seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
                if len(self._epoch) >= 100_000:
                    self._epoch.clear()
                self._epoch[head] = seconds
            ts.seconds = seconds
            ts.nanos = int(tail[:-1].ljust(9, "0"))
        else:
            ts.FromJsonString(text)


def response_builder(
    events: list[dict[str, Any]],
) -> Callable[[dict[str, Any]], observer_pb2.GetFlowsResponse]:
    """The fast converter when it gives the same bytes as ``response_from_event`` on ``events``."""
    fast = FastJsonpb()
    try:
        same = all(
            fast.response(e).SerializeToString() == response_from_event(e).SerializeToString() for e in events
        )
    except Unsupported as e:
        print(f"  fast jsonpb converter: unsupported ({e}); using json_format (slow)", flush=True)
        return response_from_event
    if not same:
        print("  fast jsonpb converter differs from json_format; using json_format (slow)", flush=True)
        return response_from_event
    return fast.response


# A record in a cache file: header (length, flow time in whole seconds, ephemeral-port kind, port), bytes.
_HEADER: Final = struct.Struct("<IqBH")
_NO_PORT, _TCP_SOURCE, _TCP_DESTINATION, _UDP_SOURCE, _UDP_DESTINATION = range(5)
EPHEMERAL_MIN: Final = 32_768  # synthetic_events draws source ports from [32768, 61000)
EPHEMERAL_SPAN: Final = 61_000 - EPHEMERAL_MIN


def _ephemeral(response: observer_pb2.GetFlowsResponse) -> tuple[int, int]:
    l4 = response.flow.l4
    kind = l4.WhichOneof("protocol")
    if kind not in ("TCP", "UDP"):
        return _NO_PORT, 0
    ports = l4.TCP if kind == "TCP" else l4.UDP
    base = _TCP_SOURCE if kind == "TCP" else _UDP_SOURCE
    if ports.source_port >= EPHEMERAL_MIN:
        return base, ports.source_port
    if ports.destination_port >= EPHEMERAL_MIN:
        return base + 1, ports.destination_port
    return _NO_PORT, 0


def generate(path: Path, n: int, distinct_pods: int, seed: int = 1) -> Path:
    """Write ``n`` messages from ``synthetic_events`` to ``path`` (once; the file is the cache)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    events = synthetic_events(n, distinct_pods=distinct_pods, seed=seed)
    head = [e for _, e in zip(range(min(n, 500)), events, strict=False)]
    build = response_builder(head)
    tmp = path.with_suffix(".tmp")
    size = 0
    with tmp.open("wb") as f:
        buf = io.BytesIO()
        for i, event in enumerate(itertools.chain(head, events)):
            response = build(event)
            data = response.SerializeToString()
            kind, port = _ephemeral(response)
            buf.write(_HEADER.pack(len(data), response.flow.time.seconds, kind, port))
            buf.write(data)
            size += len(data)
            if i % 10_000 == 9_999:
                f.write(buf.getvalue())
                buf = io.BytesIO()
        f.write(buf.getvalue())
    tmp.rename(path)
    print(
        f"  generated {n:,} messages ({distinct_pods:,} pods) in {time.perf_counter() - started:.1f}s → "
        f"{path.name} ({size / max(n, 1):.0f} bytes/message)",
        flush=True,
    )
    return path


def read_records(path: Path, limit: int | None = None) -> Iterator[tuple[bytes, int, int, int]]:
    """``(message, flow seconds, port kind, port)`` of each record, read in chunks (lazily)."""
    count = 0
    with path.open("rb", buffering=0) as f:
        pending = b""
        while limit is None or count < limit:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            data = pending + chunk if pending else chunk
            pos, end, size = 0, len(data), _HEADER.size
            unpack = _HEADER.unpack_from
            while pos + size <= end:
                length, seconds, kind, port = unpack(data, pos)
                stop = pos + size + length
                if stop > end:
                    break
                yield data[pos + size : stop], seconds, kind, port
                pos = stop
                count += 1
                if count == limit:
                    return
            pending = data[pos:]
    if limit is not None and count < limit:
        raise RuntimeError(f"{path}: {count} records, {limit} wanted")


def load_messages(path: Path, limit: int) -> list[bytes]:
    return [m for m, *_ in read_records(path, limit)]


# ------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def quiet_logging() -> None:
    """The daemon's structlog configuration (JSON lines), written to /dev/null."""
    configure_logging("json", "info")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")))  # noqa: SIM115


def make_daemon(server: str = "127.0.0.1:9", **hubble: Any) -> Daemon:
    config = DaemonConfig(
        matrix=str(MATRIX), hubble=HubbleConfig(server=server, **hubble), listen_address="127.0.0.1:0"
    )
    return Daemon(config)


def counted(daemon: Daemon) -> int:
    """Received records as the metrics count them (every outcome)."""
    get = daemon.registry.get_sample_value
    return int(sum(get("flow_auditor_flows_total", {"outcome": o}) or 0 for o in OUTCOMES))


def reset_decoder_caches() -> None:
    """Empty the decoder's endpoint cache (module state), so that every run starts cold alike."""
    decode_pb.ENDPOINTS.clear()
    decode_pb.ENDPOINTS.misses = 0


def decoder_cache_sizes() -> dict[str, int]:
    """Size of the decoder's endpoint cache (entries, charged bytes) and its misses since the last reset."""
    info = decode_pb.endpoint_cache_info()
    return {
        "endpoint_cache": info["entries"],
        "endpoint_cache_bytes": info["charged_bytes"],
        "endpoint_cache_misses": info["misses"],
    }


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu(pid: int) -> dict[int, tuple[bool, float]]:
    """CPU seconds (user + system) of each thread of a process, from ``/proc/PID/task/TID/stat``, with
    whether it is a Python thread (it has the process's name; gRPC's C threads name themselves)."""
    ticks = os.sysconf("SC_CLK_TCK")
    name = Path(f"/proc/{pid}/comm").read_text().strip()
    out: dict[int, tuple[bool, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread just ended
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (comm == name, (int(fields[11]) + int(fields[12])) / ticks)
    return out


def cpu_delta(
    before: dict[int, tuple[bool, float]], after: dict[int, tuple[bool, float]]
) -> tuple[float, float]:
    """(Python threads, other threads) CPU seconds between two :func:`thread_cpu` snapshots."""
    python = other = 0.0
    for tid, (is_python, seconds) in after.items():
        spent = seconds - before.get(tid, (is_python, 0.0))[1]
        if is_python:
            python += spent
        else:
            other += spent
    return python, other


def self_cpu_s() -> float:
    """CPU seconds of this process, every thread included (also those that ended)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------------------------
# (a) in-process pipeline
# ------------------------------------------------------------------------------------------------


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


def stage_parse(messages: list[bytes]) -> int:
    parse, n = observer_pb2.GetFlowsResponse.FromString, 0
    for raw in messages:
        parse(raw)
        n += 1
    return n


def stage_decode(messages: list[bytes]) -> int:
    reset_decoder_caches()
    parse, decode, n = observer_pb2.GetFlowsResponse.FromString, record_from_response, 0
    for raw in messages:
        decode(parse(raw))
        n += 1
    return n


def stage_judge(messages: list[bytes]) -> int:
    reset_decoder_caches()
    parse, decode, n = observer_pb2.GetFlowsResponse.FromString, record_from_response, 0
    process = Auditor(load_matrix(MATRIX)).process
    for raw in messages:
        record = decode(parse(raw))
        if type(record) is Flow:
            process(record)
        n += 1
    return n


def stage_feed(messages: list[bytes]) -> int:
    """Parse, decode and ``Pipeline.feed`` under the lock (judge, classify, sinks): no source loop."""
    reset_decoder_caches()
    daemon = make_daemon()
    parse, decode = observer_pb2.GetFlowsResponse.FromString, record_from_response
    feed, lock = daemon.pipeline.feed, daemon.pipeline.lock
    for raw in messages:
        record = decode(parse(raw))
        with lock:
            feed(record)
    return counted(daemon)


def daemon_pipeline(messages: Iterable[bytes], daemon: Daemon | None = None) -> int:
    """The daemon's live consume loop (``HubbleSource.consume``) fed from memory instead of a call."""
    reset_decoder_caches()
    daemon = daemon or make_daemon()
    daemon.source.consume(messages)
    return counted(daemon)


def interleaved(runs: int, measurements: dict[str, Callable[[], int]]) -> dict[str, list[float]]:
    """CPU seconds of ``runs`` runs of each measurement, taking turns, so that a slow spell of the machine
    hits all of them alike. CPU time of this (single-threaded) process: time lost to other processes
    sharing the core does not count."""
    times: dict[str, list[float]] = {name: [] for name in measurements}
    for _ in range(runs):
        for name, fn in measurements.items():
            started = time.process_time()
            fn()
            times[name].append(time.process_time() - started)
    return times


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
        "parse_only_events_per_s": round(n / s["parse"]),
        "runs_events_per_s": {name: [round(n / t) for t in seconds] for name, seconds in times.items()},
        "stages_us_per_event": {
            "FromString": round(statistics.median(times["parse"]) * per, 3),
            "record_from_response": stage("decode", "parse"),
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


# ------------------------------------------------------------------------------------------------
# (b) loopback gRPC
# ------------------------------------------------------------------------------------------------


def serve(path: Path, count: int, listen: str) -> int:
    """Subprocess mode: a ``HubbleServer`` holding the first ``count`` cached messages, until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parse = observer_pb2.GetFlowsResponse.FromString
    log = FlowLog(max(DEFAULT_CAPACITY, count))
    log.extend(parse(m) for m, *_ in read_records(path, count))
    server = HubbleServer(log, address=listen)
    server.start()
    print(f"listening on {server.address}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(1.0)
    return 0


class ServerProcess:
    """The server subprocess: started by :meth:`start`, stopped by its PID in :meth:`stop`."""

    def __init__(self, path: Path, count: int) -> None:
        self.cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(path), "--serve-count"]
        self.cmd += [str(count)]
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self) -> str:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("listening on "):
                    self.address = line.split()[-1]
                    return self.address
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"server subprocess did not start: {' '.join(self.cmd)}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _request() -> observer_pb2.GetFlowsRequest:
    request = observer_pb2.GetFlowsRequest(follow=True)
    request.since.FromNanoseconds(0)  # the whole backlog, as HubbleConfig(since=0) asks for it
    return request


class StreamRun(NamedTuple):
    seconds: float
    python_cpu_s: float  # the client's Python threads while streaming (the GIL bounds their sum)


def bare_client(address: str, n: int, single_threaded: bool) -> StreamRun:
    """Receive and parse ``n`` messages with the daemon's channel options; timed from channel creation."""
    options = HubbleConfig(server=address, single_threaded_stream=single_threaded).channel_options()
    parse = observer_pb2.GetFlowsResponse.FromString
    threads = thread_cpu(os.getpid())
    started = time.perf_counter()
    channel = grpc.insecure_channel(address, options=options)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        method: grpc.UnaryStreamMultiCallable[observer_pb2.GetFlowsRequest, bytes] = channel.unary_stream(
            GET_FLOWS,
            request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
            response_deserializer=None,
        )
        call = method(_request(), timeout=STREAM_TIMEOUT)
        count = 0
        for raw in call:
            parse(raw)
            count += 1
            if count == n:
                break
        elapsed = time.perf_counter() - started
        python_cpu, _ = cpu_delta(threads, thread_cpu(os.getpid()))
        call.cancel()
    finally:
        channel.close()
    if count != n:
        raise RuntimeError(f"bare client: stream ended after {count} of {n} messages")
    return StreamRun(elapsed, python_cpu)


def daemon_client(address: str, n: int, single_threaded: bool) -> StreamRun:
    """The real daemon (``since`` = 0) until it received ``n`` messages; timed from ``start()``."""
    daemon = make_daemon(address, since=0.0, single_threaded_stream=single_threaded)
    reset_decoder_caches()
    source = daemon.source
    threads = thread_cpu(os.getpid())
    started = time.perf_counter()
    daemon.start()
    try:
        deadline = time.monotonic() + STREAM_TIMEOUT
        while source.received < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon: {source.received} of {n} messages after {STREAM_TIMEOUT}s")
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        python_cpu, _ = cpu_delta(threads, thread_cpu(os.getpid()))
    finally:
        daemon.stop()
    got = counted(daemon)
    if got != n:
        raise RuntimeError(f"daemon counted {got} records, {n} sent")
    return StreamRun(elapsed, python_cpu)


def measure_stream(
    server: ServerProcess, runs: int, client: Callable[[str, int, bool], StreamRun], n: int, single: bool
) -> dict[str, Any]:
    """Best of ``runs``, with the CPU both sides used meanwhile (in cores: CPU seconds / wall seconds)."""
    best: dict[str, Any] = {}
    for _ in range(runs):
        server_threads, own_cpu = thread_cpu(server.pid), self_cpu_s()
        run = client(server.address, n, single)
        own_cpu = self_cpu_s() - own_cpu
        server_python, server_other = cpu_delta(server_threads, thread_cpu(server.pid))
        if not best or run.seconds < best["seconds"]:
            best = {
                "seconds": round(run.seconds, 3),
                "msgs_per_s": round(n / run.seconds),
                "server_cpu": round((server_python + server_other) / run.seconds, 2),
                "server_python_threads_cpu": round(server_python / run.seconds, 2),
                "client_cpu": round(own_cpu / run.seconds, 2),
                "client_python_threads_cpu": round(run.python_cpu_s / run.seconds, 2),
                "client_cpu_us_per_msg": round(own_cpu / n * 1e6, 1),
                "load_average": round(load_average(), 2),
            }
    return best


def bounded_by(run: dict[str, Any]) -> str:
    """Which side limited a stream: a side whose Python threads use most of one core is GIL-bound."""
    server, client = run["server_python_threads_cpu"], run["client_python_threads_cpu"]
    if max(server, client) < BOUND_CPU:
        return "neither (latency)"
    return "server" if server >= client else "client"


def part_b(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    print(f"\n(b) loopback gRPC — load average {load_average():.2f}", flush=True)
    n = args.stream
    server = ServerProcess(path, n)
    started = time.perf_counter()
    address = server.start()
    startup = time.perf_counter() - started
    results: dict[str, Any] = {"messages": n, "server_startup_s": round(startup, 1)}
    try:
        for single in (True, False):
            option = "single_threaded" if single else "default"
            bare = measure_stream(server, args.runs, bare_client, n, single)
            live = measure_stream(server, args.runs, daemon_client, n, single)
            ratio = round(live["msgs_per_s"] / bare["msgs_per_s"], 3)
            bare["bounded_by"], live["bounded_by"] = bounded_by(bare), bounded_by(live)
            results[option] = {"bare": bare, "daemon": live, "ratio": ratio}
            for name, run in (("bare", bare), ("daemon", live)):
                print(
                    f"  {option:<16} {name:<7} {run['msgs_per_s']:>8,} msgs/s"
                    f"  server {run['server_cpu']:.2f} cores (Python {run['server_python_threads_cpu']:.2f})"
                    f"  client {run['client_cpu']:.2f} (Python {run['client_python_threads_cpu']:.2f})"
                    f"  → {run['bounded_by']}",
                    flush=True,
                )
    finally:
        server.stop()
    results["server_address"] = address
    results["load_average"] = round(load_average(), 2)
    return results


# ------------------------------------------------------------------------------------------------
# (c) memory over a long stream
# ------------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _suffix(seconds: int, kind: int, port: int) -> bytes:
    """``GetFlowsResponse`` bytes setting flow.time.seconds, time.seconds and the ephemeral port.

    Appended to a serialized response, protobuf's merge rules make these values win (field numbers:
    GetFlowsResponse.flow 1, .time 1001; Flow.time 1, .l4 6; Layer4.TCP 1, .UDP 2; ports 1 and 2).
    """
    ts = b"\x08" + _varint(seconds)
    flow = _field(1, ts)
    if kind != _NO_PORT:
        protocol = 1 if kind in (_TCP_SOURCE, _TCP_DESTINATION) else 2
        port_field = 1 if kind in (_TCP_SOURCE, _UDP_SOURCE) else 2
        flow += _field(6, _field(protocol, bytes([port_field << 3]) + _varint(port)))
    return _field(1, flow) + _field(1001, ts)


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
        "dedup_order": len(auditor.dedup._order),  # its time queue: no public size
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
        "rss_mb_start": samples[0]["rss_mb"],
        "rss_mb_at_1m": at_1m["rss_mb"],
        "rss_mb_at_end": final["rss_mb"],
        "rss_ratio_end_to_1m": round(final["rss_mb"] / at_1m["rss_mb"], 3),
        "samples": samples,
        "load_average": round(load_average(), 2),
    }


def part_c_in_child(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Part (c) in a fresh process of this script, so that its RSS holds the pipeline's state only (not
    what parts (a) and (b) or the generation of the base left in this process's allocator)."""
    out = OUT / "live-memory.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        str(path),
        "--memory-out",
        str(out),
    ]
    for flag in ("events", "base", "sample", "big_pods"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
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


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def _summary(results: dict[str, Any], runs: int) -> None:
    print(f"\nlive benchmark, best of {runs} (load average at start {results['load_average_start']:.2f})")
    a = results.get("a")
    if a:
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
            f"  decoder caches {a['decoder_caches']}; outcomes "
            + ", ".join(f"{k} {v:.0%}" for k, v in a["outcome_shares"].items() if v)
        )
        print("  µs/event by stage (differences of timed prefixes of the path):")
        for name, us in a["stages_us_per_event"].items():
            print(f"    {name:<36} {us:>7.2f}")
        print(f"  cProfile of {a['profile']['events']:,} events (inflated by the profiler: read the shares):")
        for name, stage in a["profile"]["stages"].items():
            print(f"    {name:<36} {stage['us']:>7.2f} µs  {stage['share']:>5.0%}")
    b = results.get("b")
    if b:
        print(f"(b) loopback gRPC, {b['messages']:,} messages, HubbleServer in a subprocess")
        for option in ("single_threaded", "default"):
            r = b[option]
            bare, live = r["bare"], r["daemon"]
            print(
                f"  {option:<16} bare {bare['msgs_per_s']:>7,} msgs/s  daemon {live['msgs_per_s']:>7,} msgs/s"
                f"   ratio {r['ratio']:.2f} ({'met' if r['ratio'] >= TARGET_LIVE_RATIO else 'MISSED'}:"
                f" >= {TARGET_LIVE_RATIO})"
                f"   server {live['server_cpu']:.2f} cores, client {live['client_cpu']:.2f}"
                f"   bounded by: bare {bare['bounded_by']}, daemon {live['bounded_by']}"
            )
    c = results.get("c")
    if c:
        drift = c["rss_ratio_end_to_1m"] - 1
        print(
            f"(c) memory, {c['events']:,} events, {c['distinct_pods']:,} pods, {c['events_per_s']:,} events/s"
        )
        print(
            f"  RSS {c['rss_mb_start']:.0f} MB at start, {c['rss_mb_at_1m']:.0f} MB at"
            f" {min(1_000_000, c['events']) / 1e6:g}M,"
            f" {c['rss_mb_at_end']:.0f} MB at {c['events'] / 1e6:g}M: {drift:+.1%}"
            f" ({'flat' if abs(drift) <= TARGET_RSS_DRIFT else 'GROWS'}, target ±{TARGET_RSS_DRIFT:.0%})"
        )
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
    if args.smoke:  # tiny sizes, in a directory of its own that is removed at the end
        global OUT
        OUT = Path(tempfile.mkdtemp(prefix="bench-live-smoke-"))
        args.messages = args.stream = args.base = args.profile = 2000
        args.events, args.big_pods, args.sample, args.runs = 20_000, 1000, 5000, 1
    if args.serve is not None:
        return serve(args.serve, args.serve_count, args.listen)
    quiet_logging()
    if args.memory_child is not None:
        args.memory_out.write_text(json.dumps(part_c(args, args.memory_child)) + "\n")
        return 0

    try:
        return _run(args)
    finally:
        if args.smoke:
            shutil.rmtree(OUT, ignore_errors=True)
        elif not args.keep:
            for generated in OUT.glob("live-*.pb"):
                generated.unlink()


def _run(args: argparse.Namespace) -> int:
    parts = args.only or ["a", "b", "c"]
    started = time.perf_counter()
    results: dict[str, Any] = {"load_average_start": round(load_average(), 2), "cpus": os.cpu_count()}
    if "a" in parts or "b" in parts:
        size = max(args.messages if "a" in parts else 0, args.stream if "b" in parts else 0)
        size = max(size, args.messages)  # one cache file serves both parts
        path = generate(OUT / f"live-{size}-{args.pods}.pb", size, args.pods)
        if "a" in parts:
            results["a"] = part_a(args, path)
        if "b" in parts:
            results["b"] = part_b(args, path)
    if "c" in parts:
        base = generate(OUT / f"live-{args.base}-{args.big_pods}.pb", args.base, args.big_pods, seed=2)
        results["c"] = part_c_in_child(args, base)
    results["seconds"] = round(time.perf_counter() - started, 1)
    _summary(results, args.runs)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "live-results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
