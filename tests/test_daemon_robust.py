"""Nothing stops the daemon for good: hostile matrix edits, exceptions in the pipeline, signal storms.

A real gRPC server on 127.0.0.1 and, for signals, a real daemon process stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import (
    FLOW_EVENTS,
    MATRIX,
    SENTINEL,
    count_through_sentinel,
    free_port,
    http_status,
    received,
    scrape,
    start_daemon,
    value,
    wait_for,
)

from auditor.classify import Judgement
from auditor.daemon import Daemon, DaemonConfig
from auditor.demo import HubbleServer
from auditor.pipeline import QuietSink
from auditor.sources.hubble import HubbleConfig


def start(address: str, matrix: Path = MATRIX, *sinks: object) -> Daemon:
    return start_daemon(address, matrix, options={"extra_sinks": sinks})


def reloads(d: Daemon, result: str) -> float:
    return value(scrape(d.listen_address), "flow_auditor_matrix_reloads_total", result=result)


# -- hostile matrix edits --------------------------------------------------------------------------------


def test_matrix_edits_that_raise_anything_keep_the_old_matrix_and_later_ones_load(
    example_server: HubbleServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    matrix = tmp_path / "matrix.yaml"
    good = MATRIX.read_text()
    matrix.write_text(good)
    d = start(example_server.address, matrix)
    daemons.append(d)
    wait_for(lambda: received(scrape(d.listen_address)) >= FLOW_EVENTS, what="all flows")
    hostile = [
        good + "\nextra: " + "[" * 5000 + "]" * 5000 + "\n",  # 5,000-deep YAML: RecursionError
        good.replace("ports: [8080]", "ports: [" + "1" * 5000 + "]", 1),  # a 5,000-digit port: ValueError
    ]
    for n, text in enumerate(hostile, start=1):
        matrix.write_text(text)
        wait_for(lambda n=n: reloads(d, "error") == n, what=f"hostile matrix {n} counted")  # type: ignore[misc]
    assert len(d.matrix.rules) == 13
    fewer = "\n".join(line for line in good.splitlines() if "Redis exporter" not in line)
    matrix.write_text(fewer)
    wait_for(lambda: reloads(d, "success") == 1, what="the next valid matrix")
    assert len(d.matrix.rules) == 12
    assert d.healthy() == (True, "ok")
    assert http_status(f"http://{d.listen_address}/healthz") == 200


def test_a_matrix_caught_half_written_counts_only_when_it_stays_broken(tmp_path: Path) -> None:
    # An editor or `cp` writes the watched file in place: a check may read it empty or cut. That is no
    # failure yet (no FlowAuditorMatrixReloadFailed for a file that is fine a moment later); the same
    # content failing at the next check is. A forced reload (SIGHUP) says at once.
    matrix = tmp_path / "matrix.yaml"
    good = MATRIX.read_text()
    matrix.write_text(good)
    d = Daemon(
        DaemonConfig(
            matrix=str(matrix), hubble=HubbleConfig(server="127.0.0.1:9"), listen_address="127.0.0.1:0"
        )
    )

    def failures() -> float | None:
        return d.registry.get_sample_value("flow_auditor_matrix_reloads_total", {"result": "error"})

    fewer = "\n".join(line for line in good.splitlines() if "Redis exporter" not in line)
    matrix.write_text(fewer[: len(fewer) // 3])  # caught half-way
    assert d.check_reload() is None and failures() == 0
    matrix.write_text(fewer)  # finished
    assert d.check_reload() is True and failures() == 0 and len(d.matrix.rules) == 12
    broken = good.replace("to: webserver, ports: [8080]", "to: websrv, ports: [8080]", 1)
    matrix.write_text(broken)
    assert d.check_reload() is None and failures() == 0
    assert d.check_reload() is False and failures() == 1  # the same content again: broken indeed
    assert d.check_reload() is None and failures() == 1  # and said once
    matrix.write_text(broken + "\n# still broken\n")
    assert d.check_reload(forced=True) is False and failures() == 2
    assert len(d.matrix.rules) == 12


# -- exceptions in the pipeline ------------------------------------------------------------------------------


class Raises(QuietSink):
    """A sink that raises ``error`` on the judgement of the ``nth`` judged flow."""

    def __init__(self, error: BaseException, nth: int = 5) -> None:
        self.error = error
        self.nth = nth
        self.judged = 0

    def on_judgement(self, judgement: Judgement) -> None:
        self.judged += 1
        if self.judged == self.nth:
            raise self.error


def test_an_exception_on_one_event_counts_it_invalid_and_the_stream_goes_on(
    example_server: HubbleServer, daemons: list[Daemon]
) -> None:
    d = start(example_server.address, MATRIX, Raises(RuntimeError("a bug on one event")))
    daemons.append(d)
    samples = count_through_sentinel(d, example_server.log)
    # The event already reached the metrics sink before the failing one: counted judged, and invalid once.
    assert value(samples, "flow_auditor_flows_total", outcome="invalid") == 1
    assert received(samples) == FLOW_EVENTS + 1 + SENTINEL
    assert value(samples, "flow_auditor_hubble_reconnects_total") == 0
    assert d.healthy() == (True, "ok")


def test_an_unexpected_error_around_the_stream_is_retried_not_fatal(daemons: list[Daemon]) -> None:
    config = DaemonConfig(
        matrix=str(MATRIX),
        hubble=HubbleConfig(
            server="127.0.0.1:1",
            backoff_initial=0.05,
            backoff_max=0.1,
            extra_options=(("grpc.enable_http_proxy", object()),),  # the channel constructor raises
        ),
        listen_address="127.0.0.1:0",
    )
    d = Daemon(config)
    d.start()
    daemons.append(d)
    reconnects = "flow_auditor_hubble_reconnects_total"
    wait_for(lambda: value(scrape(d.listen_address), reconnects) >= 3, what="retries after internal errors")
    assert d.source.errors >= 3
    assert d.healthy() == (True, "ok")
    ok, why = d.ready()
    assert not ok and "internal error: TypeError" in why


class Fatal(BaseException):
    """Something no ``except Exception`` catches."""


def test_a_worker_thread_that_dies_anyway_fails_healthz_with_the_reason(
    example_server: HubbleServer, daemons: list[Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    d = start(example_server.address, MATRIX, Raises(Fatal("the end of the stream thread")))
    daemons.append(d)
    url = f"http://{d.listen_address}/healthz"
    wait_for(lambda: http_status(url) == 503, what="healthz to fail")
    ok, why = d.healthy()
    assert not ok and "stream" in why and "Fatal: the end of the stream thread" in why
    assert "worker thread died" in capsys.readouterr().out


# -- signal storms -------------------------------------------------------------------------------------------


def test_a_sighup_storm_with_matrix_writes_neither_kills_nor_hangs_the_daemon(
    example_server: HubbleServer, tmp_path: Path
) -> None:
    matrix = tmp_path / "matrix.yaml"
    good = MATRIX.read_text()
    fewer = "\n".join(line for line in good.splitlines() if "Redis exporter" not in line)
    matrix.write_text(good)
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auditor",
            "run",
            "--server",
            example_server.address,
            "--matrix",
            str(matrix),
            "--since",
            "2000-01-01T00:00:00Z",
            "--reload-interval",
            "60s",
            "--log-format",
            "json",
            "--listen-address",
            address,
            "--no-server-side-filter",  # every flow, out-of-scope ones included, is counted below
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _up(address), what="the daemon's HTTP server")
        wait_for(lambda: received(scrape(address)) >= FLOW_EVENTS, what="all flows")
        for storm in range(3):  # three storms of 2,500 SIGHUPs, the matrix rewritten every 100
            for i in range(2500):
                os.kill(proc.pid, signal.SIGHUP)
                if i % 100 == 99:
                    matrix.write_text(fewer if (i // 100) % 2 == 0 else good)
            assert proc.poll() is None, f"the daemon died in storm {storm + 1}"
        final = fewer  # i = 2499: (2499 // 100) % 2 == 0
        os.kill(proc.pid, signal.SIGHUP)  # one more: the final content is read whatever was coalesced
        wait_for(lambda: value(scrape(address), "flow_auditor_matrix_rules") == 12, what="the last matrix")
        assert final.count("from:") == 12
        assert http_status(f"http://{address}/healthz") == 200
        samples = scrape(address)
        assert value(samples, "flow_auditor_matrix_reloads_total", result="success") >= 1
        assert received(samples) == FLOW_EVENTS  # the stream was not disturbed
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert proc.stderr is not None
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        events = [entry["event"] for entry in logs]
        assert "flow-auditor stopped" in events and "worker thread died" not in events
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _up(address: str) -> bool:
    try:
        return http_status(f"http://{address}/healthz") == 200
    except OSError:
        return False
