"""Shared fixtures: a headless Chromium from Debian's packages (as a person sees pages), the folder where
tests keep their screenshots (``build/test-output/screenshots``, to be looked at after a run), and the
daemons a test starts (stopped after it, whatever happens)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from auditor.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "test-output" / "screenshots"
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
