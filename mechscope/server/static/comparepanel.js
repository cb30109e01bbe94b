// The Compare tab: pick a second graph, then read the diff as ranked lists (features that appear in B, disappear
// from A, change influence; output probabilities; the most changed edges) beside the overlay on the canvas.
// Clicking a feature row selects its node in the overlay. By URL: ?slug=A&compare=B[&by=label][&positions=1].
import { S } from "./graph.js";
import { DIFF_COLORS } from "./render.js";
import { $, H, el, fmt, setStatus } from "./util.js";
import { openCompare } from "./diff.js";

const ROWS = 50;      // rows per list; the lists' counts are all in the summary

export function compareSummaryText() {
  const d = S.compare.diff, s = d.summary;
  return `${S.compare.a} ⇄ ${S.compare.b} · +${s.appear} appear · −${s.disappear} disappear · ${s.change} change · ` +
    `shared ${s.shared} of ${s.features_a} / ${s.features_b} · influence overlap ${fmt(s.influence_overlap, 2)} · aligned by ${d.aligned_by}`;
}

export async function runCompare() {
  const b = $("cmp-with").value, a = S.compare ? S.compare.a : S.name;
  if (!a || !b) { setStatus("open a graph and pick a second one to compare", true); return; }
  if (S.fromFile) { showError(`a comparison needs both graphs on the server; ${S.fromFile} was opened from a file`); return; }
  $("cmp-run").disabled = true;
  setStatus(`comparing ${a} with ${b}…`);
  try { await openCompare(a, b, { push: true }, { by: $("cmp-by").value, positions: $("cmp-positions").checked }); }
  catch (e) { showError(e.message); }
  finally { $("cmp-run").disabled = false; }
}

function showError(msg) {
  const out = $("cmp-result");
  out.textContent = "";
  out.append(el("p", { class: "error", role: "alert", id: "cmp-error" }, msg));
  setStatus(msg, true);
}

// the picker (every other stored graph) and, when comparing, the diff's lists
export function renderCompareTab() {
  const sel = $("cmp-with"), keep = S.compare ? S.compare.b : sel.value, me = S.compare ? S.compare.a : S.name;
  sel.textContent = "";
  // by prompt, and by name too: a store can hold several graphs of one prompt (other settings, other transcoders)
  for (const g of S.graphList || []) if (g.name !== me) sel.append(el("option", { value: g.name, title: g.name }, g.prompt ? `${g.prompt} (${g.name})` : g.name));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  $("cmp-exit").hidden = $("cmp-open-b").hidden = !S.compare;
  const out = $("cmp-result");
  out.textContent = "";
  if (!S.compare) { out.append(el("p", { class: "muted" }, "Overlay this graph and another of the same model: features that appear, disappear or change influence are coloured, and listed here by how much they change.")); return; }
  $("cmp-by").value = S.compare.by; $("cmp-positions").checked = S.compare.positions;
  const d = S.compare.diff, s = d.summary;
  out.append(el("div", { id: "cmp-summary", "data-appear": s.appear, "data-disappear": s.disappear, "data-change": s.change },
    el("div", {}, el("strong", {}, "A "), d.a.prompt), el("div", {}, el("strong", {}, "B "), d.b.prompt),
    el("div", { class: "cmp-counts" }, chip("appear", `+${s.appear} appear`), chip("disappear", `−${s.disappear} disappear`), chip("change", `${s.change} change`)),
    el("div", { class: "muted" }, `features A ${s.features_a}, B ${s.features_b}, shared ${s.shared} · influence overlap ${fmt(s.influence_overlap, 2)} · aligned by ${d.aligned_by}${d.positions ? " and position" : ""}`),
    s.unaligned_a || s.unaligned_b ? el("div", { class: "muted" }, `unlabelled features left out: A ${s.unaligned_a}, B ${s.unaligned_b}`) : null));
  featureList(out, "appear", `Appear in B (${s.appear})`, d.features.appear);
  featureList(out, "disappear", `Disappear from A (${s.disappear})`, d.features.disappear);
  featureList(out, "change", `Change influence (${s.change})`, d.features.change);
  const lg = [...d.logits.change, ...d.logits.appear, ...d.logits.disappear];
  if (lg.length) {
    const t = el("table", { id: "cmp-logits" }, el("tr", {}, el("th", {}, "output"), el("th", { class: "num" }, "A"), el("th", { class: "num" }, "B")));
    for (const r of lg.slice(0, ROWS)) t.append(el("tr", {}, el("td", {}, r.key), el("td", { class: "num" }, fmt(r.a)), el("td", { class: "num" }, fmt(r.b))));
    out.append(el("h4", {}, "Output probabilities"), t);
  }
  const edges = [...d.edges.appear.map((r) => [r, "appear"]), ...d.edges.disappear.map((r) => [r, "disappear"]), ...d.edges.change.map((r) => [r, "change"])]
    .sort((x, y) => Math.abs(y[0].delta) - Math.abs(x[0].delta)).slice(0, 20);
  if (edges.length) {
    const t = el("table", { id: "cmp-edges" }, el("tr", {}, el("th", {}, "edge (summed by key)"), el("th", { class: "num" }, "A"), el("th", { class: "num" }, "B")));
    for (const [r, st] of edges) t.append(el("tr", { "data-status": st }, el("td", {}, chip(st, "■"), ` ${r.key.join(" → ")}`), el("td", { class: "num" }, fmt(r.a)), el("td", { class: "num" }, fmt(r.b))));
    out.append(el("h4", {}, `Edges that change most (of ${s.edges_a} / ${s.edges_b})`), t);
  }
}

const chip = (status, text) => el("span", { class: "chip", style: `color:${DIFF_COLORS[status]}` }, text);

function featureList(out, status, title, rows) {
  const t = el("table", { id: `cmp-${status}`, class: "cmp-list" },
    el("tr", {}, el("th", {}, "feature"), el("th", { class: "num" }, "A"), el("th", { class: "num" }, "B"), el("th", { class: "num" }, "Δ"), el("th", {}, "label")));
  for (const r of rows.slice(0, ROWS)) {
    const ids = S.compare.keyNodes.get(r.key) || [];
    const go = () => { if (ids.length) H.select(ids[0]); else setStatus(`no node of ${r.key} is in the overlay`, true); };
    t.append(el("tr", { class: "cmp-row edge-row", "data-key": r.key, tabindex: "0", title: `${ids.length} node${ids.length === 1 ? "" : "s"} in the overlay`, onclick: go,
      onkeydown: (e) => { if (e.key === "Enter") go(); } },
      el("td", {}, chip(status, "●"), ` ${r.key}`), el("td", { class: "num" }, fmt(r.a, 4)), el("td", { class: "num" }, fmt(r.b, 4)),
      el("td", { class: `num ${r.delta >= 0 ? "pos" : "neg"}` }, `${r.delta >= 0 ? "+" : ""}${fmt(r.delta, 4)}`), el("td", {}, r.label || "")));
  }
  if (rows.length > ROWS) t.append(el("tr", {}, el("td", { class: "muted", colspan: 5 }, `… ${rows.length - ROWS} more (JSON: the full list)`)));
  if (!rows.length) t.append(el("tr", {}, el("td", { class: "muted", colspan: 5 }, "none")));
  out.append(el("h4", {}, title), t);
}
