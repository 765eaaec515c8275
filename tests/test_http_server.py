"""The bounded HTTP server: probes stay answered under slow sockets and scrape floods (loopback only).

Every server binds 127.0.0.1 with an ephemeral port; every client socket is closed by the test; every wait
is bounded. No throughput is asserted: the tests check who gets answered and which sockets get closed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import wait_for
from prometheus_client import CollectorRegistry, Counter

from auditor.daemon import Daemon, DaemonConfig
from auditor.http_server import (
    HttpLimits,
    HttpServer,
    Request,
    Response,
    Route,
    probe_route,
    registry_route,
)
from auditor.sources.hubble import HubbleConfig

MATRIX = Path(__file__).resolve().parent.parent / "examples" / "airflow" / "matrix.yaml"
PROBE_TIMEOUT = 1.0  # the bound: probes answer in < 1 s while /metrics is under load


def get(address: str, path: str, timeout: float = PROBE_TIMEOUT) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:  # refused, reset or timed out: no answer (status 0)
        return 0, b""


def slow_sockets(address: str, n: int) -> list[socket.socket]:
    """``n`` connections that send half a request head and then nothing (slowloris)."""
    host, port = address.rsplit(":", 1)
    out = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        out.append(s)
    return out


def closed_by_peer(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


class Gate:
    """A /metrics handler that blocks until released: every worker stays busy as long as the test wants."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = 0

    def route(self) -> Route:
        def handler(request: Request) -> Response:
            self.entered += 1
            self.release.wait(30)
            return Response(200, b"metrics\n")

        return Route(handler)


def serve(routes: dict[str, Route], limits: HttpLimits) -> tuple[HttpServer, str]:
    server = HttpServer("127.0.0.1", 0, routes, limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address
    return server, f"{host}:{port}"


@pytest.fixture
def servers() -> Iterator[list[HttpServer]]:
    started: list[HttpServer] = []
    yield started
    for s in started:
        s.shutdown()
        s.server_close()


def test_probes_are_answered_while_slow_sockets_and_busy_scrapes_hold_the_server(
    servers: list[HttpServer], sockets: list[socket.socket]
) -> None:
    gate = Gate()
    limits = HttpLimits(workers=2, queue=4, max_connections=64, header_timeout=30.0)
    routes = {"/metrics": gate.route(), "/healthz": probe_route(lambda: (True, "ok"))}
    server, address = serve(routes, limits)
    servers.append(server)
    # Every worker stuck in a scrape, then the queue full ...
    scrapers = [threading.Thread(target=get, args=(address, "/metrics", 15.0)) for _ in range(6)]
    for t in scrapers[:2]:
        t.start()
    wait_for(lambda: gate.entered == 2, what="both workers busy")
    for t in scrapers[2:]:
        t.start()
    wait_for(lambda: server._jobs.full(), what="a full queue")
    # ... then 500 slow sockets, more than the connection cap.
    sockets.extend(slow_sockets(address, 500))
    try:
        for _ in range(5):
            assert get(address, "/healthz") == (200, b"ok\n")
        status, _ = get(address, "/metrics")
        assert status == 503  # no worker free, no room in the queue: answered at once, not queued
        assert server.open_connections <= limits.max_connections
        assert server.stats.evicted >= 500 - limits.max_connections
    finally:
        gate.release.set()
        for t in scrapers:
            t.join(15)
    assert server.stats.busy >= 1


def test_slow_sockets_are_closed_after_the_header_timeout(
    servers: list[HttpServer], sockets: list[socket.socket]
) -> None:
    limits = HttpLimits(header_timeout=0.5, max_connections=100)
    server, address = serve({"/healthz": probe_route(lambda: (True, "ok"))}, limits)
    servers.append(server)
    sockets.extend(slow_sockets(address, 30))
    wait_for(lambda: all(closed_by_peer(s) for s in sockets), what="slow sockets closed by the server")
    assert server.stats.timed_out == 30
    assert server.open_connections == 0


def test_oversized_head_bad_method_and_unknown_path(
    servers: list[HttpServer], sockets: list[socket.socket]
) -> None:
    limits = HttpLimits(max_header_bytes=1024)
    server, address = serve({"/healthz": probe_route(lambda: (False, "not yet"))}, limits)
    servers.append(server)
    host, port = server.server_address
    big = socket.create_connection((host, port), timeout=5)
    sockets.append(big)
    big.sendall(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 4096 + b"\r\n\r\n")
    assert big.recv(100).startswith(b"HTTP/1.1 431")
    post = socket.create_connection((host, port), timeout=5)
    sockets.append(post)
    post.sendall(b"POST /healthz HTTP/1.1\r\n\r\n")
    assert post.recv(100).startswith(b"HTTP/1.1 405")
    assert get(address, "/nope") == (404, b"not found\n")
    assert get(address, "/healthz") == (503, b"not yet\n")


def test_a_failing_handler_answers_500_and_the_server_keeps_serving(servers: list[HttpServer]) -> None:
    def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    routes = {"/metrics": Route(boom), "/healthz": probe_route(lambda: (True, "ok"))}
    server, address = serve(routes, HttpLimits(workers=1))
    servers.append(server)
    for _ in range(3):
        assert get(address, "/metrics", 5.0)[0] == 500
    assert get(address, "/healthz") == (200, b"ok\n")
    assert server.stats.handler_errors == 3


def test_concurrent_scrapers_share_one_render(servers: list[HttpServer]) -> None:
    registry = CollectorRegistry()
    renders = Counter("renders", "collect calls", registry=registry)

    class Counting:
        def collect(self) -> list[object]:
            renders.inc()
            return []

    registry.register(Counting())  # type: ignore[arg-type]
    server, address = serve({"/metrics": registry_route(registry, max_age=60.0)}, HttpLimits(workers=4))
    servers.append(server)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(get(address, "/metrics", 10.0)[0])) for _ in range(40)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert results.count(200) + results.count(503) == 40 and results.count(200) >= 1
    assert renders._value.get() == 1  # every scrape within max_age got the same body


def test_daemon_probes_answer_and_threads_stay_bounded_under_slowloris(sockets: list[socket.socket]) -> None:
    """Before: one thread per connection (300 slow sockets = 300 threads), none ever closed."""
    config = DaemonConfig(
        matrix=str(MATRIX),
        hubble=HubbleConfig(server="127.0.0.1:1", timeout=1.0, backoff_initial=0.5, backoff_max=1.0),
        listen_address="127.0.0.1:0",
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        before = threading.active_count()
        sockets.extend(slow_sockets(daemon.listen_address, 300))
        assert get(daemon.listen_address, "/healthz") == (200, b"ok\n")
        assert get(daemon.listen_address, "/readyz")[0] == 503  # no Hubble: answered, not ready
        assert threading.active_count() <= before + 5
        assert get(daemon.listen_address, "/metrics", 5.0)[0] == 200
    finally:
        daemon.stop()


FD_LIMITED_SERVER = """
import json, os, resource, sys, threading
from auditor.http_server import HttpLimits, HttpServer, probe_route
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
server = HttpServer("127.0.0.1", 0, {"/healthz": probe_route(lambda: (True, "ok"))},
                    HttpLimits(header_timeout=30.0, accept_pause=0.1))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
print(f"{server.server_address[1]} {server.limits.max_connections}", flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
for line in sys.stdin:  # each line: print the counters; "release": give the descriptors back
    print(json.dumps(server.stats.__dict__), flush=True)
    if line.strip() == "release":
        break
for fd in held:
    os.close(fd)
sys.stdin.readline()
server.shutdown()
print(json.dumps(server.stats.__dict__), flush=True)
"""


def test_at_the_descriptor_limit_accept_pauses_instead_of_spinning(sockets: list[socket.socket]) -> None:
    """Before: 1,021 idle connections at a 1,024-descriptor limit made the accept loop spin at 90 % CPU."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FD_LIMITED_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port, cap = proc.stdout.readline().split()
        assert int(cap) == 16  # a quarter of the 64 descriptors
        address = f"127.0.0.1:{port}"
        sockets.extend(slow_sockets(address, 20))  # queued in the backlog; no descriptor to accept them
        errors: list[int] = []

        def failed_accepts(n: int) -> bool:
            errors.append(stats(proc)["accept_errors"])
            return errors[-1] >= n

        # The third failure comes after two pauses (0.1 s each); a loop that spins instead would have
        # failed thousands of times by then.
        wait_for(lambda: failed_accepts(3), what="the limit hit three times")
        assert errors[-1] <= 100, errors  # paused after each failure: not thousands of retries
        stats(proc, "release")
        # Descriptors back: the queued slow sockets are taken in (the oldest evicted) and probes answer.
        wait_for(lambda: get(address, "/healthz", 2.0) == (200, b"ok\n"), what="a probe answered")
    finally:
        proc.kill()
        proc.wait(10)


def stats(proc: subprocess.Popen[str], command: str = "report") -> dict[str, int]:
    """The FD-limited server's counters, after ``command``."""
    assert proc.stdin is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return dict(json.loads(_last_json_line(proc)))


def _last_json_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    while not (line := proc.stdout.readline()).startswith("{"):
        assert line, "server exited"
    return line


def test_daemon_under_a_scrape_flood_answers_probes_and_counts_every_flow() -> None:
    """Before: 200 concurrent scrapers waited up to 28 s (backlog 5) and probes timed out with them."""
    from auditor.demo import FlowLog, HubbleServer, load_jsonl

    flows = Path(__file__).resolve().parent.parent / "examples" / "airflow" / "flows.jsonl"
    log = FlowLog()
    log.extend(load_jsonl(flows))
    expected = sum(1 for line in flows.read_text().splitlines() if '"flow"' in line)
    server = HubbleServer(log)
    server.start()
    config = DaemonConfig(
        matrix=str(MATRIX),
        hubble=HubbleConfig(server=server.address, since=0.0, timeout=2.0, backoff_initial=0.1),
        listen_address="127.0.0.1:0",
    )
    daemon = Daemon(config)
    stop = threading.Event()
    statuses: list[int] = []

    def scrape_until_stopped() -> None:
        while not stop.is_set():
            statuses.append(get(daemon.listen_address, "/metrics", 30.0)[0])

    scrapers = [threading.Thread(target=scrape_until_stopped) for _ in range(200)]
    daemon.start()
    try:
        for t in scrapers:
            t.start()
        for _ in range(10):
            assert get(daemon.listen_address, "/healthz") == (200, b"ok\n")
        wait_for(
            lambda: daemon.metrics._flows and sum(daemon.metrics._flows.values()) >= expected,
            timeout=60,
            what="every flow counted while scrapes go on",
        )
        assert get(daemon.listen_address, "/readyz") == (200, b"ok\n")
    finally:
        stop.set()
        for t in scrapers:
            t.join(30)
        daemon.stop()
        server.stop(0)
    assert sum(daemon.metrics._flows.values()) == expected
    assert statuses.count(200) >= 200 and set(statuses) <= {200, 503}
