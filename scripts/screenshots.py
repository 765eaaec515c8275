#!/usr/bin/env python3
"""Screenshots of the HTML report for the README (``make screenshots``).

Renders the bundled Airflow example with ``flow-auditor replay --format html`` and photographs it in
Debian's headless Chromium at 1280x800 (the top of the page) into ``docs/images/report.png``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "report.png"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
]


def main() -> int:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        print("screenshots: chromium not found (scripts/install-test-deps.sh installs it)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "report.html"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "auditor",
                "replay",
                "examples/airflow/flows.jsonl",
                "--matrix",
                "examples/airflow/matrix.yaml",
                "--format",
                "html",
                "--fail-on",
                "none",
                "-o",
                str(page_file),
            ],
            cwd=ROOT,
            check=True,
        )
        OUT.parent.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(page_file.as_uri())
            page.screenshot(path=str(OUT))
            browser.close()
    print(f"screenshots: wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
