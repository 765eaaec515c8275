"""Helpers shared by the live benchmarks (``bench/live.py`` and its parts, ``bench/standin.py``).

Stage: measurement support. What they share: the daemon as the benchmarks build it (:func:`make_daemon`,
logging to /dev/null), its count of received records, the decoder's module-level endpoint cache (reset
so that every run starts cold), the daemon's consume loop fed from memory (:func:`daemon_pipeline`),
interleaved CPU timing, and what the machine says: load average, RSS and per-thread CPU from ``/proc``.

Error policy: none of its own; a failure is a bench bug and raises.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog

from auditor import decode_pb
from auditor.classify import OUTCOMES
from auditor.daemon import Daemon, DaemonConfig, configure_logging
from auditor.sources.hubble import HubbleConfig

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"
LIVE_SCRIPT = ROOT / "bench" / "live.py"  # the entry point, also run as the server and memory subprocesses


def load_average() -> float:
    return os.getloadavg()[0]


def machine_ticks() -> tuple[int, int]:
    """(idle, total) CPU ticks of the whole machine so far (``/proc/stat``): the share left idle while a
    measurement ran tells whether other work held it back (a shared machine)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)


def idle_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Cores the machine left idle between two :func:`machine_ticks` snapshots, on average."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * (os.cpu_count() or 1) if total else 0.0


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
