"""The receiver process (``--receiver process``, :mod:`auditor.sources.receiver`) against real gRPC servers
on 127.0.0.1: what the parent iterates is what the call delivered (messages, order, end, status code and
details), a quiet stream is not held back by batching, a daemon that stops reading holds the server back
(memory stays bounded), a killed receiver is replaced and nothing is counted twice, and no receiver
process outlives its daemon — stopped, stuck or with its parent killed.

Every process is looked at and stopped by its PID (``/proc``); every wait is bounded and ends on something
observed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import TestPki
from daemon_helpers import (
    FLOW_EVENTS,
    MATRIX,
    MS,
    count_through_sentinel,
    dropped_flow,
    failing_server,
    free_port,
    received,
    scrape,
    start_daemon,
    total,
    value,
    wait_for,
)

from auditor._proto.observer import observer_pb2
from auditor.cli import build_parser
from auditor.commands.common import hubble_config
from auditor.daemon import Daemon
from auditor.demo import FlowLog, HubbleServer, ServerTls
from auditor.sources.hubble import GET_FLOWS, HubbleConfig
from auditor.sources.receiver import BATCH_BYTES, BATCH_MESSAGES, ReceiverError, ReceiverProcess


def flows(n: int, prefix: str = "f", node: str = "node-1") -> list[observer_pb2.GetFlowsResponse]:
    now = time.time_ns()
    return [dropped_flow(f"{prefix}-{i}", node, now + i * MS) for i in range(n)]


def judged(d: Daemon) -> float:
    """Flows counted by the daemon so far (every outcome)."""
    return total(scrape(d.listen_address), "flow_auditor_flows_total")


class Direct:
    """GetFlows on channels of this process, as the thread receiver opens it (raw responses); the
    channels live until the test ends."""

    def __init__(self) -> None:
        self.channels: list[grpc.Channel] = []

    def __call__(self, address: str, request: observer_pb2.GetFlowsRequest) -> grpc.Call:
        channel = grpc.insecure_channel(address, options=HubbleConfig(server=address).channel_options())
        self.channels.append(channel)
        serialize = observer_pb2.GetFlowsRequest.SerializeToString
        return channel.unary_stream(GET_FLOWS, request_serializer=serialize)(request)


@pytest.fixture
def direct_call() -> Iterator[Direct]:
    direct = Direct()
    yield direct
    for channel in direct.channels:
        channel.close()


def gone(pid: int) -> bool:
    """The process has exited and was reaped (no zombie left)."""
    return not Path(f"/proc/{pid}").exists()


def exited(pid: int) -> bool:
    """The process has exited (reaped, or a zombie of a parent that is not ours)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def children(pid: int) -> list[int]:
    """PIDs of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def receiver_of() -> Iterator[list[ReceiverProcess]]:
    """Receiver processes a test starts; closed after it, whatever happens."""
    started: list[ReceiverProcess] = []
    yield started
    for r in started:
        r.close()


# -- the call, as the parent sees it ---------------------------------------------------------------------


def test_messages_arrive_whole_in_order_and_the_end_of_the_stream_ends_the_iteration(
    receiver_of: list[ReceiverProcess], direct_call: Direct
) -> None:
    log = FlowLog()
    log.extend(flows(3 * BATCH_MESSAGES + 5))
    log.append_raw(b"\x0a" + b"\xee" * (BATCH_BYTES + 10))  # above the byte bound: a batch of its own
    log.extend(flows(7, prefix="after"))
    with HubbleServer(log) as srv:
        request = observer_pb2.GetFlowsRequest(number=10_000)  # the backlog, then the end (no follow)
        expected = list(direct_call(srv.address, request))
        r = ReceiverProcess(HubbleConfig(server=srv.address))
        receiver_of.append(r)
        assert r.start() and r.start()  # started and ready before the stream (as the benchmarks do)
        got = list(r.open(request))
    assert len(expected) == 3 * BATCH_MESSAGES + 13
    assert got == expected
    assert r.started == 1


def test_a_grpc_error_reaches_the_parent_with_its_code_and_details(
    receiver_of: list[ReceiverProcess], direct_call: Direct
) -> None:
    server, address = failing_server()
    try:
        with pytest.raises(grpc.RpcError) as direct:
            list(direct_call(address, observer_pb2.GetFlowsRequest(follow=True)))
        r = ReceiverProcess(HubbleConfig(server=address))
        receiver_of.append(r)
        with pytest.raises(ReceiverError) as proxied:
            list(r.open(observer_pb2.GetFlowsRequest(follow=True)))
    finally:
        server.stop(None)
    assert proxied.value.code() is direct.value.code() is grpc.StatusCode.UNAVAILABLE
    assert proxied.value.details() == direct.value.details() == "no connection to any Hubble node"


def test_a_cancelled_call_raises_cancelled_and_the_process_serves_the_next_stream(
    receiver_of: list[ReceiverProcess], direct_call: Direct
) -> None:
    log = FlowLog()
    log.extend(flows(3))
    with HubbleServer(log) as srv:
        request = observer_pb2.GetFlowsRequest(number=100, follow=True)
        direct = direct_call(srv.address, request)
        r = ReceiverProcess(HubbleConfig(server=srv.address))
        receiver_of.append(r)
        call = r.open(request)
        results = []
        for c in (direct, call):
            messages = iter(c)
            first = next(messages)
            c.cancel()
            with pytest.raises(grpc.RpcError) as cancelled:
                list(messages)
            results.append((first, cancelled.value.code(), cancelled.value.details()))
        assert results[1] == results[0]
        assert results[1][1] is grpc.StatusCode.CANCELLED
        pid = r.pid
        again = iter(r.open(request))
        _, entries = log.snapshot()
        assert [next(again) for _ in range(3)] == [e.data for e in entries]
        assert r.pid == pid and r.started == 1  # the same process, reused


# -- the daemon with a receiver process ---------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[HubbleServer]:
    srv = HubbleServer(FlowLog())
    srv.start()
    yield srv
    srv.stop(None)


def process_daemon(server: HubbleServer, daemons: list[Daemon]) -> tuple[Daemon, ReceiverProcess]:
    """A daemon following ``server`` with the receiver process (stopped by the fixture), and its receiver."""
    d = start_daemon(server.address, receiver="process")
    daemons.append(d)
    receiver = d.source.receiver
    assert receiver is not None
    return d, receiver


def test_a_quiet_stream_delivers_a_single_flow_at_once(server: HubbleServer, daemons: list[Daemon]) -> None:
    d, _ = process_daemon(server, daemons)
    wait_for(lambda: d.source.connected, what="the stream")
    server.log.append(dropped_flow("alone", "node-1", time.time_ns()))
    wait_for(lambda: judged(d) == 1, timeout=5, what="one flow, without 255 more to fill a batch")


def test_a_killed_receiver_is_replaced_the_stream_resumes_and_every_flow_counts_once(
    server: HubbleServer, daemons: list[Daemon]
) -> None:
    d, receiver = process_daemon(server, daemons)
    server.log.extend(flows(2000, "before"))
    wait_for(lambda: d.source.received > 0, what="the first flows")
    first = receiver.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)  # while the backlog streams
    wait_for(lambda: receiver.started == 2 and d.source.connected, what="a new receiver process")
    assert receiver.pid != first and gone(first)
    assert d.source.last_reason == "UNAVAILABLE: receiver process exited (signal 9)"
    server.log.extend(flows(30, "after"))
    samples = count_through_sentinel(d, server.log)
    assert received(samples) == 2000 + 30 + 1  # the sentinel included: nothing lost, nothing twice
    assert value(samples, "flow_auditor_hubble_resent_events_skipped_total") > 0


def test_a_scope_change_reopens_the_stream_in_the_same_receiver_process(
    server: HubbleServer, daemons: list[Daemon]
) -> None:
    d, receiver = process_daemon(server, daemons)
    server.log.extend(flows(50, "before"))
    wait_for(lambda: judged(d) == 50, what="the first flows")
    pid = receiver.pid
    d.source.set_namespaces(("airflow",))
    wait_for(lambda: d.source.reconnects == 1 and d.source.connected, what="the re-opened stream")
    assert d.source.last_reason == "re-opened"
    assert len(d.source.requests[-1].whitelist) == 4  # asked for the new scope
    assert receiver.pid == pid and receiver.started == 1
    server.log.extend(flows(20, "after"))
    samples = count_through_sentinel(d, server.log)
    assert received(samples) == 50 + 20 + 1


def test_stopping_the_daemon_leaves_no_receiver_process(server: HubbleServer, daemons: list[Daemon]) -> None:
    d, receiver = process_daemon(server, daemons)
    wait_for(lambda: d.source.connected and receiver.pid is not None, what="the stream")
    pid = receiver.pid
    assert pid is not None and not gone(pid)
    d.stop()
    assert gone(pid)  # exited and reaped, within stop()


def test_a_receiver_that_does_not_exit_when_asked_is_killed_by_its_pid(
    server: HubbleServer, receiver_of: list[ReceiverProcess]
) -> None:
    r = ReceiverProcess(HubbleConfig(server=server.address), stop_timeout=0.5)
    receiver_of.append(r)
    server.log.extend(flows(1))
    messages = iter(r.open(observer_pb2.GetFlowsRequest(number=10, follow=True)))
    next(messages)
    pid = r.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # cannot read its pipe: only SIGKILL ends it
    r.close()
    assert gone(pid)
    with pytest.raises(ReceiverError) as ended:
        list(messages)
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ended.value.details() == "receiver process exited (signal 9)"
    with pytest.raises(ReceiverError) as closed:
        list(r.open(observer_pb2.GetFlowsRequest(follow=True)))
    assert closed.value.code() is grpc.StatusCode.CANCELLED and r.started == 1  # no new process


def test_mtls_in_the_receiver_process(pki: TestPki, daemons: list[Daemon]) -> None:
    log = FlowLog()
    srv = HubbleServer(log, tls=ServerTls(pki.server_cert, pki.server_key, pki.ca_cert))
    srv.start()
    try:
        d = start_daemon(srv.address, receiver="process", **pki.mtls())
        daemons.append(d)
        log.extend(flows(40))
        samples = count_through_sentinel(d, log)
        assert received(samples) == 40 + 1
        assert d.source.receiver is not None and d.source.receiver.started == 1
    finally:
        srv.stop(None)


def test_each_stream_reads_the_certificate_files_again(
    pki: TestPki, tmp_path: Path, receiver_of: list[ReceiverProcess]
) -> None:
    log = FlowLog()
    log.extend(flows(3))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.client_cert, cert)
    shutil.copy(pki.client_key, key)
    config = HubbleConfig(
        server="",
        tls=True,
        tls_ca_cert_files=(str(pki.ca_cert),),
        tls_server_name=pki.server_name,
        tls_client_cert_file=str(cert),
        tls_client_key_file=str(key),
    )
    srv = HubbleServer(log, tls=ServerTls(pki.server_cert, pki.server_key, pki.ca_cert))
    srv.start()
    try:
        r = ReceiverProcess(dataclasses.replace(config, server=srv.address))
        receiver_of.append(r)
        request = observer_pb2.GetFlowsRequest(number=10)
        assert len(list(r.open(request))) == 3
        shutil.copy(pki.untrusted_client_cert, cert)  # rotated to a certificate the server refuses
        shutil.copy(pki.untrusted_client_key, key)
        with pytest.raises(ReceiverError) as refused:
            list(r.open(request))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        shutil.copy(pki.client_cert, cert)
        shutil.copy(pki.client_key, key)
        assert len(list(r.open(request))) == 3
        assert r.started == 1  # one process, three channels
    finally:
        srv.stop(None)


# -- the command line ---------------------------------------------------------------------------------------


def test_the_receiver_option_and_its_environment_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    def receiver(*args: str) -> str:
        parsed = build_parser().parse_args(["run", "--matrix", str(MATRIX), *args])
        return hubble_config(parsed).receiver

    assert receiver() == "thread"
    assert receiver("--receiver", "process") == "process"
    monkeypatch.setenv("FLOW_AUDITOR_RECEIVER", "process")
    assert receiver() == "process"
    assert receiver("--receiver", "thread") == "thread"  # the command line wins


def test_a_killed_daemon_takes_its_receiver_process_with_it(
    example_server: HubbleServer, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "auditor", "run", "--server", example_server.address]
    command += ["--matrix", str(MATRIX), "--since", "2000-01-01T00:00:00Z", "--listen-address", address]
    command += ["--receiver", "process", "--no-server-side-filter", "--log-format", "json"]
    log = tmp_path / "daemon.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: _counted(address) >= FLOW_EVENTS, what="every flow, through the receiver process")
        kids = children(proc.pid)
        assert len(kids) == 1, kids  # the receiver, and no other helper process
        os.kill(proc.pid, signal.SIGKILL)  # no stop(): the receiver sees its command pipe close
        proc.wait(timeout=10)
        wait_for(lambda: exited(kids[0]), timeout=10, what="the orphaned receiver process to exit")
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert [e["receiver"] for e in lines if e["event"] == "flow-auditor started"] == ["process"]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _counted(address: str) -> float:
    try:
        return received(scrape(address))
    except OSError:
        return 0.0


# -- back-pressure -----------------------------------------------------------------------------------------


class CountingServer:
    """GetFlows streaming ``total`` messages of ``size`` bytes as fast as the client takes them, counting
    what gRPC has taken from it so far (``yielded``)."""

    def __init__(self, total: int, size: int) -> None:
        self.yielded = 0
        payload = b"\x0a" + b"\x00" * (size - 1)

        def get_flows(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            for _ in range(total):
                self.yielded += 1
                yield payload

        from concurrent import futures

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            "observer.Observer", {"GetFlows": grpc.unary_stream_rpc_method_handler(get_flows)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


def _taken_by_a_stalled_daemon(total: int, size: int, extra_options: tuple[tuple[str, Any], ...]) -> int:
    """Offer ``total`` messages of ``size`` bytes, read one and fall silent; once the server's count has
    stood still for a second, return it, after checking that every message taken reaches the daemon."""
    server = CountingServer(total, size)
    r = ReceiverProcess(HubbleConfig(server=server.address, extra_options=extra_options))
    try:
        messages = iter(r.open(observer_pb2.GetFlowsRequest(follow=True)))
        next(messages)  # then the daemon falls silent
        seen: list[int] = []

        def settled() -> bool:  # the same count over the last second: the server is held back
            seen.append(server.yielded)
            return len(seen) > 20 and seen[-1] == seen[-21]

        wait_for(settled, timeout=20, what="the server to be held back")
        taken = server.yielded
        assert sum(1 for _ in itertools.islice(messages, taken - 1)) == taken - 1  # none was lost
        return taken
    finally:
        r.close()
        server.server.stop(None)


def test_a_daemon_that_stops_reading_holds_the_server_back_by_our_own_buffers() -> None:
    # gRPC's window fixed (no bandwidth-delay probing): what waits is ours — a batch in the daemon's hands,
    # one in the pipe, one being sent, one filling — plus that window and a message in hand on each side.
    size = 64 * 1024
    ours = 4 * BATCH_BYTES // size
    taken = _taken_by_a_stalled_daemon(2000, size, (("grpc.http2.bdp_probe", 0),))
    assert taken <= ours + 8, (taken, ours)  # ≈ 34-49 seen; without back-pressure all 2,000 (128 MiB)


def test_a_daemon_that_stops_reading_holds_the_server_back_with_the_daemons_options() -> None:
    # The daemon's own channel options: gRPC grows its window with the bandwidth-delay product it measures
    # and the kernel's socket buffers grow up to tcp_rmem/tcp_wmem, so more waits (7-26 MiB seen on
    # loopback), and it is still bounded: the server stands still long before its 256 MiB are taken.
    total, size = 4000, 64 * 1024
    taken = _taken_by_a_stalled_daemon(total, size, ())
    assert taken < total // 2, taken
