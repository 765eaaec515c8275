"""Soak test: the daemon for N minutes against the demo Hubble server, under everything at once.

What it runs (loopback only): a :class:`~auditor.demo.HubbleServer` in this process fed by a thread that
appends ``--rate`` flows/s with pod churn (new pods, identities and namespaces every few seconds), and the
real daemon (``flow-auditor run``) as a subprocess reading it from the start. Meanwhile:

- scrapes: ``--scrapers`` threads scrape ``/metrics`` back to back; probes of ``/healthz`` and ``/readyz``
  every 0.5 s record their latency;
- SIGHUP storms (``--sighups`` signals in a burst) interleaved with matrix rewrites, every 20 s, including
  an invalid matrix now and then (it must be refused and the previous one kept);
- server restarts (stop, 2 s outage, start on the same port; the log of flows survives, as Relay's ring
  buffer does) every 45 s;
- clock steps: the flow timestamps jump back 10 minutes, then forward again, every 60 s (``--no-clock-steps``
  to leave them out).

At the end it waits (bounded) for the daemon to catch up, then checks and prints:

- the daemon is alive, ``/healthz`` never failed (it fails when a worker thread died), no traceback and no
  error line about a thread in its log (no thread died); OS thread counts are printed (gRPC's own threads
  come and go, so they are figures, not a check);
- flows sent by the server = flows counted by the daemon (Σ ``flow_auditor_flows_total`` over outcomes),
  exactly;
- peak RSS (sampled every second) within ``--rss-bound-mib`` (the deploy manifests' memory limit);
- series in ``/metrics`` within ``--series-bound``; log lines per minute; probe latency.

Results go to stdout and ``bench/out/soak.json``; exit 1 when a check fails. ``make soak`` runs it
(``SOAK_MINUTES=10 make soak`` for longer). Not part of ``make test``.

Error policy: a failed check is reported, never raised; setup errors (no free port, daemon not starting
within 30 s) raise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families

from auditor.demo import FlowLog, HubbleServer, response_from_event
from auditor.scenario import synthetic_events

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"
OUT = ROOT / "bench" / "out"
CHURN_GENERATIONS = 12
EVENTS_PER_GENERATION = 1500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes, float]:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), time.monotonic() - start
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - start
    except OSError:
        return 0, b"", time.monotonic() - start


def proc_status(pid: int) -> dict[str, int]:
    out = {"rss_kib": 0, "threads": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    return out


class Feeder:
    """Appends flows to the log at a steady rate, cycling through churn generations; counts what it sent."""

    def __init__(self, log: FlowLog, rate: int) -> None:
        self.log = log
        self.rate = rate
        self.sent = 0
        self.offset_ns = 0  # clock steps
        self.stop = threading.Event()
        print(f"generating {CHURN_GENERATIONS} churn generations of {EVENTS_PER_GENERATION} events ...")
        self.generations = []
        for g in range(CHURN_GENERATIONS):
            responses = [response_from_event(e) for e in synthetic_events(EVENTS_PER_GENERATION, seed=g + 1)]
            flows = [r for r in responses if r.HasField("flow")]
            for k, r in enumerate(flows[::10]):  # namespace churn: sources from ever new namespaces
                if r.flow.destination.namespace == "airflow" and r.flow.source.namespace == "airflow":
                    r.flow.source.namespace = f"churn-{g}-{k % 25}"
            self.generations.append(flows)
        self.thread = threading.Thread(target=self.run, name="feeder", daemon=True)

    def run(self) -> None:
        tick, i, g = 0.1, 0, 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            batch = max(1, int(self.rate * tick))
            now_ns = time.time_ns() + self.offset_ns
            for k in range(batch):
                gen = self.generations[g]
                response = gen[i % len(gen)]
                i += 1
                if i % len(gen) == 0:
                    g = (g + 1) % len(self.generations)  # churn: the next generation's pods
                response.flow.time.FromNanoseconds(now_ns + k * 1000)
                self.log.append(response)
                self.sent += 1
            next_at += tick
            self.stop.wait(max(0.0, next_at - time.monotonic()))


class Scraper:
    def __init__(self, address: str, n: int) -> None:
        self.address = address
        self.scrapes = 0
        self.failures = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]

    def run(self) -> None:
        while not self.stop.is_set():
            status, _, _ = http_get(f"http://{self.address}/metrics", timeout=10)
            if status == 200:
                self.scrapes += 1
            else:
                self.failures += 1
                self.stop.wait(0.2)


def scrape(address: str) -> tuple[dict[str, float], int]:
    """Σ flows_total by outcome and the number of samples in one scrape."""
    status, body, _ = http_get(f"http://{address}/metrics", timeout=30)
    if status != 200:
        return {}, 0
    flows: dict[str, float] = {}
    samples = 0
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples += 1
            if s.name == "flow_auditor_flows_total":
                flows[s.labels["outcome"]] = s.value
    return flows, samples


def write_matrix(path: Path, version: int, valid: bool = True) -> None:
    text = MATRIX.read_text()
    if not valid:
        text += "\nnot_a_field: true\n"
    path.write_text(text + f"\n# soak version {version}\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=200, help="flows per second (default: 200)")
    parser.add_argument("--scrapers", type=int, default=8)
    parser.add_argument("--sighups", type=int, default=200, help="signals per SIGHUP storm")
    parser.add_argument("--no-clock-steps", action="store_true")
    parser.add_argument("--rss-bound-mib", type=float, default=512.0)
    parser.add_argument("--series-bound", type=int, default=3 * 10_000 + 2_000)
    parser.add_argument("--out", type=Path, default=OUT, help="where soak.json and soak/daemon.log go")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="12 s, every driver at least once on a compressed schedule (make test)",
    )
    args = parser.parse_args()
    args.schedule = 1.0  # seconds of the drivers' schedule per real second
    if args.smoke:
        args.minutes, args.rate, args.scrapers, args.sighups, args.schedule = 0.2, 100, 2, 20, 0.15
    return args


@dataclass
class Rig:
    """What runs during the soak: the flow log and its feeder, the Hubble server, the daemon, the scrapers."""

    work: Path
    matrix: Path
    log: FlowLog
    feeder: Feeder
    hubble_port: int
    address: str  # the daemon's metrics and probes
    server: HubbleServer  # replaced on every restart
    daemon: subprocess.Popen[bytes]
    daemon_log: IO[str]
    baseline_threads: int
    scraper: Scraper


def start_rig(args: argparse.Namespace) -> Rig:
    """Setup: the matrix, the feeder's generations, the server, the daemon (ready within 30 s), the load."""
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "soak"
    work.mkdir(exist_ok=True)
    matrix = work / "matrix.yaml"
    write_matrix(matrix, 0)

    log = FlowLog()
    feeder = Feeder(log, args.rate)
    hubble_port, http_port = free_port(), free_port()
    server = HubbleServer(log, address=f"127.0.0.1:{hubble_port}")
    server.start()
    address = f"127.0.0.1:{http_port}"
    daemon_log = (work / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [
            sys.executable, "-m", "auditor", "run",
            "--server", f"127.0.0.1:{hubble_port}",
            "--matrix", str(matrix),
            "--listen-address", address,
            "--since", "24h",
            "--reload-interval", "1s",
            "--no-server-side-filter",  # flows sent = flows counted, out-of-scope ones included
        ],
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while http_get(f"http://{address}/readyz", 1)[0] != 200:
        if time.monotonic() > deadline or daemon.poll() is not None:
            raise SystemExit("the daemon did not become ready within 30 s")
        time.sleep(0.2)
    baseline_threads = proc_status(daemon.pid)["threads"]
    feeder.thread.start()
    scraper = Scraper(address, args.scrapers)
    for t in scraper.threads:
        t.start()
    return Rig(
        work, matrix, log, feeder, hubble_port, address, server, daemon, daemon_log, baseline_threads, scraper
    )


@dataclass
class Tally:
    """What the drivers did and what the samplers saw while the soak ran."""

    start: float
    min_threads: int
    rss_peak: int = 0
    version: int = 0  # of the matrix
    events: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("restarts", "sighup_storms", "reloads", "bad_reloads", "clock_steps"), 0
        )
    )
    probe_max: dict[str, float] = field(default_factory=lambda: {"/healthz": 0.0, "/readyz": 0.0})
    probe_fail: dict[str, int] = field(default_factory=lambda: {"/healthz": 0, "/readyz": 0})


def sample_process(rig: Rig, tally: Tally) -> None:
    """RSS peak and the fewest OS threads of the daemon."""
    st = proc_status(rig.daemon.pid)
    tally.rss_peak = max(tally.rss_peak, st["rss_kib"])
    if st["threads"]:
        tally.min_threads = min(tally.min_threads, st["threads"])


def probe(rig: Rig, tally: Tally) -> None:
    """One probe of ``/healthz`` and ``/readyz``: their latency, and whether ``/healthz`` failed."""
    for path in tally.probe_max:
        status, _, took = http_get(f"http://{rig.address}{path}", timeout=5)
        tally.probe_max[path] = max(tally.probe_max[path], took)
        if path == "/healthz" and status != 200:
            tally.probe_fail[path] += 1


def sighup_storm(rig: Rig, tally: Tally, sighups: int) -> None:
    """A matrix rewrite (every fourth one invalid) and a burst of SIGHUPs, a valid rewrite halfway."""
    tally.version += 1
    bad = tally.version % 4 == 0
    write_matrix(rig.matrix, tally.version, valid=not bad)
    tally.events["bad_reloads" if bad else "reloads"] += 1
    for k in range(sighups):
        os.kill(rig.daemon.pid, signal.SIGHUP)
        if k == sighups // 2:
            write_matrix(rig.matrix, tally.version, valid=True)  # interleaved with matrix writes
        time.sleep(0.002)
    tally.events["sighup_storms"] += 1


def restart_server(rig: Rig, tally: Tally) -> None:
    """Stop the Hubble server, 2 s outage, start a new one on the same port over the same flow log."""
    rig.server.stop(0)
    time.sleep(2.0)
    rig.server = HubbleServer(rig.log, address=f"127.0.0.1:{rig.hubble_port}")
    rig.server.start()
    tally.events["restarts"] += 1


def clock_step(rig: Rig, tally: Tally) -> None:
    """Flow times jump back 10 minutes, or forward again."""
    rig.feeder.offset_ns = -600 * 10**9 if rig.feeder.offset_ns == 0 else 0
    tally.events["clock_steps"] += 1


def drive(rig: Rig, args: argparse.Namespace) -> Tally:
    """The soak itself: samplers and drivers on their schedules until the time is up or the daemon died."""
    tally = Tally(start=time.monotonic(), min_threads=rig.baseline_threads)
    end = tally.start + args.minutes * 60
    next_probe = next_sample = tally.start
    storms, restarts, steps = 20 * args.schedule, 45 * args.schedule, 60 * args.schedule  # seconds apart
    next_storm, next_restart, next_step = tally.start + storms, tally.start + restarts, tally.start + steps
    daemon = rig.daemon
    print(f"soak: {args.minutes} min, {args.rate} flows/s, daemon pid {daemon.pid}, metrics on {rig.address}")
    while time.monotonic() < end and daemon.poll() is None:
        now = time.monotonic()
        if now >= next_sample:
            sample_process(rig, tally)
            next_sample = now + 1.0
        if now >= next_probe:
            probe(rig, tally)
            next_probe = now + 0.5
        if now >= next_storm:
            sighup_storm(rig, tally, args.sighups)
            next_storm = now + storms
        if now >= next_restart:
            restart_server(rig, tally)
            next_restart = now + restarts
        if now >= next_step and not args.no_clock_steps:
            clock_step(rig, tally)
            next_step = now + steps
        time.sleep(0.05)
    return tally


@dataclass
class Ending:
    """How the soak ended: flows sent and counted, the last scrape, and how the daemon stopped."""

    sent: int
    counted: float
    flows: dict[str, float]  # Σ flows_total by outcome
    samples: int  # series in the last scrape
    alive: bool
    health: int  # /healthz status at the end
    final: dict[str, int]  # proc_status at the end
    exit_code: int


def wind_down(rig: Rig) -> Ending:
    """Stop the load, wait (bounded) for the daemon to count every flow sent, then SIGTERM it."""
    rig.feeder.stop.set()
    rig.feeder.thread.join(5)
    rig.scraper.stop.set()
    for t in rig.scraper.threads:
        t.join(15)
    sent = rig.feeder.sent
    counted = 0.0
    flows: dict[str, float] = {}
    samples = 0
    catch_up = time.monotonic() + 60
    while time.monotonic() < catch_up and rig.daemon.poll() is None:
        flows, samples = scrape(rig.address)
        counted = sum(flows.values())
        if counted >= sent:
            break
        time.sleep(1)
    alive = rig.daemon.poll() is None
    health = http_get(f"http://{rig.address}/healthz")[0] if alive else 0
    final = proc_status(rig.daemon.pid) if alive else {"rss_kib": 0, "threads": 0}
    if alive:
        rig.daemon.send_signal(signal.SIGTERM)
    try:
        exit_code = rig.daemon.wait(15)
    except subprocess.TimeoutExpired:
        rig.daemon.kill()
        exit_code = rig.daemon.wait(5)
    rig.server.stop(0)
    rig.daemon_log.close()
    return Ending(sent, counted, flows, samples, alive, health, final, exit_code)


def summarise(args: argparse.Namespace, rig: Rig, tally: Tally, ending: Ending) -> dict[str, Any]:
    """The JSON summary: figures, driver counts, checks and (if it died) the daemon's last words."""
    text = (rig.work / "daemon.log").read_text(errors="replace")
    lines = text.splitlines()
    events_by_name: dict[str, int] = {}
    for line in lines:
        m = re.search(r'"event": ?"([^"]+)"', line)
        if m:
            events_by_name[m.group(1)] = events_by_name.get(m.group(1), 0) + 1
    thread_errors = [line for line in lines if "thread" in line.lower() and '"level": "error"' in line]
    minutes = (time.monotonic() - tally.start) / 60
    result: dict[str, Any] = {
        "minutes": round(minutes, 2),
        "flows_sent": ending.sent,
        "flows_counted": int(ending.counted),
        "outcomes": {k: int(v) for k, v in ending.flows.items()},
        "rss_peak_mib": round(tally.rss_peak / 1024, 1),
        "rss_final_mib": round(ending.final["rss_kib"] / 1024, 1),
        "threads_after_start": rig.baseline_threads,
        "threads_min": tally.min_threads,
        "threads_final": ending.final["threads"],
        "series": ending.samples,
        "scrapes": rig.scraper.scrapes,
        "scrape_failures": rig.scraper.failures,
        "probe_max_seconds": {k: round(v, 3) for k, v in tally.probe_max.items()},
        "healthz_failures": tally.probe_fail["/healthz"],
        "log_lines": len(lines),
        "log_lines_per_minute": round(len(lines) / max(minutes, 1e-9), 1),
        "log_events": events_by_name,
        "tracebacks": text.count("Traceback"),
        "thread_errors": len(thread_errors),
        "exit_code": ending.exit_code,
        **tally.events,
    }
    result["checks"] = checks(args, tally, ending, result["tracebacks"] == 0 and not thread_errors)
    if not ending.alive:  # why it died: the lines of the log that are not structured log lines
        result["death"] = [line for line in lines if not line.startswith("{")][-8:]
    return result


def checks(args: argparse.Namespace, tally: Tally, ending: Ending, log_clean: bool) -> dict[str, bool]:
    """Each check by name: passed or not (``log_clean``: no traceback and no thread error in the log)."""
    return {
        "daemon alive until SIGTERM": ending.alive,
        "exit code 0 on SIGTERM": ending.exit_code == 0,
        "/healthz 200 at the end": ending.health == 200,
        "no thread died (/healthz never failed, no traceback, no thread error logged)": (
            tally.probe_fail["/healthz"] == 0 and log_clean
        ),
        "flows sent = flows counted": ending.sent == int(ending.counted),
        f"RSS within {args.rss_bound_mib:.0f} MiB": tally.rss_peak / 1024 <= args.rss_bound_mib,
        f"series within {args.series_bound}": 0 < ending.samples <= args.series_bound,
        "probes answered in < 1 s": max(tally.probe_max.values()) < 1.0,
    }


def main() -> int:
    args = parse_args()
    rig = start_rig(args)
    tally = drive(rig, args)
    ending = wind_down(rig)
    result = summarise(args, rig, tally, ending)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    failed = [name for name, ok in result["checks"].items() if not ok]
    print("soak:", "all checks passed" if not failed else "FAILED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
