"""``matrix learn --server``: learning from a live Hubble stream (the embedded demo server on loopback).

The learner runs as a real process against a real gRPC server serving the Airflow example: over mTLS until
Ctrl-C (SIGINT, sent once its progress shows every event), after which it still writes what it learned —
the same matrix as learning from the recorded file; and for a fixed ``--duration``, also when the server
cannot be reached. Nothing waits on a sleep: the test watches the progress lines, within a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from certs import TestPki, make_pki
from daemon_helpers import run_cli

from auditor.demo import FlowLog, HubbleServer, ServerTls
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
def file_learned() -> str:
    from auditor.learn.run import text_of

    return text_of(learn_files([str(FLOWS)], Options()))


def run_until_everything_is_learned(args: list[str], events: int) -> tuple[int, str]:
    """Start ``matrix learn`` live, wait (bounded) for a progress line counting ``events``, then Ctrl-C."""
    proc = subprocess.Popen(
        learn_cmd(*args),
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
    return proc.returncode, "".join(seen) + rest


EVENTS = sum(1 for _ in FLOWS.open("rb")) - 1  # every record but the lost-events one is a flow


def test_mtls_stream_then_ctrl_c_writes_the_same_matrix_as_the_recorded_file(
    tmp_path: Path, example_log: FlowLog, file_learned: str
) -> None:
    pki: TestPki = make_pki(tmp_path / "pki")
    srv = HubbleServer(example_log, tls=ServerTls(pki.server_cert, pki.server_key, pki.ca_cert))
    srv.start()
    out = tmp_path / "learned.yaml"
    tls = [
        "--tls-ca-cert-files", str(pki.ca_cert),
        "--tls-client-cert-file", str(pki.client_cert),
        "--tls-client-key-file", str(pki.client_key),
        "--tls-server-name", pki.server_name,
    ]  # fmt: skip
    try:
        args = ["--server", srv.address, "--since", SINCE, "--duration", "10m", "-o", str(out), *tls]
        code, stderr = run_until_everything_is_learned(args, EVENTS)
    finally:
        srv.stop(0)
    assert code == 0, stderr
    assert f"learn: connected to {srv.address}" in stderr
    assert "learn: interrupted; writing what was learned" in stderr
    assert body(out.read_text()) == body(file_learned)


def test_the_duration_ends_learning_and_the_matrix_is_written(
    tmp_path: Path, example_server: HubbleServer
) -> None:
    out = tmp_path / "learned.yaml"
    args = ("--server", example_server.address, "--since", SINCE, "--duration", "1s", "-o", str(out))
    proc = run_cli("matrix", "learn", *args)
    assert proc.returncode == 0, proc.stderr
    assert "learn: following" in proc.stderr
    assert "interrupted" not in proc.stderr
    assert out.read_text().startswith("# Learned by flow-auditor matrix learn from ")


def test_an_unreachable_server_still_ends_with_the_duration(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    out = tmp_path / "learned.yaml"
    args = ("--server", f"127.0.0.1:{port}", "--duration", "1s", "--timeout", "500ms", "-o", str(out))
    proc = run_cli("matrix", "learn", *args)
    assert proc.returncode == 0, proc.stderr
    assert "no rule learned" in proc.stderr
