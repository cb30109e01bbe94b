// The Attention tab: why does a head look where it looks. The server splits head (layer, head)'s pre-softmax
// score at (query, key) on the open graph's prompt into (query-side node × key-side node) pairs that sum to it
// (QK attribution, docs/attention.md). Every table here ends with what its rows leave out, so it sums to the total.
import { S } from "./graph.js";
import { $, H, api, el, fmt, setStatus, waitJob } from "./util.js";

const num = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };

// fill the form and run: from an edge's head (query = the target's position, key = the source's)
export function openAttend(a) {
  $("qk-layer").value = a.layer; $("qk-head").value = a.head;
  $("qk-query").value = a.query ?? ""; $("qk-key").value = a.key ?? "";
  H.showTab("attend");
  return runAttend();
}

export async function runAttend() {
  const out = $("qk-result"), fail = (msg) => { out.textContent = ""; out.append(el("p", { class: "error", role: "alert" }, msg)); setStatus(msg, true); };
  if (!S.name || S.compare) { fail("open a graph first: the head is explained on its prompt"); return; }
  if (S.fromFile) { fail(`explaining a head needs the graph on the server; ${S.fromFile} was opened from a file`); return; }
  const body = { graph: S.name, layer: num("qk-layer"), head: num("qk-head"), top: num("qk-top") ?? 20 };
  for (const [k, id] of [["query", "qk-query"], ["key", "qk-key"]]) if (num(id) !== null) body[k] = num(id);
  if (![body.layer, body.head, body.top, body.query ?? 0, body.key ?? 0].every(Number.isInteger)) { fail("layer, head, positions and top must be whole numbers"); return; }
  const seq = (S.qkSeq = (S.qkSeq || 0) + 1);
  out.textContent = "";
  $("qk-run").disabled = true;
  try {
    const res = await waitJob(await api("/api/attend", body), "QK attribution");
    if (seq === S.qkSeq) renderQK(res);
  } catch (e) { if (seq === S.qkSeq) fail(e.message); }
  finally { if (seq === S.qkSeq) $("qk-run").disabled = false; }
}

// a node id of the decomposition, clickable when the open graph has that node
function nodeCell(id, label) {
  if (!S.byId.has(id)) return el("td", {}, label);
  return el("td", { class: "link", title: "open this node", onclick: () => H.select(id) }, label);
}

function weightCell(w, mx) {
  return el("td", { class: `num ${w >= 0 ? "pos" : "neg"}` }, el("span", { class: "bar", style: `width:${Math.round((40 * Math.abs(w)) / mx)}px` }), ` ${w >= 0 ? "+" : ""}${fmt(w, 4)}`);
}

function renderQK(r) {
  const out = $("qk-result");
  out.textContent = "";
  out.append(el("div", { id: "qk-title" }, el("strong", {}, `head ${r.layer}.${r.head}`),
    ` · query ${r.query} ${JSON.stringify(r.query_token)} → key ${r.key} ${JSON.stringify(r.key_token)} · attention ${fmt(r.attention)}`));
  const cap = r.softcap ? ` (soft-capped ${fmt(r.capped_score, 4)}; the pre-cap score is split)` : "";
  out.append(el("div", { id: "qk-score", "data-score": r.score, "data-total": r.pairs_total },
    `score ${fmt(r.score, 4)}${cap} = the sum of all ${r.n_pairs.toLocaleString("en")} pairs, ${fmt(r.pairs_total, 4)} (relative error ${r.checks.rel_error.toExponential(1)})`));
  // the head's whole row: what the chosen key competes with; click a token to explain that key instead
  const keys = el("div", { id: "qk-keys", class: "ex", title: "the head's scores over keys; click a token to explain it" });
  r.tokens.forEach((t, i) => {
    const s = el("span", { class: "tok" + (i === r.key ? " max" : ""), "data-pos": i, tabindex: "0", title: `key ${i}: score ${fmt(r.scores[i], 3)}, attention ${fmt(r.pattern[i], 3)}`,
      onclick: () => { $("qk-key").value = i; $("qk-query").value = r.query; runAttend(); } }, t);
    s.style.background = `rgba(230,97,0,${(0.7 * r.pattern[i]).toFixed(3)})`;
    keys.append(s);
  });
  out.append(el("h4", {}, "Attention over keys"), keys);
  let mx = 1e-12;
  for (const p of r.pairs) mx = Math.max(mx, Math.abs(p.weight));
  const pairs = el("table", { id: "qk-pairs" }, el("tr", {}, el("th", { class: "num" }, "weight"), el("th", {}, "query-side node"), el("th", {}, "key-side node")));
  for (const p of r.pairs) {
    pairs.append(el("tr", { class: "qk-pair", "data-weight": p.weight }, weightCell(p.weight, mx), nodeCell(p.query_node, p.query_label), nodeCell(p.key_node, p.key_label)));
  }
  if (r.n_pairs_rest > 0) pairs.append(el("tr", { class: "qk-rest", "data-weight": r.pairs_rest }, weightCell(r.pairs_rest, mx), el("td", { colspan: 2, class: "muted" }, `the other ${r.n_pairs_rest.toLocaleString("en")} pairs`)));
  pairs.append(el("tr", { class: "qk-total" }, el("th", { class: "num" }, fmt(r.pairs_total, 4)), el("th", { colspan: 2 }, "sum = the score")));
  out.append(el("h4", {}, "Largest pairs (query-side node × key-side node)"), pairs);
  for (const [side, what, n] of [["query_side", "Query-side nodes", r.n_query_nodes], ["key_side", "Key-side nodes", r.n_key_nodes]]) {
    const rows = r[side], rest = r[`${side}_rest`];
    let m = 1e-12;
    for (const x of rows) m = Math.max(m, Math.abs(x.total));
    const t = el("table", { id: `qk-${side.replace("_", "-")}` }, el("tr", {}, el("th", { class: "num" }, "part"), el("th", {}, "node")));
    for (const x of rows) t.append(el("tr", { class: "qk-node", "data-weight": x.total }, weightCell(x.total, m), nodeCell(x.node, x.label)));
    if (n > rows.length) t.append(el("tr", { class: "qk-rest", "data-weight": rest }, weightCell(rest, m), el("td", { class: "muted" }, `the other ${n - rows.length} nodes`)));
    out.append(el("h4", {}, `${what} (each summed over the other side; ${n} in all)`), t);
  }
}
