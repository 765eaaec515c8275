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
from pathlib import Path
from typing import Any

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


def main() -> int:
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
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "soak"
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

    events: dict[str, int] = {
        "restarts": 0,
        "sighup_storms": 0,
        "reloads": 0,
        "bad_reloads": 0,
        "clock_steps": 0,
    }
    rss_peak = 0
    min_threads = baseline_threads
    probe_max = {"/healthz": 0.0, "/readyz": 0.0}
    probe_fail = {"/healthz": 0, "/readyz": 0}
    start = time.monotonic()
    end = start + args.minutes * 60
    next_probe = next_sample = start
    next_storm, next_restart, next_step = start + 20, start + 45, start + 60
    version = 0
    print(f"soak: {args.minutes} min, {args.rate} flows/s, daemon pid {daemon.pid}, metrics on {address}")
    while time.monotonic() < end and daemon.poll() is None:
        now = time.monotonic()
        if now >= next_sample:
            st = proc_status(daemon.pid)
            rss_peak = max(rss_peak, st["rss_kib"])
            if st["threads"]:
                min_threads = min(min_threads, st["threads"])
            next_sample = now + 1.0
        if now >= next_probe:
            for path in probe_max:
                status, _, took = http_get(f"http://{address}{path}", timeout=5)
                probe_max[path] = max(probe_max[path], took)
                if path == "/healthz" and status != 200:
                    probe_fail[path] += 1
            next_probe = now + 0.5
        if now >= next_storm:
            version += 1
            bad = version % 4 == 0
            write_matrix(matrix, version, valid=not bad)
            events["bad_reloads" if bad else "reloads"] += 1
            for k in range(args.sighups):
                os.kill(daemon.pid, signal.SIGHUP)
                if k == args.sighups // 2:
                    write_matrix(matrix, version, valid=True)  # interleaved with matrix writes
                time.sleep(0.002)
            events["sighup_storms"] += 1
            next_storm = now + 20
        if now >= next_restart:
            server.stop(0)
            time.sleep(2.0)
            server = HubbleServer(log, address=f"127.0.0.1:{hubble_port}")
            server.start()
            events["restarts"] += 1
            next_restart = now + 45
        if now >= next_step and not args.no_clock_steps:
            feeder.offset_ns = -600 * 10**9 if feeder.offset_ns == 0 else 0
            events["clock_steps"] += 1
            next_step = now + 60
        time.sleep(0.05)

    feeder.stop.set()
    feeder.thread.join(5)
    scraper.stop.set()
    for t in scraper.threads:
        t.join(15)
    sent = feeder.sent
    counted = 0.0
    flows: dict[str, float] = {}
    samples = 0
    catch_up = time.monotonic() + 60
    while time.monotonic() < catch_up and daemon.poll() is None:
        flows, samples = scrape(address)
        counted = sum(flows.values())
        if counted >= sent:
            break
        time.sleep(1)
    alive = daemon.poll() is None
    health = http_get(f"http://{address}/healthz")[0] if alive else 0
    final = proc_status(daemon.pid) if alive else {"rss_kib": 0, "threads": 0}
    if alive:
        daemon.send_signal(signal.SIGTERM)
    try:
        exit_code = daemon.wait(15)
    except subprocess.TimeoutExpired:
        daemon.kill()
        exit_code = daemon.wait(5)
    server.stop(0)
    daemon_log.close()
    text = (work / "daemon.log").read_text(errors="replace")
    lines = text.splitlines()
    events_by_name: dict[str, int] = {}
    for line in lines:
        m = re.search(r'"event": ?"([^"]+)"', line)
        if m:
            events_by_name[m.group(1)] = events_by_name.get(m.group(1), 0) + 1
    thread_errors = [line for line in lines if "thread" in line.lower() and '"level": "error"' in line]
    minutes = (time.monotonic() - start) / 60
    result: dict[str, Any] = {
        "minutes": round(minutes, 2),
        "flows_sent": sent,
        "flows_counted": int(counted),
        "outcomes": {k: int(v) for k, v in flows.items()},
        "rss_peak_mib": round(rss_peak / 1024, 1),
        "rss_final_mib": round(final["rss_kib"] / 1024, 1),
        "threads_after_start": baseline_threads,
        "threads_min": min_threads,
        "threads_final": final["threads"],
        "series": samples,
        "scrapes": scraper.scrapes,
        "scrape_failures": scraper.failures,
        "probe_max_seconds": {k: round(v, 3) for k, v in probe_max.items()},
        "healthz_failures": probe_fail["/healthz"],
        "log_lines": len(lines),
        "log_lines_per_minute": round(len(lines) / max(minutes, 1e-9), 1),
        "log_events": events_by_name,
        "tracebacks": text.count("Traceback"),
        "thread_errors": len(thread_errors),
        "exit_code": exit_code,
        **events,
    }
    checks = {
        "daemon alive until SIGTERM": alive,
        "exit code 0 on SIGTERM": exit_code == 0,
        "/healthz 200 at the end": health == 200,
        "no thread died (/healthz never failed, no traceback, no thread error logged)": (
            probe_fail["/healthz"] == 0 and result["tracebacks"] == 0 and not thread_errors
        ),
        "flows sent = flows counted": sent == int(counted),
        f"RSS within {args.rss_bound_mib:.0f} MiB": rss_peak / 1024 <= args.rss_bound_mib,
        f"series within {args.series_bound}": 0 < samples <= args.series_bound,
        "probes answered in < 1 s": max(probe_max.values()) < 1.0,
    }
    result["checks"] = checks
    if not alive:  # why it died: the lines of the log that are not structured log lines
        result["death"] = [line for line in lines if not line.startswith("{")][-8:]
    (OUT / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    failed = [name for name, ok in checks.items() if not ok]
    print("soak:", "all checks passed" if not failed else "FAILED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
