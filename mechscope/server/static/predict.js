// What the open graph predicts an intervention does to each output's logit, set beside what the model did.
// The prediction is the graph's total effect (mechscope/attribution/validate.py, total_effects): an edited feature
// moves by δ (ablate: −a, set v: v − a, scale k: (k − 1)·a, a its activation in the graph); an edge s → t carries
// weight × δ_s / a_s into t (an edge's weight is s's whole output's effect), and a feature t passes its own change
// on the same way: activations move 1:1 with their input, attention and errors stay frozen. The page holds the
// pruned graph, so paths through pruned edges are missing from the prediction.
import { S, isFeature, shortLabel } from "./graph.js";

// a change smaller than this (in logits) on both sides is noise, whatever the ratio; beyond it a sign that differs,
// or sizes more than SIZE_FACTOR apart, is flagged
export const FLOOR = 0.1, SIZE_FACTOR = 3;

// the graph's output nodes that name one token: [{node, id}] (a logit difference names none)
export function logitTargets() {
  const vocab = S.info && S.info.vocab_size;
  return S.nodes.filter((n) => n.feature_type === "logit" && Number.isInteger(n.feature) && n.feature >= 0 && (!vocab || n.feature < vocab))
    .map((n) => ({ node: n, id: n.feature }));
}

// edits: [{feature: "L/F@P", mode, value}] on `prompt`; returns {byId: Map(token id → predicted change of its
// centred logit), names: Map(token id → label), used, missing: edits with no node in the graph}, or {why} when the
// graph cannot predict at all
export function predict(edits, prompt) {
  if (!S.graph || S.compare) return { why: "no single graph is open" };
  if (prompt !== S.graph.metadata.prompt) return { why: "the prompt differs from the graph's, so the graph predicts nothing" };
  const N = S.nodes.length, d = new Float64Array(N), fixed = new Uint8Array(N), missing = [];
  let used = 0;
  for (const e of edits) {
    const m = /^(\d+)\/(\d+)@(\d+)$/.exec(e.feature), i = m ? S.nodeIdx.get(`${m[1]}_${m[2]}_${m[3]}`) : undefined;
    const a = i === undefined ? 0 : Number(S.nodes[i].activation);
    if (i === undefined || !isFeature(S.nodes[i]) || !a) { missing.push(e.feature); continue; }
    d[i] = e.mode === "ablate" ? -a : e.mode === "set" ? e.value - a : (e.value - 1) * a;
    fixed[i] = 1; used++;
  }
  if (!used) return { why: "no edited feature is a node of this graph", missing };
  // sources before targets: rows go up from the tokens to the outputs
  const order = Int32Array.from(S.rowDesc).reverse();
  for (const t of order) {
    if (fixed[t] || !(isFeature(S.nodes[t]) || S.nodes[t].feature_type === "logit")) continue;
    let sum = 0;
    for (let q = S.inStart[t]; q < S.inStart[t + 1]; q++) {
      const e = S.inList[q], s = S.src[e];
      if (!d[s]) continue;
      const a = Number(S.nodes[s].activation);
      if (a) sum += (S.w[e] * d[s]) / a;
    }
    d[t] = sum;
  }
  const byId = new Map(), names = new Map();
  for (const { node, id } of logitTargets()) { byId.set(id, d[S.nodeIdx.get(node.node_id)]); names.set(id, shortLabel(node)); }
  return { byId, names, used, missing };
}

// "" when prediction and measurement agree, else why not: "sign" (opposite directions) or "size" (more than
// SIZE_FACTOR apart); changes both under FLOOR agree
export function disagreement(pred, meas) {
  const big = Math.max(Math.abs(pred), Math.abs(meas));
  if (big < FLOOR) return "";
  if (pred * meas < 0) return "sign";
  return Math.min(Math.abs(pred), Math.abs(meas)) * SIZE_FACTOR < big ? "size" : "";
}
