// Drawing the graph: on animation frames only, edges and nodes cached in an offscreen canvas that pans and
// zooms as a bitmap while the user moves and is redrawn once they stop; hover and selection on an overlay.
// Zoom spreads the layout (positions scale, glyphs keep their size).
import { DX, S, edgesOver, isError, isFeature } from "./graph.js";
import { focusEdges, mainPath, shares } from "./focus.js";
import { AXIS_W, TOKEN_H, drawAxes, placeLabels } from "./labels.js";

const SETTLE_MS = 140;
const EDGE_BUDGET_FAR = 25000, EDGE_BUDGET_NEAR = 120000;   // level of detail: fewer, stronger edges when zoomed out
const R = { canvas: null, cache: null, cacheView: null, cacheKey: "", dirty: true, pending: false, lastMove: 0,
  settleTimer: 0, frameTimes: [], drawn: 0, labels: [], tokens: [], overlayEdges: 0, glyphScale: 1 };
export const RENDER = R;

export function attach(canvas) {
  R.canvas = canvas;
  if (window.ResizeObserver) new ResizeObserver(() => requestDraw()).observe(canvas);   // panes opening, window resizes
}

// kind: "full" (state changed: redraw the cache), "view" (pan/zoom: reuse the cache until the user stops),
// "overlay" (hover: the cache stays), "settled" (the motion stopped: redraw the cache at the new view)
export function requestDraw(kind = "full") {
  if (kind === "full") R.dirty = true;
  else if (kind === "view") { R.lastMove = performance.now(); S.fitted = false; }
  if (!R.pending) { R.pending = true; requestAnimationFrame(frame); }
}

function size() {
  const r = R.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
  if (R.canvas.width !== w || R.canvas.height !== h) {
    R.canvas.width = w; R.canvas.height = h; R.dirty = true;
    if (S.fitted && S.layout) fitView();        // a view the user has not moved yet follows the canvas size
  }
  return { w: r.width, h: r.height, dpr };
}

function stateKey() {
  return [S.name, S.prune, S.edgeThr, S.clicked, S.pinned.join(","), JSON.stringify(S.supernodes), S.layoutGen, S.allEdges].join("|");
}

function frame() {
  R.pending = false;
  const t0 = performance.now(), sz = size(), ctx = R.canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, R.canvas.width, R.canvas.height);
  if (!S.graph || !S.layout) return;
  if (!R.cache || R.cache.width !== R.canvas.width || R.cache.height !== R.canvas.height) {
    R.cache = document.createElement("canvas"); R.cache.width = R.canvas.width; R.cache.height = R.canvas.height; R.dirty = true;
  }
  const key = stateKey(), v = S.view, cv = R.cacheView;
  const moving = t0 - R.lastMove < SETTLE_MS;
  const same = cv && cv.x === v.x && cv.y === v.y && cv.k === v.k;
  if (R.dirty || key !== R.cacheKey || (!same && !moving)) {
    const c = R.cache.getContext("2d");
    c.setTransform(sz.dpr, 0, 0, sz.dpr, 0, 0);
    c.clearRect(0, 0, sz.w, sz.h);
    drawScene(c, sz.w, sz.h, v);
    R.cacheView = { ...v }; R.cacheKey = key; R.dirty = false;
    ctx.drawImage(R.cache, 0, 0);
  } else if (same) {
    if (R.progress) {
      // more edges than one frame should draw: the weaker ones go in later frames, beneath what is there
      const c = R.cache.getContext("2d");
      c.setTransform(sz.dpr, 0, 0, sz.dpr, 0, 0);
      c.globalCompositeOperation = "destination-over";
      drawEdgeChunk(c, sz.w, sz.h, v);
      c.globalCompositeOperation = "source-over";
    }
    ctx.drawImage(R.cache, 0, 0);
  } else {
    // the cached bitmap moved by the view change: screen' = (screen − t)·s + t'
    const s = v.k / cv.k, dpr = sz.dpr;
    ctx.setTransform(s, 0, 0, s, (v.x - cv.x * s) * dpr, (v.y - cv.y * s) * dpr);
    ctx.drawImage(R.cache, 0, 0);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    clearTimeout(R.settleTimer);
    R.settleTimer = setTimeout(() => requestDraw("settled"), SETTLE_MS + 10);
  }
  ctx.setTransform(sz.dpr, 0, 0, sz.dpr, 0, 0);
  drawOverlay(ctx, v);
  R.tokens = drawAxes(ctx, sz.w, sz.h, v);
  R.frameTimes.push(performance.now() - t0);
  if (R.frameTimes.length > 300) R.frameTimes.shift();
  if (R.progress && !R.pending) { R.pending = true; requestAnimationFrame(frame); }
}

export const toScreen = (i, v = S.view) => ({ x: S.layout.xy[2 * i] * v.k + v.x, y: S.layout.xy[2 * i + 1] * v.k + v.y });

// the fitted view of the current layout (room above the graph for stacked output labels)
export function fittedView() {
  const r = R.canvas.getBoundingClientRect();
  const TOP = 56, W = Math.max(50, r.width - AXIS_W - 20), H = Math.max(50, r.height - TOKEN_H - TOP - 12);
  const k = Math.min(W / S.world.w, H / S.world.h);
  return { k, x: AXIS_W + 10 + (W - S.world.w * k) / 2, y: TOP + (H - S.world.h * k) / 2 };
}

export function fitView() {
  S.view = fittedView();
  S.fitK = S.view.k; S.fitted = true;
}

// a comparison's overlay colours nodes and edges by what the diff says of them
export const DIFF_COLORS = { appear: "#1a9850", disappear: "#d73027", change: "#e08a00", same: "#9aa3b5", unaligned: "#c9ccd3" };
const DIFF_EDGE_RGB = ["26,152,80", "215,48,39", "224,138,0", "154,163,181"];

export function nodeColor(n) {
  if (n.diff) return DIFF_COLORS[n.diff.status] || DIFF_COLORS.same;
  switch (n.feature_type) {
    case "embedding": return "#2e7d32";
    case "logit": return "#c45500";
    case "mlp reconstruction error": return "#8a8986";
    default: {
      const a = Math.min(1, Math.log1p(Math.max(0, n.activation || 0)) / 3);
      return `rgb(${Math.round(110 - 90 * a)},${Math.round(140 - 80 * a)},${Math.round(225 - 40 * a)})`;
    }
  }
}

export function radius(n) {
  if (!isFeature(n)) return 4.5;
  return 2.5 + 3.5 * (1 - Math.min(1, n.influence ?? 1));
}

export const EDGE_POS = "26,95,180", EDGE_NEG = "192,28,40";
const LEVELS = 5, GROUPS = 4;

// an edge's colour group: its sign (0 excites, 1 inhibits), or in a comparison its status (0 appears,
// 1 disappears, 2 changes, 3 same)
export const edgeGroup = (e) => (S.estat ? S.estat[e] : S.w[e] >= 0 ? 0 : 1);
export const groupRGB = (gr) => (S.estat ? DIFF_EDGE_RGB[gr] : gr === 0 ? EDGE_POS : EDGE_NEG);

// The edges to draw in view v: strongest first, above the user's threshold, both ends shown, on screen, within
// the level-of-detail budget. Calls fn(e, level) per edge. Shared by the canvas and the SVG export.
// Returns {drawn, next, done}: from rank `from`, at most `max` edges; next: the rank to continue from.
// Default (S.allEdges false): the focus edges (focus.js), levels relative to the strongest of them.
export const edgeBudget = (v) => (!S.allEdges ? Infinity : S.fitK && v.k < S.fitK * 1.6 ? EDGE_BUDGET_FAR : EDGE_BUDGET_NEAR);
export function forEachDrawnEdge(v, w, h, fn, from = 0, max = edgeBudget(v)) {
  const F = S.allEdges ? null : focusEdges();
  const n = F ? F.list.length : edgesOver(S.edgeThr);
  const xy = S.layout.xy, vis = S.vis;
  let drawn = 0, r = from;
  for (; r < n && drawn < max; r++) {
    const e = F ? F.list[r] : S.order[r], a = S.src[e], b = S.tgt[e];
    if (!vis[a] || !vis[b]) continue;
    const x1 = xy[2 * a] * v.k + v.x, y1 = xy[2 * a + 1] * v.k + v.y, x2 = xy[2 * b] * v.k + v.x, y2 = xy[2 * b + 1] * v.k + v.y;
    if ((x1 < 0 && x2 < 0) || (x1 > w && x2 > w) || (y1 < 0 && y2 < 0) || (y1 > h && y2 > h)) continue;
    const rel = F ? Math.abs(S.w[e]) / F.max : S.absSorted[r] / S.maxW;
    fn(e, Math.min(LEVELS - 1, Math.floor(Math.sqrt(rel) * LEVELS)), x1, y1, x2, y2);
    drawn++;
  }
  return { drawn, next: r, done: r >= n };
}

// the edges on screen now: the cached layer's and the overlay's (for tests and the text view)
export function drawnEdges() {
  const r = R.canvas.getBoundingClientRect(), out = new Set();
  forEachDrawnEdge(S.view, r.width, r.height, (e) => out.add(e), 0, R.drawn);
  for (const e of overlayEdgeList()) out.add(e);
  return [...out];
}

// edges per frame, adapted so a chunk takes about CHUNK_MS: long lines (zoomed in) cost more than short ones
const CHUNK_MS = 40;
R.chunk = 8000;

// the next chunk of edges (R.progress says where the last one stopped) into the cache
function drawEdgeChunk(c, w, h, v) {
  const P = R.progress, dim = S.clicked !== null && S.clicked !== undefined, t0 = performance.now();
  // one path per (colour group, strength level), so 15k edges cost ten strokes
  const buckets = Array.from({ length: GROUPS * LEVELS }, () => []);
  const res = forEachDrawnEdge(v, w, h, (e, lvl, x1, y1, x2, y2) => { buckets[edgeGroup(e) * LEVELS + lvl].push(x1, y1, x2, y2); },
    P.next, Math.min(R.chunk, P.budget - P.drawn));
  P.drawn += res.drawn; P.next = res.next;
  R.drawn = P.drawn;
  if (res.done || P.drawn >= P.budget) R.progress = null;
  c.lineCap = "round";
  buckets.forEach((seg, bi) => {
    if (!seg.length) return;
    const lvl = bi % LEVELS, rel = (lvl + 0.5) / LEVELS;
    const alpha = (0.12 + 0.6 * rel * rel) * (dim ? 0.3 : 1);
    c.strokeStyle = `rgba(${groupRGB(Math.floor(bi / LEVELS))},${alpha.toFixed(3)})`;
    c.lineWidth = 0.5 + 2.5 * rel * rel;
    c.beginPath();
    for (let i = 0; i < seg.length; i += 4) { c.moveTo(seg[i], seg[i + 1]); c.lineTo(seg[i + 2], seg[i + 3]); }
    c.stroke();
  });
  c.getImageData(0, 0, 1, 1);      // canvas work is deferred: reading a pixel makes it rasterize now, so the timing is real
  (R.chunkLog = R.chunkLog || []).push([res.drawn, Math.round(performance.now() - t0)]);
  if (R.chunkLog.length > 50) R.chunkLog.shift();
  if (res.drawn >= R.chunk / 2) R.chunk = Math.round(Math.min(30000, Math.max(1000, (R.chunk * CHUNK_MS) / Math.max(1, performance.now() - t0))));
}

// glyphs shrink when the layout's spacing on screen is smaller than they are, so a busy column at fit stays a
// field of dots instead of a solid bar
export const glyphScale = (v) => Math.min(1, Math.max(0.25, (0.9 * DX * v.k) / 12));

export const TINT_POS = "26,95,180", TINT_NEG = "192,28,40";

function drawScene(c, w, h, v) {
  const dim = S.clicked !== null && S.clicked !== undefined;
  R.progress = { next: 0, drawn: 0, budget: edgeBudget(v) };
  drawEdgeChunk(c, w, h, v);
  // nodes: tinted by their share of the selection's input (or the selection's share of theirs)
  const near = dim ? neighbours(S.nodeIdx.get(S.clicked)) : null, share = S.compare ? null : shares(), gs = glyphScale(v);
  R.glyphScale = gs;
  c.globalAlpha = 1;
  S.nodes.forEach((n, i) => {
    if (!S.vis[i]) return;
    const p = toScreen(i, v);
    if (p.x < -10 || p.y < -10 || p.x > w + 10 || p.y > h + 10) return;
    c.globalAlpha = dim && !near.has(i) ? 0.3 : 1;
    const sh = share ? share[i] : 0, r = radius(n) * gs;
    drawGlyph(c, n, p.x, p.y, sh ? r + 1.5 * Math.sqrt(Math.min(1, Math.abs(sh))) : r);
    if (sh) { c.fillStyle = `rgba(${sh > 0 ? TINT_POS : TINT_NEG},${(0.25 + 0.75 * Math.sqrt(Math.min(1, Math.abs(sh)))).toFixed(3)})`; c.fill(); }
    if (S.pinned.includes(n.node_id)) { c.strokeStyle = "#b8860b"; c.lineWidth = 2; c.stroke(); }
  });
  c.globalAlpha = 1;
  drawSupernodes(c, v);
  // labels first for the selection's strongest neighbours, the pinned nodes and the nodes on the token paths
  const first = [];
  if (share) { const rel = []; share.forEach((x, i) => { if (x) rel.push(i); }); rel.sort((a, b) => Math.abs(share[b]) - Math.abs(share[a])); first.push(...rel.slice(0, 40)); }
  for (const id of S.pinned) if (S.nodeIdx.has(id)) first.push(S.nodeIdx.get(id));
  if (!S.allEdges) { const mp = mainPath(); if (mp) for (const e of mp.edges) first.push(S.tgt[e]); }
  R.labels = placeLabels(c, w, h, v, first);
}

export function drawGlyph(c, n, x, y, r) {
  c.fillStyle = nodeColor(n);
  c.beginPath();
  if (isError(n)) c.rect(x - r, y - r, 2 * r, 2 * r);
  else if (n.feature_type === "embedding" || n.feature_type === "logit") { c.moveTo(x, y - r - 1); c.lineTo(x + r + 1, y); c.lineTo(x, y + r + 1); c.lineTo(x - r - 1, y); c.closePath(); }
  else c.arc(x, y, r, 0, 2 * Math.PI);
  c.fill();
}

export function neighbours(i) {
  const out = new Set([i]);
  if (i === undefined) return out;
  for (let k = S.inStart[i]; k < S.inStart[i + 1]; k++) out.add(S.src[S.inList[k]]);
  for (let k = S.outStart[i]; k < S.outStart[i + 1]; k++) out.add(S.tgt[S.outList[k]]);
  return out;
}

// supernode boxes: a dashed outline around the members in view, with the name
export function supernodeBoxes(v) {
  const out = [];
  for (const sn of S.supernodes) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const id of sn.slice(1)) {
      const i = S.nodeIdx.get(id);
      if (i === undefined || !S.vis[i]) continue;
      const p = toScreen(i, v);
      x0 = Math.min(x0, p.x); y0 = Math.min(y0, p.y); x1 = Math.max(x1, p.x); y1 = Math.max(y1, p.y);
    }
    if (x0 !== Infinity) out.push({ name: sn[0], x: x0 - 8, y: y0 - 8, w: x1 - x0 + 16, h: y1 - y0 + 16 });
  }
  return out;
}

function drawSupernodes(c, v) {
  c.save();
  c.setLineDash([4, 3]); c.strokeStyle = "#9a6700"; c.lineWidth = 1.5; c.font = "bold 11px system-ui, sans-serif"; c.textAlign = "left";
  for (const b of supernodeBoxes(v)) {
    c.strokeRect(b.x, b.y, b.w, b.h);
    c.fillStyle = "#7a5200"; c.fillText("◆ " + b.name, b.x, b.y - 3);
  }
  c.restore();
}

function drawOverlay(c, v) {
  for (const e of [S.clickedEdge, S.hoverEdge]) {
    if (e === null || e === undefined || e >= S.E) continue;
    const a = toScreen(S.src[e], v), b = toScreen(S.tgt[e], v);
    c.lineCap = "round";
    c.strokeStyle = "rgba(255,255,255,0.9)"; c.lineWidth = 7;
    c.beginPath(); c.moveTo(a.x, a.y); c.lineTo(b.x, b.y); c.stroke();
    c.strokeStyle = `rgb(${groupRGB(edgeGroup(e))})`; c.lineWidth = e === S.clickedEdge ? 4 : 3;
    c.beginPath(); c.moveTo(a.x, a.y); c.lineTo(b.x, b.y); c.stroke();
  }
  const focus = [S.clicked, S.hover].filter((x) => x !== null && x !== undefined);
  let count = 0;
  for (const id of focus) {
    const i = S.nodeIdx.get(id);
    if (i === undefined || !S.vis[i]) continue;
    for (const [start, list, other] of [[S.inStart, S.inList, S.src], [S.outStart, S.outList, S.tgt]]) {
      for (let k = start[i]; k < start[i + 1]; k++) {
        const e = list[k], j = other[e];
        if (!S.vis[j]) continue;
        count++;
        const rel = Math.abs(S.w[e]) / S.maxW, a = toScreen(i, v), b = toScreen(j, v);
        c.strokeStyle = `rgba(${groupRGB(edgeGroup(e))},${(0.35 + 0.65 * Math.sqrt(rel)).toFixed(3)})`;
        c.lineWidth = 1 + 3 * Math.sqrt(rel);
        c.beginPath(); c.moveTo(a.x, a.y); c.lineTo(b.x, b.y); c.stroke();
        c.beginPath(); c.arc(b.x, b.y, radius(S.nodes[j]) + 2.5, 0, 2 * Math.PI);
        c.strokeStyle = "#1d2330"; c.lineWidth = 1; c.stroke();
      }
    }
    const p = toScreen(i, v), n = S.nodes[i];
    drawGlyph(c, n, p.x, p.y, radius(n) + 1);
    c.beginPath(); c.arc(p.x, p.y, radius(n) + 4, 0, 2 * Math.PI);
    c.strokeStyle = id === S.clicked ? "#000" : "#555"; c.lineWidth = 2; c.stroke();
  }
  R.overlayEdges = count;
}

// the clicked node's edges (drawn on the overlay, so they can be hovered and clicked too)
export function overlayEdgeList() {
  const i = S.clicked ? S.nodeIdx.get(S.clicked) : undefined, out = [];
  if (i === undefined || !S.vis[i]) return out;
  for (let k = S.inStart[i]; k < S.inStart[i + 1]; k++) if (S.vis[S.src[S.inList[k]]]) out.push(S.inList[k]);
  for (let k = S.outStart[i]; k < S.outStart[i + 1]; k++) if (S.vis[S.tgt[S.outList[k]]]) out.push(S.outList[k]);
  return out;
}

export function nodeAt(mx, my) {
  let best = null, bd = 10;
  const xy = S.layout.xy, v = S.view;
  for (let i = 0; i < S.nodes.length; i++) {
    if (!S.vis[i]) continue;
    const d = Math.hypot(xy[2 * i] * v.k + v.x - mx, xy[2 * i + 1] * v.k + v.y - my);
    if (d < bd) { bd = d; best = i; }
  }
  return best === null ? null : S.nodes[best];
}

// The drawn edge nearest to (mx, my), within `tol` pixels (the stronger of two equally near ones), or null.
// Only edges the view draws are candidates: what cannot be seen cannot be hovered.
export function edgeAt(mx, my, tol = 4) {
  const r = R.canvas.getBoundingClientRect();
  let best = null, bd = tol;
  const near = (e, lvl, x1, y1, x2, y2) => {
    const dx = x2 - x1, dy = y2 - y1, L2 = dx * dx + dy * dy;
    const t = L2 > 0 ? Math.max(0, Math.min(1, ((mx - x1) * dx + (my - y1) * dy) / L2)) : 0;
    const d = Math.hypot(x1 + t * dx - mx, y1 + t * dy - my);
    if (d < bd || (d === bd && best !== null && Math.abs(S.w[e]) > Math.abs(S.w[best]))) { bd = d; best = e; }
  };
  forEachDrawnEdge(S.view, r.width, r.height, near);
  for (const e of overlayEdgeList()) { const a = toScreen(S.src[e]), b = toScreen(S.tgt[e]); near(e, 0, a.x, a.y, b.x, b.y); }
  return best;
}
