"""Rendering a ``policies diff`` result: ``table`` (terminal), ``json`` (the stable contract) and
``markdown`` (a CI job summary).

Stage: output edge; pure formatting of a :class:`~auditor.kube.diff.DiffResult`.

Layout (the table's first line, what was read, goes to stderr): differences grouped by edge (kind, source →
destination, ports as ranges, the policies that allow it or the matrix rules it breaks), then the noise
section (edges only the probes standing for no component show: other pods of a namespace, a foreign
namespace, the IPv6 world), summarised per kind of noise with a bounded number of examples, then edges
allowed only through L7 rules, then warnings. Names and policy names come from the cluster: control
characters are escaped in the table, Markdown specials in markdown.

JSON (``version: 1``): ``matrix``, ``result`` (``no_difference``/``differences``), ``summary`` (counts),
``inputs`` (files, policies and skipped objects by kind, probes, pairs), ``differences`` and ``noise``
(edges: ``kind``, ``source``, ``destination``, ``ports`` as ``{protocol, from, to}``, ``ports_text``,
``rules``, ``policies``, ``l7_restricted_ports``, ``blocked_at`` (``source egress``/``destination
ingress``), ``noise``, ``announced``), ``l7_restricted`` (edges),
``warnings`` (strings).

Error policy: none.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from typing import Any, Final

from auditor.kube.diff import DiffResult, Edge
from auditor.kube.model import PortSet

FORMATS: Final = ("table", "json", "markdown")
NOISE_EXAMPLES: Final = 5
_MD_SPECIAL: Final = str.maketrans({c: "\\" + c for c in "\\`*_{}[]<>()#+!|~"})


def render_diff(result: DiffResult, matrix: str, fmt: str, *, files: int = 0) -> str:
    if fmt == "json":
        return json.dumps(to_json(result, matrix, files=files), indent=2) + "\n"
    if fmt == "markdown":
        return _markdown(result, matrix, files)
    if fmt == "table":
        return _table(result, matrix, files)
    raise ValueError(f"unknown format {fmt!r} (expected one of: {', '.join(FORMATS)})")


def _ports_json(ports: PortSet) -> list[dict[str, Any]]:
    return [{"protocol": p, "from": lo, "to": hi} for p, lo, hi in ports.items()]


def _edge_json(e: Edge) -> dict[str, Any]:
    return {
        "kind": e.kind,
        "source": e.source,
        "destination": e.destination,
        "ports": _ports_json(e.ports),
        "ports_text": str(e.ports),
        "rules": list(e.rules),
        "policies": list(e.policies),
        "l7_restricted_ports": _ports_json(e.l7_ports),
        "blocked_at": list(e.blocked_at),
        "noise": e.noise,
        "announced": e.announced,
    }


def to_json(result: DiffResult, matrix: str, *, files: int = 0) -> dict[str, Any]:
    diffs, noise = result.differences, result.noise
    return {
        "version": 1,
        "matrix": matrix,
        "result": "differences" if result.edges else "no_difference",
        "summary": {
            "differences": len(diffs),
            "unexpected_allowed": sum(e.kind == "unexpected_allowed" for e in diffs),
            "expected_denied": sum(e.kind == "expected_denied" for e in diffs),
            "noise": len(noise),
            "announced": sum(e.announced is not None for e in result.edges),
            "l7_restricted": len(result.l7_restricted),
            "warnings": len(result.warnings),
        },
        "inputs": {
            "files": files,
            "policies": result.policies,
            "skipped": result.skipped,
            "probes": result.probes,
            "pairs": result.pairs,
        },
        "differences": [_edge_json(e) for e in diffs],
        "noise": [_edge_json(e) for e in noise],
        "l7_restricted": [_edge_json(e) for e in result.l7_restricted],
        "warnings": list(result.warnings),
    }


# --------------------------------------------------------------------------------------------------
# Text


def _lit(text: str) -> str:
    """Cluster-supplied text with control characters escaped (never read as terminal control)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _why(e: Edge) -> str:
    if e.kind == "unexpected_allowed":
        why = "allowed by " + (", ".join(e.policies) or "no policy: the ends are not isolated")
        if e.l7_ports:
            why += f" (L7-restricted: {e.l7_ports})"
    else:
        rules = ", ".join(str(r) for r in e.rules) or "-"
        why = f"breaks matrix rule {rules}"
        why += "; denied by " + ", ".join(e.policies) if e.policies else "; no policy allows it"
        if e.blocked_at:
            why += " at the " + " and the ".join(e.blocked_at)
    if e.announced:
        why += f" [announced by generate: {e.announced}]"
    return why


def inputs_line(result: DiffResult, matrix: str, files: int) -> str:
    """What was read and compared (the table format prints it on stderr, so that a clean result is
    exactly ``no difference`` on stdout)."""
    return _lit(_inputs_line(result, matrix, files))


def _inputs_line(result: DiffResult, matrix: str, files: int) -> str:
    pols = ", ".join(f"{k} {v}" for k, v in result.policies.items()) or "none"
    skipped = sum(result.skipped.values())
    line = f"policies diff against matrix {matrix}: {files} file(s); policies: {pols}"
    if skipped:
        line += (
            f"; {skipped} other object(s) skipped ("
            + ", ".join(f"{k} {v}" for k, v in result.skipped.items())
            + ")"
        )
    return line + f"; {result.probes} probes, {result.pairs} pairs"


def _noise_groups(result: DiffResult) -> dict[str, list[Edge]]:
    groups: dict[str, list[Edge]] = defaultdict(list)
    for e in result.noise:
        groups[e.noise or ""].append(e)
    return groups


def _table(result: DiffResult, matrix: str, files: int) -> str:
    out = []
    diffs = result.differences
    if diffs:
        out.append(f"DIFFERENCES ({len(diffs)} edge(s))")
        for e in diffs:
            out.append(
                f"  {e.kind:<18} {_lit(e.source)} -> {_lit(e.destination)}  {e.ports}  {_lit(_why(e))}"
            )
        out.append("")
    groups = _noise_groups(result)
    if groups:
        out.append(f"UNMATCHED ENDPOINTS: probes standing for no component ({len(result.noise)} edge(s))")
        for label, edges in groups.items():
            kinds = ", ".join(
                f"{sum(e.kind == k for e in edges)} {k}"
                for k in ("unexpected_allowed", "expected_denied")
                if any(e.kind == k for e in edges)
            )
            out.append(f"  {_lit(label)}: {kinds}")
            for e in edges[:NOISE_EXAMPLES]:
                out.append(
                    f"    {e.kind:<18} {_lit(e.source)} -> {_lit(e.destination)}  {e.ports}  {_lit(_why(e))}"
                )
            if len(edges) > NOISE_EXAMPLES:
                out.append(f"    … and {len(edges) - NOISE_EXAMPLES} more")
        out.append("")
    if result.l7_restricted:
        out.append(f"ALLOWED, L7-RESTRICTED ({len(result.l7_restricted)} expected edge(s))")
        for e in result.l7_restricted:
            out.append(
                f"  {_lit(e.source)} -> {_lit(e.destination)}  {e.ports}  by {_lit(', '.join(e.policies))}"
            )
        out.append("")
    if result.warnings:
        out.append(f"WARNINGS ({len(result.warnings)})")
        out.extend(f"  {_lit(w)}" for w in result.warnings)
        out.append("")
    out.append(_verdict(result))
    return "\n".join(out) + "\n"


def _verdict(result: DiffResult) -> str:
    if not result.edges:
        return "no difference"
    announced = sum(e.announced is not None for e in result.edges)
    # Edges of unmatched endpoints are differences too (they count in the exit code): a missing
    # default-deny shows only there.
    text = (
        f"{len(result.differences)} difference(s) between components, "
        f"{len(result.noise)} edge(s) of unmatched endpoints"
    )
    return text + (f" ({announced} announced by generate)" if announced else "")


# --------------------------------------------------------------------------------------------------
# Markdown


def _md(text: str) -> str:
    return _lit(text.replace("\n", " ")).translate(_MD_SPECIAL) or "-"


def _md_edges(edges: list[Edge]) -> list[str]:
    out = ["| kind | source | destination | ports | why |", "|---|---|---|---|---|"]
    for e in edges:
        out.append(
            f"| {e.kind} | {_md(e.source)} | {_md(e.destination)} | {_md(str(e.ports))} | {_md(_why(e))} |"
        )
    return out


def _markdown(result: DiffResult, matrix: str, files: int) -> str:
    icon = "✅" if not result.edges else "❌"
    out = [
        f"## {icon} flow-auditor policies diff: {_md(matrix)}",
        "",
        _md(_inputs_line(result, matrix, files)),
        "",
    ]
    out += [f"**{_md(_verdict(result))}**", ""]
    if result.differences:
        out += ["### Differences", "", *_md_edges(result.differences), ""]
    groups = _noise_groups(result)
    if groups:
        out += ["### Unmatched endpoints: probes standing for no component", ""]
        for label, edges in groups.items():
            summary = html.escape(_lit(label))  # raw HTML: Markdown escapes do not apply inside it
            out += [f"<details><summary>{summary}: {len(edges)} edge(s)</summary>", ""]
            out += [*_md_edges(edges[:NOISE_EXAMPLES]), ""]
            if len(edges) > NOISE_EXAMPLES:
                out += [f"… and {len(edges) - NOISE_EXAMPLES} more", ""]
            out += ["</details>", ""]
    if result.l7_restricted:
        out += ["### Allowed, L7-restricted", ""]
        out += [
            f"- {_md(e.source)} → {_md(e.destination)} {_md(str(e.ports))} ({_md(', '.join(e.policies))})"
            for e in result.l7_restricted
        ]
        out.append("")
    if result.warnings:
        out += ["### Warnings", "", *(f"- {_md(w)}" for w in result.warnings), ""]
    return "\n".join(out)
