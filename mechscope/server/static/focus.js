// The default edge layer, read the way a circuit is read: not the N strongest edges of the whole graph (a
// hairball) but the edges that carry the answer — the FLOW_EDGES edges with the most influence on it, plus the
// strongest path from each prompt token to it — the strongest edges of the pinned nodes, and (on the overlay,
// render.js) every edge of the clicked and hovered nodes. Nodes are tinted by their share of the selection's input.
// The full edge layer is the "all edges" toggle.
//
// An edge's share is |w| over the total |w| into its target (what the node panel lists). A node's influence on the
// answer sums, over its edges, share × the target's influence (1 for the answer); an edge's influence is its share
// × its target's influence, as circuit-tracer prunes. A path's strength is the product of its edges' shares. Both
// are computed for all nodes at once from the top row down (edges only go to a higher row): O(E).
import { S } from "./graph.js";

export const FLOW_EDGES = 200, PATH_EDGES_MAX = 60, PIN_EDGES = 12;

// the answer: the target logit, else the most probable output; -1 when none is drawn
export function answerNode() {
  let best = -1, bp = -1;
  S.nodes.forEach((n, i) => {
    if (n.feature_type !== "logit" || !S.vis[i]) return;
    const p = n.is_target_logit ? 2 : (n.token_prob ?? 0);
    if (p > bp) { bp = p; best = i; }
  });
  return best;
}

// for every visible node, the strength of its strongest path to node t and the first edge of that path
export function towards(t) {
  const N = S.nodes.length, best = new Float64Array(N), nxt = new Int32Array(N).fill(-1);
  if (t < 0) return { best, nxt };
  best[t] = 1;
  for (const i of S.rowDesc) {
    if (!S.vis[i] || i === t || S.row[i] >= S.row[t]) continue;
    let b = 0, be = -1;
    for (let k = S.outStart[i]; k < S.outStart[i + 1]; k++) {
      const e = S.outList[k], j = S.tgt[e];
      if (!S.vis[j] || best[j] <= 0 || S.row[j] <= S.row[i] || S.inTot[j] <= 0) continue;
      const s = (Math.abs(S.w[e]) / S.inTot[j]) * best[j];
      if (s > b) { b = s; be = e; }
    }
    best[i] = b; nxt[i] = be;
  }
  return { best, nxt };
}

// towards(the answer), computed once per layout
function towardsAnswer() {
  const key = `${S.name}|${S.layoutGen}`;
  if (memo.towardsKey !== key) { memo.towardsKey = key; memo.towards = towards(answerNode()); }
  return memo.towards;
}

// the edges of the strongest path from node i along `nxt` (empty when none reaches the target)
export function walk(i, nxt) {
  const out = [];
  for (let k = 0; i >= 0 && nxt[i] >= 0 && k < 1000; k++) { out.push(nxt[i]); i = S.tgt[nxt[i]]; }
  return out;
}

// each visible node's influence on node t (sum over paths of the products of shares)
export function influenceOn(t) {
  const I = new Float64Array(S.nodes.length);
  if (t < 0) return I;
  I[t] = 1;
  for (const i of S.rowDesc) {
    if (!S.vis[i] || i === t || S.row[i] >= S.row[t]) continue;
    let sum = 0;
    for (let k = S.outStart[i]; k < S.outStart[i + 1]; k++) {
      const e = S.outList[k], j = S.tgt[e];
      if (S.vis[j] && I[j] > 0 && S.row[j] > S.row[i]) sum += (Math.abs(S.w[e]) / S.inTot[j]) * I[j];
    }
    I[i] = sum;
  }
  return I;
}

const memo = { pathsKey: "", paths: null, focusKey: "", focus: null, shareKey: "", share: null, flowKey: "", flow: null };

// the k highest-scoring ids of a stream: a min-heap of (score, id)
function topK(k) {
  const sc = new Float64Array(k), id = new Int32Array(k);
  let n = 0;
  const swap = (a, b) => { const s = sc[a]; sc[a] = sc[b]; sc[b] = s; const x = id[a]; id[a] = id[b]; id[b] = x; };
  return {
    push(s, x) {
      if (n < k) {
        sc[n] = s; id[n] = x;
        for (let c = n++; c > 0;) { const p = (c - 1) >> 1; if (sc[p] <= sc[c]) break; swap(p, c); c = p; }
        return;
      }
      if (s <= sc[0]) return;
      sc[0] = s; id[0] = x;
      for (let c = 0; ;) {
        const l = 2 * c + 1, r = l + 1;
        let m = c;
        if (l < n && sc[l] < sc[m]) m = l;
        if (r < n && sc[r] < sc[m]) m = r;
        if (m === c) break;
        swap(c, m); c = m;
      }
    },
    ids: () => Array.from(id.subarray(0, n)),
  };
}

// The answer's influence per node and its FLOW_EDGES most influential edges: {I, edges}
export function answerFlow() {
  const key = `${S.name}|${S.layoutGen}`;
  if (memo.flowKey === key) return memo.flow;
  const I = influenceOn(answerNode()), best = topK(FLOW_EDGES);
  for (let e = 0; e < S.E; e++) {
    const a = S.src[e], b = S.tgt[e];
    if (S.vis[a] && S.vis[b] && I[b] > 0 && S.row[b] > S.row[a]) best.push((Math.abs(S.w[e]) / S.inTot[b]) * I[b], e);
  }
  memo.flowKey = key; memo.flow = { I, edges: best.ids() };
  return memo.flow;
}

// The path a reader follows first: through the clicked node c if any, else through the visible feature with the
// most influence on the answer (the strongest token-to-answer path is often a token's direct edge to the output).
export function mainPath(c) {
  const key = `${S.name}|${S.layoutGen}|${c}`;
  if (memo.mainKey === key) return memo.main;
  let p;
  if (c !== undefined && c >= 0) p = pathThrough(c);
  else {
    const I = answerFlow().I;
    let f = -1;
    S.nodes.forEach((n, i) => { if (S.isFeat[i] && S.vis[i] && I[i] > 0 && (f < 0 || I[i] > I[f])) f = i; });
    p = f >= 0 ? pathThrough(f) : tokenPaths()[0] || null;
  }
  memo.mainKey = key; memo.main = p;
  return p;
}

// The strongest path from each visible prompt token to the answer, strongest first: [{from, strength, edges}].
export function tokenPaths() {
  const key = `${S.name}|${S.layoutGen}`;
  if (memo.pathsKey === key) return memo.paths;
  const t = answerNode(), T = towardsAnswer(), paths = [];
  S.nodes.forEach((n, i) => {
    if (n.feature_type === "embedding" && S.vis[i] && T.best[i] > 0) paths.push({ from: i, to: t, strength: T.best[i], edges: walk(i, T.nxt) });
  });
  paths.sort((a, b) => b.strength - a.strength);
  memo.pathsKey = key; memo.paths = paths;
  return paths;
}

// The path through node c (a clicked node): the strongest one from a prompt token to c, then on to the answer.
export function pathThrough(c) {
  const t = answerNode();
  if (c === undefined || c < 0) return tokenPaths()[0] || null;
  const up = towards(c);
  let from = -1;
  S.nodes.forEach((n, i) => { if (n.feature_type === "embedding" && up.best[i] > 0 && (from < 0 || up.best[i] > up.best[from])) from = i; });
  const head = from >= 0 ? walk(from, up.nxt) : [];
  const tail = c === t ? [] : walk(c, towardsAnswer().nxt);
  return { from: from >= 0 ? from : c, to: tail.length ? t : c, through: c, strength: (from >= 0 ? up.best[from] : 1), edges: head.concat(tail) };
}

// strongest-first list of edge ids with both ends visible
function strongestOf(start, list, other, i, k) {
  const es = [];
  for (let q = start[i]; q < start[i + 1]; q++) { const e = list[q]; if (S.vis[other[e]]) es.push(e); }
  es.sort((a, b) => Math.abs(S.w[b]) - Math.abs(S.w[a]));
  return es.slice(0, k);
}

// The edges the default layer draws in its cache: the answer's most influential edges, the token paths (at most
// PATH_EDGES_MAX more edges, whole paths, strongest first), the main path, and each pinned node's PIN_EDGES
// strongest inputs and outputs; by |w| descending. {list, max}
export function focusEdges() {
  const key = `${S.name}|${S.layoutGen}|${S.pinned.join(",")}`;
  if (memo.focusKey === key) return memo.focus;
  const set = new Set(answerFlow().edges), base = set.size;
  for (const e of (mainPath() || { edges: [] }).edges) set.add(e);
  for (const p of tokenPaths()) {
    if (set.size - base + p.edges.length > PATH_EDGES_MAX && set.size > base) break;
    if (set.size + p.edges.length > PATH_EDGES_MAX && set.size) break;
    for (const e of p.edges) set.add(e);
  }
  for (const id of S.pinned) {
    const i = S.nodeIdx.get(id);
    if (i === undefined || !S.vis[i]) continue;
    for (const e of strongestOf(S.inStart, S.inList, S.src, i, PIN_EDGES)) set.add(e);
    for (const e of strongestOf(S.outStart, S.outList, S.tgt, i, PIN_EDGES)) set.add(e);
  }
  const list = Int32Array.from(set).sort((a, b) => Math.abs(S.w[b]) - Math.abs(S.w[a]));
  let max = 1e-12;
  for (const e of list) max = Math.max(max, Math.abs(S.w[e]));
  memo.focusKey = key; memo.focus = { list, max };
  return memo.focus;
}

// The selection: the clicked node, else the pinned ones (node indices).
export function selection() {
  const i = S.clicked ? S.nodeIdx.get(S.clicked) : undefined;
  if (i !== undefined) return [i];
  return S.pinned.map((id) => S.nodeIdx.get(id)).filter((j) => j !== undefined);
}

// Each node's signed share with the selection: a node upstream, its edges' part of the selection's total input;
// a node downstream, the selection's part of that node's input. Float32Array, 0 for unrelated nodes; null when
// nothing is selected.
export function shares() {
  const sel = selection(), key = `${S.name}|${S.layoutGen}|${sel.join(",")}`;
  if (memo.shareKey === key) return memo.share;
  let share = null;
  if (sel.length) {
    share = new Float32Array(S.nodes.length);
    let tot = 0;
    for (const s of sel) tot += S.inTot[s];
    const inSel = new Set(sel);
    for (const s of sel) {
      for (let k = S.inStart[s]; k < S.inStart[s + 1]; k++) { const e = S.inList[k]; if (!inSel.has(S.src[e]) && tot > 0) share[S.src[e]] += S.w[e] / tot; }
      for (let k = S.outStart[s]; k < S.outStart[s + 1]; k++) { const e = S.outList[k], j = S.tgt[e]; if (!inSel.has(j) && S.inTot[j] > 0) share[j] += S.w[e] / S.inTot[j]; }
    }
  }
  memo.shareKey = key; memo.share = share;
  return share;
}
