"""The compiled judging core (``make native``): which modules are compiled, which are loaded, pure mode.

Stage: none (packaging). The per-event hot path — the conversion half of the JSON decoder, judging,
classification, the pipeline, replay's input loop and ``--jobs`` workers, the report sink and its label
history, and on the live path the protobuf decoder and the metrics and live-page sinks — is compiled with
mypyc by ``scripts/build_native.py`` into extension modules that sit beside their sources in this package;
Python imports an extension module in preference to the ``.py`` file of the same name. The Python sources stay
the truth: the build records in :data:`MANIFEST` the sha256 of every source it compiled and of every
``auditor`` module those import (mypyc reads their types and inlines their ``Final`` constants), ``make``
rebuilds when one of them changes, and :func:`stale` names the ones that changed since. A stale build is never
run: :func:`select_build`, called by ``auditor/__init__.py``, then loads the sources instead and warns ("run
make native"); ``tests/test_native.py`` fails on it.

``FLOW_AUDITOR_PURE=1`` loads every ``auditor`` module from its ``.py`` source even when a compiled one is
present (:class:`SourceOnlyFinder`): mutation tests, debugging and comparing the two builds. Without a
build, everything is pure Python anyway.

Error policy: describing the build never raises; a missing or unreadable manifest is "not built" when no
compiled module is present, and stale when one is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any, Final

MODULES: Final = (
    "auditor.flow_record",
    "auditor.decode",
    "auditor.judge",
    "auditor.classify",
    "auditor.pipeline",
    "auditor.replay_input",
    "auditor.replay_chunk",
    "auditor.replay_parallel",
    "auditor.sinks.label_history",
    "auditor.sinks.report",
    "auditor.decode_pb",
    "auditor.decode_wire",
    "auditor.sources.resume",
    "auditor.sources.consume",
    "auditor.sinks.metrics",
    "auditor.sinks.live",
)
"""The modules ``make native`` compiles (into one group, ``auditor._native``)."""

PURE_ENV: Final = "FLOW_AUDITOR_PURE"
PACKAGE_DIR: Final = Path(__file__).resolve().parent
ROOT: Final = PACKAGE_DIR.parent
MANIFEST: Final = PACKAGE_DIR / "native_manifest.json"
"""Written by the build: ``{"compiled": {path: sha256}, "inputs": {path: sha256}}``, paths from the root."""
STALE_HINT: Final = "run make native"


def source_path(module: str) -> Path:
    """The ``.py`` file of ``module`` (a package's ``__init__.py``), whether or not it is compiled."""
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pure_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``FLOW_AUDITOR_PURE`` asks for the Python sources (``1``, ``true``, ``yes`` or ``on``)."""
    return environ.get(PURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class SourceOnlyFinder(MetaPathFinder):
    """Finds ``auditor`` submodules as ``.py`` sources only (extension modules are not looked at)."""

    def __init__(self) -> None:
        self._finders: dict[str, FileFinder] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if path is None or not fullname.startswith("auditor."):
            return None
        for entry in path:
            finder = self._finders.get(entry)
            if finder is None:
                finder = self._finders[entry] = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES))
            spec = finder.find_spec(fullname, target)
            if spec is not None and spec.loader is not None:
                return spec
        return None

    def invalidate_caches(self) -> None:
        for finder in self._finders.values():
            finder.invalidate_caches()


def install_pure_finder() -> None:
    """Put a :class:`SourceOnlyFinder` first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, SourceOnlyFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceOnlyFinder())


stale_fallback: list[str] = []
"""The changed sources when :func:`select_build` fell back to them (a stale build), else empty."""


def select_build() -> None:
    """Choose what ``auditor`` submodules load from, once, when the package is imported: the ``.py`` sources
    when ``FLOW_AUDITOR_PURE`` asks for them or when a compiled build is present but stale (with a
    warning), else whatever Python finds first (the compiled modules when built)."""
    if pure_requested():
        install_pure_finder()
        return
    if not (MANIFEST.is_file() or any(PACKAGE_DIR.glob("_native__mypyc*"))):
        return  # not built: the sources are all there is
    changed = stale()
    if changed:
        stale_fallback[:] = changed
        install_pure_finder()
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        warnings.warn(
            f"flow-auditor: the compiled core is stale ({shown} changed since the build): "
            f"running the Python sources; {STALE_HINT}",
            RuntimeWarning,
            stacklevel=2,
        )


def _origin(module: str) -> str:
    """Where ``module`` is (or would be) loaded from; ``""`` when it cannot be found."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        return getattr(loaded, "__file__", None) or ""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return ""
    return (spec.origin or "") if spec is not None else ""


def compiled() -> list[str]:
    """The modules of :data:`MODULES` this process loads (or would load) from an extension module."""
    return [m for m in MODULES if not _origin(m).endswith(".py")]


def manifest() -> dict[str, Any] | None:
    """The build's manifest, or ``None`` when there is no (readable) build."""
    try:
        data = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale(recorded: dict[str, Any] | None = None) -> list[str]:
    """The sources (paths from the root) that differ from what the build compiled, or were not built."""
    recorded = manifest() if recorded is None else recorded
    if recorded is None:
        return [str(source_path(m).relative_to(ROOT)) for m in MODULES]
    hashes = {**recorded.get("inputs", {}), **recorded.get("compiled", {})}
    wanted = {str(source_path(m).relative_to(ROOT)) for m in MODULES}
    changed = sorted(wanted - set(recorded.get("compiled", {})))
    for name, digest in sorted(hashes.items()):
        path = ROOT / name
        if not path.is_file() or sha256(path) != digest:
            changed.append(name)
    return changed


def describe() -> str:
    """One phrase for ``--version`` and the daemon's start line: ``native: 7 modules`` or ``pure Python``."""
    if stale_fallback:
        return f"pure Python: the compiled core is stale, {STALE_HINT}"
    loaded = compiled()
    if not loaded:
        return "pure Python"
    text = (
        f"native: {len(loaded)} modules"
        if len(loaded) == len(MODULES)
        else (f"native: {len(loaded)} of {len(MODULES)} modules")
    )
    if stale():
        text += f", stale ({STALE_HINT})"
    return text
