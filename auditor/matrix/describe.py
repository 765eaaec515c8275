"""The compiled matrix as text, for ``flow-auditor matrix check`` (DESIGN §4.5).

Stage: front end (offline, once per command). Input: a compiled :class:`~auditor.matrix.model.Matrix`.
Output: what the auditor understood, for a person to check: the scope, the components in match order with
their selectors, and the allow rules with their index, ends and ports.

Error policy: never raises on a compiled matrix.
"""

from __future__ import annotations

from auditor.matrix.model import Matrix
from auditor.matrix.selectors import Selector


def describe(matrix: Matrix) -> str:
    """Human-readable summary of a compiled matrix (``flow-auditor matrix check``)."""
    lines = [
        f"matrix {matrix.name!r} ({matrix.file}): {len(matrix.components)} components, "
        f"{len(matrix.rules)} rules"
    ]
    scope = (
        "all namespaces" if matrix.scope_namespaces is None else ", ".join(sorted(matrix.scope_namespaces))
    )
    lines.append(f"scope: {scope}")
    lines.append("components (first match wins):")
    for c in matrix.components:
        lines.append(f"  {c.name:<16} {_describe_selector(c.selector)}")
    lines.append("allow:")
    for r in matrix.rules:
        desc = f"  # {r.description}" if r.description else ""
        lines.append(
            f"  {r.index:>3}. {','.join(r.sources)} -> {','.join(r.destinations)} "
            f"[{', '.join(r.port_strings())}]{desc}"
        )
    return "\n".join(lines)


def _describe_selector(s: Selector) -> str:
    parts = []
    if s.namespaces is not None:
        parts.append(f"namespace in ({', '.join(sorted(s.namespaces))})")
    for title, reqs in (("labels", s.pod_labels), ("namespaceLabels", s.namespace_labels)):
        for r in reqs:
            if r.operator == "In" and len(r.values) == 1:
                parts.append(f"{title}[{r.key}={next(iter(r.values))}]")
            elif r.operator in ("In", "NotIn"):
                parts.append(f"{title}[{r.key} {r.operator} ({', '.join(sorted(r.values))})]")
            else:
                parts.append(f"{title}[{r.key} {r.operator}]")
    if s.service_account:
        parts.append(f"serviceAccount={s.service_account}")
    if s.workload:
        parts.append(f"workload={s.workload[0] or '*'}/{s.workload[1]}")
    if s.entities:
        parts.append(f"entity in ({', '.join(sorted(s.entities))})")
    if s.cidrs:
        parts.append(
            "cidr in ("
            + ", ".join(str(n) + (f" except {', '.join(map(str, ex))}" if ex else "") for n, ex in s.cidrs)
            + ")"
        )
    if s.fqdns:
        parts.append(f"fqdn in ({', '.join(s.fqdns)})")
    return " and ".join(parts)
