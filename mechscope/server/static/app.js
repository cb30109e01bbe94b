// mechscope web microscope: plain JavaScript modules, a canvas graph view, no third-party code.
import { S, computeLayout, edgesOver, isFeature, nodeLabel, prepare, thresholdForCount } from "./graph.js";
import { renderNodePanel } from "./panels.js";
import { RENDER, attach, edgeAt, fitView, nodeAt, requestDraw, supernodeBoxes } from "./render.js";
import { openAttend, runAttend } from "./attend.js";
import { compareSummaryText, renderCompareTab, runCompare } from "./comparepanel.js";
import { openCompare } from "./diff.js";
import { edgeTip, renderEdgePanel } from "./edges.js";
import { exportJSON, exportPNG, exportSVG } from "./exports.js";
import { runIntervention, runProbe, syncModeInputs } from "./intervene.js";
import { bindKeys } from "./keys.js";
import { autoFlowchart, groupChecked, renderPinned, saveToServer, suggest, togglePin } from "./subgraph.js";
import { readUrl, viewFromUrl, writeUrl } from "./urlstate.js";
import { $, H, api, cancelJob, el, embedded, fmt, setStatus, waitJob } from "./util.js";

S.cache = new Map();       // parsed graphs by name: reopening one costs nothing
const DEFAULT_EDGES = 6000;      // the strongest edges shown on open; the edge slider shows more

async function refreshList() {
  const list = await api("/api/graphs");
  S.graphList = list;
  const ul = $("graph-list");
  ul.textContent = "";
  for (const g of list) {
    ul.append(el("li", { "data-name": g.name, title: g.prompt, class: g.name === S.name ? "active" : "", tabindex: "0",
      onclick: () => openGraph(g.name), onkeydown: (e) => { if (e.key === "Enter") openGraph(g.name); } }, g.prompt || g.name));
  }
  renderCompareTab();
}

export async function fetchGraph(name) {
  if (S.cache.has(name)) return S.cache.get(name);
  setStatus(`loading ${name}…`);
  const g = await api(`/api/graphs/${encodeURIComponent(name)}`);
  if (S.cache.size >= 3) S.cache.delete(S.cache.keys().next().value);
  S.cache.set(name, g);
  return g;
}

// st: state to restore (from the URL); else the graph's saved qParams
export async function openGraph(name, st = {}) {
  const t0 = performance.now();
  const g = await fetchGraph(name);
  S.compare = null;
  showGraph(g, name, st, t0, performance.now());
}

// Shows a parsed graph (a stored one, or the compare view's overlay of two) under `name`.
export function showGraph(g, name, st, t0 = performance.now(), t1 = t0) {
  S.name = name;
  prepare(g);
  const t2 = performance.now();
  const q = g.qParams || {};
  S.pinned = (st.pinnedIds || q.pinnedIds || []).filter((id) => S.byId.has(id));
  S.supernodes = (st.supernodes || q.supernodes || []).map((sn) => [String(sn[0]), ...sn.slice(1).filter((x) => S.byId.has(x))]).filter((sn) => sn.length > 1);
  S.labels = {}; S.dirtyLabels.clear(); S.checked.clear(); S.history = S.history || [];
  S.prune = st.pruningThreshold ?? 1;
  S.edgeThr = st.edgeThreshold ?? thresholdForCount(DEFAULT_EDGES);
  S.hoverEdge = null; S.clickedEdge = null;
  $("prune").value = S.prune; $("prune-val").textContent = S.prune.toFixed(2);
  syncEdgeSlider();
  $("auto-flowchart").textContent = "";
  const info = g.metadata.info || {};
  $("graph-title").textContent = g.metadata.prompt;
  $("scores").textContent = S.compare ? compareSummaryText() : `replacement ${fmt(info.replacement_score)} (pruned ${fmt(info.pruned_replacement_score)}) · completeness ${fmt(info.completeness_score)} (pruned ${fmt(info.pruned_completeness_score)}) · ${g.nodes.length} nodes, ${S.E} edges · top: ${(info.top_logits || []).slice(0, 3).map((t) => `"${t.token}" ${fmt(t.prob, 2)}`).join(", ")}`;
  document.body.classList.toggle("comparing", !!S.compare);
  if (!S.compare) { $("iv-prompt").value = g.metadata.prompt; if (!$("probe-text").value) $("probe-text").value = g.metadata.prompt; }
  relayout();
  S.clicked = null;
  renderNodeList(); renderPinned();          // first: the subgraph pane, if any, sets the canvas's size
  fitView();
  if (st.view) { S.view = viewFromUrl(st.view); S.fitted = false; }
  const clicked = st.clickedId || (st.slug ? null : q.clickedId);
  if (clicked && S.byId.has(clicked)) select(clicked);
  else requestDraw();
  if (!embedded() && !document.querySelector(`#graph-list li[data-name="${CSS.escape(name)}"]`)) refreshList().catch(() => {});
  document.querySelectorAll("#graph-list li").forEach((li) => li.classList.toggle("active", li.dataset.name === name));
  renderCompareTab();
  writeUrl(true);
  S.openMs = performance.now() - t0;
  S.timing = { fetchParse: t1 - t0, prepare: t2 - t1, rest: performance.now() - t2 };
  setStatus(`opened ${g.nodes.length} nodes, ${S.E} edges in ${(S.openMs / 1000).toFixed(2)} s`);
}

function relayout() { computeLayout(); S.layoutGen = (S.layoutGen || 0) + 1; }

// the edge slider is logarithmic: 0 shows every edge, 1000 only the strongest (|w| = max)
const sliderToFrac = (v) => (v <= 0 ? 0 : 10 ** (-4 + (4 * v) / 1000));
const fracToSlider = (f) => (f <= 0 ? 0 : Math.max(0, Math.min(1000, Math.round(((Math.log10(f) + 4) / 4) * 1000))));
function syncEdgeSlider() {
  $("edge-thr").value = fracToSlider(S.edgeThr);
  $("edge-val").textContent = `≥ ${(S.edgeThr * S.maxW).toPrecision(2)} · ${edgesOver(S.edgeThr).toLocaleString("en")} edges`;
}

export function renderNodeList() {
  const ul = $("node-list");
  ul.textContent = "";
  const top = [];
  S.nodes.forEach((n, i) => { if (isFeature(n) && S.vis[i]) top.push(n); });
  top.sort((a, b) => (a.influence ?? 1) - (b.influence ?? 1));
  for (const n of top.slice(0, 40)) {
    ul.append(el("li", { "data-node": n.node_id, title: nodeLabel(n), tabindex: "0", class: n.node_id === S.clicked ? "active" : "",
      onclick: () => select(n.node_id), onkeydown: (e) => { if (e.key === "Enter") select(n.node_id); } }, nodeLabel(n)));
  }
}

export function select(id, opts = {}) {
  S.clicked = id && S.byId.has(id) ? id : null;
  S.clickedEdge = null;
  document.querySelectorAll("#node-list li").forEach((li) => li.classList.toggle("active", li.dataset.node === S.clicked));
  requestDraw(); writeUrl();
  if (!S.clicked) { if (!opts.keepTab) $("tab-feature").replaceChildren(el("p", { class: "muted" }, "Click a node in the graph, or focus the graph and use the arrow keys.")); renderPinned(); return; }
  const n = S.byId.get(S.clicked);
  $("announce").textContent = `selected ${nodeLabel(n)}`;
  showTab("feature");
  renderPinned();
  const sel = $("iv-target");
  if (isFeature(n)) sel.value = `${n.layer}/${n.feature}@${n.ctx_idx}`;
  return renderNodePanel(S.clicked);
}

// an edge of the canvas (index into S.src/S.tgt/S.w): its weight and, if the graph has them, its heads
export function selectEdge(e) {
  S.clicked = null; S.clickedEdge = e;
  document.querySelectorAll("#node-list li").forEach((li) => li.classList.remove("active"));
  showTab("feature");
  renderEdgePanel(e);
  requestDraw(); writeUrl();
}

function showTab(name) {
  document.querySelectorAll("#tabs button").forEach((b) => { b.classList.toggle("active", b.dataset.tab === name); b.setAttribute("aria-selected", String(b.dataset.tab === name)); });
  for (const t of ["feature", "subgraph", "intervene", "probe", "attend", "compare"]) $("tab-" + t).hidden = t !== name;
}

Object.assign(H, {
  select, selectEdge, showTab, togglePin: (id) => togglePin(id), fetchGraph, showGraph, attend: openAttend,
  changed: (what) => {
    if (what === "pins" || what === "supernodes") { relayout(); renderNodeList(); }
    requestDraw(); writeUrl();
  },
});

function bindCanvas(c) {
  let drag = null, moveQueued = null;
  c.addEventListener("mousedown", (e) => { c.focus(); drag = { x: e.clientX, y: e.clientY, vx: S.view.x, vy: S.view.y, moved: false }; });
  window.addEventListener("mouseup", (e) => {
    if (drag && !drag.moved && S.graph) {
      const r = c.getBoundingClientRect(), n = nodeAt(e.clientX - r.left, e.clientY - r.top);
      if (n) { if (e.shiftKey) togglePin(n.node_id); else select(n.node_id); }
      else { const k = edgeAt(e.clientX - r.left, e.clientY - r.top); if (k !== null) selectEdge(k); }
    }
    if (drag && drag.moved) writeUrl();
    drag = null;
  });
  c.addEventListener("mousemove", (e) => {
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      S.view.x = drag.vx + dx; S.view.y = drag.vy + dy; requestDraw("view"); return;
    }
    if (!S.graph) return;
    // hit-test once per frame, not once per event
    if (!moveQueued) requestAnimationFrame(() => {
      const ev = moveQueued; moveQueued = null;
      const r = c.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top, n = nodeAt(x, y), tip = $("tooltip");
      const id = n ? n.node_id : null, k = n ? null : edgeAt(x, y);      // a node wins over the edges under it
      if (id !== S.hover) { S.hover = id; requestDraw("overlay"); }
      if (k !== S.hoverEdge) { S.hoverEdge = k; requestDraw("overlay"); if (k !== null) tip.replaceChildren(edgeTip(k)); }
      if (n) tip.textContent = nodeLabel(n) + (e.shiftKey ? "" : "  (click: open · Shift+click: pin)");
      tip.hidden = !n && k === null;
      tip.style.left = x + 12 + "px"; tip.style.top = y + 12 + "px";
    });
    moveQueued = e;
  });
  c.addEventListener("mouseleave", () => { $("tooltip").hidden = true; if (S.hover || S.hoverEdge !== null) { S.hover = null; S.hoverEdge = null; requestDraw("overlay"); } });
  c.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = c.getBoundingClientRect();
    zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.0015));
  }, { passive: false });
}

export function zoomAt(mx, my, f) {
  S.view = { x: mx - (mx - S.view.x) * f, y: my - (my - S.view.y) * f, k: S.view.k * f };
  requestDraw("view"); writeUrl();
}

function bind() {
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $("trace-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("trace-btn").disabled = true;
    try {
      const body = { prompt: $("prompt").value, chat: $("chat").checked, max_feature_nodes: Number($("max-nodes").value) };
      if ($("heads").checked) body.heads = true;
      if (S.info && S.info.node_threshold) Object.assign(body, { node_threshold: S.info.node_threshold, edge_threshold: S.info.edge_threshold });
      const name = await waitJob(await api("/api/trace", body), "trace");
      await openGraph(name);
    } catch (e) { setStatus(e.message, true); }
    finally { $("trace-btn").disabled = false; }
  });
  $("prune").addEventListener("input", (e) => {
    S.prune = Number(e.target.value); $("prune-val").textContent = S.prune.toFixed(2);
    relayout(); renderNodeList(); requestDraw(); writeUrl();
  });
  $("edge-thr").addEventListener("input", (e) => { S.edgeThr = sliderToFrac(Number(e.target.value)); syncEdgeSlider(); requestDraw(); writeUrl(); });
  $("fit-btn").addEventListener("click", () => { fitView(); requestDraw(); writeUrl(); });
  $("sg-hide").addEventListener("click", () => { S.sgHidden = true; renderPinned(); requestDraw(); });
  $("sg-show").addEventListener("click", () => { S.sgHidden = false; renderPinned(); requestDraw(); });
  $("cancel-btn").addEventListener("click", () => cancelJob().catch((e) => setStatus(e.message, true)));
  $("group-btn").addEventListener("click", groupChecked);
  $("suggest-btn").addEventListener("click", () => suggest().catch((e) => setStatus(e.message, true)));
  $("auto-flow-btn").addEventListener("click", () => autoFlowchart().catch((e) => { $("auto-flowchart").textContent = ""; setStatus(e.message, true); }));
  $("save-btn").addEventListener("click", () => saveToServer().catch((e) => setStatus(e.message, true)));
  $("copy-link-btn").addEventListener("click", () => { writeUrl(true); navigator.clipboard?.writeText(location.href).catch(() => {}); setStatus("the address bar holds a link to this view"); });
  $("json-btn").addEventListener("click", exportJSON);
  $("svg-btn").addEventListener("click", exportSVG);
  $("png-btn").addEventListener("click", exportPNG);
  $("iv-run").addEventListener("click", runIntervention);
  $("iv-mode").addEventListener("change", syncModeInputs);
  $("probe-form").addEventListener("submit", (ev) => { ev.preventDefault(); runProbe(); });
  $("qk-form").addEventListener("submit", (ev) => { ev.preventDefault(); runAttend(); });
  $("cmp-run").addEventListener("click", runCompare);
  $("cmp-exit").addEventListener("click", () => openGraph(S.compare.a).catch((e) => setStatus(e.message, true)));
  $("cmp-open-b").addEventListener("click", () => openGraph(S.compare.b).catch((e) => setStatus(e.message, true)));
  bindCanvas($("graph"));
  bindKeys({ select, zoomAt, togglePin, showTab });
  window.addEventListener("resize", () => requestDraw());
  window.addEventListener("popstate", () => boot());
}

// test, benchmark and scripting hook
window.mechscope = {
  state: S, render: RENDER, openGraph, openCompare, select, selectEdge, requestDraw, zoomAt, supernodeBoxes: () => supernodeBoxes(S.view),
  nodePosition(id) {
    const c = $("graph").getBoundingClientRect(), i = S.nodeIdx.get(id), xy = S.layout.xy;
    return { x: c.left + xy[2 * i] * S.view.k + S.view.x, y: c.top + xy[2 * i + 1] * S.view.k + S.view.y };
  },
};

// the server answers /api/info with {loading: true, message} while it loads or converts a model
async function waitForModel() {
  for (;;) {
    const info = await api("/api/info");
    if (!info.loading) return info;
    if (info.error) throw new Error(`the server could not load the model: ${info.error}`);
    setStatus(`server: ${info.message || "loading the model…"}`);
    $("model-name").textContent = "loading…";
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function boot() {
  try {
    S.info = await waitForModel();
    $("model-name").textContent = `${S.info.model} · ${S.info.n_layers} layers · ${S.info.d_transcoder} features/layer`;
    if (S.info.max_feature_nodes) $("max-nodes").value = S.info.max_feature_nodes;
    if (S.info.static) document.body.classList.add("static");
    setStatus("ready");
    const st = readUrl();
    const E = embedded();
    if (E) { S.embedded = true; await openGraph(E.name, {}); return; }
    // the list and the graph load side by side: listing reads every graph file's metadata
    const listed = refreshList();
    if (st.slug && st.compare) await openCompare(st.slug, st.compare, st, { by: st.by, positions: st.positions });
    else if (st.slug) await openGraph(st.slug, st);
    await listed;
  } catch (e) { setStatus(e.message, true); }
}

bind();
syncModeInputs();
attach($("graph"));
boot();
