// The view's state in the URL, in the style of Neuronpedia's query parameters, so a link reproduces a view:
// ?slug=NAME&clickedId=ID&pinnedIds=A,B&supernodes=[["name","A","B"]]&pruningThreshold=0.8&edgeThreshold=0.01&view=cx,cy,k
// &densityThreshold=0.1 (features denser than this share of tokens are hidden; 1: none) &hiddenIds=A,B &edges=all
// A comparison adds &compare=B (and &by=id|label, &positions=1 when not the defaults).
import { S } from "./graph.js";

let timer = 0;

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
  const go = () => { if (S.name && !S.embedded) history.replaceState(null, "", urlFor()); };
  if (now) go(); else timer = setTimeout(go, 250);
}

export function viewFromUrl(v) {
  const c = document.getElementById("graph").getBoundingClientRect();
  return { k: v.k, x: c.width / 2 - v.cx * v.k, y: c.height / 2 - v.cy * v.k };
}
