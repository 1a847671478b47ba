"""The HTML report of a run: one standalone page, drawn in the browser from the run record.

:func:`render_report` puts the record (``RunRecord.to_json()``) into the page as JSON, and
the page's own script draws everything from it: a timeline with one lane per worker slot
(each run task a bar coloured by its state, queued time lighter before it, its reasons
and error on hover; cache hits and skipped tasks on lanes of their own), the task graph,
a table of tasks with a name filter and a state filter, and each task's output, error and
traceback. No network, no CDN: inline CSS, JavaScript and SVG only.

:mod:`taskrun.serve` serves the same page with ``live`` set: it then fetches the record
again every second while the run goes on and redraws.

When the page has drawn, ``<body>`` carries ``data-drawn="yes"``, ``data-bars`` (bars on
the timeline) and ``data-tasks``: a headless browser's ``--dump-dom`` shows them (the
tests use it).
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render_report"]


def render_report(record: Any, *, live_url: str | None = None) -> str:
    """The whole page for ``record`` (a :class:`taskrun.runs.RunRecord`)."""
    data = json.dumps(record.to_json(), default=str)
    # Inside <script>, "</" could end the element and "<!--" open a comment: escape both.
    data = data.replace("</", "<\\/").replace("<!--", "<\\!--")
    live = json.dumps(live_url)
    title = html.escape(f"taskrun run {record.id}")
    return _PAGE.replace("__TITLE__", title).replace("__DATA__", data).replace("__LIVE__", live)


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --ran: #2e7d32; --failed: #c62828; --cached: #9e9e9e; --running: #1565c0;
        --queued: #90caf9; --skipped: #ffb300; --waiting: #8e24aa; --pending: #e0e0e0;
        --cancelled: #6d4c41; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #212121; }
h1 { font-size: 1.3em; margin: 0.8em 0 0.2em; }
h2 { font-size: 1.1em; margin: 1.4em 0 0.4em; border-bottom: 1px solid #ddd; }
.meta { color: #555; margin: 0.1em 0; }
.meta code { background: #f4f4f4; padding: 0 0.3em; }
.state { display: inline-block; padding: 0 0.5em; border-radius: 3px; color: white;
         font-size: 0.85em; }
svg text { font: 11px system-ui, sans-serif; }
#timeline, #graph { overflow-x: auto; border: 1px solid #eee; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eee;
         vertical-align: top; }
th { background: #fafafa; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 0.5em; margin: 0.3em 0; overflow-x: auto;
      max-height: 24em; font-size: 12px; }
pre.err { background: #fff3f3; }
.filters { margin: 0.4em 0; }
.filters input, .filters select { font: inherit; margin-right: 1em; }
.legend span { margin-right: 1em; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
details summary { cursor: pointer; color: #1565c0; }
</style>
</head>
<body data-drawn="no">
<h1 id="title">taskrun run</h1>
<div id="meta"></div>
<h2>Timeline</h2>
<div class="legend" id="legend"></div>
<div id="timeline"></div>
<h2>Graph</h2>
<div id="graph"></div>
<h2>Tasks</h2>
<div class="filters">
  <input id="filter" type="search" placeholder="filter by name">
  <select id="state-filter"><option value="">every state</option></select>
  <span id="shown"></span>
</div>
<table>
  <thead><tr><th>task</th><th>state</th><th>start</th><th>took</th>
  <th>why / error</th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<script id="run-data" type="application/json">__DATA__</script>
<script>
"use strict";
const LIVE = __LIVE__;
const STATES = ["running", "queued", "waiting", "ran", "failed", "cancelled", "cached", "skipped",
                "pending"];
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                      : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function color(state) { return `var(--${STATES.includes(state) ? state : "pending"})`; }
function secs(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s < 10 ? s.toFixed(2) + "s" : s.toFixed(1) + "s";
  const m = Math.floor(s / 60), r = Math.floor(s % 60);
  return `${m}m${String(r).padStart(2, "0")}s`;
}
function hover(t) {
  let text = `${t.name}: ${t.state}`;
  if (t.duration !== null && t.duration !== undefined) text += ` (${secs(t.duration)})`;
  if (t.reasons && t.reasons.length) text += "\nwhy: " + t.reasons.join("; ");
  if (t.queued !== null && t.start !== null && t.start > t.queued)
    text += `\nqueued ${secs(t.start - t.queued)} for a slot`;
  if (t.error) text += "\n" + t.error;
  return text;
}

// One lane per worker slot: each run task takes the first lane free at its start.
function lanes(run) {
  const end = run.elapsed;
  const ran = run.tasks.filter(t => t.start !== null &&
      ["ran", "failed", "running", "cancelled"].includes(t.state));
  ran.sort((a, b) => a.start - b.start || a.name.localeCompare(b.name));
  const free = [];  // end time of each lane
  const out = [];
  for (const t of ran) {
    const stop = t.state === "running" ? end : (t.end ?? t.start + (t.duration || 0));
    let lane = free.findIndex(f => f <= t.start + 1e-9);
    if (lane < 0) { lane = free.length; free.push(0); }
    free[lane] = stop;
    out.push({task: t, lane: lane, from: t.start, to: stop});
  }
  return {bars: out, slots: free.length};
}

function drawTimeline(run) {
  const box = document.getElementById("timeline");
  box.replaceChildren();
  const {bars, slots} = lanes(run);
  const cached = run.tasks.filter(t => t.state === "cached");
  const skipped = run.tasks.filter(t => t.state === "skipped" ||
      (t.state === "cancelled" && t.start === null));
  const waiting = run.tasks.filter(t => ["queued", "waiting", "pending"].includes(t.state));
  const rows = [];
  for (let i = 0; i < slots; i++) rows.push(`slot ${i + 1}`);
  if (cached.length) rows.push("cache hits");
  if (skipped.length) rows.push("skipped");
  if (waiting.length) rows.push("not started");
  const total = Math.max(run.elapsed, ...bars.map(b => b.to), 0.001);
  const left = 90, width = Math.max(600, box.clientWidth - left - 20), lane = 22;
  const height = rows.length * lane + 24;
  const svg = el("svg:svg", {width: left + width + 10, height: height, id: "timeline-svg"});
  const x = s => left + (s / total) * width;
  rows.forEach((name, i) => {
    svg.append(el("svg:text", {x: 4, y: i * lane + 15}, name));
    svg.append(el("svg:line", {x1: left, x2: left + width, y1: (i + 1) * lane,
                                y2: (i + 1) * lane, stroke: "#eee"}));
  });
  for (let i = 0; i <= 4; i++) {
    const s = total * i / 4;
    svg.append(el("svg:text", {x: x(s) - (i === 4 ? 30 : 0), y: height - 6}, secs(s)));
  }
  let drawn = 0;
  function bar(t, row, from, to, fill) {
    const g = el("svg:g", {"class": "bar", "data-task": t.name});
    if (t.queued !== null && t.start !== null && t.start > t.queued && row < slots) {
      g.append(el("svg:rect", {x: x(t.queued), y: row * lane + 7, height: lane - 14,
        width: Math.max(1, x(t.start) - x(t.queued)), fill: "var(--queued)"}));
    }
    const r = el("svg:rect", {x: x(from), y: row * lane + 3, height: lane - 6,
      width: Math.max(2, x(to) - x(from)), fill: fill, rx: 2});
    r.append(el("svg:title", {}, hover(t)));
    g.append(r);
    if (x(to) - x(from) > 8 * t.name.length)
      g.append(el("svg:text", {x: x(from) + 3, y: row * lane + 15, fill: "white"}, t.name));
    svg.append(g);
    drawn++;
  }
  for (const b of bars) bar(b.task, b.lane, b.from, b.to, color(b.task.state));
  let row = slots;
  if (cached.length) {
    for (const t of cached) bar(t, row, t.start ?? 0, t.start ?? 0, color("cached"));
    row++;
  }
  if (skipped.length) {
    for (const t of skipped) bar(t, row, t.end ?? total, t.end ?? total, color("skipped"));
    row++;
  }
  for (const t of waiting) bar(t, row, t.queued ?? 0, t.queued ?? 0, color(t.state));
  box.append(svg);
  return drawn;
}

function drawGraph(run) {
  const box = document.getElementById("graph");
  box.replaceChildren();
  const byName = new Map(run.tasks.map(t => [t.name, t]));
  const depth = new Map();
  function level(name, seen) {
    if (depth.has(name)) return depth.get(name);
    if (seen.has(name)) return 0;
    seen.add(name);
    const t = byName.get(name);
    const ups = t ? t.deps.filter(n => byName.has(n)) : [];
    const d = Math.max(-1, ...ups.map(n => level(n, seen))) + 1;
    depth.set(name, d);
    return d;
  }
  run.tasks.forEach(t => level(t.name, new Set()));
  const columns = [];
  for (const t of run.tasks) (columns[depth.get(t.name)] ||= []).push(t);
  const w = 150, h = 26, gapX = 60, gapY = 8;
  const pos = new Map();
  columns.forEach((col, c) => col.forEach((t, r) => pos.set(t.name,
      {x: 10 + c * (w + gapX), y: 10 + r * (h + gapY)})));
  const rows = Math.max(1, ...columns.map(c => c.length));
  const svg = el("svg:svg", {width: 20 + columns.length * (w + gapX),
                             height: 20 + rows * (h + gapY), id: "graph-svg"});
  for (const t of run.tasks) for (const d of t.deps) {
    const a = pos.get(d), b = pos.get(t.name);
    if (!a || !b) continue;
    const y1 = a.y + h / 2, y2 = b.y + h / 2, mid = gapX / 2;
    svg.append(el("svg:path", {fill: "none", stroke: "#999",
      d: `M${a.x + w},${y1} C${a.x + w + mid},${y1} ${b.x - mid},${y2} ${b.x},${y2}`}));
  }
  for (const t of run.tasks) {
    const p = pos.get(t.name);
    const g = el("svg:g", {"class": "node", "data-task": t.name});
    const r = el("svg:rect", {x: p.x, y: p.y, width: w, height: h, rx: 4,
                              fill: color(t.state), stroke: "#555"});
    r.append(el("svg:title", {}, hover(t)));
    g.append(r);
    const label = t.name.length > 22 ? t.name.slice(0, 21) + "…" : t.name;
    const light = ["cached", "pending", "queued", "skipped"].includes(t.state);
    g.append(el("svg:text", {x: p.x + 6, y: p.y + 17, fill: light ? "black" : "white"}, label));
    svg.append(g);
  }
  box.append(svg);
}

function drawTable(run) {
  const body = document.getElementById("rows");
  body.replaceChildren();
  const tasks = [...run.tasks].sort((a, b) =>
      (a.start ?? Infinity) - (b.start ?? Infinity) || a.name.localeCompare(b.name));
  for (const t of tasks) {
    const tr = el("tr", {"data-task": t.name, "data-state": t.state});
    tr.append(el("td", {}, t.name));
    const st = el("td");
    st.append(el("span", {"class": "state", style: `background:${color(t.state)}`}, t.state));
    tr.append(st);
    tr.append(el("td", {"class": "num"}, t.start === null ? "" : "+" + secs(t.start)));
    tr.append(el("td", {"class": "num"}, t.state === "cached" ? `(${secs(t.saved)} saved)`
                                                          : secs(t.duration)));
    const why = el("td");
    why.append(el("div", {}, t.error || (t.reasons || []).join("; ")));
    if (t.output.length || t.traceback) {
      const d = el("details");
      const what = t.output.length ? `output (${t.output.length} lines)` : "traceback";
      d.append(el("summary", {}, what));
      if (t.output.length) d.append(el("pre", {"class": "out"}, t.output.join("\n")));
      if (t.traceback) d.append(el("pre", {"class": "err"}, t.traceback));
      why.append(d);
    }
    if (t.progress && t.state === "running") {
      const p = t.progress;
      const of = p.total ? "/" + p.total : "";
      why.append(el("div", {}, `progress ${p.done}${of} ${p.message || ""}`));
    }
    tr.append(why);
    body.append(tr);
  }
  applyFilters();
}

function applyFilters() {
  const text = document.getElementById("filter").value.toLowerCase();
  const state = document.getElementById("state-filter").value;
  let shown = 0, total = 0;
  for (const tr of document.querySelectorAll("#rows tr")) {
    total++;
    const ok = tr.dataset.task.toLowerCase().includes(text) &&
               (!state || tr.dataset.state === state);
    tr.hidden = !ok;
    if (ok) shown++;
  }
  document.getElementById("shown").textContent = `${shown} of ${total} tasks`;
}

function drawMeta(run) {
  document.getElementById("title").textContent = `taskrun run ${run.id}`;
  const meta = document.getElementById("meta");
  meta.replaceChildren();
  const h = run.header || {};
  const head = el("div", {"class": "meta"});
  const tone = {finished: "ran", running: "running"}[run.state] || "failed";
  head.append(el("span", {"class": "state", id: "run-state",
                          style: `background:${color(tone)}`}, run.state));
  const s = run.summary;
  head.append(" " + (s ? `${s.total} tasks: ${s.cached} cached, ${s.ran} ran, ${s.failed} failed` +
    (s.skipped ? `, ${s.skipped} skipped` : "") + ` in ${secs(s.elapsed)} (saved ${secs(s.saved)})`
    : `${secs(run.elapsed)} so far`));
  meta.append(head);
  const facts = [["command", (h.command || []).join(" ")],
                 ["started", h.started ? new Date(h.started * 1000).toLocaleString() : ""],
                 ["executor", `${h.executor} (${h.jobs} jobs), cache ${h.cache_mode}`],
                 ["targets", (h.targets || []).join(", ")],
                 ["runtime", Object.entries(h.runtime || {}).map(([k, v]) => `${k}=${v}`)
                                                            .join(", ")]];
  if (run.error) facts.push(["error", run.error]);
  for (const [k, v] of facts) {
    const d = el("div", {"class": "meta"}, k + ": ");
    d.append(el("code", {}, v));
    meta.append(d);
  }
}

function draw(run) {
  drawMeta(run);
  const bars = drawTimeline(run);
  drawGraph(run);
  drawTable(run);
  document.body.dataset.bars = String(bars);
  document.body.dataset.tasks = String(run.tasks.length);
  document.body.dataset.state = run.state;
  document.body.dataset.drawn = "yes";
}

const legend = document.getElementById("legend");
for (const s of STATES) {
  const span = el("span");
  span.append(el("i", {style: `background:${color(s)}`}));
  span.append(s);
  legend.append(span);
  document.getElementById("state-filter").append(el("option", {value: s}, s));
}
document.getElementById("filter").addEventListener("input", applyFilters);
document.getElementById("state-filter").addEventListener("change", applyFilters);
let current = JSON.parse(document.getElementById("run-data").textContent);
draw(current);
if (LIVE) {
  // Served by `taskrun serve`: follow the run while it goes on.
  const poll = async () => {
    try {
      const response = await fetch(LIVE, {cache: "no-store"});
      if (response.ok) { current = await response.json(); draw(current); }
    } catch (e) { /* the server went away: keep what is shown */ }
    if (current.state === "running") setTimeout(poll, 1000);
  };
  if (current.state === "running") setTimeout(poll, 1000);
}
</script>
</body>
</html>
"""
