// The compare view: two graphs of one model overlaid on one canvas and coloured by the server's diff (B − A,
// GET /api/diff, the library's diff_graphs): features whose row appears (only in B), disappears (only in A),
// changes influence, or stays. Positions are aligned from the prompts' ends, so prompts of different lengths line
// up on their last tokens; a node is one feature (its row key, layer and position) present in A, B or both.
// Edge weights are B − A (an edge only in A counts as 0 in B), so the strongest drawn edges are the most changed.
import { S, isError, isFeature } from "./graph.js";
import { H, api, el, fmt } from "./util.js";
import { writeUrl } from "./urlstate.js";

export const ESTAT = { appear: 0, disappear: 1, change: 2, same: 3 };

export async function openCompare(a, b, st = {}, opts = {}) {
  const t0 = performance.now(), by = opts.by || "auto", positions = !!opts.positions;
  if (st.push) writeUrl(true);      // a navigation (st.push): the entry being left keeps its last state
  const q = new URLSearchParams({ a, b, by });
  if (positions) q.set("positions", "true");
  // the diff first: an unknown graph or another model is refused before two graphs are downloaded
  const d = await api(`/api/diff?${q}`);
  const [ga, gb] = [await H.fetchGraph(a), await H.fetchGraph(b)];
  const ov = overlay(ga, gb, d);
  S.compare = { a, b, by, positions, diff: d, keyNodes: ov.keyNodes };
  H.showGraph(ov.graph, a, st, t0, performance.now());
}

const logitText = (n) => { const m = /^Output "([\s\S]*)" \(p=/.exec(n.clerp || ""); return m ? m[1] : `#${n.feature}`; };

// The overlay of graphs A and B as one graph in the page's format: nodes carry `diff` ({status, key, a, b, delta})
// and in_a / in_b; links carry wa, wb, st (ESTAT) and weight = wb − wa. keyNodes: row key → overlay node ids.
export function overlay(ga, gb, d) {
  const na = ga.metadata.prompt_tokens.length, nb = gb.metadata.prompt_tokens.length, n = Math.max(na, nb);
  const rows = new Map();
  for (const status of ["appear", "disappear", "change"]) for (const r of d.features[status]) rows.set(r.key, { ...r, status });
  const byLabel = d.aligned_by === "label", ids = new Map(), nodes = new Map(), keyNodes = new Map();
  const of = { a: new Map(), b: new Map() };
  const idFor = (ident) => { if (!ids.has(ident)) ids.set(ident, `n${ids.size}`); return ids.get(ident); };
  const side = (g, s, off) => {
    for (const nd of g.nodes) {
      const col = Math.min(n - 1, (nd.ctx_idx ?? 0) + off), kind = nd.feature_type;
      let ident, key = null;
      if (isFeature(nd)) {
        key = d.node_keys[s][nd.node_id] ?? null;
        // by id the feature is itself; by label it is its row, at its layer (an unlabelled one stays apart)
        ident = `f|${byLabel ? (key === null ? `${s}:${nd.node_id}` : key) : `${nd.layer}/${nd.feature}`}|${nd.layer}|${col}`;
      } else if (isError(nd)) ident = `e|${nd.layer}|${col}`;
      else if (kind === "embedding") ident = `t|${col}|${nd.clerp}`;
      else ident = `o|${logitText(nd)}`;
      const id = idFor(ident);
      let m = nodes.get(id);
      if (!m) {
        m = { ...nd, node_id: id, ctx_idx: kind === "logit" ? n - 1 : col, in_a: false, in_b: false, key };
        nodes.set(id, m);
      } else {
        if (nd.influence !== null && nd.influence !== undefined) m.influence = m.influence === null || m.influence === undefined ? nd.influence : Math.min(m.influence, nd.influence);
        if (s === "b" && nd.clerp) m.clerp = nd.clerp;
        if (s === "b") m.activation = nd.activation;
      }
      m[`in_${s}`] = true;
      m[`${s}_id`] = nd.node_id;
      if (kind === "logit") m[`p_${s}`] = nd.token_prob ?? 0;
      of[s].set(nd.node_id, id);
    }
  };
  side(ga, "a", n - na);
  side(gb, "b", n - nb);
  for (const m of nodes.values()) {
    m.diff = statusOf(m, rows);
    if (m.key !== null && m.key !== undefined) { if (!keyNodes.has(m.key)) keyNodes.set(m.key, []); keyNodes.get(m.key).push(m.node_id); }
  }
  for (const list of keyNodes.values()) list.sort((x, y) => (nodes.get(x).influence ?? 1) - (nodes.get(y).influence ?? 1));
  return { graph: { diff: true, metadata: overlayMeta(ga, gb, n), nodes: [...nodes.values()], links: overlayLinks(ga, gb, of) }, keyNodes };
}

// a node's status: a feature's is its row's (unlisted: unchanged); tokens, errors and outputs by where they are
function statusOf(m, rows) {
  const where = m.in_a && m.in_b ? "same" : m.in_b ? "appear" : "disappear";
  if (isFeature(m)) {
    if (m.key === null || m.key === undefined) return { status: "unaligned", key: null, here: where };
    const r = rows.get(m.key);
    return r ? { status: r.status, key: m.key, a: r.a, b: r.b, delta: r.delta, here: where } : { status: "same", key: m.key, here: where };
  }
  if (m.feature_type === "logit" && where === "same") {
    const delta = m.p_b - m.p_a;
    return { status: Math.abs(delta) >= 1e-3 ? "change" : "same", a: m.p_a, b: m.p_b, delta, here: where };
  }
  return { status: where, here: where };
}

function overlayLinks(ga, gb, of) {
  const acc = new Map();
  for (const [g, s] of [[ga, "a"], [gb, "b"]]) {
    for (const l of g.links) {
      const src = of[s].get(l.source), tgt = of[s].get(l.target);
      if (src === undefined || tgt === undefined || src === tgt) continue;
      const k = `${src}>${tgt}`;
      let e = acc.get(k);
      if (!e) acc.set(k, (e = { source: src, target: tgt, wa: 0, wb: 0, in_a: false, in_b: false }));
      e[`w${s}`] += l.weight;
      e[`in_${s}`] = true;
    }
  }
  const out = [];
  for (const e of acc.values()) {
    const weight = e.wb - e.wa;
    const st = e.in_a && e.in_b ? (weight !== 0 ? ESTAT.change : ESTAT.same) : e.in_b ? ESTAT.appear : ESTAT.disappear;
    out.push({ source: e.source, target: e.target, weight, wa: e.wa, wb: e.wb, st });
  }
  return out;
}

function overlayMeta(ga, gb, n) {
  const ta = ga.metadata.prompt_tokens, tb = gb.metadata.prompt_tokens, toks = [];
  for (let c = 0; c < n; c++) {
    const a = ta[c - (n - ta.length)], b = tb[c - (n - tb.length)];
    toks.push(a === b ? a : `${a ?? "·"}→${b ?? "·"}`);
  }
  const info = ga.metadata.info || {};
  return { prompt_tokens: toks, prompt: `${ga.metadata.prompt} ⇄ ${gb.metadata.prompt}`, slug: "", info: { model: info.model, transcoder_kind: info.transcoder_kind } };
}

const HERE = { same: "in A and B", appear: "only in B", disappear: "only in A" };

// what the diff says of an overlay node, for its panel
export function nodeDiffLine(n) {
  const d = n.diff, what = { appear: "appears in B", disappear: "disappears from A", change: "changes", same: "unchanged", unaligned: "not aligned (no label)" }[d.status];
  const vals = d.a !== undefined ? ` · ${n.feature_type === "logit" ? "probability" : "influence share"} A ${fmt(d.a, 4)} → B ${fmt(d.b, 4)} (Δ ${d.delta >= 0 ? "+" : ""}${fmt(d.delta, 4)})` : "";
  return el("div", { id: "node-diff", class: `diff-${d.status}`, "data-status": d.status },
    `${d.key ? `${d.key}: ` : ""}${what}${vals} · this node ${HERE[d.here]}`);
}
