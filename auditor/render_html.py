"""The HTML replay report: one self-contained page with the verdict at a glance and the matrix as a grid.

Stage: output edge. Input: the report dict of ``auditor.sinks.report`` (the JSON contract). Output: one
HTML document with no external assets and no script: a header (verdict, counts per class, time range,
matrix name and digest, inputs, outcome accounting), the top violations, the component x component grid
(rows sources, columns destinations, each cell coloured by its worst class with a text label, its
connection count, the ports and verdicts on hover, a link to the edge's details), then the edge tables,
hints, provisional connections, unused rules, invalid-line samples and the terms.

Security: every value from the cluster (pod, namespace, component, node and DNS names, drop reasons) is
escaped (``html.escape`` with quotes, also in attributes). The page carries a Content-Security-Policy
that allows nothing but its own stylesheet (by hash): no script, no external request, no form. Anchors are
generated from indexes, never from cluster data.

Layout: readable at 1280 px and on a phone (the grid scrolls in its own box, first row and column stick),
printable, dark mode by ``prefers-color-scheme``; the palette is the colour-blind-safe Okabe-Ito set, and
every colour also has a text label.

Error policy: none (pure formatting of a validated structure).
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable
from typing import Any, Final

from auditor.classify import (
    EXPECTED_ALLOWED,
    EXPECTED_DROPPED,
    OUTCOME_TERMS,
    UNEXPECTED_ALLOWED,
    UNEXPECTED_DROPPED,
    VIOLATIONS,
)
from auditor.learn.policy_hint import advice_text
from auditor.learn.suggest import suggestion_text

# Worst first: the class a grid cell shows when a pair has edges of several classes.
SEVERITY: Final = (EXPECTED_DROPPED, UNEXPECTED_ALLOWED, UNEXPECTED_DROPPED, EXPECTED_ALLOWED)
UNUSED: Final = "unused"
LABELS: Final = {
    EXPECTED_DROPPED: "legitimate, dropped",
    UNEXPECTED_ALLOWED: "unexpected, allowed",
    UNEXPECTED_DROPPED: "unexpected, dropped",
    EXPECTED_ALLOWED: "allowed",
    UNUSED: "allowed, unused",
}
TITLES: Final = {
    EXPECTED_DROPPED: "Legitimate traffic dropped (expected_dropped)",
    UNEXPECTED_ALLOWED: "Unexpected traffic allowed (unexpected_allowed)",
    UNEXPECTED_DROPPED: "Unexpected traffic dropped (unexpected_dropped)",
    EXPECTED_ALLOWED: "Expected traffic allowed (expected_allowed)",
}
TOP_VIOLATIONS: Final = 5

# Okabe-Ito: vermillion, orange, sky blue, bluish green, blue.
CSS: Final = """
:root{--fg:#1b1b1b;--bg:#fff;--muted:#5b5b5b;--line:#d0d0d0;--head:#f2f2f2;
--ed:#d55e00;--ed-fg:#fff;--ua:#e69f00;--ua-fg:#000;--ud:#cbe6f7;--ud-fg:#000;--ea:#d4efe6;--ea-fg:#000;
--unused:#0072b2}
@media (prefers-color-scheme:dark){:root{--fg:#e8e8e8;--bg:#161616;--muted:#a8a8a8;--line:#3a3a3a;
--head:#242424;--ud:#1f4a63;--ud-fg:#fff;--ea:#0f4a3a;--ea-fg:#fff;--unused:#56b4e9}}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
background:var(--bg);margin:0;padding:1rem 1.25rem;max-width:1600px}
h1{font-size:1.4rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:1.5rem 0 .5rem}
code,.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.9em}
.verdict{font-size:1.15rem;font-weight:700;margin:.25rem 0 .5rem}
.verdict.bad{color:var(--ed)}.verdict.good{color:#009e73}
.counts{display:flex;flex-wrap:wrap;gap:.5rem;list-style:none;padding:0;margin:.25rem 0 .75rem}
.counts li{padding:.2rem .6rem;border-radius:.3rem;border:1px solid var(--line)}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:0;color:var(--muted)}
.meta dt{font-weight:600}.meta dd{margin:0;overflow-wrap:anywhere}
.c-expected_dropped{background:var(--ed);color:var(--ed-fg)}
.c-unexpected_allowed{background:var(--ua);color:var(--ua-fg)}
.c-unexpected_dropped{background:var(--ud);color:var(--ud-fg)}
.c-expected_allowed{background:var(--ea);color:var(--ea-fg)}
.c-unused{outline:2px dashed var(--unused);outline-offset:-4px}
.top{padding-left:1.2rem}.top li{margin:.15rem 0}
.grid-wrap{overflow:auto;max-width:100%;max-height:80vh;border:1px solid var(--line)}
table{border-collapse:collapse}
.grid th,.grid td{border:1px solid var(--line);padding:0;text-align:center;min-width:5.5rem}
.grid thead th{position:sticky;top:0;background:var(--head);padding:.3rem .4rem;z-index:2;
font-weight:600;white-space:nowrap}
.grid tbody th{position:sticky;left:0;background:var(--head);text-align:left;padding:.3rem .5rem;
white-space:nowrap;z-index:1}
.grid thead th:first-child{left:0;z-index:3}
.grid td a{display:block;padding:.3rem .4rem;color:inherit;text-decoration:none}
.grid td .count{display:block;font-weight:700;font-size:1.05rem}
.grid td .label{display:block;font-size:.75rem;white-space:nowrap}
.legend{display:flex;flex-wrap:wrap;gap:.4rem;list-style:none;padding:0;margin:.5rem 0}
.legend li{padding:.15rem .5rem;border-radius:.25rem;border:1px solid var(--line)}
.table-wrap{overflow-x:auto;max-width:100%;margin-bottom:1rem}.edges{width:100%}
.edges th,.edges td{border:1px solid var(--line);padding:.3rem .5rem;text-align:left;vertical-align:top}
.edges th{background:var(--head)}.edges td.num{text-align:right}
.edges td{overflow-wrap:anywhere}.edges tr:target{outline:3px solid var(--unused)}
.note{color:var(--muted)}
@media (max-width:700px){body{padding:.5rem}.edges th:nth-child(6),.edges td:nth-child(6),
.edges th:nth-child(7),.edges td:nth-child(7){display:none}}
@media print{.grid-wrap{max-height:none;overflow:visible}body{max-width:none}a{color:inherit}
section{break-inside:avoid-page}}
"""
CSS_HASH: Final = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
CSP: Final = (
    f"default-src 'none'; style-src 'sha256-{CSS_HASH}'; img-src 'none'; base-uri 'none'; form-action 'none'"
)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def port_text(edge: dict[str, Any]) -> str:
    return edge["protocol"] if edge["port"] is None else f"{edge['port']}/{edge['protocol']}"


def render_html(report: dict[str, Any]) -> str:
    """The whole page (see the module docstring)."""
    edges: list[dict[str, Any]] = report["edges"]
    anchors = {id(e): f"edge-{i}" for i, e in enumerate(edges)}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>flow-auditor report: {esc(report['matrix'])}</title>",
        f"<style>{CSS}</style></head><body>",
        *_header(report),
        *_top_violations(edges, anchors),
        *_grid(report, anchors),
        *_edge_tables(edges, anchors, (report.get("inputs") or {}).get("matrix_file")),
        *_provisional(report),
        *_unused(report),
        *_invalid(report),
        *_terms(),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _header(report: dict[str, Any]) -> list[str]:
    c, f = report["classes"], report["flows"]
    violations = sum(c[k] for k in VIOLATIONS)
    verdict = (
        f"{violations} violation{'s' if violations != 1 else ''}: {c[EXPECTED_DROPPED]} legitimate "
        f"connection{'s' if c[EXPECTED_DROPPED] != 1 else ''} dropped, {c[UNEXPECTED_ALLOWED]} unexpected "
        f"connection{'s' if c[UNEXPECTED_ALLOWED] != 1 else ''} allowed"
        if violations
        else "no violation"
    )
    out = [
        "<header>",
        f"<h1>flow-auditor report: {esc(report['matrix'])}</h1>",
        f'<p class="verdict {"bad" if violations else "good"}" id="verdict">{esc(verdict)}</p>',
        '<ul class="counts">'
        + "".join(f'<li class="c-{cls}" data-class="{cls}">{esc(cls)}: {c[cls]}</li>' for cls in SEVERITY)
        + "</ul>",
        '<dl class="meta">',
    ]
    first, last = _time_range(report)
    if first:
        out.append(f"<dt>flows from</dt><dd>{esc(first)} to {esc(last)}</dd>")
    inputs = report.get("inputs") or {}
    digest = inputs.get("matrix_sha256")
    matrix = esc(report["matrix"]) + (
        f" <span class='mono'>sha256:{esc(digest[:12])}</span>" if digest else ""
    )
    if inputs.get("matrix_file"):
        matrix += f" ({esc(inputs['matrix_file'])})"
    out.append(f"<dt>matrix</dt><dd>{matrix}</dd>")
    if inputs.get("files"):
        out.append(f"<dt>inputs</dt><dd>{esc(', '.join(inputs['files']))}</dd>")
    accounting = ", ".join(
        f"{k.replace('_', ' ')} {f[k]}"
        for k in ("judged", "reply", "provisional", "ignored", "out_of_scope", "invalid")
    )
    out.append(f"<dt>flows</dt><dd>received {f['received']} = {esc(accounting)}</dd>")
    if report.get("lost_events"):
        lost = ", ".join(f"{k} {v}" for k, v in report["lost_events"].items())
        out.append(f"<dt>lost events</dt><dd>{esc(lost)}</dd>")
    limit = report.get("edge_limit") or {}
    if limit.get("aggregated_connections") or limit.get("aggregated_provisional_connections"):
        out.append(
            f"<dt>edge limit</dt><dd>more than {limit['max_edges']} edges: later ones are aggregated "
            "into 'other' rows (totals are exact)</dd>"
        )
    out += ["</dl>", "</header>"]
    return out


def _time_range(report: dict[str, Any]) -> tuple[str | None, str | None]:
    firsts = [e["first_seen"] for e in report["edges"] if e["first_seen"]]
    lasts = [e["last_seen"] for e in report["edges"] if e["last_seen"]]
    return (min(firsts) if firsts else None, max(lasts) if lasts else None)


def _top_violations(edges: list[dict[str, Any]], anchors: dict[int, str]) -> list[str]:
    violations = [e for e in edges if e["class"] in VIOLATIONS][:TOP_VIOLATIONS]
    if not violations:
        return []
    items = "".join(
        f'<li class="violation"><a href="#{anchors[id(e)]}">{esc(e["source"])} → {esc(e["destination"])} '
        f"{esc(port_text(e))}</a>: {e['connections']} connection{'s' if e['connections'] != 1 else ''}, "
        f'<span class="c-{e["class"]}">&nbsp;{esc(LABELS[e["class"]])}&nbsp;</span></li>'
        for e in violations
    )
    return ['<section id="violations"><h2>Top violations</h2>', f'<ol class="top">{items}</ol></section>']


def _grid(report: dict[str, Any], anchors: dict[int, str]) -> list[str]:
    edges: list[dict[str, Any]] = report["edges"]
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in edges:
        pairs.setdefault((e["source"], e["destination"]), []).append(e)
    unused = {(s, d) for r in report["unused_rules"] for s in _names(r["from"]) for d in _names(r["to"])}
    components = list(report.get("components") or [])
    sources = _order(components, (s for s, _ in [*pairs, *unused]))
    destinations = _order(components, (d for _, d in [*pairs, *unused]))
    if not sources or not destinations:
        return []
    out = [
        '<section id="grid"><h2>Matrix</h2>',
        '<ul class="legend">'
        + "".join(f'<li class="c-{k}">{esc(v)}</li>' for k, v in LABELS.items())
        + "</ul>",
        '<p class="note">Rows: sources; columns: destinations. Each cell shows the connections of the pair '
        "and its worst class; hover for ports and verdicts, click for the details.</p>",
        '<div class="grid-wrap"><table class="grid"><thead><tr><th scope="col">from \\ to</th>'
        + "".join(f'<th scope="col">{esc(d)}</th>' for d in destinations)
        + "</tr></thead><tbody>",
    ]
    for s in sources:
        row = [f'<tr><th scope="row">{esc(s)}</th>']
        for d in destinations:
            row.append(_cell(pairs.get((s, d), []), (s, d) in unused, anchors))
        out.append("".join(row) + "</tr>")
    out.append("</tbody></table></div></section>")
    return out


def _cell(pair_edges: list[dict[str, Any]], unused: bool, anchors: dict[int, str]) -> str:
    if not pair_edges:
        if unused:
            return (
                f'<td class="c-unused" data-class="{UNUSED}" title="allowed by the matrix, no traffic seen">'
                f'<span class="label">{LABELS[UNUSED]}</span></td>'
            )
        return "<td></td>"
    worst = min(pair_edges, key=lambda e: SEVERITY.index(e["class"]))
    cls = worst["class"]
    connections = sum(e["connections"] for e in pair_edges)
    title = "\n".join(
        f"{port_text(e)} · {e['class']} · {e['connections']} conn · "
        + ", ".join(f"{k} {v}" for k, v in e["verdicts"].items())
        for e in pair_edges
    )
    extra = " c-unused" if unused else ""
    return (
        f'<td class="c-{cls}{extra}" data-class="{cls}" data-connections="{connections}" '
        f'title="{esc(title)}">'
        f'<a href="#{anchors[id(worst)]}"><span class="count">{connections}</span>'
        f'<span class="label">{esc(LABELS[cls])}</span></a></td>'
    )


def _names(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _order(components: list[str], names: Iterable[str]) -> list[str]:
    """Matrix components in matrix order, then the other peers (world, ns:…, other) sorted."""
    seen = set(names)
    return [c for c in components if c in seen] + sorted(seen - set(components))


def _edge_tables(
    edges: list[dict[str, Any]], anchors: dict[int, str], matrix_file: str | None = None
) -> list[str]:
    out: list[str] = []
    head = (
        "<tr><th>source</th><th>destination</th><th>port</th><th>connections</th><th>verdicts</th>"
        "<th>drop reasons</th><th>rule</th><th>examples</th></tr>"
    )
    for cls in SEVERITY:
        rows = [e for e in edges if e["class"] == cls]
        if not rows:
            continue
        out.append(
            f'<section id="{cls}"><h2>{esc(TITLES[cls])}</h2>'
            f'<div class="table-wrap"><table class="edges">{head}'
        )
        for e in rows:
            examples = "<br>".join(
                f"{esc(x['source_pod'])} → {esc(x['destination_pod'])}"
                + (f" <span class='note'>on {esc(x['node'])}</span>" if x["node"] else "")
                for x in e["examples"]
            )
            notes = [e["hint"]] if e.get("hint") else []
            if e.get("suggestion"):
                notes.append("to allow it: " + suggestion_text(e["suggestion"]))
            if e.get("policy_change"):
                notes.append("to let it through: " + advice_text(e["policy_change"], matrix_file))
            if notes:
                examples += "".join(f"<br><span class='note'>{esc(n)}</span>" for n in notes)
            out.append(
                f'<tr id="{anchors[id(e)]}" class="c-row-{cls}"><td>{esc(e["source"])}</td>'
                f"<td>{esc(e['destination'])}</td><td>{esc(port_text(e))}</td>"
                f'<td class="num">{e["connections"]}</td><td>{esc(_counts(e["verdicts"]))}</td>'
                f"<td>{esc(_counts(e['drop_reasons']))}</td><td>{esc(e['rule'] or '')}</td>"
                f"<td>{examples}</td></tr>"
            )
        out.append("</table></div></section>")
    return out


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _provisional(report: dict[str, Any]) -> list[str]:
    rows = report.get("provisional") or []
    if not rows:
        return []
    out = [
        '<section id="provisional"><h2>Provisional connections</h2>',
        '<p class="note">Seen leaving their source towards a pod, but neither delivered nor dropped as far '
        "as the flows tell (no reply, no evidence at the destination): e.g. a capture from one node.</p>",
        '<div class="table-wrap"><table class="edges"><tr><th>source</th><th>destination</th><th>port</th>'
        "<th>connections</th><th>examples</th></tr>",
    ]
    for p in rows:
        examples = "<br>".join(f"{esc(x['source_pod'])} → {esc(x['destination_pod'])}" for x in p["examples"])
        out.append(
            f"<tr><td>{esc(p['source'])}</td><td>{esc(p['destination'])}</td><td>{esc(port_text(p))}</td>"
            f'<td class="num">{p["connections"]}</td><td>{examples}</td></tr>'
        )
    out.append("</table></div></section>")
    return out


def _unused(report: dict[str, Any]) -> list[str]:
    rules = report["unused_rules"]
    if not rules:
        return []
    items = "".join(
        f"<li>rule {r['rule']}: {esc(', '.join(_names(r['from'])))} → {esc(', '.join(_names(r['to'])))} "
        f"({esc(', '.join(r['ports']))})</li>"
        for r in rules
    )
    return [f'<section id="unused"><h2>Unused rules</h2><ul>{items}</ul></section>']


def _invalid(report: dict[str, Any]) -> list[str]:
    samples = report.get("invalid_samples") or []
    if not samples:
        return []
    items = "".join(f"<li><code>{esc(s['file'])}:{s['line']}</code>: {esc(s['error'])}</li>" for s in samples)
    return [f'<section id="invalid"><h2>Invalid lines</h2><ul>{items}</ul></section>']


def _terms() -> list[str]:
    items = "".join(f"<li>{esc(t)}</li>" for t in OUTCOME_TERMS)
    return [f'<section id="terms"><h2>Terms</h2><ul class="note">{items}</ul></section>']
