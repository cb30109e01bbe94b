// Replacement and completeness of the pinned subgraph, recomputed whenever the pins change. The formulas are
// circuit-tracer's graph scores (mechscope/attribution/graph.py, Graph.scores) with the unpinned features counted
// as unexplained, like error nodes:
//   influence: the logits' weights (their probabilities, normalised) flow back along |edge| / (Σ |inputs| of its
//     target), but only through pinned features and the logits themselves;
//   replacement: the share of that influence that reaches the prompt's tokens, rather than stopping at an error
//     node or an unpinned feature;
//   completeness: over the pinned features and the logits, the share of each one's |input| that comes from pinned
//     features or tokens, weighted by its influence (plus its own weight, for a logit).
// With every feature pinned they are the graph's own scores over the edges the page holds (the pruned graph's).
import { S, isFeature } from "./graph.js";

const UNEXPLAINED = 0, PINNED = 1, TOKEN = 2, LOGIT = 3;

// {replacement, completeness, features} of the feature nodes among `ids`, or null with no graph open
export function subgraphScores(ids) {
  if (!S.graph || !S.nodes.length) return null;
  const N = S.nodes.length, role = new Uint8Array(N), w = new Float64Array(N);
  let nPinned = 0, wSum = 0, nLogit = 0;
  for (const id of ids) {
    const i = S.nodeIdx.get(id);
    if (i !== undefined && S.isFeat[i] && role[i] !== PINNED) { role[i] = PINNED; nPinned++; }
  }
  S.nodes.forEach((n, i) => {
    if (n.feature_type === "embedding") role[i] = TOKEN;
    else if (n.feature_type === "logit") { role[i] = LOGIT; w[i] = Math.max(0, Number(n.token_prob) || 0); wSum += w[i]; nLogit++; }
  });
  if (!nLogit) return null;
  for (let i = 0; i < N; i++) if (role[i] === LOGIT) w[i] = wSum > 0 ? w[i] / wSum : 1 / nLogit;
  const carries = (i) => role[i] === PINNED || role[i] === LOGIT;
  // influence, one hop per round (as graph.py's `influence`: Σ_k w Â^k, k ≥ 1); a layered graph ends in L + 2 rounds
  const infl = new Float64Array(N);
  let x = Float64Array.from(w);
  for (let round = 0; round < 1000; round++) {
    const next = new Float64Array(N);
    let mass = 0;
    for (let t = 0; t < N; t++) {
      if (!(x[t] > 0) || !carries(t) || !(S.inTot[t] > 0)) continue;
      const f = x[t] / S.inTot[t];
      for (let q = S.inStart[t]; q < S.inStart[t + 1]; q++) {
        const e = S.inList[q];
        next[S.src[e]] += f * Math.abs(S.w[e]);
      }
    }
    for (let i = 0; i < N; i++) { infl[i] += next[i]; mass += next[i]; }
    if (mass < 1e-10) break;
    x = next;
  }
  let tok = 0, lost = 0, num = 0, den = 0;
  for (let i = 0; i < N; i++) {
    if (role[i] === TOKEN) tok += infl[i];
    else if (role[i] === UNEXPLAINED) lost += infl[i];
    if (!carries(i) || !(S.inTot[i] > 0)) continue;
    let explained = 0;
    for (let q = S.inStart[i]; q < S.inStart[i + 1]; q++) {
      const e = S.inList[q], r = role[S.src[e]];
      if (r === PINNED || r === TOKEN) explained += Math.abs(S.w[e]);
    }
    const out = infl[i] + w[i];
    num += (explained / S.inTot[i]) * out; den += out;
  }
  return { replacement: tok + lost > 0 ? tok / (tok + lost) : 0, completeness: den > 0 ? num / den : 0, features: nPinned };
}

// the pinned set: pinned nodes and supernode members
export function pinnedSet() {
  const ids = new Set(S.pinned);
  for (const sn of S.supernodes) for (let k = 1; k < sn.length; k++) ids.add(sn[k]);
  return ids;
}

export function scoresText() {
  const ids = pinnedSet(), s = subgraphScores(ids);
  if (!s || ![...ids].some((id) => S.byId.has(id) && isFeature(S.byId.get(id)))) return "";
  return `pinned subgraph (${s.features} feature${s.features === 1 ? "" : "s"}): replacement ${s.replacement.toFixed(3)} · completeness ${s.completeness.toFixed(3)}`;
}
