"""The learned matrix as commented YAML, or the patch an existing matrix lacks.

Stage: learning output, pure. Input: :class:`~auditor.learn.build.Learned`. Output: text —
:func:`matrix_text` (a whole matrix that ``matrix check`` accepts) or :func:`patch_text` (with
``--matrix``: only the components and rules the user's matrix lacks, to append; the user's file is never
written). Same observations → byte-identical text: everything is sorted, times are flow times, nothing
depends on the wall clock, file paths or hash order.

Every component carries a comment saying what it stands for (workload, pods seen, names); every rule its
evidence: connections, how many of them only an ``AUDIT`` verdict saw, first and last seen, an example pod
pair, and the count per port when there are several. A closing commented section lists what was *not*
learned, for review. Cluster data in comments is escaped (:func:`~auditor.learn.yamltext.comment`).

Error policy: none needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from auditor.learn.build import MAX_REVIEW_LINES, REVIEW_TITLES, Learned, Rule, port_text
from auditor.learn.components import Candidate
from auditor.learn.observe import Tally
from auditor.learn.yamltext import comment, flow, scalar

_OUTCOMES: Final = ("judged", "reply", "provisional", "ignored", "out_of_scope", "invalid")


def when(t: float) -> str:
    if t in (float("inf"), float("-inf")):
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def components_block(candidates: Sequence[Candidate], indent: str = "  ") -> str:
    width = max((len(c.name) for c in candidates), default=0) + 1
    out = []
    for c in candidates:
        if c.evidence:
            out.append(comment(c.evidence, indent))
        out.append(f"{indent}{(scalar(c.name) + ':').ljust(width)} {flow(c.selector())}\n")
    return "".join(out)


def rules_block(rules: Sequence[Rule], indent: str = "  ") -> str:
    out = []
    for r in rules:
        total = Tally()
        for st in r.ports.values():
            total.add(st)
        out.append(comment(_evidence(total), indent))
        if len(r.ports) > 1:
            per_port = ", ".join(f"{port_text(p, n)}: {st.connections}" for (p, n), st in r.ports.items())
            out.append(comment(f"per port: {per_port}", indent))
        rule = {"from": r.source, "to": r.destination, "ports": r.ports_text}
        out.append(f"{indent}- {flow(rule)}\n")
    return "".join(out)


def _evidence(st: Tally) -> str:
    conns = f"{st.connections} connection{'s' if st.connections != 1 else ''}"
    if st.audited:
        conns += f" ({st.audited} with an AUDIT verdict: denied once policies are enforced)"
    example = f", e.g. {st.example[0]} -> {st.example[1]}" if st.example else ""
    return f"{conns}, {when(st.first)} .. {when(st.last)}{example}"


def header(learned: Learned) -> str:
    obs = learned.observations
    first, last = obs.time_range()
    events = sum(obs.outcomes.values())
    counts = ", ".join(f"{k.replace('_', ' ')} {obs.outcomes.get(k, 0)}" for k in _OUTCOMES)
    lines = [
        f"Learned by flow-auditor matrix learn from {events} events ({counts}),",
        f"flow time {when(first)} .. {when(last)}.",
        "Rules come only from delivered connections and AUDIT verdicts: never replies, never drops.",
        "Review before use: this is what the cluster did, not necessarily what it should do.",
    ]
    if obs.lost_events:
        lines.append(f"WARNING: Hubble lost {obs.lost_events} events: connections may be missing.")
    if any(obs.overflow.values()):
        lines.append(
            f"WARNING: limits reached: {obs.overflow['peers']} peers and {obs.overflow['edges']} "
            "connections were not learned in detail."
        )
    return "".join(comment(line) for line in lines)


def review_block(learned: Learned) -> str:
    out = []
    for key, title in REVIEW_TITLES.items():
        items = learned.review[key]
        if not items:
            continue
        total = learned.review_counts[key]
        out.append(comment(f"Not learned - {title}: {total} connection{'s' if total != 1 else ''}"))
        for line in items[:MAX_REVIEW_LINES]:
            reasons = (
                " [" + ", ".join(f"{r}: {n}" for r, n in sorted(line.reasons.items())) + "]"
                if line.reasons
                else ""
            )
            out.append(
                comment(
                    f"  {line.source} -> {line.destination} {line.port}{reasons}: {_evidence(line.stats)}"
                )
            )
        if len(items) > MAX_REVIEW_LINES:
            out.append(comment(f"  ... and {len(items) - MAX_REVIEW_LINES} more"))
    return "".join(out)


def matrix_text(learned: Learned) -> str:
    """A whole matrix (see the module docstring)."""
    parts = [
        header(learned),
        "apiVersion: flow-auditor/v1alpha1\n",
        "kind: CommunicationMatrix\n",
        f"metadata:\n  name: {scalar(learned.options.name)}\n",
        f"scope:\n  namespaces: {flow(learned.scope)}\n",
    ]
    if learned.components:
        parts.append("components:  # first match wins, in this order\n")
        parts.append(components_block(learned.components))
    else:
        parts.append(comment("nothing was learned: no delivered connection in scope"))
        parts.append("components: {}\n")
    parts.append("allow:\n" if learned.rules else "allow: []\n")
    parts.append(rules_block(learned.rules))
    review = review_block(learned)
    if review:
        parts.append("\n" + review)
    return "".join(parts)


def patch_text(learned: Learned) -> str:
    """What the user's matrix lacks, to append (see the module docstring)."""
    existing = learned.existing
    assert existing is not None
    parts = [header(learned)]
    if not learned.rules:
        parts.append(comment(f"Nothing to add: matrix {existing.name!r} allows every connection seen."))
    else:
        parts.append(
            comment(
                f"What matrix {existing.name!r} lacks. Append the components at the end of `components:` "
                "and the rules at the end of `allow:`"
            )
        )
        parts.append(comment("(appended entries change nothing the matrix already says: first match wins)."))
        if learned.components:
            parts.append("components:\n" + components_block(learned.components))
        parts.append("allow:\n" + rules_block(learned.rules))
    review = review_block(learned)
    if review:
        parts.append("\n" + review)
    return "".join(parts)
