// One edge as a thing to look at: its tooltip on the canvas, its panel when clicked, and — on graphs traced with
// head loadings — the attention heads of its last hop (links[].heads: [layer, head, part], largest |part| first;
// with heads_rest they sum to the link's weight). Graphs without them show the weight alone.
import { S, linkOf, nodeLabel } from "./graph.js";
import { $, H, el, fmt } from "./util.js";

const TIP_HEADS = 4;      // heads listed in a tooltip; the panel lists them all

// whether this graph carries head loadings at all (checked once per graph)
export function hasHeads() {
  if (!S.graph) return false;
  if (S.headsOf !== S.graph) { S.headsOf = S.graph; S.anyHeads = S.graph.links.some((l) => Array.isArray(l.heads) && l.heads.length); }
  return S.anyHeads;
}

// {heads: [[layer, head, part]], rest, multi} of edge e, or null when it has none
export function headsOf(e) {
  const l = linkOf(e);
  if (!l || !Array.isArray(l.heads) || !l.heads.length) return null;
  return { heads: l.heads, rest: Number(l.heads_rest || 0), multi: l.multi_hop ?? null };
}

const headName = (h) => `head ${h[0]}.${h[1]}`;
const pctOf = (part, w) => (w ? `${((100 * part) / w).toFixed(0)}%` : "–");
const crosses = (e) => S.nodes[S.src[e]].ctx_idx !== S.nodes[S.tgt[e]].ctx_idx;

// what a link between positions without loadings says, or null for a link within one position
function noHeadsNote(e) {
  if (!crosses(e)) return "within one position: no attention head moves it";
  return S.compare ? "a comparison shows no heads: open either graph for them" : "no head loadings in this graph (trace with heads to split links by attention head)";
}

// the canvas tooltip of edge e: its ends, weight and (if any) its strongest heads
export function edgeTip(e) {
  const a = S.nodes[S.src[e]], b = S.nodes[S.tgt[e]], w = S.w[e], box = el("div", { class: "edge-tip" });
  box.append(el("div", {}, `${nodeLabel(a)} → ${nodeLabel(b)}`));
  const l = linkOf(e);
  box.append(el("div", {}, S.compare ? `A ${fmt(l.wa)} → B ${fmt(l.wb)} (Δ ${fmt(w)})` : `weight ${fmt(w)}`));
  const hd = headsOf(e);
  if (hd) {
    box.append(el("div", { class: "tip-head" }, "attention heads (last hop):"));
    for (const h of hd.heads.slice(0, TIP_HEADS)) box.append(el("div", { class: "tip-row", "data-head": `${h[0]}.${h[1]}` }, `${headName(h)}  ${fmt(h[2])}  (${pctOf(h[2], w)})`));
    const more = hd.heads.length - TIP_HEADS;
    if (more > 0 || hd.rest) box.append(el("div", { class: "tip-row" }, `${more > 0 ? `${more} more heads` : "other heads"} … (click the edge)`));
  }
  box.append(el("div", { class: "tip-hint" }, "click: open this edge"));
  return box;
}

// the heads cell of a node panel's edge row: the strongest head, all of them on hover, the edge's panel on click
export function headsCell(e) {
  const hd = headsOf(e);
  if (!hd) return el("td", { class: "muted" }, crosses(e) ? "–" : "");
  const w = S.w[e], top = hd.heads[0];
  const title = hd.heads.map((h) => `${headName(h)} ${fmt(h[2])} (${pctOf(h[2], w)})`).join("\n") + (hd.rest ? `\nother heads ${fmt(hd.rest)}` : "");
  return el("td", { class: "heads-cell link", title, "data-edge": e, onclick: (ev) => { ev.stopPropagation(); H.selectEdge(e); } },
    `${top[0]}.${top[1]} ${pctOf(top[2], w)}`);
}

// the panel of a clicked edge, in the Node tab
export function renderEdgePanel(e) {
  const box = $("tab-feature"), a = S.nodes[S.src[e]], b = S.nodes[S.tgt[e]], w = S.w[e], l = linkOf(e);
  box.textContent = "";
  box.append(el("div", { class: "row" }, el("strong", { id: "edge-title" }, `${nodeLabel(a)} → ${nodeLabel(b)}`)));
  box.append(el("div", { class: "row" },
    el("button", { type: "button", onclick: () => H.select(a.node_id) }, "open source"),
    el("button", { type: "button", onclick: () => H.select(b.node_id) }, "open target")));
  const where = `position ${a.ctx_idx} → ${b.ctx_idx}`;
  box.append(el("div", { class: "muted", id: "edge-weight", "data-weight": w },
    S.compare ? `A ${fmt(l.wa)} → B ${fmt(l.wb)} (Δ ${fmt(w)}) · ${where}` : `weight ${fmt(w)} · ${where}`));
  const hd = headsOf(e);
  if (!hd) { box.append(el("p", { class: "muted", id: "edge-no-heads" }, noHeadsNote(e))); return; }
  box.append(el("h4", {}, "Attention heads of its last hop"),
    el("p", { class: "muted small" }, "Each head's part of the weight: what reached the target's position through that head. " +
      "The parts sum to the weight. “Why?” explains the head's attention from the target's position to the source's."));
  const t = el("table", { id: "edge-heads" }, el("tr", {}, el("th", {}, "head"), el("th", { class: "num" }, "part"), el("th", { class: "num" }, "of weight"), el("th", {}, "")));
  let mx = 1e-12;
  for (const h of hd.heads) mx = Math.max(mx, Math.abs(h[2]));
  for (const h of hd.heads) {
    const why = el("button", { type: "button", class: "why-btn", title: `why does head ${h[0]}.${h[1]} attend from position ${b.ctx_idx} to ${a.ctx_idx}?`,
      onclick: () => H.attend({ layer: h[0], head: h[1], query: b.ctx_idx, key: a.ctx_idx }) }, "why?");
    t.append(el("tr", { class: "head-row", "data-layer": h[0], "data-head": h[1], "data-part": h[2] },
      el("td", {}, headName(h)),
      el("td", { class: `num ${h[2] >= 0 ? "pos" : "neg"}` }, el("span", { class: "bar", style: `width:${Math.round((40 * Math.abs(h[2])) / mx)}px` }), ` ${fmt(h[2], 4)}`),
      el("td", { class: "num" }, pctOf(h[2], w)), el("td", {}, why)));
  }
  if (hd.rest) t.append(el("tr", { class: "head-rest", "data-part": hd.rest }, el("td", { class: "muted" }, "other heads"), el("td", { class: "num" }, fmt(hd.rest, 4)), el("td", { class: "num" }, pctOf(hd.rest, w)), el("td", {})));
  t.append(el("tr", { class: "head-total" }, el("th", {}, "sum"), el("th", { class: "num" }, fmt(hd.heads.reduce((s, h) => s + h[2], hd.rest), 4)), el("th", {}), el("th", {})));
  box.append(t);
  if (hd.multi !== null) box.append(el("div", { class: "muted small", id: "edge-multi" }, `of the weight, ${fmt(hd.multi, 4)} came through more than one hop (an earlier head moved it first)`));
}
