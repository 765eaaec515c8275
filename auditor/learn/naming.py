"""Short, unique, readable component names for ``matrix learn``.

Stage: learning, pure. Input: one :class:`Request` per component to name — its candidate base names in order
of preference (a naming label such as ``app.kubernetes.io/name``, the workload's name without the namespace
prefix and run suffixes, …) and its namespace. Output: a name per request that is a valid matrix component
name (lowercase letters, digits and ``-``; also a valid Kubernetes object name part), at most
:data:`MAX_LEN` characters, unique, and none of the names the matrix reserves (entities and fallback names).

Rules, deterministic for a given set of requests: every request takes its first candidate; requests of one
namespace that share a name take their next candidate where they have one; names still shared across
namespaces get the namespace in front (``monitoring-prometheus``); anything still shared gets a number.

Error policy: none needed; a name that sanitizes to nothing becomes ``component``.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from auditor.matrix import ENTITIES

MAX_LEN: Final = 40
RESERVED: Final = frozenset({*ENTITIES, "unknown", "other", "world-ipv4", "world-ipv6"})
NAMING_LABELS: Final = (
    "app.kubernetes.io/name",
    "app",
    "k8s-app",
    "component",
    "app.kubernetes.io/component",
    "name",
    "run",
)
_BAD: Final = re.compile(r"[^a-z0-9-]+")
_DASHES: Final = re.compile(r"-{2,}")
_RUN_SUFFIX: Final = re.compile(r"-\d{6,}$")  # a CronJob's Job: <cronjob>-<minutes since epoch>


@dataclass(frozen=True)
class Request:
    key: object
    candidates: tuple[str, ...]
    namespace: str = ""


def sanitize(text: str) -> str:
    """A valid name from any text (lowercase, ``[a-z0-9-]``, no leading/trailing ``-``, short)."""
    name = _DASHES.sub("-", _BAD.sub("-", text.lower())).strip("-")
    if len(name) > MAX_LEN:
        digest = hashlib.sha256(name.encode()).hexdigest()[:6]
        name = name[: MAX_LEN - 7].rstrip("-") + "-" + digest
    return name or "component"


def workload_base(name: str, namespace: str) -> str:
    """A workload's name without the namespace prefix (``airflow-webserver`` in ``airflow``) and run
    suffix."""
    name = _RUN_SUFFIX.sub("", name)
    prefix = namespace + "-"
    if namespace and name.startswith(prefix) and len(name) > len(prefix):
        name = name[len(prefix) :]
    return name


def pod_candidates(
    labels: dict[str, str], workload: tuple[str, str] | None, namespace: str
) -> tuple[str, ...]:
    """Base names for a pod group: naming labels first, then the workload, then the namespace."""
    out: list[str] = []
    for key in NAMING_LABELS:
        value = labels.get(key)
        if value:
            out.append(value)
    if workload is not None:
        out.append(workload_base(workload[1], namespace))
        out.append(f"{workload_base(workload[1], namespace)}-{workload[0]}")
    out.append(f"{namespace}-pods")
    return tuple(dict.fromkeys(sanitize(c) for c in out))


def assign(requests: Sequence[Request], taken: Iterable[str] = ()) -> dict[object, str]:
    """Unique names for ``requests`` (see the module docstring); ``taken`` names are never given."""
    blocked = set(RESERVED) | set(taken)
    choice = {r.key: 0 for r in requests}

    def current(r: Request) -> str:
        return sanitize(r.candidates[min(choice[r.key], len(r.candidates) - 1)])

    # 1. within a namespace, move shared names to the next candidate while one is left
    for _ in range(8):
        by_ns = Counter((r.namespace, current(r)) for r in requests)
        moved = False
        for r in requests:
            name = current(r)
            clash = by_ns[(r.namespace, name)] > 1 or name in blocked
            if clash and choice[r.key] < len(r.candidates) - 1:
                choice[r.key] += 1
                moved = True
        if not moved:
            break
    names = {r.key: current(r) for r in requests}
    # 2. across namespaces: the namespace in front
    counts = Counter(names.values())
    for r in requests:
        name = names[r.key]
        if (counts[name] > 1 or name in blocked) and r.namespace and not name.startswith(r.namespace + "-"):
            names[r.key] = sanitize(f"{r.namespace}-{name}")
    # 3. anything still shared: a number, in a stable order
    out: dict[object, str] = {}
    used = set(blocked)
    for r in sorted(requests, key=lambda r: (names[r.key], r.namespace, repr(r.key))):
        name = names[r.key]
        if name in used:
            n = 2
            while sanitize(f"{name}-{n}") in used:
                n += 1
            name = sanitize(f"{name}-{n}")
        used.add(name)
        out[r.key] = name
    return out
