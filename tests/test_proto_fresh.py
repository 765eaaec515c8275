"""The committed ``auditor/_proto`` is exactly what ``make proto`` generates from ``proto/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from auditor import _protogen


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    _protogen.generate(tmp_path)
    committed, fresh = _tree(_protogen.OUT_DIR), _tree(tmp_path)
    assert sorted(committed) == sorted(fresh), "auditor/_proto has missing or extra files: run `make proto`"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"auditor/_proto is stale ({', '.join(stale)}): run `make proto`"


def test_generated_code_imports_as_a_package_only() -> None:
    code = (
        "import sys\n"
        "from auditor._proto.observer import observer_pb2, observer_pb2_grpc\n"
        "assert observer_pb2.GetFlowsResponse.DESCRIPTOR.fields_by_name['flow'].message_type.full_name"
        " == 'flow.Flow'\n"
        "assert 'flow' not in sys.modules and 'observer' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rewrite_imports_nests_our_packages_only() -> None:
    text = (
        "from flow import flow_pb2 as flow_dot_flow__pb2\n"
        "from google.protobuf import any_pb2\n"
        "import flow.flow_pb2\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'observer.observer_pb2', g)\n"
    )
    assert _protogen.rewrite_imports(text, ["flow", "observer"]) == (
        "from auditor._proto.flow import flow_pb2 as flow_dot_flow__pb2\n"
        "from google.protobuf import any_pb2\n"
        "import auditor._proto.flow.flow_pb2\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'auditor._proto.observer.observer_pb2', g)\n"
    )
