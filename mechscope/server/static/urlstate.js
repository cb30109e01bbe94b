// The view's state in the URL, in the style of Neuronpedia's query parameters, so a link reproduces a view:
// ?slug=NAME&clickedId=ID&pinnedIds=A,B&supernodes=[["name","A","B"]]&pruningThreshold=0.8&edgeThreshold=0.01&view=cx,cy,k
// &densityThreshold=0.1 (features denser than this share of tokens are hidden; 1: none) &hiddenIds=A,B &edges=all
// A comparison adds &compare=B (and &by=id|label, &positions=1 when not the defaults). The open panel is &tab=NAME
// (none: the Node panel); labels edited in the page are &clerps=[["ID","label"],...] (Neuronpedia's subgraph labels).
// Opening another graph or panel is a new history entry (Back returns to the one before); everything else, a hover,
// a slider, a selection, only rewrites the current entry.
import { S } from "./graph.js";
import { H, setStatus } from "./util.js";

let timer = 0;
export const TABS = ["feature", "subgraph", "intervene", "probe", "attend", "compare"];
const CLERPS_MAX = 5000, CLERP_CHARS = 300;     // what the server's Save takes

// clerps=[["id","label"],...]: {pairs} or {error} (one line); any malformed entry refuses them all
export function parseClerps(text) {
  let v;
  try { v = JSON.parse(text); } catch { return { error: "clerps is not JSON: expected [[\"node id\", \"label\"], ...]" }; }
  if (!Array.isArray(v)) return { error: "clerps should be a list of [\"node id\", \"label\"] pairs" };
  if (v.length > CLERPS_MAX) return { error: `clerps holds ${v.length} labels, more than ${CLERPS_MAX}` };
  for (let i = 0; i < v.length; i++) {
    const p = v[i];
    if (!Array.isArray(p) || p.length !== 2 || typeof p[0] !== "string" || !p[0] || typeof p[1] !== "string")
      return { error: `clerps[${i}] should be ["node id", "label"]` };
    if (p[1].length > CLERP_CHARS) return { error: `clerps[${i}]: a label of ${p[1].length} characters, more than ${CLERP_CHARS}` };
  }
  return { pairs: v };
}

export function readUrl() {
  const q = new URLSearchParams(location.search), out = {};
  const legacy = /graph=([^&]+)/.exec(location.hash);          // links written by older pages
  out.slug = q.get("slug") || (legacy ? decodeURIComponent(legacy[1]) : null);
  out.compare = q.get("compare") || null;
  out.by = ["id", "label"].includes(q.get("by")) ? q.get("by") : "auto";
  out.positions = q.get("positions") === "1";
  out.clickedId = q.get("clickedId") || null;
  out.pinnedIds = q.get("pinnedIds") ? q.get("pinnedIds").split(",").filter(Boolean) : null;
  try {
    const sn = q.get("supernodes") ? JSON.parse(q.get("supernodes")) : null;
    out.supernodes = Array.isArray(sn) ? sn.filter((x) => Array.isArray(x) && x.length >= 1).map((x) => x.map(String)) : null;
  } catch { out.supernodes = null; }
  const num = (k) => { const v = q.get(k); return v === null || v === "" || !Number.isFinite(Number(v)) ? null : Number(v); };
  out.pruningThreshold = num("pruningThreshold");
  out.edgeThreshold = num("edgeThreshold");
  out.densityThreshold = num("densityThreshold");
  if (out.densityThreshold !== null && !(out.densityThreshold > 0 && out.densityThreshold <= 1)) {
    out.refused = `densityThreshold must lie in (0, 1] (a share of tokens); ${q.get("densityThreshold")} was ignored`;
    out.densityThreshold = null;
  }
  const refused = out.refused ? [out.refused] : [];
  out.clerps = null;
  if (q.get("clerps")) {
    const c = parseClerps(q.get("clerps"));
    if (c.error) refused.push(`the link's labels were not applied: ${c.error}`); else out.clerps = c.pairs;
  }
  out.refused = refused.join("; ") || undefined;
  out.tab = TABS.includes(q.get("tab")) ? q.get("tab") : null;
  out.hiddenIds = q.get("hiddenIds") ? q.get("hiddenIds").split(",").filter(Boolean) : null;
  out.allEdges = q.get("edges") === "all";
  const v = (q.get("view") || "").split(",").map(Number);
  out.view = v.length === 3 && v.every(Number.isFinite) && v[2] > 0 ? { cx: v[0], cy: v[1], k: v[2] } : null;
  return out;
}

export function urlFor() {
  const q = new URLSearchParams();
  if (!S.name || S.fromFile) return location.pathname;    // a graph opened from a file has no link
  q.set("slug", S.name);
  if (S.compare) {
    q.set("compare", S.compare.b);
    if (S.compare.by !== "auto") q.set("by", S.compare.by);
    if (S.compare.positions) q.set("positions", "1");
  }
  if (S.clicked) q.set("clickedId", S.clicked);
  if (S.pinned.length) q.set("pinnedIds", S.pinned.join(","));
  if (S.supernodes.length) q.set("supernodes", JSON.stringify(S.supernodes));
  q.set("pruningThreshold", String(S.prune));
  q.set("densityThreshold", String(Number(S.densityThr.toPrecision(4))));
  if (S.hidden.size) q.set("hiddenIds", [...S.hidden].join(","));
  if (S.allEdges) q.set("edges", "all");
  const edited = Object.entries(S.labels);
  if (edited.length) q.set("clerps", JSON.stringify(edited));
  if (S.tab && S.tab !== "feature") q.set("tab", S.tab);
  q.set("edgeThreshold", String(Number(S.edgeThr.toPrecision(4))));
  const c = document.getElementById("graph").getBoundingClientRect(), v = S.view;
  // the world point at the canvas centre and the zoom: the same view in any window size
  const cx = (c.width / 2 - v.x) / v.k, cy = (c.height / 2 - v.y) / v.k;
  q.set("view", `${cx.toFixed(1)},${cy.toFixed(1)},${v.k.toPrecision(4)}`);
  return `${location.pathname}?${q.toString()}`;
}

// replaceState, debounced: panning must not flood the history
export function writeUrl(now = false) {
  clearTimeout(timer);
  const go = () => { if (S.name && !S.embedded) history.replaceState(entryState(), "", urlFor()); };
  if (now) go(); else timer = setTimeout(go, 250);
}

// a graph from a file has no link: its history entry names the file instead
const entryState = () => (S.fromFile ? { file: S.fromFile } : null);

// a navigation's new entry (the caller has written the one being left with writeUrl(true))
export function pushUrl() {
  clearTimeout(timer);
  if (S.name && !S.embedded) history.pushState(entryState(), "", urlFor());
}

// Back / Forward: the entry's state. Within the open graph, when only the panel, the selection or the view differ,
// those change in place; otherwise the graph is shown again from the entry (graphs are cached: no download).
let popSeq = 0;
export async function restoreFromUrl() {
  if (S.embedded) return;
  const st = readUrl(), seq = ++popSeq;
  if (!st.slug) {
    const file = history.state && history.state.file;
    if (file && S.fromFile !== file) setStatus(`${file} was opened from a file, which has no link: open it again`, true);
    return;
  }
  if (sameGraph(st)) {
    S.restoring = true;
    try {
      if ((st.clickedId || null) !== S.clicked) H.select(st.clickedId && S.byId.has(st.clickedId) ? st.clickedId : null, { keepTab: true });
      if (st.view) { S.view = viewFromUrl(st.view); S.fitted = false; H.redraw(); }
      H.showTab(st.tab || "feature", { restore: true });
    } finally { S.restoring = false; }
    return;
  }
  try {
    // both graphs downloaded first, so that a later Back or Forward that finished sooner is not overwritten
    await Promise.all([st.slug, st.compare].filter(Boolean).map((n) => H.fetchGraph(n)));
    if (seq !== popSeq) return;
    if (st.compare) await H.openCompare(st.slug, st.compare, { ...st, tab: st.tab || "feature" }, { by: st.by, positions: st.positions });
    else await H.openGraph(st.slug, { ...st, tab: st.tab || "feature" });
  } catch (e) { setStatus(e.message, true); }
}

// the entry shows the open graph, with the same pins, filters and labels (only tab, clickedId and view may differ)
function sameGraph(st) {
  if (!S.graph || S.fromFile || st.slug !== S.name || (st.compare || null) !== (S.compare ? S.compare.b : null)) return false;
  const norm = (search) => {
    const q = new URLSearchParams(search);
    for (const k of ["tab", "clickedId", "view"]) q.delete(k);
    q.sort();
    return q.toString();
  };
  return norm(urlFor().split("?")[1] || "") === norm(location.search);
}

export function viewFromUrl(v) {
  const c = document.getElementById("graph").getBoundingClientRect();
  return { k: v.k, x: c.width / 2 - v.cx * v.k, y: c.height / 2 - v.cy * v.k };
}
