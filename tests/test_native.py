"""The compiled judging core (``make native``, ``auditor.native``): the listed modules run compiled, the
build matches the Python sources it was made from, and those sources pass the core's tests on their own
(``FLOW_AUDITOR_PURE=1``), so that both builds are tested and neither can drift from the other."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from auditor import native

ROOT = Path(__file__).resolve().parent.parent
FLOW_AUDITOR = Path(sys.executable).parent / "flow-auditor"
# The judging core's tests: judging, classification, reply evidence, decoding, the parallel replay's
# byte-identity with one process, the resolver cache.
CORE_TESTS = [
    "tests/test_judge.py",
    "tests/test_classify.py",
    "tests/test_reply_evidence.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_decode*.py")),
    "tests/test_replay_parallel.py",
    "tests/test_resolver_cache.py",
]


def build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_native", ROOT / "scripts" / "build_native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_every_listed_module_is_loaded_from_its_extension_module() -> None:
    """In a normal run (``make test`` builds first) the core is compiled; with FLOW_AUDITOR_PURE=1, not."""
    suffix = ".py" if native.pure_requested() else ".so"
    for name in native.MODULES:
        module = importlib.import_module(name)
        assert str(module.__file__).endswith(suffix), f"{name} is {module.__file__}: run make native"
    assert native.compiled() == ([] if suffix == ".py" else list(native.MODULES))


def test_the_live_source_reads_flows_from_the_wire_exactly_when_that_reader_is_compiled() -> None:
    """Interpreted, the wire reader would be slower than protobuf's C parser: the source defers to it."""
    from auditor import decode_wire
    from auditor.sources import consume

    assert consume.WIRE_READER is decode_wire.COMPILED
    assert decode_wire.COMPILED is ("auditor.decode_wire" in native.compiled())
    assert decode_wire.COMPILED is not native.pure_requested()


def test_the_build_matches_the_sources_it_was_made_from() -> None:
    recorded = native.manifest()
    assert recorded is not None, f"no {relative(native.MANIFEST)}: run make native"
    assert sorted(recorded["compiled"]) == sorted(relative(native.source_path(m)) for m in native.MODULES), (
        "the build compiled other modules than auditor.native.MODULES: run make native"
    )
    _, others = build_script().inputs()
    assert sorted(recorded["inputs"]) == sorted(map(relative, others)), (
        "the compiled modules import other modules than when they were built: run make native"
    )
    assert native.stale(recorded) == [], "sources changed since the build: run make native"


def test_a_changed_compiled_source_or_input_makes_the_build_stale() -> None:
    recorded = native.manifest()
    assert recorded is not None, "run make native"
    for part, name in (("compiled", "auditor/judge.py"), ("inputs", "auditor/model.py")):
        changed = {**recorded, part: {**recorded[part], name: "0" * 64}}
        assert native.stale(changed) == [name]
    kept = {k: v for k, v in recorded["compiled"].items() if k != "auditor/decode.py"}
    missing = {**recorded, "compiled": kept}
    assert native.stale(missing) == ["auditor/decode.py"]


def test_a_missing_build_record_is_reported_as_stale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(native, "MANIFEST", tmp_path / "native_manifest.json")
    assert native.stale() == [relative(native.source_path(m)) for m in native.MODULES]
    if native.compiled():
        assert native.describe().endswith("stale (run make native)")


def load_judge_from(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """Import ``auditor.judge`` from the copy of the package under ``package_parent`` (first on the path)."""
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    env["PYTHONPATH"] = str(package_parent)
    code = "import auditor.judge as j, auditor.native as n; print(j.__file__); print(n.describe())"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=package_parent, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_stale_build_is_never_run_the_sources_are_with_a_warning(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "auditor", tmp_path / "auditor", ignore=shutil.ignore_patterns("__pycache__"))
    fresh = load_judge_from(tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.splitlines()[0].endswith(".so") and "stale" not in fresh.stderr  # the copy is built
    model = tmp_path / "auditor" / "model.py"  # an input, not a compiled module: its constants are inlined
    model.write_text(model.read_text() + "# changed\n")
    proc = load_judge_from(tmp_path)
    assert proc.returncode == 0, proc.stderr
    where, described = proc.stdout.splitlines()
    assert where == str(tmp_path / "auditor" / "judge.py")
    assert described == "pure Python: the compiled core is stale, run make native"
    assert "compiled core is stale (auditor/model.py changed since the build)" in proc.stderr
    assert "run make native" in proc.stderr


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
def test_version_says_whether_the_core_is_compiled(tmp_path: Path, pure: bool) -> None:
    """From another directory: the extension modules sit in the package, which the editable install maps."""
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    proc = subprocess.run(
        [str(FLOW_AUDITOR), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    expected = "(pure Python)" if pure else f"(native: {len(native.MODULES)} modules)"
    assert proc.stdout.strip().endswith(expected), proc.stdout


def test_the_python_sources_pass_the_core_tests_on_their_own(tmp_path: Path) -> None:
    """``FLOW_AUDITOR_PURE=1``: the judging core's tests pass on the ``.py`` files; nothing compiled loads."""
    origins = tmp_path / "origins.json"
    env = {
        **os.environ,
        native.PURE_ENV: "1",
        "NATIVE_ORIGINS": str(origins),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "native_origins",
            f"--basetemp={tmp_path / 'run'}",
            *CORE_TESTS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]
    loaded = json.loads(origins.read_text())
    for name in native.MODULES:
        assert str(loaded.get(name)).endswith(".py"), f"{name}: {loaded.get(name)}"
    assert [name for name, file in loaded.items() if file and not file.endswith(".py")] == []


@pytest.mark.parametrize("first", ["auditor.flow_record", "auditor.model", "auditor.decode"])
def test_the_flow_record_imports_whichever_module_comes_first(first: str) -> None:
    """auditor.model re-exports Flow from auditor.flow_record, which must not import model back at run
    time (a cycle that broke when flow_record was imported first)."""
    script = "\n".join(
        [
            f"import {first}",
            "from auditor.model import Flow",
            "import auditor.flow_record as r",
            "assert r.Flow is Flow",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
