// Drawing the graph: on animation frames only, edges and nodes cached in an offscreen canvas that pans and
// zooms as a bitmap while the user moves and is redrawn once they stop; hover and selection on an overlay.
// Zoom spreads the layout (positions scale, glyphs keep their size).
import { S, edgesOver, isError, isFeature, shortLabel } from "./graph.js";

const AXIS_W = 46, TOKEN_H = 22, SETTLE_MS = 140;
const EDGE_BUDGET_FAR = 25000, EDGE_BUDGET_NEAR = 120000;   // level of detail: fewer, stronger edges when zoomed out
const R = { canvas: null, cache: null, cacheView: null, cacheKey: "", dirty: true, pending: false, lastMove: 0,
  settleTimer: 0, frameTimes: [], drawn: 0, labels: [] };
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
  return [S.name, S.prune, S.edgeThr, S.clicked, S.pinned.join(","), JSON.stringify(S.supernodes), S.layoutGen].join("|");
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
  drawAxes(ctx, sz.w, sz.h, v);
  R.frameTimes.push(performance.now() - t0);
  if (R.frameTimes.length > 300) R.frameTimes.shift();
  if (R.progress && !R.pending) { R.pending = true; requestAnimationFrame(frame); }
}

export const toScreen = (i, v = S.view) => ({ x: S.layout.xy[2 * i] * v.k + v.x, y: S.layout.xy[2 * i + 1] * v.k + v.y });

export function fitView() {
  const r = R.canvas.getBoundingClientRect();
  // room above the graph for stacked output labels
  const TOP = 56, W = Math.max(50, r.width - AXIS_W - 20), H = Math.max(50, r.height - TOKEN_H - TOP - 12);
  const k = Math.min(W / S.world.w, H / S.world.h);
  S.fitK = k; S.fitted = true;
  S.view = { k, x: AXIS_W + 10 + (W - S.world.w * k) / 2, y: TOP + (H - S.world.h * k) / 2 };
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
export const edgeBudget = (v) => (S.fitK && v.k < S.fitK * 1.6 ? EDGE_BUDGET_FAR : EDGE_BUDGET_NEAR);
export function forEachDrawnEdge(v, w, h, fn, from = 0, max = edgeBudget(v)) {
  const n = edgesOver(S.edgeThr);
  const xy = S.layout.xy, vis = S.vis;
  let drawn = 0, r = from;
  for (; r < n && drawn < max; r++) {
    const e = S.order[r], a = S.src[e], b = S.tgt[e];
    if (!vis[a] || !vis[b]) continue;
    const x1 = xy[2 * a] * v.k + v.x, y1 = xy[2 * a + 1] * v.k + v.y, x2 = xy[2 * b] * v.k + v.x, y2 = xy[2 * b + 1] * v.k + v.y;
    if ((x1 < 0 && x2 < 0) || (x1 > w && x2 > w) || (y1 < 0 && y2 < 0) || (y1 > h && y2 > h)) continue;
    const rel = S.absSorted[r] / S.maxW;
    fn(e, Math.min(LEVELS - 1, Math.floor(Math.sqrt(rel) * LEVELS)), x1, y1, x2, y2);
    drawn++;
  }
  return { drawn, next: r, done: r >= n };
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

function drawScene(c, w, h, v) {
  const dim = S.clicked !== null && S.clicked !== undefined;
  R.progress = { next: 0, drawn: 0, budget: edgeBudget(v) };
  drawEdgeChunk(c, w, h, v);
  // nodes
  const near = dim ? neighbours(S.nodeIdx.get(S.clicked)) : null;
  c.globalAlpha = 1;
  S.nodes.forEach((n, i) => {
    if (!S.vis[i]) return;
    const p = toScreen(i, v);
    if (p.x < -10 || p.y < -10 || p.x > w + 10 || p.y > h + 10) return;
    c.globalAlpha = dim && !near.has(i) ? 0.3 : 1;
    drawGlyph(c, n, p.x, p.y, radius(n));
    if (S.pinned.includes(n.node_id)) { c.strokeStyle = "#b8860b"; c.lineWidth = 2; c.stroke(); }
  });
  c.globalAlpha = 1;
  drawSupernodes(c, v);
  placeLabels(c, w, h, v, near);
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

// Labels on the outputs and the most influential features, placed greedily so none overlaps another.
export function labelCandidates(near) {
  const cand = [];
  S.nodes.forEach((n, i) => { if (S.vis[i] && n.feature_type === "logit") cand.push(i); });
  const feats = [];
  S.nodes.forEach((n, i) => { if (S.vis[i] && isFeature(n)) feats.push(i); });
  feats.sort((a, b) => (S.nodes[a].influence ?? 1) - (S.nodes[b].influence ?? 1));
  if (near) for (const i of near) if (S.isFeat[i]) cand.push(i);
  return cand.concat(feats.slice(0, 80));
}

function placeLabels(c, w, h, v, near) {
  c.font = "11px system-ui, sans-serif"; c.textAlign = "left"; c.textBaseline = "middle"; c.lineJoin = "round";
  const placed = [], seen = new Set();
  R.labels = [];
  // a coarse grid of the glyphs on screen, so labels avoid covering nodes as well as each other
  const G = 8, occ = new Map();
  S.nodes.forEach((n, i) => {
    if (!S.vis[i]) return;
    const p = toScreen(i, v);
    if (p.x < 0 || p.y < 0 || p.x > w || p.y > h) return;
    const k = Math.floor(p.x / G) * 100000 + Math.floor(p.y / G);
    occ.set(k, i);
  });
  const coversNode = (r, self) => {
    for (let gx = Math.floor(r.x / G); gx <= Math.floor((r.x + r.w) / G); gx++)
      for (let gy = Math.floor(r.y / G); gy <= Math.floor((r.y + r.h) / G); gy++) {
        const o = occ.get(gx * 100000 + gy);
        if (o !== undefined && o !== self) return true;
      }
    return false;
  };
  for (const i of labelCandidates(near)) {
    if (seen.has(i) || placed.length >= 90) continue;
    seen.add(i);
    const n = S.nodes[i], p = toScreen(i, v);
    if (p.x < AXIS_W || p.y < 0 || p.x > w || p.y > h - TOKEN_H) continue;
    let text = shortLabel(n);
    if (text.length > 26) text = text.slice(0, 25) + "…";
    const tw = c.measureText(text).width, th = 13;
    const tries = n.feature_type === "logit"
      ? [0, 1, 2, 3, 4, 5].flatMap((j) => [[-tw / 2, -17 - 13 * j], [-tw + 4, -17 - 13 * j], [-4, -17 - 13 * j]]).concat([[8, -6], [-tw - 8, -6], [-tw / 2, 6], [-tw / 2, 19]])
      : [[7, -7], [-tw - 7, -7], [-tw / 2, -18], [-tw / 2, 6]];
    for (const [dx, dy] of tries) {
      const rct = { x: p.x + dx, y: p.y + dy, w: tw, h: th };
      if (rct.x < AXIS_W || rct.x + tw > w || rct.y < 0) continue;
      if (placed.some((q) => rct.x < q.x + q.w + 2 && q.x < rct.x + tw + 2 && rct.y < q.y + q.h && q.y < rct.y + th)) continue;
      if (n.feature_type !== "logit" && coversNode(rct, i)) continue;
      placed.push(rct);
      R.labels.push({ i, text, x: rct.x, y: rct.y + th / 2, w: tw, h: th });
      c.strokeStyle = "rgba(255,255,255,0.9)"; c.lineWidth = 3; c.strokeText(text, rct.x, rct.y + th / 2);
      c.fillStyle = n.feature_type === "logit" ? "#8a3c00" : "#1d2330"; c.fillText(text, rct.x, rct.y + th / 2);
      break;
    }
  }
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
  for (const id of focus) {
    const i = S.nodeIdx.get(id);
    if (i === undefined || !S.vis[i]) continue;
    for (const [start, list, other] of [[S.inStart, S.inList, S.src], [S.outStart, S.outList, S.tgt]]) {
      for (let k = start[i]; k < start[i + 1]; k++) {
        const e = list[k], j = other[e];
        if (!S.vis[j]) continue;
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
}

// the layer axis on the left and the prompt's tokens along the bottom, fixed to the screen edges
function drawAxes(c, w, h, v) {
  const L = S.layout;
  c.fillStyle = "rgba(255,255,255,0.92)"; c.fillRect(0, 0, AXIS_W, h); c.fillRect(0, h - TOKEN_H, w, TOKEN_H);
  c.font = "11px system-ui, sans-serif"; c.textBaseline = "middle"; c.textAlign = "left";
  for (let r = 0; r < L.nRows; r++) {
    const y = (L.rowY[r] + L.rowH[r] / 2) * v.k + v.y;
    if (y < 0 || y > h - TOKEN_H) continue;
    const name = r === 0 ? "Emb" : r === L.nRows - 1 ? "Out" : `L${r - 1}`;
    c.fillStyle = "#4a5060"; c.fillText(name, 6, y);
    c.strokeStyle = "#eceef2"; c.lineWidth = 1;
    c.beginPath(); c.moveTo(AXIS_W - 6, (L.rowY[r]) * v.k + v.y); c.lineTo(AXIS_W, (L.rowY[r]) * v.k + v.y); c.stroke();
  }
  c.textAlign = "center";
  const toks = S.graph.metadata.prompt_tokens;
  for (let col = 0; col < L.nCols; col++) {
    const x = (L.colX[col] + L.colW[col] / 2) * v.k + v.x, pw = L.colW[col] * v.k;
    if (x < AXIS_W || x > w) continue;
    let t = JSON.stringify(toks[col] ?? "").slice(1, -1);
    const maxChars = Math.max(1, Math.floor(pw / 7));
    if (t.length > maxChars) t = t.slice(0, Math.max(1, maxChars - 1)) + "…";
    c.fillStyle = "#1d2330"; c.fillText(t, x, h - TOKEN_H / 2);
  }
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
  forEachDrawnEdge(S.view, r.width, r.height, (e, lvl, x1, y1, x2, y2) => {
    const dx = x2 - x1, dy = y2 - y1, L2 = dx * dx + dy * dy;
    const t = L2 > 0 ? Math.max(0, Math.min(1, ((mx - x1) * dx + (my - y1) * dy) / L2)) : 0;
    const d = Math.hypot(x1 + t * dx - mx, y1 + t * dy - my);
    if (d < bd || (d === bd && best !== null && Math.abs(S.w[e]) > Math.abs(S.w[best]))) { bd = d; best = e; }
  });
  return best;
}
