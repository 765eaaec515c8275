#!/usr/bin/env python3
"""Compile the judging core with mypyc (``make native``): extension modules beside their sources.

The modules are :data:`auditor.native.MODULES`, compiled into one group (``auditor._native``, so that calls
between them stay native) with ``-O3``; C files and objects go to ``build/native/``, every shared library
lands inside the ``auditor`` package (``build_ext --inplace``), where the editable install finds it from
any directory. The build then writes ``auditor/native_manifest.json``: the sha256 of every compiled source
and of every ``auditor`` module they import (mypyc reads those modules' types and inlines their ``Final``
constants), which ``auditor.native.stale`` and ``tests/test_native.py`` compare with the sources.

``--sources`` prints those files (paths from the root) without building: the Makefile's prerequisites.
Run from anywhere with the project's virtual environment: ``.venv/bin/python scripts/build_native.py``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "native"
GROUP = "auditor._native"


def _native_module() -> ModuleType:
    """``auditor/native.py`` loaded on its own (no ``auditor`` import: this runs before any build)."""
    spec = importlib.util.spec_from_file_location("_auditor_native", ROOT / "auditor" / "native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


native = _native_module()


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(module: str) -> set[str]:
    """The ``auditor`` modules (and packages) that ``module`` imports, statically."""
    path = native.source_path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__ runs on the way to its submodules
                candidate = ".".join(parts[:i])
                if candidate.startswith("auditor") and _exists(candidate):
                    found.add(candidate)
    return found


def _exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return (base / "__init__.py").is_file() or base.with_suffix(".py").is_file()


def inputs() -> tuple[list[Path], list[Path]]:
    """The compiled sources, and every other ``auditor`` source they import (transitively)."""
    compiled = [native.source_path(m) for m in native.MODULES]
    seen: set[str] = set()
    todo = list(native.MODULES)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_imports(module) - seen)
    others = sorted({native.source_path(m) for m in seen} - set(compiled))
    return compiled, others


def build(compiled: list[Path]) -> None:
    from mypyc.build import mypycify  # the project's mypy pin ships mypyc
    from setuptools import Distribution  # type: ignore[import-untyped]

    os.chdir(ROOT)
    sources = [str(p.relative_to(ROOT)) for p in compiled]
    extensions = mypycify(
        ["--cache-dir", str(BUILD / "mypy-cache"), *sources],
        group_name=GROUP,
        opt_level="3",
        target_dir=str(BUILD),
    )
    dist = Distribution({"name": "flow-auditor-native", "ext_modules": extensions})
    dist.script_args = ["build_ext", "--inplace", "--build-temp", str(BUILD / "temp"), "--quiet"]
    dist.parse_command_line()
    dist.run_commands()


def write_manifest(compiled: list[Path], others: list[Path]) -> None:
    def table(paths: list[Path]) -> dict[str, str]:
        return {str(p.relative_to(ROOT)): native.sha256(p) for p in paths}

    manifest = {"group": GROUP, "compiled": table(compiled), "inputs": table(others)}
    native.MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", action="store_true", help="print the build's input files and exit")
    args = parser.parse_args()
    compiled, others = inputs()
    if args.sources:
        print(" ".join(str(p.relative_to(ROOT)) for p in (*compiled, *others)))
        return 0
    started = time.monotonic()
    native.MANIFEST.unlink(missing_ok=True)  # a failed build leaves no manifest: the tests say "not built"
    build(compiled)
    write_manifest(compiled, others)
    print(f"native: {len(compiled)} modules compiled in {time.monotonic() - started:.0f} s ({GROUP})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
