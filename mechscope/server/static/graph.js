// The open graph as typed arrays (edges sorted by weight, adjacency lists) and its position × layer layout.
// Nothing here spreads an array into a call: graphs reach 300k+ edges, past the engine's argument limit.

export const S = {
  info: null, name: null, graph: null, nodes: [], byId: new Map(),
  // edges: src/tgt node indices, weight; order: edge indices by |weight| descending; absSorted: |weight| in that order
  E: 0, src: null, tgt: null, w: null, order: null, absSorted: null, maxW: 1e-9,
  inStart: null, inList: null, outStart: null, outList: null,
  row: null, col: null, isFeat: null, vis: null, nodeIdx: new Map(),
  view: { x: 0, y: 0, k: 1 }, clicked: null, hover: null, pinned: [], supernodes: [], checked: new Set(),
  prune: 0.8, edgeThr: 0.01, labels: {}, dirtyLabels: new Set(),
  layout: null, world: { w: 1, h: 1 }, L: 1,
  featureSeq: 0, probe: null, probeSeq: 0, history: [],
  // linkIdx: edge index → its link in graph.links (heads, weights of a comparison); estat: a comparison's edge
  // status (0 appears, 1 disappears, 2 changes, 3 same); hoverEdge / clickedEdge: edge indices or null
  linkIdx: null, estat: null, hoverEdge: null, clickedEdge: null, compare: null,
  // reading filters: features denser than densityThr (share of tokens they fire on) and the ids in `hidden` are
  // not drawn; allEdges: the full edge layer instead of the paths and the selection's edges (focus.js)
  densityThr: 0.1, hidden: new Set(), allEdges: false, hiddenCounts: { dense: 0, user: 0 }, forcedClick: false,
};

// Features firing on more than 10% of tokens are hidden by default: the feature index calls them "dense"
// (features/labels.py DENSE_DENSITY) and never labels them as a concept. Neuronpedia hides those above ~1%, which
// suits wide dictionaries; in ours 29% of all features exceed 1% (89% of the Dallas graph's) — see docs.
export const DENSITY_DEFAULT = 0.1;

export const isFeature = (n) => n.feature_type === "cross layer transcoder";
export const isError = (n) => n.feature_type === "mlp reconstruction error";

// the format's type name says "cross layer transcoder" for both kinds; mechscope's graphs are per-layer unless
// their info says transcoder_kind "clt" (then a feature reads its layer and writes to it and later ones)
export function typeName(n) {
  if (isFeature(n)) {
    const info = (S.graph && S.graph.metadata.info) || {};
    const plt = info.transcoder_kind ? info.transcoder_kind !== "clt"
      : info.transcoder_type ? !/cross/.test(info.transcoder_type) : info.generator === "mechscope";
    return plt ? `transcoder feature (layer ${n.layer})` : `cross-layer transcoder feature (layer ${n.layer})`;
  }
  if (isError(n)) return `MLP reconstruction error (layer ${n.layer})`;
  if (n.feature_type === "embedding") return "token embedding";
  return "output logit";
}

export function nodeLabel(n) {
  if (isFeature(n)) return `${n.layer}/${n.feature}@${n.ctx_idx}${n.clerp ? " “" + n.clerp + "”" : ""}`;
  if (isError(n)) return `error L${n.layer}@${n.ctx_idx}`;
  if (n.feature_type === "embedding") return `token ${JSON.stringify(n.clerp)} @${n.ctx_idx}`;
  return n.clerp;
}

export function shortLabel(n) {
  if (isFeature(n)) return n.clerp ? n.clerp : `${n.layer}/${n.feature}`;
  if (n.feature_type === "logit") return n.clerp.replace(/^Output /, "").replace(/ \(p=.*\)$/, "");
  return nodeLabel(n);
}

export function layerRow(n, L) {
  if (n.feature_type === "embedding") return 0;
  if (n.feature_type === "logit") return L + 1;
  return Number(n.layer) + 1;
}

// Builds the typed arrays of a freshly parsed graph. O(nodes + edges log edges), no recursion, no spreads.
export function prepare(g) {
  const nodes = g.nodes, N = nodes.length, links = g.links, E = links.length;
  S.graph = g; S.nodes = nodes; S.E = E;
  S.byId = new Map(); S.nodeIdx = new Map();
  nodes.forEach((n, i) => { S.byId.set(n.node_id, n); S.nodeIdx.set(n.node_id, i); });
  let L = S.info && S.info.n_layers ? S.info.n_layers : 0;
  if (!L) for (const n of nodes) if (isFeature(n) || isError(n)) L = Math.max(L, Number(n.layer) + 1);
  S.L = Math.max(1, L);
  S.row = new Int32Array(N); S.col = new Int32Array(N); S.isFeat = new Uint8Array(N);
  nodes.forEach((n, i) => { S.row[i] = layerRow(n, S.L); S.col[i] = n.ctx_idx; S.isFeat[i] = isFeature(n) ? 1 : 0; });
  const src = new Int32Array(E), tgt = new Int32Array(E), w = new Float32Array(E), aw = new Float32Array(E);
  const li = new Int32Array(E), st = g.diff ? new Uint8Array(E) : null;
  let maxW = 1e-9, k = 0;
  for (let e = 0; e < E; e++) {
    const l = links[e], a = S.nodeIdx.get(l.source), b = S.nodeIdx.get(l.target);
    if (a === undefined || b === undefined) continue;
    src[k] = a; tgt[k] = b; w[k] = l.weight; aw[k] = Math.abs(l.weight); li[k] = e;
    if (st) st[k] = l.st;
    if (aw[k] > maxW) maxW = aw[k];
    k++;
  }
  S.E = k; S.src = src.subarray(0, k); S.tgt = tgt.subarray(0, k); S.w = w.subarray(0, k); S.maxW = maxW;
  S.linkIdx = li.subarray(0, k); S.estat = st ? st.subarray(0, k) : null;
  S.order = sortByWeight(aw, k);
  S.absSorted = new Float32Array(k);
  for (let i = 0; i < k; i++) S.absSorted[i] = aw[S.order[i]];
  [S.inStart, S.inList] = csr(S.tgt, N, k);
  [S.outStart, S.outList] = csr(S.src, N, k);
  S.vis = new Uint8Array(N);
  // Σ|w| into each node (its shares' denominator, as in the node panel) and the nodes from the top row down
  S.inTot = new Float64Array(N);
  for (let e = 0; e < k; e++) S.inTot[S.tgt[e]] += Math.abs(S.w[e]);
  S.rowDesc = Int32Array.from(nodes.keys()).sort((a, b) => S.row[b] - S.row[a]);
}

// Edge indices by |w| descending. A comparator sort of 300k indices takes a second; instead each |w| (a float32,
// so the low 29 mantissa bits of its float64 copy are zero) carries its index in those bits, and the engine's
// native numeric sort orders the float64s. Little-endian layout, as on every platform browsers run on.
function sortByWeight(aw, k) {
  const keys = new Float64Array(k), words = new Uint32Array(keys.buffer), order = new Uint32Array(k);
  if (k >= 2 ** 29) { for (let e = 0; e < k; e++) order[e] = e; return order.sort((a, b) => aw[b] - aw[a]); }
  for (let e = 0; e < k; e++) { keys[e] = aw[e]; words[2 * e] = e; }
  keys.sort();
  for (let i = 0; i < k; i++) order[i] = words[2 * (k - 1 - i)];
  return order;
}

function csr(key, N, E) {
  const start = new Int32Array(N + 1);
  for (let e = 0; e < E; e++) start[key[e] + 1]++;
  for (let i = 0; i < N; i++) start[i + 1] += start[i];
  const fill = start.slice(0, N), list = new Int32Array(E);
  for (let e = 0; e < E; e++) list[fill[key[e]]++] = e;
  return [start, list];
}

// edges whose |weight| reaches frac × the largest: a prefix of S.order (binary search)
export function edgesOver(frac) {
  const thr = frac * S.maxW, a = S.absSorted;
  let lo = 0, hi = a.length;
  while (lo < hi) { const m = (lo + hi) >> 1; if (a[m] >= thr) lo = m + 1; else hi = m; }
  return lo;
}

// the threshold that keeps about `n` strongest edges
export function thresholdForCount(n) {
  if (S.E <= n) return 0;
  return S.absSorted[n - 1] / S.maxW;
}

export function inSupernode(id) { return S.supernodes.find((sn) => sn.slice(1).includes(id)); }

// why node n is not drawn ("hidden" by the user, "dense", "pruned"), or "" when the filters keep it
export function hiddenBy(n) {
  if (S.hidden.has(n.node_id)) return "hidden";
  if (!(isFeature(n) || isError(n))) return "";
  if (n.influence !== null && n.influence !== undefined && n.influence > S.prune) return "pruned";
  if (isFeature(n) && typeof n.density === "number" && n.density > S.densityThr) return "dense";
  return "";
}

// Pinned nodes, supernode members and the clicked node stay visible whatever the filters say; nodes the user hid
// stay hidden.
export function computeVisibility() {
  const keep = new Set(S.pinned);
  for (const sn of S.supernodes) for (const id of sn.slice(1)) keep.add(id);
  let dense = 0, user = 0;
  S.forcedClick = false;
  S.nodes.forEach((n, i) => {
    const why = hiddenBy(n);
    if (why === "dense") dense++;
    else if (why === "hidden") user++;
    const forced = why !== "" && why !== "hidden" && n.node_id === S.clicked && !keep.has(n.node_id);
    if (forced) S.forcedClick = true;
    S.vis[i] = why === "" || forced || (why !== "hidden" && keep.has(n.node_id)) ? 1 : 0;
  });
  S.hiddenCounts = { dense, user };
}

// Layout by token position (columns) × layer (rows, outputs on top). A column is as wide as its densest cell
// needs; a cell wraps into lines of at most PER_LINE nodes and a row is as tall as its most wrapped cell, so
// dense columns spread instead of stacking. Re-run after pruning: hidden nodes leave no gaps.
export const DX = 16, DY = 16, PER_LINE = 24, DX_OUT = 48, ASPECT = 0.55;   // outputs sit further apart: their labels need room
export function computeLayout() {
  computeVisibility();
  const N = S.nodes.length, nCols = Math.max(1, S.graph.metadata.prompt_tokens.length), nRows = S.L + 2;
  const cells = new Map();
  for (let i = 0; i < N; i++) {
    if (!S.vis[i]) continue;
    const key = S.row[i] * 100000 + S.col[i];
    let c = cells.get(key);
    if (!c) cells.set(key, (c = []));
    c.push(i);
  }
  const colW = new Float64Array(nCols).fill(70), rowH = new Float64Array(nRows).fill(40);
  for (const [key, c] of cells) {
    const r = Math.floor(key / 100000), col = key % 100000;
    if (col >= nCols) continue;
    colW[col] = Math.max(colW[col], Math.min(c.length, PER_LINE) * (r === nRows - 1 ? DX_OUT : DX) + 24);
    rowH[r] = Math.max(rowH[r], Math.ceil(c.length / PER_LINE) * DY + 20);
  }
  const colX = new Float64Array(nCols + 1), rowY = new Float64Array(nRows + 1);
  for (let c = 0; c < nCols; c++) colX[c + 1] = colX[c] + colW[c];
  // rows grow until the graph is at least ASPECT times as tall as wide, so a fitted view uses the window's height
  let totalH = 0;
  for (let r = 0; r < nRows; r++) totalH += rowH[r];
  const stretch = Math.max(1, (ASPECT * colX[nCols]) / totalH);
  for (let r = 0; r < nRows; r++) rowH[r] *= stretch;
  // row 0 (tokens) at the bottom: y grows downwards, so walk the rows from the top one
  for (let r = nRows - 1, y = 0; r >= 0; r--) { rowY[r] = y; y += rowH[r]; rowY[nRows] = y; }
  const xy = new Float32Array(2 * N).fill(NaN);
  const infl = (i) => { const v = S.nodes[i].influence; return v === null || v === undefined ? 0 : v; };
  for (const [key, c] of cells) {
    const r = Math.floor(key / 100000), col = Math.min(key % 100000, nCols - 1);
    c.sort((a, b) => infl(a) - infl(b) || a - b);
    const lines = Math.ceil(c.length / PER_LINE), dx = r === nRows - 1 ? DX_OUT : DX;
    c.forEach((i, j) => {
      const line = Math.floor(j / PER_LINE), m = j % PER_LINE, inLine = Math.min(PER_LINE, c.length - line * PER_LINE);
      xy[2 * i] = colX[col] + colW[col] / 2 + (m - (inLine - 1) / 2) * dx;
      xy[2 * i + 1] = rowY[r] + rowH[r] / 2 + (line - (lines - 1) / 2) * DY;
    });
  }
  S.layout = { xy, colX, colW, rowY, rowH, nCols, nRows };
  S.world = { w: colX[nCols], h: rowY[nRows] };
}

// the link object of edge e (its heads, a comparison's weights)
export const linkOf = (e) => S.graph.links[S.linkIdx[e]];

export function pos(i) { return { x: S.layout.xy[2 * i], y: S.layout.xy[2 * i + 1] }; }
