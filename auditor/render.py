"""Rendering a replay report (the JSON dict of ``auditor.sinks.report``) for people.

Stage: output edge. Input: the report dict. Output: text — ``table`` (a terminal table via rich;
violations first, with pods and drop reasons), ``markdown`` (for CI job summaries and pull requests),
``html`` (one self-contained page for incident reviews) or ``json`` (the stable contract).

Error policy: none (pure formatting of a validated structure).
"""

from __future__ import annotations

import html
import io
import json
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from auditor.classify import CLASSES, VIOLATIONS

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
        return _html(report)
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
    return lines


def _sections(report: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    order = (*VIOLATIONS, "unexpected_dropped", "expected_allowed")
    return [(cls, [e for e in report["edges"] if e["class"] == cls]) for cls in order]


def _table(report: dict[str, Any], *, color: bool, width: int) -> str:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width, highlight=False)
    for line in _summary_lines(report):
        console.print(line)
    violations = sum(report["classes"][c] for c in VIOLATIONS)
    console.print(f"violations: {violations}", style="bold red" if violations else "bold green")
    for cls, edges in _sections(report):
        if not edges:
            continue
        table = Table(title=_TITLES[cls], title_style=_STYLE[cls], title_justify="left", expand=False)
        for col in _COLUMNS:
            table.add_column("conns" if col == "connections" else col, overflow="fold")
        for e in edges:
            table.add_row(*(cell or "-" for cell in _cells(e)))
        console.print(table)
    if report["unused_rules"]:
        console.print(
            "unused rules (no traffic seen): "
            + "; ".join(
                f"#{r['rule']} {_join(r['from'])} → {_join(r['to'])} [{', '.join(r['ports'])}]"
                for r in report["unused_rules"]
            )
        )
    for s in report.get("invalid_samples", []):
        console.print(f"invalid: {s['file']}:{s['line']}: {s['error']}", style="yellow")
    return buf.getvalue()


def _join(names: str | list[str]) -> str:
    return names if isinstance(names, str) else ",".join(names)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|") or "-"


def _markdown(report: dict[str, Any]) -> str:
    out = [f"# flow-auditor report: `{report['matrix']}`", ""]
    out += [f"- {line}" for line in _summary_lines(report)]
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
    if report["unused_rules"]:
        out += ["", "## Unused rules", ""]
        out += [
            f"- rule {r['rule']}: {_join(r['from'])} → {_join(r['to'])} ({', '.join(r['ports'])})"
            for r in report["unused_rules"]
        ]
    if report.get("invalid_samples"):
        out += ["", "## Invalid lines", ""]
        out += [f"- `{s['file']}:{s['line']}`: {s['error']}" for s in report["invalid_samples"]]
    return "\n".join(out) + "\n"


def _html(report: dict[str, Any]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>flow-auditor report: {esc(report['matrix'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}"
        ".expected_dropped h2,.unexpected_allowed h2{color:#b00020}</style></head><body>",
        f"<h1>flow-auditor report: {esc(report['matrix'])}</h1>",
    ]
    parts += [f"<p>{esc(line)}</p>" for line in _summary_lines(report)]
    for cls, edges in _sections(report):
        if not edges:
            continue
        parts.append(
            f'<section class="{cls}"><h2>{esc(_TITLES[cls])}</h2><table><tr>'
            + "".join(f"<th>{h}</th>" for h in _COLUMNS)
            + "</tr>"
        )
        for e in edges:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(e)) + "</tr>")
        parts.append("</table></section>")
    if report["unused_rules"]:
        parts.append(
            "<h2>Unused rules</h2><ul>"
            + "".join(
                f"<li>rule {r['rule']}: {esc(_join(r['from']))} → {esc(_join(r['to']))} "
                f"({esc(', '.join(r['ports']))})</li>"
                for r in report["unused_rules"]
            )
            + "</ul>"
        )
    if report.get("invalid_samples"):
        parts.append(
            "<h2>Invalid lines</h2><ul>"
            + "".join(
                f"<li><code>{esc(s['file'])}:{s['line']}</code>: {esc(s['error'])}</li>"
                for s in report["invalid_samples"]
            )
            + "</ul>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
