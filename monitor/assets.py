"""The dashboard's style sheet and its one small script (served from ``/static/``).

Kept in Python so that they ship with the package; the Content-Security-Policy allows
scripts and styles from the server itself only (no inline code).
"""

from __future__ import annotations

STYLE = """
:root { --fg: #1d2733; --muted: #5b6b7c; --line: #d9e0e7; --bg: #f5f7f9; --card: #fff;
  --ok: #1f8a4c; --bad: #c0392b; --warn: #b7791f; --run: #2b6cb0; --idle: #718096; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 16px; padding: 10px 20px;
  background: #1d2733; color: #fff; }
header h1 { font-size: 17px; margin: 0; font-weight: 600; }
header a { color: #cfe2ff; }
header .spacer { flex: 1; }
header form { display: inline; }
header button { background: none; border: 1px solid #8aa; color: #fff; border-radius: 4px;
  padding: 2px 8px; cursor: pointer; }
main { padding: 16px 20px 40px; max-width: 1600px; }
h2 { font-size: 15px; margin: 22px 0 8px; }
a { color: #1a5fb4; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 14px; min-width: 110px; }
.tile .n { font-size: 22px; font-weight: 600; }
.tile .l { color: var(--muted); font-size: 12px; text-transform: uppercase; }
.charts { display: flex; flex-wrap: wrap; gap: 14px; }
.chart { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 10px; flex: 1 1 480px; max-width: 760px; }
.chart h3 { margin: 0 0 4px; font-size: 13px; font-weight: 600; }
.chart svg { width: 100%; height: auto; }
.grid { stroke: #e4e9ee; stroke-width: 1; }
.axis { font-size: 10px; fill: var(--muted); }
.bar-done { fill: #48a56e; } .bar-failed { fill: #d9534f; }
.median { fill: #2b6cb0; } .p90 { fill: #9ec1e8; }
.median-line { fill: none; stroke: #2b6cb0; stroke-width: 1.5; }
.box { fill: #cfe0f3; stroke: #2b6cb0; stroke-width: 1; }
.box-median { stroke: #1a365d; stroke-width: 2; } .whisker { stroke: #2b6cb0; stroke-width: 1; }
.share-0 { fill: #2b6cb0; background: #2b6cb0; } .share-1 { fill: #d69e2e; background: #d69e2e; }
.share-2 { fill: #48a56e; background: #48a56e; } .share-3 { fill: #d9534f; background: #d9534f; }
.share-4 { fill: #6b46c1; background: #6b46c1; } .share-5 { fill: #718096; background: #718096; }
.share-key { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 8px; }
table { border-collapse: collapse; background: var(--card); border: 1px solid var(--line);
  width: 100%; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: #eef2f6; font-weight: 600; font-size: 12px; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td { font-variant-numeric: tabular-nums; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.uid { font-family: ui-monospace, monospace; font-size: 11px; color: var(--muted);
  word-break: break-all; }
.muted, .empty { color: var(--muted); }
.reason { color: var(--bad); max-width: 420px; }
.state { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 11px;
  font-weight: 600; color: #fff; background: var(--idle); white-space: nowrap; }
.state-DONE { background: var(--ok); } .state-FAILED { background: var(--bad); }
.state-RUNNING, .state-DELIVERING { background: var(--run); }
.state-QUEUED, .state-READY { background: #6b46c1; } .state-RETRYING { background: var(--warn); }
.state-DISCARDED { background: #4a5568; } .state-RECEIVING { background: #319795; }
.state-NEEDS_REVIEW { background: #c05621; }
.state-NOT_APPLICABLE { background: #718096; }
.pill { padding: 2px 10px; border-radius: 10px; font-weight: 600; font-size: 12px; }
.pill.ok { background: var(--ok); } .pill.bad { background: var(--bad); }
.alive { color: var(--ok); font-weight: 600; } .silent { color: var(--bad); font-weight: 600; }
.stopped { color: var(--muted); font-weight: 600; }
.tag { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 10px;
  font-weight: 600; border: 1px solid var(--line); color: var(--muted); }
.tag.shadow { border-color: #6b46c1; color: #6b46c1; }
.meter .done { fill: var(--ok); }
.meter.wide { width: 240px; height: 10px; }
.filters a { margin-right: 10px; } .filters a.on { font-weight: 700; color: var(--fg); }
.flash { padding: 8px 12px; border-radius: 6px; background: #e6f4ea; border: 1px solid #b7dfc3;
  margin: 10px 0; }
.flash.error { background: #fdecea; border-color: #f5c2bd; }
.actions form { display: inline-block; margin: 0 6px 6px 0; }
.actions input[type=text] { width: 260px; padding: 4px 6px; }
button.act { padding: 3px 10px; border-radius: 4px; border: 1px solid #1a5fb4; background: #fff;
  color: #1a5fb4; cursor: pointer; }
button.danger { border-color: var(--bad); color: var(--bad); }
.login { max-width: 340px; margin: 60px auto; background: var(--card); padding: 20px 24px;
  border: 1px solid var(--line); border-radius: 8px; }
.login label { display: block; margin: 10px 0 4px; }
.login input { width: 100%; padding: 6px; }
.login button { margin-top: 14px; padding: 6px 14px; }
.meter { width: 90px; height: 8px; vertical-align: middle; }
.meter .back { fill: #e4e9ee; } .meter .fill { fill: #2b6cb0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
"""

#: Reloads the page every ``data-refresh`` seconds, except while the user types in a form
#: field or the tab is hidden (so that a discard reason is never lost to a reload), and
#: never once the page is being left: a reload that fires just after a click on a link or
#: on an action button would cancel that navigation and lose the user's click.
REFRESH_SCRIPT = """
(function () {
  var seconds = parseFloat(document.body.getAttribute("data-refresh") || "0");
  if (!seconds) { return; }
  var leaving = false;
  // A navigation that never happens (a failed one) must not stop the refresh for good.
  function leave() { leaving = true; setTimeout(function () { leaving = false; }, 10000); }
  window.addEventListener("beforeunload", leave);
  window.addEventListener("pageshow", function () { leaving = false; });
  document.addEventListener("submit", leave, true);
  document.addEventListener("click", function (event) {
    var link = event.target && event.target.closest ? event.target.closest("a[href]") : null;
    var newTab = event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey;
    if (link && !link.target && !newTab && link.getAttribute("href").charAt(0) !== "#") {
      leave();
    }
  }, true);
  setInterval(function () {
    var active = document.activeElement;
    var typing = active && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
    if (!leaving && !typing && !document.hidden) { window.location.reload(); }
  }, seconds * 1000);
})();
"""
