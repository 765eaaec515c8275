"""Helpers shared by the tests that run the daemon or the command line (not a test module): the example's
paths, bounded waits, scraping the daemon's /metrics, loopback ports, HTTP status codes, the
``flow-auditor`` command run as a process, and a sentinel flow that tells when every event sent before it
has been counted."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2
from auditor.daemon import Daemon, DaemonConfig
from auditor.demo import FlowLog
from auditor.sources.hubble import HubbleConfig

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "examples" / "airflow" / "flows.jsonl"
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"
FLOW_EVENTS = sum(1 for line in FLOWS.read_text().splitlines() if '"flow"' in line)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
MS = 1_000_000
SENTINEL_PORT = 5433  # no rule allows worker → postgresql on 5433: the sentinel's edge is its own series
SENTINEL = 1  # flows the sentinel adds to the counts (one, judged)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


def received(samples: Samples) -> float:
    return total(samples, "flow_auditor_flows_total")


def connections(samples: Samples) -> dict[tuple[str, str, str, str, str], float]:
    out: dict[tuple[str, str, str, str, str], float] = {}
    for (name, labels), v in samples.items():
        if name == "flow_auditor_connections_total":
            d = dict(labels)
            key = (d["source"], d["destination"], d["port"], d["protocol"], d["class"])
            out[key] = out.get(key, 0.0) + v
    return out


def start_daemon(
    address: str, matrix: Path = MATRIX, *, options: Mapping[str, Any] | None = None, **hubble: object
) -> Daemon:
    """A started daemon following the Hubble server at ``address`` from the start of its buffer, quick to
    reconnect and to reload ``matrix``, serving HTTP on an ephemeral loopback port; ``options`` are more
    :class:`DaemonConfig` fields, ``hubble`` more :class:`HubbleConfig` fields."""
    config = DaemonConfig(
        matrix=str(matrix),
        hubble=HubbleConfig(
            server=address, since=0.0, timeout=2.0, backoff_initial=0.1, backoff_max=0.5, **hubble
        ),  # type: ignore[arg-type]
        listen_address="127.0.0.1:0",
        reload_interval=0.1,
        **(options or {}),
    )
    daemon = Daemon(config)
    daemon.start()
    return daemon


def run_cli(*args: str, stdin: bytes | None = None, columns: int = 160) -> subprocess.CompletedProcess[str]:
    """``python -m auditor ARGS`` from the repository root, bounded in time, with reports of a fixed width
    (``COLUMNS``) whatever runs the tests."""
    return subprocess.run(
        [sys.executable, "-m", "auditor", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": str(columns)},
    )


def replay_cli(*files: str | Path, matrix: str | Path = MATRIX, fmt: str = "json") -> str:
    """The output of ``replay FILES --matrix MATRIX --format FMT --fail-on none``; fails the test (with the
    command's stderr) unless it exits 0."""
    proc = run_cli("replay", *map(str, files), "--matrix", str(matrix), "--format", fmt, "--fail-on", "none")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def dropped_flow(uid: str, node: str, t_ns: int, port: int = 5432) -> observer_pb2.GetFlowsResponse:
    """A dropped flow worker → PostgreSQL on ``port`` (judged: a drop is final) seen by ``node`` at ``t_ns``
    (its clock), with a unique UUID."""
    msg = flow_pb2.Flow(
        uuid=uid,
        verdict=flow_pb2.DROPPED,
        drop_reason_desc=flow_pb2.POLICY_DENIED,
        traffic_direction=flow_pb2.INGRESS,
        source=flow_pb2.Endpoint(
            namespace="airflow", pod_name="airflow-worker-0", labels=["k8s:component=worker"]
        ),
        destination=flow_pb2.Endpoint(
            namespace="airflow",
            pod_name="airflow-postgresql-0",
            labels=["k8s:app.kubernetes.io/name=postgresql"],
        ),
        node_name=node,
    )
    msg.l4.TCP.source_port = 40000 + hash(uid) % 20000
    msg.l4.TCP.destination_port = port
    msg.time.FromNanoseconds(t_ns)
    resp = observer_pb2.GetFlowsResponse(flow=msg, node_name=node)
    resp.time.FromNanoseconds(t_ns)
    return resp


def count_through_sentinel(d: Daemon, log: FlowLog, timeout: float = 20.0) -> Samples:
    """Append a sentinel flow after the flows that matter (same node, 1 ms after the last flow) and wait
    until the daemon has counted it; return the samples scraped then.

    The stream is consumed in order, one event at a time, and a re-opened stream re-sends its backlog
    before anything newer: once the sentinel is counted, every event sent before it (re-sent ones
    included) has been counted or skipped, so the counts are final and can be asserted exactly (the
    sentinel itself adds :data:`SENTINEL` judged flow)."""
    _, entries = log.snapshot()
    last = next(e for e in reversed(entries) if e.is_flow)
    log.append(dropped_flow("sentinel", last.node_name, last.time_ns + MS, port=SENTINEL_PORT))

    def counted() -> bool:
        return any(key[2] == str(SENTINEL_PORT) for key in connections(scrape(d.listen_address)))

    wait_for(counted, timeout=timeout, what="the sentinel flow")
    return scrape(d.listen_address)


def failing_server() -> tuple[grpc.Server, str]:
    """A gRPC server whose GetFlows fails right after the call opens (UNAVAILABLE), every time."""

    def get_flows(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        context.abort(grpc.StatusCode.UNAVAILABLE, "no connection to any Hubble node")
        yield b""  # pragma: no cover - abort raises

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "observer.Observer", {"GetFlows": grpc.unary_stream_rpc_method_handler(get_flows)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"
