"""Rendering a replay report (the JSON dict of ``auditor.sinks.report``) for people.

Stage: output edge. Input: the report dict. Output: text — ``table`` (a terminal table via rich;
violations first, with pods and drop reasons), ``markdown`` (for CI job summaries and pull requests),
``html`` (one self-contained page for incident reviews) or ``json`` (the stable contract).

Every string that comes from the cluster (component, pod, namespace and node names, drop reasons) is
literal text in every format: escaped for HTML and Markdown, never read as terminal markup.

Error policy: none (pure formatting of a validated structure).
"""

from __future__ import annotations

import io
import json
from typing import Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.classify import CLASSES, OUTCOME_TERMS, VIOLATIONS
from auditor.render_html import render_html

FORMATS: Final = ("table", "json", "markdown", "html")
_TITLES: Final = {
    "expected_dropped": "Legitimate traffic dropped (expected_dropped)",
    "unexpected_allowed": "Unexpected traffic allowed (unexpected_allowed)",
    "unexpected_dropped": "Unexpected traffic dropped (unexpected_dropped)",
    "expected_allowed": "Expected traffic allowed (expected_allowed)",
}
_STYLE: Final = {
    "expected_dropped": "bold red",
    "unexpected_allowed": "bold red",
    "unexpected_dropped": "yellow",
    "expected_allowed": "green",
}


def render(report: dict[str, Any], fmt: str, *, color: bool = False, width: int = 160) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    if fmt == "markdown":
        return _markdown(report)
    if fmt == "html":
        return render_html(report)
    return _table(report, color=color, width=width)


_COLUMNS: Final = (
    "source",
    "destination",
    "port",
    "connections",
    "verdicts",
    "drop reasons",
    "rule",
    "examples",
)


def _cells(e: dict[str, Any]) -> list[str]:
    """One edge as the text of the report columns (empty string where there is nothing to say)."""
    return [
        e["source"],
        e["destination"],
        _port(e),
        str(e["connections"]),
        _counts(e["verdicts"]),
        _counts(e["drop_reasons"]),
        str(e["rule"] or ""),
        _examples(e),
    ]


def _port(edge: dict[str, Any]) -> str:
    return edge["protocol"] if edge["port"] is None else f"{edge['port']}/{edge['protocol']}"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _examples(edge: dict[str, Any]) -> str:
    return "; ".join(f"{e['source_pod']} → {e['destination_pod']}" for e in edge["examples"])


_PROVISIONAL_COLUMNS: Final = ("source", "destination", "port", "connections", "examples")


def _summary_lines(report: dict[str, Any]) -> list[str]:
    f, c = report["flows"], report["classes"]
    lines = [
        f"matrix {report['matrix']}: {f['received']} flows received — judged {f['judged']}, "
        f"reply {f['reply']}, "
        f"provisional {f['provisional']}, ignored {f['ignored']}, out of scope {f['out_of_scope']}, "
        f"invalid {f['invalid']}",
        "connections: " + ", ".join(f"{k} {c[k]}" for k in CLASSES),
    ]
    if report.get("lost_events"):
        lines.append("lost events: " + _counts(report["lost_events"]))
    limit = report.get("edge_limit") or {}
    folded = limit.get("aggregated_connections", 0) + limit.get("aggregated_provisional_connections", 0)
    if folded:
        lines.append(
            f"edge limit: more than {limit['max_edges']} distinct edges; {folded} connections of later edges "
            "are aggregated into 'other' rows (totals above are exact; raise --max-edges for detail)"
        )
    return lines


def _provisional_cells(p: dict[str, Any]) -> list[str]:
    return [p["source"], p["destination"], _port(p), str(p["connections"]), _examples(p)]


def _hint_lines(report: dict[str, Any]) -> list[str]:
    from auditor.learn.policy_hint import advice_text
    from auditor.learn.suggest import suggestion_text

    hints = [
        f"hint: {e['source']} → {e['destination']} {_port(e)}: {e['hint']}"
        for e in report["edges"]
        if e.get("hint")
    ]
    return (
        hints
        + [
            f"to allow {e['source']} → {e['destination']} {_port(e)}: {suggestion_text(e['suggestion'])}"
            for e in report["edges"]
            if e.get("suggestion")
        ]
        + [
            f"to let {e['source']} → {e['destination']} {_port(e)} through: "
            + advice_text(e["policy_change"], _matrix_file(report))
            for e in report["edges"]
            if e.get("policy_change")
        ]
    )


def _matrix_file(report: dict[str, Any]) -> str | None:
    inputs = report.get("inputs") or {}
    file = inputs.get("matrix_file")
    return file if isinstance(file, str) else None


_PROVISIONAL_TITLE: Final = (
    "Provisional connections (delivery not proven: no reply, no evidence at the destination)"
)


def _sections(report: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    order = (*VIOLATIONS, "unexpected_dropped", "expected_allowed")
    return [(cls, [e for e in report["edges"] if e["class"] == cls]) for cls in order]


def _table(report: dict[str, Any], *, color: bool, width: int) -> str:
    buf = io.StringIO()
    console = Console(
        file=buf, force_terminal=color, no_color=not color, width=width, highlight=False, markup=False
    )

    def line(text: str, style: str = "") -> None:
        console.print(Text(text, style=style), overflow="fold")

    for text in _summary_lines(report):
        line(text)
    violations = sum(report["classes"][c] for c in VIOLATIONS)
    line(f"violations: {violations}", "bold red" if violations else "bold green")
    for cls, edges in _sections(report):
        if edges:
            console.print(_rich_table(_TITLES[cls], _STYLE[cls], _COLUMNS, [_cells(e) for e in edges]))
    for text in _hint_lines(report):
        line(text, "yellow")
    if report.get("provisional"):
        rows = [_provisional_cells(p) for p in report["provisional"]]
        console.print(_rich_table(_PROVISIONAL_TITLE, "cyan", _PROVISIONAL_COLUMNS, rows))
    if report["unused_rules"]:
        line(
            "unused rules (no traffic seen): "
            + "; ".join(
                f"#{r['rule']} {_join(r['from'])} → {_join(r['to'])} [{', '.join(r['ports'])}]"
                for r in report["unused_rules"]
            )
        )
    for s in report.get("invalid_samples", []):
        line(f"invalid: {s['file']}:{s['line']}: {s['error']}", "yellow")
    for text in OUTCOME_TERMS:
        line(text, "dim")
    return buf.getvalue()


def _rich_table(title: str, style: str, columns: tuple[str, ...], rows: list[list[str]]) -> Table:
    table = Table(title=Text(title, style=style), title_justify="left", expand=False)
    for col in columns:
        table.add_column("conns" if col == "connections" else col, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell or "-") for cell in row))
    return table


def _join(names: str | list[str]) -> str:
    return names if isinstance(names, str) else ",".join(names)


_MD_SPECIAL: Final = str.maketrans({c: "\\" + c for c in "\\`*_{}[]<>()#+!|~"})


def _md_cell(text: str) -> str:
    """Cluster-supplied text as literal Markdown (no links, emphasis, HTML or table breaks)."""
    return text.replace("\n", " ").translate(_MD_SPECIAL) or "-"


def _markdown(report: dict[str, Any]) -> str:
    out = [f"# flow-auditor report: {_md_cell(report['matrix'])}", ""]
    out += [f"- {_md_cell(line)}" for line in _summary_lines(report)]
    for cls, edges in _sections(report):
        if not edges:
            continue
        out += [
            "",
            f"## {_TITLES[cls]}",
            "",
            "| " + " | ".join(_COLUMNS) + " |",
            "|---|---|---|---:|---|---|---:|---|",
        ]
        for e in edges:
            out.append("| " + " | ".join(_md_cell(c) for c in _cells(e)) + " |")
    hints = _hint_lines(report)
    if hints:
        out += ["", "## Hints", ""]
        out += [f"- {_md_cell(h)}" for h in hints]
    if report.get("provisional"):
        out += [
            "",
            f"## {_PROVISIONAL_TITLE}",
            "",
            "| " + " | ".join(_PROVISIONAL_COLUMNS) + " |",
            "|---|---|---|---:|---|",
        ]
        for p in report["provisional"]:
            out.append("| " + " | ".join(_md_cell(c) for c in _provisional_cells(p)) + " |")
    if report["unused_rules"]:
        out += ["", "## Unused rules", ""]
        out += [
            f"- rule {r['rule']}: {_md_cell(_join(r['from']))} → {_md_cell(_join(r['to']))} "
            f"({', '.join(r['ports'])})"
            for r in report["unused_rules"]
        ]
    if report.get("invalid_samples"):
        out += ["", "## Invalid lines", ""]
        out += [
            f"- {_md_cell(s['file'])}:{s['line']}: {_md_cell(s['error'])}" for s in report["invalid_samples"]
        ]
    out += ["", "## Terms", ""]
    out += [f"- {t}" for t in OUTCOME_TERMS]
    return "\n".join(out) + "\n"
