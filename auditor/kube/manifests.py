"""Reading policy manifests: files, directories (as in a GitOps repository) and stdin.

Stage: the input edge of ``flow-auditor policies diff``. Output: every Kubernetes object found, with where
it came from (``file:line``), in a deterministic order (files sorted, documents in file order; ``kind: List``
and ``*List`` objects such as ``kubectl get … -o yaml`` prints are flattened).

Error policy: :class:`ManifestError` naming the file and line for unreadable files, invalid YAML and
documents that are not objects. Directories are walked recursively for ``*.yaml``, ``*.yml`` and
``*.json`` files; hidden directories (``.git``) are skipped. Objects of other kinds are returned too: the
caller counts and skips them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from auditor.kube.checks import object_ref

SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """Input that is not a stream of Kubernetes objects: ``file:line: problem``."""


@dataclass(frozen=True)
class Manifest:
    obj: dict[str, Any]
    origin: str  # file:line

    @property
    def ref(self) -> str:
        return object_ref(self.obj)


def load_documents(text: str, source: str = "<input>") -> list[Manifest]:
    """Objects of a (multi-document) YAML or JSON stream, lists flattened. Raises :class:`ManifestError`."""
    out: list[Manifest] = []
    loader = yaml.SafeLoader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            index += 1
            if node is None:
                continue
            where = f"{source}:{node.start_mark.line + 1}"
            doc = loader.construct_document(node)
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ManifestError(f"{where}: document {index}: expected a Kubernetes object (a mapping)")
            if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
                for i, item in enumerate(doc["items"]):
                    if not isinstance(item, dict):
                        raise ManifestError(f"{where}: items[{i}]: expected a Kubernetes object (a mapping)")
                    out.append(Manifest(item, f"{where} items[{i}]"))
            else:
                out.append(Manifest(doc, where))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e)
        raise ManifestError(f"{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    return out


def expand(paths: Iterable[str]) -> list[str]:
    """Files named, and the manifest files under directories named (sorted); ``-`` stays stdin."""
    out: list[str] = []
    for name in paths:
        path = Path(name)
        if name != "-" and path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix in SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            out.extend(str(p) for p in found)
        else:
            out.append(name)
    return out


def read_manifests(paths: Iterable[str], stdin: TextIO | None = None) -> tuple[list[Manifest], int]:
    """Every object in ``paths`` (files, directories, ``-`` for stdin) and the number of files read."""
    manifests: list[Manifest] = []
    files = expand(paths)
    for name in files:
        if name == "-":
            text, source = (stdin or sys.stdin).read(), "<stdin>"
        else:
            try:
                text, source = Path(name).read_text(encoding="utf-8"), name
            except OSError as e:
                raise ManifestError(f"{name}: cannot read: {e.strerror or e}") from None
            except UnicodeDecodeError:
                raise ManifestError(f"{name}: not a UTF-8 text file") from None
        manifests.extend(load_documents(text, source))
    return manifests, len(files)
