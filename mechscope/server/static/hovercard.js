// The hover card of a node: its label, activation, influence and density, its edge weight to the selection (the
// clicked node, else the pinned ones) with that weight's share, and — for a feature — its top examples from the
// feature index, fetched once the pointer rests on it (each feature once per page).
import { S, hiddenBy, isFeature, nodeLabel, typeName } from "./graph.js";
import { selection } from "./focus.js";
import { $, api, el, fmt } from "./util.js";

const dashboards = new Map();      // "L/F" → the index's dashboard (or the promise of it)
const REST_MS = 120, EX_SHOWN = 2, EX_WINDOW = 7;
let restTimer = 0;

// edges between node i and the selection: [{e, dir: "to" | "from", other}]
function edgesToSelection(i) {
  const sel = new Set(selection()), out = [];
  if (sel.has(i)) return out;
  for (let k = S.outStart[i]; k < S.outStart[i + 1]; k++) { const e = S.outList[k]; if (sel.has(S.tgt[e])) out.push({ e, dir: "to", other: S.tgt[e] }); }
  for (let k = S.inStart[i]; k < S.inStart[i + 1]; k++) { const e = S.inList[k]; if (sel.has(S.src[e])) out.push({ e, dir: "from", other: S.src[e] }); }
  return out.sort((a, b) => Math.abs(S.w[b.e]) - Math.abs(S.w[a.e]));
}

function selectionLines(i) {
  const sel = selection();
  if (!sel.length || sel.includes(i)) return [];
  const es = edgesToSelection(i), what = S.clicked ? "the selected node" : `the ${sel.length} pinned node${sel.length > 1 ? "s" : ""}`;
  if (!es.length) return [el("div", { class: "card-sel muted-inv", id: "card-sel", "data-weight": "0" }, `no edge to ${what}`)];
  const lines = es.slice(0, 3).map(({ e, dir, other }) => {
    const into = dir === "to" ? other : i, share = S.inTot[into] > 0 ? Math.abs(S.w[e]) / S.inTot[into] : 0;
    const who = S.clicked ? "selected" : nodeLabel(S.nodes[other]);
    return el("div", { class: "card-sel", "data-weight": S.w[e], "data-dir": dir },
      `${dir === "to" ? `→ ${who}` : `${who} →`}: weight ${S.w[e] >= 0 ? "+" : ""}${fmt(S.w[e])} (${(100 * share).toFixed(1)}% of ${dir === "to" ? "its" : "this node's"} input)`);
  });
  lines[0].id = "card-sel";
  if (es.length > 3) lines.push(el("div", { class: "muted-inv" }, `… ${es.length - 3} more edges to the pinned nodes`));
  return lines;
}

// a window of an example around its strongest token, that token marked
function exampleLine(ex) {
  const a = Math.max(0, ex.max_pos - EX_WINDOW), b = Math.min(ex.tokens.length, ex.max_pos + EX_WINDOW + 1);
  const line = el("div", { class: "card-ex" }, el("span", { class: "muted-inv" }, `${fmt(ex.activation, 2)} `), a > 0 ? "…" : "");
  for (let t = a; t < b; t++) line.append(t === ex.max_pos ? el("b", {}, ex.tokens[t]) : ex.tokens[t]);
  if (b < ex.tokens.length) line.append("…");
  return line;
}

export function nodeCard(n) {
  const i = S.nodeIdx.get(n.node_id), box = el("div", { class: "node-card", "data-node": n.node_id });
  box.append(el("div", { class: "card-title" }, nodeLabel(n)));
  const stats = [typeName(n), `position ${n.ctx_idx}`];
  if (n.activation !== null && n.activation !== undefined) stats.push(`activation ${fmt(n.activation)}`);
  if (n.influence !== null && n.influence !== undefined) stats.push(`influence ${fmt(n.influence)}`);
  if (typeof n.density === "number") stats.push(`fires on ${(100 * n.density).toFixed(n.density < 0.01 ? 2 : 1)}% of tokens`);
  if (n.feature_type === "logit" && n.token_prob) stats.push(`p = ${fmt(n.token_prob)}`);
  box.append(el("div", { class: "card-stats" }, stats.join(" · ")));
  const why = hiddenBy(n);
  if (why) box.append(el("div", { class: "muted-inv" }, `shown although ${why === "dense" ? "dense" : why}: ${n.node_id === S.clicked ? "selected" : "pinned"}`));
  box.append(...selectionLines(i));
  if (isFeature(n)) box.append(el("div", { class: "card-examples" }));
  box.append(el("div", { class: "tip-hint" }, "click: open · Shift+click: pin · H: hide"));
  return box;
}

// Shows node n's card in #tooltip and, after the pointer rests, its top examples.
export function showNodeCard(n) {
  const tip = $("tooltip");
  tip.replaceChildren(nodeCard(n));
  clearTimeout(restTimer);
  if (!isFeature(n)) return;
  const key = `${n.layer}/${n.feature}`, id = n.node_id;
  restTimer = setTimeout(async () => {
    if (!dashboards.has(key)) dashboards.set(key, api(`/api/features/${n.layer}/${n.feature}`).catch(() => null));
    const d = await dashboards.get(key), box = tip.querySelector(".card-examples");
    if (!d || !box || S.hover !== id) return;
    if (d.label && !n.clerp) box.append(el("div", {}, `index label: “${d.label}”`));
    for (const ex of (d.examples || []).filter((x) => x.kind === "top").slice(0, EX_SHOWN)) box.append(exampleLine(ex));
    if (!box.children.length) box.append(el("div", { class: "muted-inv" }, d.missing_index ? "no feature index" : "no examples"));
    placeCard(tip, Number(tip.dataset.x), Number(tip.dataset.y));
  }, REST_MS);
}

// keeps the card inside the graph's frame, beside the pointer at (x, y)
export function placeCard(tip, x, y) {
  const wrap = tip.parentElement.getBoundingClientRect(), w = tip.offsetWidth, h = tip.offsetHeight;
  tip.dataset.x = x; tip.dataset.y = y;
  tip.style.left = `${x + 14 + w > wrap.width ? Math.max(0, x - 14 - w) : x + 14}px`;
  tip.style.top = `${y + 14 + h > wrap.height ? Math.max(0, y - 14 - h) : y + 14}px`;
}
