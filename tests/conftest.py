"""Shared fixtures: a headless Chromium from Debian's packages (as a person sees pages), the folder where
tests keep their screenshots (``build/test-output/screenshots``, to be looked at after a run), the
daemons a test starts (stopped after it, whatever happens), test certificates made once per module, the
example's flows served by a Hubble server on loopback, and the golden files under ``tests/golden/``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from certs import TestPki, make_pki

from auditor.demo import FlowLog, HubbleServer, load_jsonl

if TYPE_CHECKING:
    from auditor.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "test-output" / "screenshots"
EXAMPLE_FLOWS = ROOT / "examples" / "airflow" / "flows.jsonl"
GOLDEN = Path(__file__).resolve().parent / "golden"
# Flags for a root user in a machine without a display bus or network beyond loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright; a missing Chromium fails the run (never a skip)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium not found: run scripts/install-test-deps.sh (make test does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Append each daemon a test starts; all are stopped when the test ends."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


@pytest.fixture
def example_log() -> FlowLog:
    """The Airflow example's flows (``examples/airflow/flows.jsonl``) as a demo server's flow log."""
    log = FlowLog()
    log.extend(load_jsonl(EXAMPLE_FLOWS))
    return log


@pytest.fixture
def example_server(example_log: FlowLog) -> Iterator[HubbleServer]:
    """A Hubble server on 127.0.0.1 (an ephemeral port) serving ``example_log``; stopped after the test."""
    srv = HubbleServer(example_log)
    srv.start()
    yield srv
    srv.stop(0)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"{name} differs from the golden file; rerun with UPDATE_GOLDEN=1 if intended"
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A test CA with server and client certificates (and untrusted ones), made once per test module."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def golden() -> Callable[[str, str], None]:
    """``golden(name, text)``: the text must equal ``tests/golden/NAME``; with ``UPDATE_GOLDEN=1`` in the
    environment the file is written instead (after an intended change)."""
    return _check_golden
