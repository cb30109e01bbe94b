// The node panel: what a node is, its editable label, all its inputs and outputs with their share of the
// total, and the feature's dashboard from the index (examples with per-token activations, logits, histogram).
import { S, isFeature, nodeLabel, typeName } from "./graph.js";
import { nodeDiffLine } from "./diff.js";
import { headsCell, hasHeads } from "./edges.js";
import { $, H, api, el, fmt, svgEl } from "./util.js";
import { setLabel } from "./reading.js";

export async function renderNodePanel(id) {
  const seq = ++S.featureSeq;
  const n = S.byId.get(id), box = $("tab-feature");
  box.textContent = "";
  const pinBtn = el("button", { id: "pin-btn", type: "button", "aria-pressed": String(S.pinned.includes(id)), onclick: () => H.togglePin(id) },
    S.pinned.includes(id) ? "Unpin" : "Pin");
  const hideBtn = el("button", { id: "hide-btn", type: "button", title: "hide this node from the graph (H); “show hidden” above the graph brings it back",
    onclick: () => H.toggleHidden(id) }, "Hide");
  box.append(el("div", { class: "row" }, el("strong", { id: "node-title" }, nodeLabel(n)), pinBtn, hideBtn));
  box.append(el("div", { class: "muted", id: "node-type" }, `${typeName(n)} · position ${n.ctx_idx} · activation ${fmt(n.activation)} · influence ${fmt(n.influence)}` +
    (typeof n.density === "number" ? ` · fires on ${(100 * n.density).toFixed(n.density < 0.01 ? 2 : 1)}% of tokens` : "")));
  if (n.diff) box.append(nodeDiffLine(n));
  if (isFeature(n)) box.append(labelEditor(n));
  box.append(edgeSection("Inputs", id, "in"), edgeSection("Outputs", id, "out"));
  if (isFeature(n)) await loadFeatureDetail(box, n.layer, n.feature, seq, n.activation);
}

function labelEditor(n) {
  const input = el("input", { id: "label-input", type: "text", value: n.clerp || "", maxlength: "300", "aria-label": "label of this feature",
    placeholder: "label this feature", title: "Enter sets the label (it goes into the link; Save writes it to the server), Escape cancels" });
  const apply = () => {
    setLabel(n.node_id, input.value.trim());
    $("node-title").textContent = nodeLabel(n);
    H.changed("label");
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); apply(); }
    else if (e.key === "Escape") { e.preventDefault(); input.value = n.clerp || ""; }
  });
  return el("div", { class: "row" }, input, el("button", { type: "button", id: "label-set", onclick: apply }, "Set label"));
}

// every edge into (dir "in") or out of a node, strongest first, with |w| as a share of the node's total
function edgeSection(title, id, dir) {
  const i = S.nodeIdx.get(id);
  const [start, list, other] = dir === "in" ? [S.inStart, S.inList, S.src] : [S.outStart, S.outList, S.tgt];
  const rows = [];
  let total = 0;
  for (let k = start[i]; k < start[i + 1]; k++) { const e = list[k]; total += Math.abs(S.w[e]); rows.push(e); }
  rows.sort((a, b) => Math.abs(S.w[b]) - Math.abs(S.w[a]));
  const wrap = el("div", { class: "edges", "data-dir": dir });
  const filter = el("input", { type: "search", placeholder: "filter by label", "aria-label": `filter ${title.toLowerCase()}`, class: "edge-filter" });
  const table = el("table", { class: "edge-table", id: `edges-${dir}` });
  const LIMIT = 300, heads = hasHeads();
  const fill = () => {
    table.textContent = "";
    table.append(el("tr", {}, el("th", {}, S.compare ? "Δ B−A" : "weight"), el("th", { title: "share of the total |weight| into/out of this node" }, "share"),
      heads ? el("th", { title: "the attention head that carries most of a link between positions (click: all its heads)" }, "head") : null, el("th", {}, "node")));
    const f = filter.value.trim().toLowerCase();
    let shown = 0, matched = 0;
    for (const e of rows) {
      const o = S.nodes[other[e]], lab = nodeLabel(o);
      if (f && !lab.toLowerCase().includes(f)) continue;
      matched++;
      if (shown >= LIMIT) continue;
      shown++;
      const share = total > 0 ? Math.abs(S.w[e]) / total : 0;
      table.append(el("tr", { class: "edge-row", tabindex: "0", "data-node": o.node_id, onclick: () => H.select(o.node_id),
        onkeydown: (ev) => { if (ev.key === "Enter") H.select(o.node_id); } },
        el("td", { class: S.w[e] >= 0 ? "pos num" : "neg num" }, fmt(S.w[e])),
        el("td", { class: "num" }, el("span", { class: "bar", style: `width:${Math.round(40 * share)}px` }), ` ${(100 * share).toFixed(1)}%`),
        heads ? headsCell(e) : null, el("td", {}, lab)));
    }
    if (matched > shown) table.append(el("tr", {}, el("td", { class: "muted", colspan: heads ? 4 : 3 }, `… ${matched - shown} more; filter to narrow`)));
    if (!rows.length) table.append(el("tr", {}, el("td", { class: "muted", colspan: heads ? 4 : 3 }, "none in the pruned graph")));
  };
  filter.addEventListener("input", fill);
  fill();
  wrap.append(el("h4", {}, `${title} (${rows.length}, total |w| ${fmt(total, 2)})`), filter, table);
  return wrap;
}

// Appends the index's dashboard of one feature to `box`; false when a newer panel replaced this one meanwhile.
export async function loadFeatureDetail(box, layer, feature, seq, own) {
  const detail = el("div", { id: "feature-detail" }, "loading…");
  box.append(detail);
  let d;
  try { d = await api(`/api/features/${layer}/${feature}`); }
  catch (e) { if (seq !== S.featureSeq) return false; detail.textContent = e.message; return true; }
  if (seq !== S.featureSeq) return false;
  renderFeature(detail, d, own);
  return true;
}

export function renderFeature(box, d, own) {
  box.textContent = "";
  // cross-layer transcoders: a feature reads one layer and writes to a range of later ones
  const w = d.write_layers;
  if (w && w[1] > w[0]) box.append(el("div", { class: "muted", id: "feature-writes" }, `writes to layers ${w[0]}–${w[1]}`));
  if (d.missing_index) { box.append(el("p", { class: "muted" }, "No feature index for this model (mechscope index-features).")); return; }
  box.append(el("div", { id: "feature-label" }, el("strong", {}, `“${d.label}”`), ` confidence ${fmt(d.label_confidence, 2)}`));
  box.append(el("div", { class: "muted" }, `density ${fmt(d.density, 5)} · max ${fmt(d.max_act, 2)}`));
  // the label's two sides and the tokens it fires on (indexes built since issue #31; absent on older ones)
  if (d.label_input || d.label_output) box.append(el("div", { id: "feature-sides" }, `reads: ${d.label_input || "–"} · says: ${d.label_output || "–"}`));
  if (d.fires_on && d.fires_on.length) box.append(el("div", { class: "muted small", id: "feature-fires" }, "fires on: " + d.fires_on.slice(0, 8).map((f) => `${JSON.stringify(f[0])}×${f[1]}`).join(", ")));
  const counts = (d.hist && d.hist.counts) || [];
  if (counts.length) box.append(el("h4", {}, "Activation histogram"), histogram(d.hist.edges, counts, own));
  box.append(el("h4", {}, "Examples"), el("p", { class: "muted small" }, "▲ top · ◆ by activation quantile · • random; hover a token for its activation"));
  for (const ex of d.examples) {
    // ▲ top, ◆ an activation quantile band (q0 the weakest), • random
    const mark = ex.kind === "top" ? "▲" : ex.kind === "random" ? "•" : "◆";
    const div = el("div", { class: "ex", title: ex.kind }, el("span", { class: "muted" }, `${mark} ${fmt(ex.activation, 2)} `));
    ex.tokens.forEach((t, i) => {
      const a = ex.acts[i] * ex.activation;      // acts are relative to the window's maximum
      const s = el("span", { class: "tok" + (i === ex.max_pos ? " max" : ""), title: `activation ${fmt(a, 2)}`, "data-act": fmt(a, 3) }, t);
      s.style.background = `rgba(230,97,0,${(ex.acts[i] * 0.7).toFixed(3)})`;
      div.append(s);
    });
    box.append(div);
  }
  const lt = el("table", {}, el("tr", {}, el("th", { colspan: 2 }, "promotes"), el("th", { colspan: 2 }, "suppresses")));
  for (let i = 0; i < Math.min(8, d.top_logits.length); i++) {
    const [pt, pv] = d.top_logits[i], [nt, nv] = d.bottom_logits[i] || ["", 0];
    lt.append(el("tr", {}, el("td", { class: "pos" }, JSON.stringify(pt)), el("td", { class: "num" }, fmt(pv, 2)),
      el("td", { class: "neg" }, JSON.stringify(nt)), el("td", { class: "num" }, fmt(nv, 2))));
  }
  box.append(el("h4", {}, "Logit effects"), lt);
}

// counts[0] lies below edges[0], counts[i] in [edges[i-1], edges[i]), the last above the last edge (log bins)
export function histogram(edges, counts, own) {
  const W = 350, H = 120, ml = 40, mb = 30, mt = 8, mr = 8, pw = W - ml - mr, ph = H - mt - mb;
  let mx = 1;
  for (const c of counts) if (c > mx) mx = c;
  const lmx = Math.log10(mx + 1), bw = pw / counts.length;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, id: "hist-svg", role: "img",
    "aria-label": "histogram of the feature's activations, log-spaced bins" });
  counts.forEach((c, i) => {
    const hh = (Math.log10(c + 1) / lmx) * ph;
    svg.append(svgEl("rect", { x: ml + i * bw, y: mt + ph - hh, width: Math.max(1, bw - 1), height: hh, fill: "#3d7fd9" },
      svgEl("title", {}, `${i === 0 ? "< " + edges[0] : i === counts.length - 1 ? "≥ " + edges[edges.length - 1] : `${fmt(edges[i - 1], 3)}–${fmt(edges[i], 3)}`}: ${c}`)));
  });
  svg.append(svgEl("line", { x1: ml, y1: mt + ph, x2: ml + pw, y2: mt + ph, stroke: "#333" }));
  svg.append(svgEl("line", { x1: ml, y1: mt, x2: ml, y2: mt + ph, stroke: "#333" }));
  // x ticks at powers of ten: bin i's left edge is edges[i-1]
  const xOf = (v) => {
    if (!edges.length) return ml;
    const lo = Math.log10(edges[0]), hi = Math.log10(edges[edges.length - 1]);
    return ml + bw + ((Math.log10(Math.max(v, 1e-12)) - lo) / (hi - lo)) * (pw - 2 * bw);
  };
  if (edges.length) {
    const lo = Math.round(Math.log10(edges[0])), hi = Math.round(Math.log10(edges[edges.length - 1]));
    for (let p = lo; p <= hi; p++) {
      const x = xOf(10 ** p);
      svg.append(svgEl("line", { x1: x, y1: mt + ph, x2: x, y2: mt + ph + 4, stroke: "#333" }));
      svg.append(svgEl("text", { x, y: mt + ph + 15, "font-size": 10, "text-anchor": "middle", fill: "#333" }, p === 0 ? "1" : `1e${p}`));
    }
  }
  svg.append(svgEl("text", { x: ml + pw / 2, y: H - 2, "font-size": 10, "text-anchor": "middle", fill: "#333" }, "activation (log scale)"));
  svg.append(svgEl("text", { x: ml - 4, y: mt + 8, "font-size": 10, "text-anchor": "end", fill: "#333" }, String(mx)));
  svg.append(svgEl("text", { x: ml - 4, y: mt + ph, "font-size": 10, "text-anchor": "end", fill: "#333" }, "0"));
  svg.append(svgEl("text", { x: 10, y: mt + ph / 2, "font-size": 10, "text-anchor": "middle", fill: "#333", transform: `rotate(-90 10 ${mt + ph / 2})` }, "count (log)"));
  if (own !== undefined && own !== null && own > 0 && edges.length) {
    const x = Math.min(ml + pw, Math.max(ml, xOf(own)));
    svg.append(svgEl("line", { x1: x, y1: mt, x2: x, y2: mt + ph, stroke: "#c45500", "stroke-width": 2, id: "hist-own" }));
    svg.append(svgEl("text", { x: Math.min(x + 3, W - 60), y: mt + 9, "font-size": 10, fill: "#8a3c00" }, `this node ${fmt(own, 2)}`));
  }
  return svg;
}
