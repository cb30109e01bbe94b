// The canvas's text alternative: the selected path as a list. With a node selected, the strongest path from a
// prompt token through it to the answer; with none, the same through the feature with the most influence on the
// answer (focus.js mainPath). Each
// step is a button that selects its node and says the weight of the edge into it and that edge's share of the
// node's input. The summary (the canvas's description) also counts what the filters hide.
import { S, nodeLabel } from "./graph.js";
import { mainPath, tokenPaths } from "./focus.js";
import { $, H, el, fmt } from "./util.js";

const stepName = (n) => {
  const m = n.feature_type === "logit" ? /^Output "([\s\S]*)" \(p=(.*)\)$/.exec(n.clerp || "") : null;
  return m ? `output “${m[1]}” (p = ${m[2]})` : nodeLabel(n);
};

export function renderTextView() {
  const list = $("path-list"), sum = $("graph-text-summary"), more = $("graph-text-more");
  list.textContent = "";
  if (!S.graph || !S.layout) { sum.textContent = "no graph open"; more.textContent = ""; return; }
  const c = S.clicked ? S.nodeIdx.get(S.clicked) : undefined;
  const p = mainPath(c !== undefined && S.vis[c] ? c : undefined);
  const steps = [];
  if (p) { steps.push({ i: p.from, e: -1 }); for (const e of p.edges) steps.push({ i: S.tgt[e], e }); }
  for (const { i, e } of steps) {
    const n = S.nodes[i], share = e >= 0 && S.inTot[i] > 0 ? Math.abs(S.w[e]) / S.inTot[i] : 0;
    list.append(el("li", { "data-node": n.node_id, class: i === c ? "on-path selected" : "on-path" },
      el("button", { type: "button", class: "linkbtn", onclick: () => H.select(n.node_id) }, stepName(n)),
      e >= 0 ? el("span", { class: "muted" }, ` ← weight ${S.w[e] >= 0 ? "+" : ""}${fmt(S.w[e])}, ${(100 * share).toFixed(1)}% of its input`) : null));
  }
  const names = steps.map((s) => S.nodes[s.i]);
  sum.textContent = !steps.length ? (c !== undefined ? `no path from a prompt token through ${nodeLabel(S.nodes[c])}` : "no path from a prompt token to the answer is drawn")
    : `${c !== undefined ? "path through the selected node" : "path through the feature with the most influence on the answer"}: ${names.map(stepName).join(" → ")}`;
  const hc = S.hiddenCounts, shown = S.vis.reduce((a, v) => a + v, 0);
  more.textContent = `${shown} of ${S.nodes.length} nodes shown` + (hc.dense ? ` · ${hc.dense} dense features hidden (denser than ${pctText(S.densityThr)} of tokens)` : "") +
    (hc.user ? ` · ${hc.user} hidden by you` : "") + ` · ${tokenPaths().length} prompt tokens have a path to the answer.`;
}

export const pctText = (x) => `${Number((100 * x).toPrecision(3))}%`;
