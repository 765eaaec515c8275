"""Part (b) of ``bench/live.py``: the live path end to end over loopback gRPC.

Stage: measurement only. A ``HubbleServer`` (``auditor.demo``) in a subprocess of ``bench/live.py``
(``--serve``, so that it does not share the GIL) streams its backlog to a bare client (receive and parse
only, the daemon's channel options) and to the real ``Daemon``, with and without
``SingleThreadedUnaryStream``. Which side bounded a rate: the CPU of each side's threads over the wall time
(:func:`bounded_by`). Target: daemon/bare >= :data:`TARGET_LIVE_RATIO`. Loopback only.

Error policy: a server that does not start within :data:`SERVER_START_TIMEOUT`, a stream that stalls for
:data:`STREAM_TIMEOUT` or counts that do not add up raise ``RuntimeError``; the server subprocess is
stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple

import grpc
from live_common import (
    LIVE_SCRIPT,
    counted,
    cpu_delta,
    idle_cores,
    load_average,
    machine_ticks,
    make_daemon,
    reset_decoder_caches,
    self_cpu_s,
    thread_cpu,
)
from live_messages import read_records

from auditor._proto.observer import observer_pb2
from auditor.demo import DEFAULT_CAPACITY, FlowLog, HubbleServer
from auditor.sources.hubble import GET_FLOWS, HubbleConfig

TARGET_LIVE_RATIO: Final = 0.85
BOUND_CPU: Final = 0.75  # Python threads of one process above this share of a core: GIL-bound
SERVER_START_TIMEOUT: Final = 180.0
STREAM_TIMEOUT: Final = 300.0


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


def server_command(path: Path, count: int) -> list[str]:
    """``bench/live.py --serve``: a ``HubbleServer`` holding the first ``count`` messages of ``path``."""
    return [sys.executable, str(LIVE_SCRIPT), "--serve", str(path), "--serve-count", str(count)]


class ServerProcess:
    """A server subprocess that prints ``listening on ADDRESS`` once it listens: started by :meth:`start`,
    stopped by its PID in :meth:`stop`. ``name`` says which server in errors."""

    def __init__(
        self, cmd: list[str], name: str = "server subprocess", start_timeout: float = SERVER_START_TIMEOUT
    ) -> None:
        self.cmd = cmd
        self.name = name
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self) -> str:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("listening on "):
                    self.address = line.split()[2]
                    return self.address
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {' '.join(self.cmd)}")

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
    receiver_cpu_s: float = 0.0  # the daemon's receiver process (receiver="process"), while streaming


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


def daemon_client(address: str, n: int, single_threaded: bool, **hubble: Any) -> StreamRun:
    """The real daemon (``since`` = 0) until it received ``n`` messages; timed from ``start()``.
    ``hubble``: more ``HubbleConfig`` settings (e.g. ``field_mask``, ``receiver``). A receiver process is
    started and ready before the clock starts (a daemon starts it once in its life); its CPU is
    reported apart (``receiver_cpu_s``)."""
    daemon = make_daemon(address, since=0.0, single_threaded_stream=single_threaded, **hubble)
    reset_decoder_caches()
    source = daemon.source
    receiver = source.receiver
    if receiver is not None and not receiver.start():
        raise RuntimeError("daemon: the receiver process did not start")
    receiver_cpu = process_cpu_s(receiver.pid) if receiver is not None and receiver.pid else 0.0
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
        if receiver is not None and receiver.pid:
            receiver_cpu = process_cpu_s(receiver.pid) - receiver_cpu
    finally:
        daemon.stop()
    got = counted(daemon)
    if got != n:
        raise RuntimeError(f"daemon counted {got} records, {n} sent")
    return StreamRun(elapsed, python_cpu, receiver_cpu)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_stream(
    server: ServerProcess, runs: int, client: Callable[[str, int, bool], StreamRun], n: int, single: bool
) -> dict[str, Any]:
    """Best of ``runs``, with the CPU both sides used meanwhile (in cores: CPU seconds / wall seconds)."""
    best: dict[str, Any] = {}
    for _ in range(runs):
        server_threads, own_cpu, ticks = thread_cpu(server.pid), self_cpu_s(), machine_ticks()
        run = client(server.address, n, single)
        own_cpu, idle = self_cpu_s() - own_cpu, idle_cores(ticks, machine_ticks())
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
                "receiver_cpu": round(run.receiver_cpu_s / run.seconds, 2),
                "machine_idle_cores": round(idle, 2),  # left idle meanwhile: ≈ 0 means a busy machine
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
    server = ServerProcess(server_command(path, n))
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


def print_summary(b: dict[str, Any]) -> None:
    """The summary lines of part (b), against its target."""
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
