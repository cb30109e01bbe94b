// Keyboard: arrow keys walk between nodes on the focused graph, shortcuts everywhere, a help overlay (?).
import { S } from "./graph.js";
import { fitView, requestDraw } from "./render.js";
import { toggleHidden } from "./filters.js";
import { followStep, togglePane } from "./reading.js";
import { writeUrl } from "./urlstate.js";
import { $ } from "./util.js";

export const SHORTCUTS = [
  ["← →", "previous / next node in the same layer"],
  ["↑ ↓", "nearest node in the layer above / below"],
  ["I", "follow the selected node's strongest input (largest |weight| into it)"],
  ["O", "follow its strongest output: O from a token walks towards the answer"],
  ["Shift + arrows", "pan the graph"],
  ["+ / −", "zoom in / out"],
  ["0", "fit the graph to the window"],
  ["P", "pin or unpin the selected node"],
  ["H", "hide the selected node (show hidden: the button above the graph)"],
  ["E", "all edges on / off (default: paths to the answer and the selection's edges)"],
  ["/", "find a node by label or id"],
  ["[ / ]", "collapse or expand the left / right panels"],
  ["Alt + ← / →", "back / forward: the previous graph or panel (the browser's keys)"],
  ["← → on the tabs", "previous / next panel"],
  ["Escape", "close this help, else clear the selection"],
  ["?", "show or hide this help"],
  ["Click / Shift+click", "open a node / pin it"],
];

function nextNode(dir) {
  const xy = S.layout.xy, cur = S.nodeIdx.get(S.clicked);
  if (cur === undefined) {
    // nothing selected: start at the most influential visible feature
    let best = -1;
    S.nodes.forEach((n, i) => { if (S.vis[i] && S.isFeat[i] && (best < 0 || (n.influence ?? 1) < (S.nodes[best].influence ?? 1))) best = i; });
    if (best < 0) S.nodes.forEach((n, i) => { if (best < 0 && S.vis[i]) best = i; });
    return best;
  }
  const cx = xy[2 * cur], cy = xy[2 * cur + 1], row = S.row[cur];
  let best = -1, bestD = Infinity;
  if (dir === "left" || dir === "right") {
    const s = dir === "right" ? 1 : -1;
    for (let i = 0; i < S.nodes.length; i++) {
      if (!S.vis[i] || i === cur || S.row[i] !== row) continue;
      const dx = (xy[2 * i] - cx) * s, dy = Math.abs(xy[2 * i + 1] - cy);
      if (dx < 0 || (dx === 0 && dy === 0)) continue;
      const d = dx + 4 * dy;          // stay on the same line of a wrapped cell when possible
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }
  // up: the nearest visible row above (larger layer), down: below
  const s = dir === "up" ? 1 : -1;
  let target = null;
  for (let i = 0; i < S.nodes.length; i++) {
    if (!S.vis[i]) continue;
    const dr = (S.row[i] - row) * s;
    if (dr > 0 && (target === null || dr < target)) target = dr;
  }
  if (target === null) return -1;
  for (let i = 0; i < S.nodes.length; i++) {
    if (!S.vis[i] || (S.row[i] - row) * s !== target) continue;
    const d = Math.abs(xy[2 * i] - cx) + 0.2 * Math.abs(xy[2 * i + 1] - cy);
    if (d < bestD) { bestD = d; best = i; }
  }
  return best;
}

// keeps a node chosen by keyboard in view
function reveal(i) {
  const c = $("graph").getBoundingClientRect(), x = S.layout.xy[2 * i] * S.view.k + S.view.x, y = S.layout.xy[2 * i + 1] * S.view.k + S.view.y;
  if (x < 60 || x > c.width - 20) S.view.x += c.width / 2 - x;
  if (y < 20 || y > c.height - 40) S.view.y += c.height / 2 - y;
}

export function toggleHelp(show) {
  const h = $("help");
  const on = show === undefined ? h.hidden : show;
  h.hidden = !on;
  if (on) $("help-close").focus(); else $("graph").focus();
}

export function bindKeys(app) {
  const list = $("help-list");
  for (const [k, what] of SHORTCUTS) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = what; list.append(dt, dd);
  }
  $("help-btn").addEventListener("click", () => toggleHelp(true));
  $("help-close").addEventListener("click", () => toggleHelp(false));
  const c = $("graph");
  c.addEventListener("keydown", (e) => {
    if (!S.graph) return;
    const dirs = { ArrowLeft: "left", ArrowRight: "right", ArrowUp: "up", ArrowDown: "down" };
    if (dirs[e.key] && e.shiftKey) {
      const step = 60, d = { left: [step, 0], right: [-step, 0], up: [0, step], down: [0, -step] }[dirs[e.key]];
      S.view.x += d[0]; S.view.y += d[1]; S.fitted = false; requestDraw(); writeUrl(); e.preventDefault(); return;
    }
    if (dirs[e.key]) {
      e.preventDefault();
      const i = nextNode(dirs[e.key]);
      if (i >= 0) { reveal(i); app.select(S.nodes[i].node_id); c.focus(); }
      return;
    }
    const r = c.getBoundingClientRect();
    if (e.key === "+" || e.key === "=") { app.zoomAt(r.width / 2, r.height / 2, 1.25); e.preventDefault(); }
    else if (e.key === "-" || e.key === "_") { app.zoomAt(r.width / 2, r.height / 2, 0.8); e.preventDefault(); }
    else if (e.key === "0") { fitView(); requestDraw(); writeUrl(); e.preventDefault(); }
    else if ((e.key === "p" || e.key === "P") && S.clicked) { app.togglePin(S.clicked); e.preventDefault(); }
    else if ((e.key === "h" || e.key === "H") && S.clicked) { toggleHidden(S.clicked); e.preventDefault(); }
    else if (e.key === "e" || e.key === "E") { $("all-edges").click(); c.focus(); e.preventDefault(); }
    else if (/^[iIoO]$/.test(e.key) && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      // one line in the live region per key press: where the step led, or why it could not
      const step = followStep(/^[iI]$/.test(e.key) ? "in" : "out");
      if (!step.to) { $("announce").textContent = step.say; return; }
      app.select(step.to, { announce: step.say });
      const i = S.nodeIdx.get(step.to);
      if (S.vis[i]) { reveal(i); requestDraw(); writeUrl(); }
      c.focus();
    }
  });
  document.addEventListener("keydown", (e) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName);
    if (e.key === "Escape") {
      if (!$("help").hidden) toggleHelp(false);
      else if (!typing && S.clicked) { app.select(null); $("graph").focus(); }
      return;
    }
    if (e.key === "?" && !typing) { e.preventDefault(); toggleHelp(); }
    else if ((e.key === "[" || e.key === "]") && !typing && !e.ctrlKey && !e.metaKey && !e.altKey && $("help").hidden) {
      e.preventDefault(); togglePane(e.key === "[" ? "left" : "right");
    }
  });
}

// The panels' tabs (WAI-ARIA tabs): ← → Home End move between them and show the one reached.
export function bindTabs(showTab) {
  const tabs = () => [...document.querySelectorAll("#tabs [role=tab]")].filter((b) => b.offsetParent !== null);
  $("tabs").addEventListener("keydown", (e) => {
    const list = tabs(), at = list.indexOf(document.activeElement);
    if (at < 0) return;
    const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: list.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    const b = list[(to + list.length) % list.length];
    showTab(b.dataset.tab); b.focus();
  });
}
