"""Generate ``auditor/_proto`` from the project's own ``.proto`` files (``make proto``).

Stage: build tooling, not part of the flow pipeline. Input: ``proto/**/*.proto`` (packages ``flow`` and
``observer``). Output: ``*_pb2.py``/``*_pb2.pyi`` for every file, ``*_pb2_grpc.py``/``.pyi`` for files that
declare services, and the ``__init__.py`` files, with protoc's top-level imports (``from flow import
flow_pb2``) rewritten to package imports (``from auditor._proto.flow import flow_pb2``).

Needs the ``dev`` extra (``grpcio-tools``, ``mypy-protobuf``); the generated code itself needs only
``protobuf`` and ``grpcio``. The output depends only on the ``.proto`` files and the pinned generator
versions, so ``tests/test_proto_fresh.py`` can regenerate it and compare byte for byte.

Error policy: a failing protoc run raises ``RuntimeError`` carrying protoc's exit status (protoc prints
its own diagnostics on stderr); ``main`` turns that into exit status 1.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"
PACKAGE = "auditor._proto"

INIT_TEXT = '"""Generated from proto/ by ``make proto`` (auditor._protogen). Do not edit."""\n'
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
_SERVICE_RE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)


def proto_files(proto_dir: Path = PROTO_DIR) -> list[str]:
    """The ``.proto`` files under ``proto_dir``, relative to it, in a stable order."""
    return sorted(p.relative_to(proto_dir).as_posix() for p in proto_dir.rglob("*.proto"))


def service_files(proto_dir: Path, files: list[str]) -> list[str]:
    """The subset of ``files`` that declare a gRPC service."""
    return [f for f in files if _SERVICE_RE.search((proto_dir / f).read_text(encoding="utf-8"))]


def _plugin(name: str) -> str | None:
    """Path of a protoc plugin installed beside this interpreter (the venv), else on ``PATH``."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]  # dev-only, untyped

    include = str(resources.files("grpc_tools") / "_proto")
    status = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", *args])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}: {' '.join(args)}")


def _run_protoc(work: Path, files: list[str], services: list[str]) -> None:
    mypy = _plugin("protoc-gen-mypy")
    mypy_grpc = _plugin("protoc-gen-mypy_grpc")
    if mypy and mypy_grpc:
        stubs = [f"--plugin=protoc-gen-mypy={mypy}", f"--mypy_out={work}"]
        grpc_stubs = [f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}", f"--mypy_grpc_out={work}"]
    else:
        print("mypy-protobuf not found: writing protoc's own .pyi stubs", file=sys.stderr)
        stubs, grpc_stubs = [f"--pyi_out={work}"], []
    _protoc([f"--python_out={work}", *stubs, *files])
    if services:
        _protoc([f"--grpc_python_out={work}", *grpc_stubs, *services])


def rewrite_imports(text: str, packages: list[str]) -> str:
    """Turn protoc's top-level imports and module names of our packages into ``auditor._proto`` ones."""
    names = "|".join(re.escape(p) for p in packages)
    text = re.sub(rf"^from ({names}) import ", rf"from {PACKAGE}.\1 import ", text, flags=re.MULTILINE)
    text = re.sub(rf"^import ({names})\.", rf"import {PACKAGE}.\1.", text, flags=re.MULTILINE)
    return re.sub(rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')({names})\.", rf"\1{PACKAGE}.\2.", text)


def _check_rewritten(path: Path, text: str, packages: list[str]) -> None:
    names = "|".join(re.escape(p) for p in packages)
    left = re.search(rf"^(from|import) ({names})\b", text, flags=re.MULTILINE)
    if left:
        raise RuntimeError(f"{path}: top-level import left after rewriting: {left.group(0)!r}")


def _clear(out_dir: Path) -> None:
    """Remove previously generated modules so that a deleted ``.proto`` leaves nothing behind."""
    if not out_dir.is_dir():
        return
    for path in out_dir.rglob("*"):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
            path.unlink()


def _install(work: Path, out_dir: Path, packages: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "__init__.py").write_text(INIT_TEXT, encoding="utf-8")
    for package in packages:
        (out_dir / package).mkdir(exist_ok=True)
        (out_dir / package / "__init__.py").write_text(INIT_TEXT, encoding="utf-8")
    for src in sorted(work.rglob("*")):
        if not src.is_file():
            continue
        rel = src.relative_to(work)
        text = rewrite_imports(src.read_text(encoding="utf-8"), packages)
        _check_rewritten(rel, text, packages)
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")


def generate(out_dir: Path) -> None:
    """Regenerate the Python modules for every ``proto/`` file into ``out_dir`` (created if missing)."""
    files = proto_files()
    packages = sorted({f.split("/", 1)[0] for f in files if "/" in f})
    with tempfile.TemporaryDirectory(prefix="protogen-") as tmp:
        work = Path(tmp)
        _run_protoc(work, files, service_files(PROTO_DIR, files))
        _clear(out_dir)
        _install(work, out_dir, packages)


def main() -> int:
    """Entry point of ``python -m auditor._protogen``: regenerate ``auditor/_proto`` in place."""
    try:
        generate(OUT_DIR)
    except RuntimeError as exc:
        print(f"auditor._protogen: {exc}", file=sys.stderr)
        return 1
    print(f"generated {OUT_DIR.relative_to(ROOT)} from {PROTO_DIR.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
