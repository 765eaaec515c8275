"""Warnings about a matrix that loads but cannot mean what it says (``matrix check``, ``replay``, the daemon).

Stage: configuration, pure; runs once per load. Input: a compiled :class:`~auditor.matrix.model.Matrix`.
Output: warning sentences naming the file, line and key. The mistake found loads cleanly and changes every
verdict it touches: a component that can never match, because an earlier one selects everything it selects
(first match wins): its rules are dead and its pods are judged as the earlier component's. (A scope that
selects nothing shows at run time: ``replay`` refuses a run in which no flow was in scope.)

The check is sufficient, not complete: a component is reported shadowed only when an earlier selector asks
for a subset of what it asks (same or fewer namespaces, labels, expressions, entities, service account,
workload, and no address part of its own). Error policy: never raises; an empty list means nothing found.
"""

from __future__ import annotations

from auditor.matrix.model import Component, Matrix
from auditor.matrix.selectors import Selector


def covers(a: Selector, b: Selector) -> bool:
    """Whether every endpoint ``b`` selects is also selected by ``a`` (a sufficient condition)."""
    return (
        (a.namespaces is None or (b.namespaces is not None and b.namespaces <= a.namespaces))
        and (a.entities is None or (b.entities is not None and b.entities <= a.entities))
        and (a.service_account is None or a.service_account == b.service_account)
        and (
            a.workload is None
            or (
                b.workload is not None
                and a.workload[1] == b.workload[1]
                and a.workload[0] in (None, b.workload[0])
            )
        )
        and set(a.pod_labels) <= set(b.pod_labels)
        and set(a.namespace_labels) <= set(b.namespace_labels)
        and (not a.has_address_part or (a.cidrs == b.cidrs and a.fqdns == b.fqdns))
    )


def warnings(matrix: Matrix) -> list[str]:
    """Every warning about ``matrix``, in file order: the components an earlier one covers."""
    out: list[str] = []
    for i, later in enumerate(matrix.components):
        first: Component | None = next(
            (c for c in matrix.components[:i] if covers(c.selector, later.selector)), None
        )
        if first is not None:
            out.append(
                f"{matrix.file}:{later.line}: components.{later.name} can never match: every endpoint it "
                f"selects matches components.{first.name} (line {first.line}) first, as the first match wins "
                f"— move it above {first.name} or narrow {first.name}"
            )
    return out
