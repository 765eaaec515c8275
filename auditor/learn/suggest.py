"""The rule that would allow a violation: a suggestion per ``unexpected_allowed`` edge of a report.

Stage: learning, pure; called by the replay report at its end. Input: the matrix and, per
``unexpected_allowed`` edge, a few judgements (one per distinct pair of endpoints seen on it). Output: per
edge, the patch ``matrix learn --matrix`` would propose for it — the rules (``from``, ``to``, ``ports``) and
the components they need that the matrix lacks (an end the matrix names only by a fallback such as
``ns:default`` or ``world``) — or ``None`` when no rule can be proposed (an end no selector can name, or
outside the matrix's scope).

The judgements go through the same learning code as ``matrix learn`` (:class:`~auditor.learn.observe.
LearnSink`, :func:`~auditor.learn.build.build` against the matrix), so a suggestion is exactly what
learning would add. Error policy: none needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from auditor.classify import Judgement
from auditor.learn.build import Options, build, port_text
from auditor.learn.observe import LearnSink
from auditor.matrix import Matrix


def suggestions(matrix: Matrix, edges: Sequence[Sequence[Judgement]]) -> list[dict[str, Any] | None]:
    """One suggestion (or ``None``) per edge, given a few judgements of each edge (one per distinct pair
    of endpoints: an edge whose ends are fallback names such as ``ns:default`` may stand for several
    workloads), in order (see the module docstring)."""
    if not any(edges):
        return [None for _ in edges]
    sink = LearnSink()
    for group in edges:
        for j in group:
            sink.on_judgement(j)
    learned = build(sink.obs, Options(name=matrix.name), matrix)
    rules = {(r.source, r.destination) for r in learned.rules}
    new = {c.name: c.selector() for c in learned.components}
    out: list[dict[str, Any] | None] = []
    for group in edges:
        components: dict[str, Any] = {}
        found: list[dict[str, Any]] = []
        for j in group:
            flow = j.flow
            names = flow.source_names if j.reply else flow.destination_names
            src = sink.peer(j.source, j.source_ip, (), False)
            dst = sink.peer(j.destination, j.destination_ip, names, True)
            a = learned.matrix.resolve(src.endpoint, src.ip, src.names)
            b = learned.matrix.resolve(dst.endpoint, dst.ip, dst.names)
            _, _, port, protocol, _ = j.edge
            rule = {"from": a, "to": b, "ports": [port_text(protocol, port)]}
            if (a, b) not in rules or rule in found:
                continue
            found.append(rule)
            components.update({n: new[n] for n in (a, b) if n in new})
        out.append({"components": components, "rules": found} if found else None)
    return out


def suggestion_text(suggestion: dict[str, Any]) -> str:
    """One line: the components to add, then the rule, in the matrix's YAML flow style."""
    from auditor.learn.yamltext import flow

    parts = [f"component {name}: {flow(sel)}" for name, sel in suggestion["components"].items()]
    parts += [f"rule {flow(rule)}" for rule in suggestion["rules"]]
    return "add " + "; ".join(parts)
