"""``matrix learn --server``: learning from a live Hubble stream (the embedded demo server on loopback).

The learner runs as a real process against a real gRPC server serving the Airflow example: with mTLS for
a fixed ``--duration``, and without TLS until Ctrl-C (SIGINT), after which it still writes what it learned
— the same matrix as learning from the recorded file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from certs import TestPki, make_pki

from auditor.demo import FlowLog, HubbleServer, ServerTls, load_jsonl
from auditor.learn.build import Options
from auditor.learn.run import learn_files

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "examples" / "airflow" / "flows.jsonl"
SINCE = "2020-01-01T00:00:00Z"  # the whole buffer: the example's flows are older than the test


def learn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "auditor", "matrix", "learn", *args]


def body(text: str) -> object:
    """The matrix without its header comment (event counts differ: live streams add no lost events)."""
    doc = yaml.safe_load(text)
    return (doc["components"], doc["allow"], doc["scope"])


@pytest.fixture
def log() -> FlowLog:
    log = FlowLog()
    log.extend(load_jsonl(FLOWS))
    return log


@pytest.fixture
def file_learned() -> str:
    from auditor.learn.run import text_of

    return text_of(learn_files([str(FLOWS)], Options()))


@pytest.fixture
def plain_server(log: FlowLog) -> Iterator[HubbleServer]:
    srv = HubbleServer(log)
    srv.start()
    yield srv
    srv.stop(0)


def test_mtls_stream_for_a_duration_then_the_matrix_is_written(
    tmp_path: Path, log: FlowLog, file_learned: str
) -> None:
    pki: TestPki = make_pki(tmp_path / "pki")
    srv = HubbleServer(log, tls=ServerTls(pki.server_cert, pki.server_key, pki.ca_cert))
    srv.start()
    out = tmp_path / "learned.yaml"
    try:
        proc = subprocess.run(
            learn_cmd(
                "--server",
                srv.address,
                "--since",
                SINCE,
                "--duration",
                "3s",
                "-o",
                str(out),
                "--tls-ca-cert-files",
                str(pki.ca_cert),
                "--tls-client-cert-file",
                str(pki.client_cert),
                "--tls-client-key-file",
                str(pki.client_key),
                "--tls-server-name",
                pki.server_name,
            ),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    finally:
        srv.stop(0)
    assert proc.returncode == 0, proc.stderr
    assert f"learn: connected to {srv.address}" in proc.stderr
    assert "learn: following" in proc.stderr
    assert body(out.read_text()) == body(file_learned)


def test_ctrl_c_stops_and_still_writes_what_was_learned(
    tmp_path: Path, plain_server: HubbleServer, file_learned: str
) -> None:
    out = tmp_path / "learned.yaml"
    events = sum(1 for _ in FLOWS.open("rb")) - 1  # every record but the lost-events one is a flow
    proc = subprocess.Popen(
        learn_cmd("--server", plain_server.address, "--since", SINCE, "--duration", "10m", "-o", str(out)),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # progress lines, one every few seconds
            seen.append(line)
            if f", {events} events," in line:
                break
            assert time.monotonic() < deadline, seen
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "learn: interrupted; writing what was learned" in rest
    assert body(out.read_text()) == body(file_learned)
