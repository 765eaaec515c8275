// flow-auditor live page: fetches /api/v1/edges and draws it with DOM calls only (textContent, never
// markup), so names from the cluster stay text. No inline handlers; the server's CSP allows this file only.
"use strict";

const WORST_FIRST = ["expected_dropped", "unexpected_allowed", "unexpected_dropped", "expected_allowed"];
const VIOLATIONS = ["expected_dropped", "unexpected_allowed"];
const LABELS = {
  expected_dropped: "legitimate, dropped",
  unexpected_allowed: "unexpected, allowed",
  unexpected_dropped: "unexpected, dropped",
  expected_allowed: "allowed",
  unused: "allowed, unused",
};
const params = new URLSearchParams(window.location.search);
const REFRESH_MS = Math.max(1, Number(params.get("refresh")) || 5) * 1000;
let latest = null;

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function portText(e) {
  return e.port === null ? e.protocol : e.port + "/" + e.protocol;
}

function view() {
  return document.getElementById("view-recent").checked ? "recent" : "since_start";
}

function count(e) {
  return view() === "recent" ? e.connections_recent : e.connections;
}

function order(components, names) {
  const seen = new Set(names);
  const known = components.filter((c) => seen.has(c));
  const rest = [...seen].filter((n) => !components.includes(n)).sort();
  return known.concat(rest);
}

function drawHeader(data) {
  document.getElementById("matrix-name").textContent = data.matrix.name;
  const classes = data.classes[view()];
  const violations = VIOLATIONS.reduce((n, c) => n + classes[c], 0);
  const verdict = document.getElementById("verdict");
  verdict.textContent = violations
    ? violations + " violation" + (violations === 1 ? "" : "s") + ": " + classes.expected_dropped +
      " legitimate dropped, " + classes.unexpected_allowed + " unexpected allowed"
    : "no violation";
  verdict.className = "verdict " + (violations ? "bad" : "good");
  const counts = document.getElementById("counts");
  counts.replaceChildren(...WORST_FIRST.map((c) =>
    el("li", c + ": " + classes[c], { class: "c-" + c, "data-class": c })));
  const meta = document.getElementById("meta");
  const rows = [
    ["matrix", data.matrix.name + (data.matrix.digest ? " sha256:" + data.matrix.digest.slice(0, 12) : "")],
    ["last reload", (data.matrix.last_reload || "-") + (data.matrix.last_error ? ": " + data.matrix.last_error : "")],
    ["stream", (data.stream.connected ? "connected" : "disconnected") +
      (data.stream.since ? " since " + data.stream.since : "") +
      (data.stream.last_error ? " (" + data.stream.last_error + ")" : "")],
    ["running since", data.started],
  ];
  meta.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  document.getElementById("updated").textContent = "updated " + data.generated;
}

function drawGrid(data) {
  const pairs = new Map();
  for (const e of data.edges) {
    if (!count(e)) continue;
    const key = JSON.stringify([e.source, e.destination]);
    if (!pairs.has(key)) pairs.set(key, []);
    pairs.get(key).push(e);
  }
  const unused = new Set();
  for (const r of data.unused_rules) {
    for (const s of r.from) for (const d of r.to) unused.add(JSON.stringify([s, d]));
  }
  const keys = [...pairs.keys(), ...unused].map((k) => JSON.parse(k));
  const sources = order(data.components, keys.map((k) => k[0]));
  const destinations = order(data.components, keys.map((k) => k[1]));
  const grid = document.getElementById("grid");
  if (!sources.length) {
    grid.replaceChildren(el("p", "no connections yet", { class: "note" }));
    return;
  }
  const table = el("table", null, { class: "grid" });
  const head = el("tr");
  head.append(el("th", "from \\ to", { scope: "col" }), ...destinations.map((d) => el("th", d, { scope: "col" })));
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  for (const s of sources) {
    const row = el("tr");
    row.append(el("th", s, { scope: "row" }));
    for (const d of destinations) {
      const key = JSON.stringify([s, d]);
      const edges = pairs.get(key);
      const td = el("td");
      if (edges) {
        const worst = edges.reduce((a, b) => WORST_FIRST.indexOf(a.class) <= WORST_FIRST.indexOf(b.class) ? a : b);
        const total = edges.reduce((n, e) => n + count(e), 0);
        td.className = "c-" + worst.class + (unused.has(key) ? " c-unused" : "");
        td.dataset.class = worst.class;
        td.dataset.connections = String(total);
        td.title = edges.map((e) => portText(e) + " · " + e.class + " · " + count(e) + " conn · " +
          Object.entries(e.verdicts).map(([k, v]) => k + " " + v).join(", ")).join("\n");
        td.append(el("span", total, { class: "count" }), el("span", LABELS[worst.class], { class: "label" }));
      } else if (unused.has(key)) {
        td.className = "c-unused";
        td.dataset.class = "unused";
        td.title = "allowed by the matrix, no traffic seen";
        td.append(el("span", LABELS.unused, { class: "label" }));
      }
      row.append(td);
    }
    tbody.append(row);
  }
  table.append(thead, tbody);
  grid.replaceChildren(table);
}

function drawTable(id, columns, rows) {
  const table = document.getElementById(id);
  const head = el("tr");
  head.append(...columns.map((c) => el("th", c)));
  table.replaceChildren(head, ...rows.map((cells) => {
    const tr = el("tr");
    tr.append(...cells.map((c) => el("td", c)));
    return tr;
  }));
}

function draw(data) {
  latest = data;
  drawHeader(data);
  drawGrid(data);
  const violations = data.edges.filter((e) => VIOLATIONS.includes(e.class) && count(e));
  drawTable("violations", ["class", "source", "destination", "port", "connections", "verdicts", "first seen", "last seen"],
    violations.map((e) => [e.class, e.source, e.destination, portText(e), count(e),
      Object.entries(e.verdicts).map(([k, v]) => k + " " + v).join(", "), e.first_seen, e.last_seen]));
  drawTable("nodes", ["node", "state", "lost events", "last flow"],
    data.nodes.map((n) => [n.name, n.state || "-", n.lost_events, n.last_flow || "-"]));
  drawTable("provisional", ["source", "destination", "port", "connections"],
    data.provisional.map((p) => [p.source, p.destination, portText(p), p.connections]));
  document.getElementById("unused").replaceChildren(...data.unused_rules.map((r) =>
    el("li", "rule " + r.rule + ": " + r.from.join(", ") + " → " + r.to.join(", ") + " (" + r.ports.join(", ") + ")")));
}

async function refresh() {
  try {
    const response = await fetch("/api/v1/edges", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
    document.getElementById("updated").classList.remove("stale");
  } catch (err) {
    const updated = document.getElementById("updated");
    updated.textContent = "cannot refresh: " + err.message + (latest ? " (showing " + latest.generated + ")" : "");
    updated.classList.add("stale");
  }
}

function start() {
  const legend = document.getElementById("legend");
  legend.replaceChildren(...Object.entries(LABELS).map(([k, v]) => el("li", v, { class: "c-" + k })));
  for (const id of ["view-start", "view-recent"]) {
    document.getElementById(id).addEventListener("change", () => latest && draw(latest));
  }
  refresh();
  window.setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
