// Reading aids: following a node's strongest input or output (I / O), edited labels (with the file's own kept
// aside, so a link's labels apply to the graph as stored), and side panels that collapse to give the graph room.
import { S, isFeature, nodeLabel } from "./graph.js";
import { $, fmt } from "./util.js";

// The edge (index) carrying node i's strongest visible input (dir "in") or output ("out"), by |weight|; -1 if none.
export function strongestEdge(i, dir) {
  const [start, list, other] = dir === "in" ? [S.inStart, S.inList, S.src] : [S.outStart, S.outList, S.tgt];
  let best = -1, bw = -1;
  for (let k = start[i]; k < start[i + 1]; k++) {
    const e = list[k], j = other[e];
    if (j === i || !S.vis[j]) continue;
    const a = Math.abs(S.w[e]);
    if (a > bw) { bw = a; best = e; }
  }
  return best;
}

// One step from the selected node along its strongest input or output: {to: node id, say: the line the live region
// reads} or {to: null, say} when there is none to follow.
export function followStep(dir) {
  const i = S.nodeIdx.get(S.clicked);
  if (i === undefined) return { to: null, say: "select a node first" };
  const e = strongestEdge(i, dir), here = nodeLabel(S.nodes[i]);
  if (e < 0) return { to: null, say: `${here} has no ${dir === "in" ? "input" : "output"} in the graph shown` };
  const j = dir === "in" ? S.src[e] : S.tgt[e], t = S.tgt[e];
  const share = S.inTot[t] > 0 ? Math.abs(S.w[e]) / S.inTot[t] : 0;
  const of = dir === "in" ? "of its input" : "of that node's input";
  return { to: S.nodes[j].node_id,
    say: `${nodeLabel(S.nodes[j])}: strongest ${dir === "in" ? "input" : "output"} of ${here}, weight ${fmt(S.w[e], 2)}, ${(100 * share).toFixed(1)}% ${of}` };
}

// Edited labels. The first edit of a node keeps the label it came with, per graph object (graphs are cached), so
// showing the graph again starts from its stored labels and applies only the edits its URL carries.
const STORED = new WeakMap();

export function setLabel(id, text) {
  const n = S.byId.get(id);
  let kept = STORED.get(S.graph);
  if (!kept) STORED.set(S.graph, (kept = new Map()));
  if (!kept.has(id)) kept.set(id, n.clerp ?? "");
  n.clerp = text;
  // back to the stored label: no longer an edit (nothing for the link to carry, or Save to write)
  if (text === kept.get(id)) { delete S.labels[id]; S.dirtyLabels.delete(id); }
  else { S.labels[id] = text; S.dirtyLabels.add(id); }
}

// Save wrote the edits into the stored graph: they are its labels now.
export const labelsSaved = () => STORED.delete(S.graph);

// After prepare(g): the labels edited in an earlier showing go back to the stored ones.
export function storedLabels(g) {
  const kept = STORED.get(g);
  if (!kept) return;
  for (const [id, text] of kept) { const n = S.byId.get(id); if (n) n.clerp = text; }
  STORED.delete(g);
}

// The URL's labels ([[id, label], ...], urlstate.js has checked their shape) applied all together, or none: the
// first id that is not a feature of this graph refuses them, with one line (or "" when all applied).
export function applyLinkLabels(pairs) {
  if (!pairs || !pairs.length) return "";
  const bad = pairs.find(([id]) => !S.byId.has(id) || !isFeature(S.byId.get(id)));
  if (bad) return `the link's labels (clerps) were not applied: ${JSON.stringify(bad[0])} is not a feature of this graph`;
  for (const [id, text] of pairs) setLabel(id, text);
  return "";
}

// Side panels: each collapses to a strip holding its button; remembered in this browser (localStorage), not in
// links, since it is about the reader's screen rather than the graph.
const PANES_KEY = "mechscope.panes";
const PANES = { left: { name: "graphs panel" }, right: { name: "side panels" } };

function paneMemory() {
  try { return JSON.parse(localStorage.getItem(PANES_KEY) || "{}") || {}; } catch { return {}; }
}

export function setPane(side, collapsed, remember = true) {
  const box = $(side), btn = $(`${side}-toggle`);
  box.classList.toggle("collapsed", collapsed);
  btn.setAttribute("aria-expanded", String(!collapsed));
  const arrows = side === "left" ? ["«", "»"] : ["»", "«"];
  btn.textContent = collapsed ? arrows[1] : arrows[0];
  btn.title = `${collapsed ? "expand" : "collapse"} the ${PANES[side].name} (${side === "left" ? "[" : "]"})`;
  if (!remember) return;
  const mem = paneMemory();
  mem[side] = collapsed;
  try { localStorage.setItem(PANES_KEY, JSON.stringify(mem)); } catch { /* storage off: not remembered */ }
}

export const togglePane = (side) => setPane(side, !$(side).classList.contains("collapsed"));

export function bindPanes() {
  const mem = paneMemory();
  for (const side of ["left", "right"]) {
    setPane(side, mem[side] === true, false);
    $(`${side}-toggle`).addEventListener("click", () => togglePane(side));
  }
}
