// Text on the canvas: the labels of outputs and important features, the layer axis and the prompt's tokens.
// Labels are elided by priority, not cut short: each is drawn whole (or not at all), the most important first,
// wherever it fits without covering another label or a node; tokens take two staggered lines.
import { S, isFeature, shortLabel } from "./graph.js";

export const AXIS_W = 46, TOKEN_H = 32;
const LABEL_CHARS = 64, TOKEN_CHARS = 32, IMPORTANT = 12;    // only longer texts (rare) end with "…", at a word where possible

export function wholeText(t, max) {
  if (t.length <= max) return t;
  const cut = t.slice(0, max - 1), sp = cut.lastIndexOf(" ");
  return (sp > max / 2 ? cut.slice(0, sp) : cut) + "…";
}

const onScreen = (i, v) => ({ x: S.layout.xy[2 * i] * v.k + v.x, y: S.layout.xy[2 * i + 1] * v.k + v.y });

// node indices in the order their labels are tried: outputs, then `first` (the selection's strongest neighbours,
// the pinned nodes, the path), then features by influence
export function labelCandidates(first) {
  const cand = [];
  S.nodes.forEach((n, i) => { if (S.vis[i] && n.feature_type === "logit") cand.push(i); });
  for (const i of first) if (S.vis[i] && S.isFeat[i]) cand.push(i);
  const feats = [];
  S.nodes.forEach((n, i) => { if (S.vis[i] && isFeature(n)) feats.push(i); });
  feats.sort((a, b) => (S.nodes[a].influence ?? 1) - (S.nodes[b].influence ?? 1));
  return cand.concat(feats.slice(0, 80));
}

// Places and draws labels greedily so none overlaps another or covers a node; returns what it drew.
export function placeLabels(c, w, h, v, first) {
  c.font = "11px system-ui, sans-serif"; c.textAlign = "left"; c.textBaseline = "middle"; c.lineJoin = "round";
  const placed = [], seen = new Set(), out = [];
  // a coarse grid of the glyphs on screen, so labels avoid covering nodes as well as each other
  const G = 8, occ = new Map();
  S.nodes.forEach((n, i) => {
    if (!S.vis[i]) return;
    const p = onScreen(i, v);
    if (p.x < 0 || p.y < 0 || p.x > w || p.y > h) return;
    occ.set(Math.floor(p.x / G) * 100000 + Math.floor(p.y / G), i);
  });
  const coversNode = (r, self) => {
    for (let gx = Math.floor(r.x / G); gx <= Math.floor((r.x + r.w) / G); gx++)
      for (let gy = Math.floor(r.y / G); gy <= Math.floor((r.y + r.h) / G); gy++) {
        const o = occ.get(gx * 100000 + gy);
        if (o !== undefined && o !== self) return true;
      }
    return false;
  };
  let rank = 0;
  for (const i of labelCandidates(first)) {
    if (seen.has(i) || placed.length >= 90) continue;
    seen.add(i);
    // the most important features' labels may lie over other nodes' dots (on a white halo) rather than be elided
    const important = S.nodes[i].feature_type !== "logit" && rank++ < IMPORTANT;
    const n = S.nodes[i], p = onScreen(i, v);
    if (p.x < AXIS_W || p.y < 0 || p.x > w || p.y > h - TOKEN_H) continue;
    const text = wholeText(shortLabel(n), LABEL_CHARS);
    const tw = c.measureText(text).width, th = 13;
    const tries = n.feature_type === "logit"
      ? [0, 1, 2, 3, 4, 5].flatMap((j) => [[-tw / 2, -17 - 13 * j], [-tw + 4, -17 - 13 * j], [-4, -17 - 13 * j]]).concat([[8, -6], [-tw - 8, -6], [-tw / 2, 6], [-tw / 2, 19]])
      : [[7, -7], [-tw - 7, -7], [-tw / 2, -18], [-tw / 2, 6], [-tw / 2, -31], [-tw / 2, 19]];
    for (const [dx, dy] of tries) {
      const rct = { x: p.x + dx, y: p.y + dy, w: tw, h: th };
      if (rct.x < AXIS_W || rct.x + tw > w || rct.y < 0 || rct.y + th > h - TOKEN_H) continue;
      if (placed.some((q) => rct.x < q.x + q.w + 2 && q.x < rct.x + tw + 2 && rct.y < q.y + q.h && q.y < rct.y + th)) continue;
      if (n.feature_type !== "logit" && !important && coversNode(rct, i)) continue;
      placed.push(rct);
      out.push({ i, text, x: rct.x, y: rct.y + th / 2, w: tw, h: th });
      c.strokeStyle = "rgba(255,255,255,0.9)"; c.lineWidth = 3; c.strokeText(text, rct.x, rct.y + th / 2);
      c.fillStyle = n.feature_type === "logit" ? "#8a3c00" : "#1d2330"; c.fillText(text, rct.x, rct.y + th / 2);
      break;
    }
  }
  return out;
}

// the prompt's token at column col, as the axis writes it
export const tokenText = (col) => wholeText(JSON.stringify(S.graph.metadata.prompt_tokens[col] ?? "").slice(1, -1), TOKEN_CHARS);

// The layer axis on the left and the prompt's tokens along the bottom, fixed to the screen edges. Tokens are placed
// in priority order (the last one, then the busiest columns) on the first of two lines where they fit whole; one
// that fits on neither is marked by a tick (its text is in the hover card and the text view). Returns the tokens drawn.
export function drawAxes(c, w, h, v) {
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
  const busy = new Float64Array(L.nCols);
  for (let i = 0; i < S.nodes.length; i++) if (S.vis[i] && S.col[i] < L.nCols) busy[S.col[i]]++;
  const cols = [...busy.keys()].sort((a, b) => (b === L.nCols - 1) - (a === L.nCols - 1) || busy[b] - busy[a] || a - b);
  const lines = [[], []], drawn = [], ys = [h - TOKEN_H + 9, h - TOKEN_H + 23];
  for (const col of cols) {
    const x = (L.colX[col] + L.colW[col] / 2) * v.k + v.x;
    if (x < AXIS_W || x > w) continue;
    const text = tokenText(col), tw = c.measureText(text).width;
    const x0 = Math.max(AXIS_W + 2, Math.min(w - tw - 2, x - tw / 2));
    const line = [0, 1].find((ln) => !lines[ln].some((q) => x0 < q.x + q.w + 8 && q.x < x0 + tw + 8));
    if (line === undefined) { c.fillStyle = "#8a8f9c"; c.fillRect(x - 0.5, h - TOKEN_H + 2, 1, 5); continue; }
    lines[line].push({ x: x0, w: tw });
    drawn.push({ col, text, x: x0, w: tw, line });
    c.fillStyle = "#1d2330"; c.fillText(text, x0, ys[line]);
  }
  return drawn;
}
