"""A pytest plugin for ``tests/test_native.py`` (``-p native_origins``): at the end of the session it writes
where every loaded ``auditor`` module came from, as JSON, to the file named by ``NATIVE_ORIGINS``."""

from __future__ import annotations

import json
import os
import sys

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("NATIVE_ORIGINS")
    if not out:
        return
    origins = {
        name: getattr(module, "__file__", None)
        for name, module in sorted(sys.modules.items())
        if name == "auditor" or name.startswith("auditor.")
    }
    with open(out, "w") as f:
        json.dump(origins, f, indent=1)
