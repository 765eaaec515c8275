"""The live stream against misbehaving servers on 127.0.0.1: clock skew, a flow from the far future,
oversized messages, calls that fail at once, a server that freezes. Flows sent = flows counted, exactly.
The tests that exercise the call itself run with both receivers (``receiver``: the call received in the
stream thread, or in the receiver process of :mod:`auditor.sources.receiver`).

Every server binds loopback with an ephemeral port (re-used for a restart); every wait is bounded and ends
on something observed (a count, a sentinel flow, answered probes, failed calls), never on a sleep.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from daemon_helpers import (
    MATRIX,
    MS,
    SENTINEL,
    Samples,
    count_through_sentinel,
    dropped_flow,
    failing_server,
    free_port,
    http_status,
    scrape,
    total,
    value,
    wait_for,
)

from auditor._proto.observer import observer_pb2
from auditor.daemon import Daemon, DaemonConfig
from auditor.demo import FlowLog, HubbleServer
from auditor.sources.hubble import RECEIVERS, HubbleConfig

NS = 1_000_000_000
both_receivers = pytest.mark.parametrize("receiver", RECEIVERS)
Response = observer_pb2.GetFlowsResponse


def batch(prefix: str, node: str, start_ns: int, n: int, step_ns: int = MS) -> list[Response]:
    return [dropped_flow(f"{prefix}-{i}", node, start_ns + i * step_ns) for i in range(n)]


def served(servers: Servers, daemons: list[Daemon], **hubble: Any) -> tuple[FlowLog, Daemon]:
    """An empty flow log served by a fresh server, and a daemon following it (stopped by the fixture)."""
    log = FlowLog()
    servers.start(log)
    d = start(servers.address, **hubble)
    daemons.append(d)
    return log, d


def start(address: str, ready_grace: float = 30.0, **hubble: Any) -> Daemon:
    options: dict[str, Any] = {"since": 0.0, "timeout": 2.0, "backoff_initial": 0.1, "backoff_max": 0.5}
    options.update(hubble)
    config = DaemonConfig(
        matrix=str(MATRIX),
        hubble=HubbleConfig(server=address, **options),
        listen_address="127.0.0.1:0",
        reload_interval=60.0,
        ready_grace=ready_grace,
    )
    daemon = Daemon(config)
    daemon.start()
    return daemon


def received(d: Daemon) -> float:
    samples = scrape(d.listen_address)
    return sum(v for (name, _), v in samples.items() if name == "flow_auditor_flows_total")


def flows(samples: Samples, outcome: str | None = None) -> float:
    """Flows counted (all, or of one outcome), the sentinel (one judged flow) taken out."""
    name = "flow_auditor_flows_total"
    counted = total(samples, name) if outcome is None else value(samples, name, outcome=outcome)
    return counted - (SENTINEL if outcome in (None, "judged") else 0)


class Servers:
    """A Hubble stand-in on one fixed loopback port that tests stop and restart (other log, same log)."""

    def __init__(self) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.current: HubbleServer | None = None

    def start(self, log: FlowLog) -> HubbleServer:
        self.current = HubbleServer(log, address=self.address)
        self.current.start()
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop(None)
            self.current = None


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.stop()


def restart(servers: Servers, d: Daemon, log: FlowLog) -> None:
    """Stop the server (the stream breaks), then start one on the same port serving ``log``."""
    servers.stop()
    wait_for(lambda: not d.source.connected, what="the stream to break")
    servers.start(log)
    wait_for(lambda: d.source.connected, what="the stream to come back")


# -- clock skew: since is never trusted ------------------------------------------------------------------


@both_receivers
def test_server_restarted_with_its_clock_600s_behind_loses_nothing(
    servers: Servers, daemons: list[Daemon], receiver: str
) -> None:
    first = FlowLog()
    servers.start(first)
    d = start(servers.address, receiver=receiver)
    daemons.append(d)
    now = time.time_ns()
    first.extend(batch("before", "node-1", now - 200 * MS, 100))
    wait_for(lambda: received(d) == 100, what="the first flows")
    servers.stop()
    wait_for(lambda: not d.source.connected, what="the stream to break")
    second = FlowLog()  # a restarted server: a fresh buffer, and its clock ten minutes behind
    behind = time.time_ns() - 600 * NS
    second.extend(batch("buffered", "node-1", behind, 60))
    servers.start(second)
    wait_for(lambda: d.source.connected, what="the stream to come back")
    second.extend(batch("live", "node-1", behind + NS, 80))
    samples = count_through_sentinel(d, second)
    assert flows(samples) == flows(samples, "judged") == 240  # every flow sent is judged, once
    assert value(samples, "flow_auditor_hubble_clock_anomalies_total", kind="backwards") == 1


def test_one_flow_an_hour_ahead_then_a_reconnect_loses_and_repeats_nothing(
    servers: Servers, daemons: list[Daemon]
) -> None:
    log, d = served(servers, daemons)
    now = time.time_ns()
    log.extend(batch("a", "node-1", now - NS, 50))
    log.append(dropped_flow("future", "node-1", now + 3600 * NS))
    log.extend(batch("b", "node-1", now, 20))
    wait_for(lambda: received(d) == 71, what="the flows around the future one")
    restart(servers, d, log)  # Relay keeps its buffer: everything is sent again
    log.extend(batch("c", "node-1", time.time_ns(), 30))
    samples = count_through_sentinel(d, log)
    assert flows(samples) == flows(samples, "judged") == 101  # every flow sent is judged, once
    assert value(samples, "flow_auditor_hubble_clock_anomalies_total", kind="ahead") == 1
    assert value(samples, "flow_auditor_hubble_resent_events_skipped_total") == 71
    assert d.source.newest_time < time.time() + 60  # the future flow is not the watermark
    # nor a last-seen time (which the silent-rule alert compares with the time): it counts at the clock
    seen = [v for (name, _), v in samples.items() if name.endswith("_last_seen_timestamp_seconds")]
    assert seen and max(seen) < time.time() + 60, max(seen)


def test_two_nodes_two_seconds_apart_and_an_outage_lose_and_repeat_nothing(
    servers: Servers, daemons: list[Daemon]
) -> None:
    log, d = served(servers, daemons)

    def interleaved(prefix: str, n: int) -> list[Response]:
        now = time.time_ns()  # node-b's clock runs two seconds behind node-a's
        a, b = batch(f"{prefix}-a", "node-a", now, n), batch(f"{prefix}-b", "node-b", now - 2 * NS, n)
        return [r for pair in zip(a, b, strict=True) for r in pair]

    log.extend(interleaved("up", 40))
    wait_for(lambda: received(d) == 80, what="both nodes")
    servers.stop()
    wait_for(lambda: not d.source.connected, what="the outage")
    log.extend(interleaved("outage", 20))  # kept in Relay's buffer while the auditor is away
    servers.start(log)
    wait_for(lambda: d.source.connected, what="the stream to come back")
    log.extend(interleaved("after", 20))
    samples = count_through_sentinel(d, log)
    assert flows(samples) == flows(samples, "judged") == 160  # every flow sent is judged, once
    assert value(samples, "flow_auditor_hubble_resent_events_skipped_total") == 80
    assert value(samples, "flow_auditor_hubble_clock_anomalies_total", kind="backwards") == 0


def test_a_flow_stamped_beyond_year_9999_does_not_stop_the_stream(
    servers: Servers, daemons: list[Daemon]
) -> None:
    log, d = served(servers, daemons)
    log.extend(batch("a", "node-1", time.time_ns(), 10))
    far = dropped_flow("far", "node-1", 0)
    far.flow.time.seconds = far.time.seconds = 2**40  # valid on the wire, past any calendar
    log.append(far)
    wait_for(lambda: received(d) == 11, what="the far-future flow")
    restart(servers, d, log)
    log.extend(batch("b", "node-1", time.time_ns(), 10))
    samples = count_through_sentinel(d, log)
    assert flows(samples) == 21
    # Counted either as invalid (a decoder that refuses such times) or as a clock anomaly: never trusted.
    assert (
        value(samples, "flow_auditor_flows_total", outcome="invalid")
        + value(samples, "flow_auditor_hubble_clock_anomalies_total", kind="ahead")
        == 1
    )
    assert http_status(f"http://{d.listen_address}/healthz") == 200
    assert http_status(f"http://{d.listen_address}/readyz") == 200


# -- oversized messages --------------------------------------------------------------------------------


@both_receivers
def test_an_oversized_message_is_counted_skipped_and_reported_not_re_requested(
    servers: Servers, daemons: list[Daemon], receiver: str
) -> None:
    limit = 256 * 1024
    log, d = served(servers, daemons, max_message_bytes=limit, receiver=receiver)
    log.extend(batch("a", "node-1", time.time_ns(), 20))
    wait_for(lambda: received(d) == 20, what="the flows before")
    log.append_raw(b"\x0a" + b"\xff" * (4 * limit), time_ns=time.time_ns())  # 4x the receive limit
    wait_for(
        lambda: value(scrape(d.listen_address), "flow_auditor_flows_total", outcome="invalid") == 1,
        what="the oversized message counted",
    )
    wait_for(lambda: d.source.reconnects == 1 and d.source.connected, what="the stream past it")
    log.extend(batch("b", "node-1", time.time_ns(), 30))
    samples = count_through_sentinel(d, log)
    assert flows(samples) == 51
    assert value(samples, "flow_auditor_flows_total", outcome="invalid") == 1
    assert value(samples, "flow_auditor_hubble_stream_gaps_total") == 1
    assert value(samples, "flow_auditor_hubble_reconnects_total") <= 1  # one re-open, no loop


# -- readiness -----------------------------------------------------------------------------------------


@both_receivers
def test_readyz_is_503_when_every_call_fails_right_after_connecting(
    daemons: list[Daemon], receiver: str
) -> None:
    server, address = failing_server()
    try:
        d = start(address, backoff_initial=0.05, backoff_max=0.2, healthy_after=3.0, receiver=receiver)
        daemons.append(d)
        url = f"http://{d.listen_address}/readyz"
        codes: list[int] = []

        def failed_calls(n: int) -> bool:
            codes.append(http_status(url))  # asked all along, not only at the end
            return d.source.reconnects >= n

        wait_for(lambda: failed_calls(30), what="30 calls that fail right after connecting")
        assert set(codes) == {503}, codes
        assert d.source.last_healthy == 0.0  # not one of them ever counted as a healthy stream
        assert value(scrape(d.listen_address), "flow_auditor_hubble_up") == 0.0
        assert "no connection to any Hubble node" in d.ready()[1]
    finally:
        server.stop(None)


@both_receivers
def test_a_quiet_but_open_stream_is_ready_and_kept(
    servers: Servers, daemons: list[Daemon], receiver: str
) -> None:
    servers.start(FlowLog())
    d = start(servers.address, healthy_after=0.3, idle_timeout=0.3, receiver=receiver)
    daemons.append(d)
    wait_for(lambda: http_status(f"http://{d.listen_address}/readyz") == 200, what="ready")
    assert value(scrape(d.listen_address), "flow_auditor_hubble_up") == 1.0
    # In a silent stream only an answered probe moves last_healthy on (a reconnect would count).
    marks: set[float] = set()

    def probes_answered(n: int) -> bool:
        marks.add(d.source.last_healthy)
        return len(marks) > n

    wait_for(lambda: probes_answered(3), what="three silent periods, each probe answered")
    assert d.source.reconnects == 0 and d.source.connected


# -- a frozen server -----------------------------------------------------------------------------------


class FreezableProxy:
    """A loopback TCP proxy to ``upstream`` that can freeze: connections stay open, nothing is forwarded,
    new connections are accepted and never answered — a server that hangs with its sockets open."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.thawed = threading.Event()
        self.thawed.set()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.sockets.append(client)
            if not self.thawed.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(self.upstream, timeout=5)
            self.sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                if not self.thawed.is_set():
                    self.thawed.wait(0.2)
                    continue  # frozen: stop reading, the socket stays open
                src.settimeout(0.2)
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self.closed.set()
        self.thawed.set()
        self.listener.close()
        for s in self.sockets:
            s.close()


@both_receivers
def test_a_frozen_server_is_noticed_within_seconds_and_nothing_is_lost(
    servers: Servers, daemons: list[Daemon], receiver: str
) -> None:
    log = FlowLog()
    servers.start(log)
    proxy = FreezableProxy(servers.address)
    try:
        d = start(proxy.address, ready_grace=1.0, idle_timeout=1.0, timeout=1.0, receiver=receiver)
        daemons.append(d)
        log.extend(batch("a", "node-1", time.time_ns(), 20))
        wait_for(lambda: received(d) == 20, what="flows through the proxy")
        proxy.thawed.clear()
        frozen_at = time.monotonic()
        log.extend(batch("frozen", "node-1", time.time_ns(), 10))  # held back by the frozen server
        wait_for(lambda: not d.source.connected, timeout=15, what="the frozen server to be noticed")
        assert time.monotonic() - frozen_at < 10
        assert "no response" in d.source.last_reason
        assert http_status(f"http://{d.listen_address}/healthz") == 200
        readyz = f"http://{d.listen_address}/readyz"
        wait_for(lambda: http_status(readyz) == 503, timeout=10, what="not ready while frozen")
        assert value(scrape(d.listen_address), "flow_auditor_hubble_up") == 0.0
        proxy.thawed.set()
        wait_for(lambda: d.source.connected, timeout=15, what="the stream to come back")
        log.extend(batch("b", "node-1", time.time_ns(), 10))
        samples = count_through_sentinel(d, log)
        assert flows(samples) == flows(samples, "judged") == 40  # every flow sent is judged, once
    finally:
        proxy.close()


def test_a_server_that_accepts_and_never_answers_is_never_ready(daemons: list[Daemon]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        d = start(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        daemons.append(d)
        wait_for(lambda: d.source.reconnects >= 2, what="connection attempts that time out")
        assert http_status(f"http://{d.listen_address}/readyz") == 503
        assert "cannot connect" in d.ready()[1]
        assert value(scrape(d.listen_address), "flow_auditor_hubble_up") == 0.0
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for s in held:
            s.close()


def test_keepalive_pings_respect_relays_default_enforcement() -> None:
    options = dict(HubbleConfig(server="127.0.0.1:1").channel_options())
    assert options["grpc.keepalive_time_ms"] > 5 * 60 * 1000  # grpc-go's default minimum: 5 minutes
    assert options["grpc.keepalive_permit_without_calls"] == 0  # no pings without a call
    assert options["grpc.max_receive_message_length"] == 16 * 1024 * 1024
