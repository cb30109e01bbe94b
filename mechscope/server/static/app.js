// mechscope web microscope: plain JavaScript modules, a canvas graph view, no third-party code.
import { DENSITY_DEFAULT, S, computeLayout, edgesOver, isFeature, nodeLabel, prepare, thresholdForCount } from "./graph.js";
import { renderNodePanel } from "./panels.js";
import { RENDER, attach, drawnEdges, edgeAt, fitView, fittedView, nodeAt, requestDraw, supernodeBoxes } from "./render.js";
import { openAttend, runAttend } from "./attend.js";
import { compareSummaryText, renderCompareTab, runCompare } from "./comparepanel.js";
import { openCompare } from "./diff.js";
import { edgeTip, renderEdgePanel } from "./edges.js";
import { exportJSON, exportPNG, exportSVG } from "./exports.js";
import { runIntervention, runProbe, syncModeInputs } from "./intervene.js";
import { bindFilters, syncFilters, toggleHidden } from "./filters.js";
import { shares } from "./focus.js";
import { placeCard, showNodeCard } from "./hovercard.js";
import { bindKeys, bindTabs } from "./keys.js";
import { bindSearch } from "./search.js";
import { bindOpenFile, graphFormat, shapeProblem } from "./openfile.js";
import { bindTraceForm, loadTraceOptions } from "./traceform.js";
import { renderTextView } from "./textview.js";
import { TOKEN_H, tokenText } from "./labels.js";
import { autoFlowchart, groupChecked, renderPinned, saveToServer, suggest, togglePin } from "./subgraph.js";
import { TABS, pushUrl, readUrl, restoreFromUrl, viewFromUrl, writeUrl } from "./urlstate.js";
import { applyLinkLabels, bindPanes, storedLabels } from "./reading.js";
import { $, H, api, cancelJob, el, embedded, fmt, setStatus, waitJob } from "./util.js";

S.cache = new Map();       // parsed graphs by name: reopening one costs nothing
S.tab = "feature";         // the panel shown on the right
const DEFAULT_EDGES = 6000;      // the strongest edges shown on open; the edge slider shows more

async function refreshList() {
  const list = await api("/api/graphs");
  S.graphList = list;
  const ul = $("graph-list");
  ul.textContent = "";
  for (const g of list) {
    ul.append(el("li", { "data-name": g.name, title: g.prompt, class: g.name === S.name && !S.fromFile ? "active" : "", tabindex: "0",
      onclick: () => navigateTo(g.name), onkeydown: (e) => { if (e.key === "Enter") navigateTo(g.name); } }, g.prompt || g.name));
  }
  renderCompareTab();
}

// opening another stored graph from the list, a trace or the Compare tab: a new history entry
const navigateTo = (name) => openGraph(name, { push: true }).catch((e) => setStatus(e.message, true));

export async function fetchGraph(name) {
  if (S.cache.has(name)) return S.cache.get(name);
  setStatus(`loading ${name}…`);
  const g = await api(`/api/graphs/${encodeURIComponent(name)}`);
  if (S.cache.size >= 3) S.cache.delete(S.cache.keys().next().value);
  S.cache.set(name, g);
  return g;
}

// st: state to restore (from the URL); else the graph's saved qParams
// (st.push: a navigation, the page's history gets an entry)
export async function openGraph(name, st = {}) {
  const t0 = performance.now();
  if (st.push) writeUrl(true);      // the entry being left keeps its last state
  const [g, fmt] = await Promise.all([fetchGraph(name), embedded() ? null : graphFormat()]);
  const why = fmt ? shapeProblem(g, fmt) : "";
  if (why) { S.cache.delete(name); throw new Error(`${name}: ${why}`); }    // the open graph stays as it was
  S.compare = null;
  showGraph(g, name, st, t0, performance.now());
}

// a graph read from a file on this computer (openfile.js has checked it): shown under its file name, not in the
// URL (no link reaches it) and never saved to the server
function showFile(g, fileName) {
  const t0 = performance.now();
  writeUrl(true);
  S.compare = null;
  showGraph(g, fileName.replace(/\.json$/i, "").replace(/[^A-Za-z0-9._-]+/g, "-") || "graph", { fromFile: fileName, push: true }, t0, t0);
  $("graph-title").textContent = `${g.metadata.prompt} (from ${fileName})`;
  setStatus(`opened ${fileName}: ${g.nodes.length} nodes, ${S.E} edges`);
}

// Shows a parsed graph (a stored one, or the compare view's overlay of two) under `name`.
export function showGraph(g, name, st, t0 = performance.now(), t1 = t0) {
  const had = !!S.graph;      // the page with no graph yet is not a place to come back to
  S.restoring = true;         // what follows restores a state: no history entries of its own
  try { showGraphState(g, name, st, t0, t1); } finally { S.restoring = false; }
  if (st.push && had) pushUrl(); else writeUrl(true);
  if (st.refused || S.refusedLabels) setStatus([st.refused, S.refusedLabels].filter(Boolean).join("; "), true);
}

function showGraphState(g, name, st, t0, t1) {
  S.name = name; S.fromFile = st.fromFile || null;
  prepare(g);
  storedLabels(g);
  const t2 = performance.now();
  const q = g.qParams || {};
  S.pinned = (st.pinnedIds || q.pinnedIds || []).filter((id) => S.byId.has(id));
  S.supernodes = (st.supernodes || q.supernodes || []).map((sn) => [String(sn[0]), ...sn.slice(1).filter((x) => S.byId.has(x))]).filter((sn) => sn.length > 1);
  S.labels = {}; S.dirtyLabels.clear(); S.checked.clear(); S.history = S.history || [];
  S.refusedLabels = applyLinkLabels(st.clerps);
  S.clicked = null; S.layout = null;
  S.prune = st.pruningThreshold ?? 1;
  // the reading filters: the URL's, else the graph's saved ones, else dense features hidden and no others
  S.densityThr = st.densityThreshold ?? (typeof q.densityThreshold === "number" && q.densityThreshold > 0 && q.densityThreshold <= 1 ? q.densityThreshold : DENSITY_DEFAULT);
  S.hidden = new Set((st.hiddenIds || q.hiddenIds || []).filter((id) => S.byId.has(id)));
  S.allEdges = !!st.allEdges;
  syncFilters();
  S.edgeThr = st.edgeThreshold ?? thresholdForCount(DEFAULT_EDGES);
  S.hoverEdge = null; S.clickedEdge = null;
  $("prune").value = S.prune; $("prune-val").textContent = S.prune.toFixed(2);
  syncEdgeSlider();
  $("auto-flowchart").textContent = "";
  const info = g.metadata.info || {};
  $("graph-title").textContent = g.metadata.prompt;
  $("scores").textContent = S.compare ? compareSummaryText() : `replacement ${fmt(info.replacement_score)} (pruned ${fmt(info.pruned_replacement_score)}) · input completeness ${fmt(info.input_completeness_score ?? info.completeness_score)} (pruned ${fmt(info.pruned_input_completeness_score ?? info.pruned_completeness_score)})${info.ct_completeness_score == null ? "" : ` · circuit-tracer completeness ${fmt(info.ct_completeness_score)}`} · ${g.nodes.length} nodes, ${S.E} edges · top: ${(info.top_logits || []).slice(0, 3).map((t) => `"${t.token}" ${fmt(t.prob, 2)}`).join(", ")}`;
  document.body.classList.toggle("comparing", !!S.compare);
  if (!S.compare) { $("iv-prompt").value = g.metadata.prompt; if (!$("probe-text").value) $("probe-text").value = g.metadata.prompt; }
  relayout();
  renderNodeList(); renderPinned();          // first: the subgraph pane, if any, sets the canvas's size
  fitView();
  if (st.view) { S.view = viewFromUrl(st.view); S.fitted = false; }
  const clicked = st.clickedId || (st.slug ? null : q.clickedId);
  if (clicked && S.byId.has(clicked)) select(clicked);
  else { requestDraw(); renderTextView(); }
  if (st.tab) showTab(st.tab, { restore: true });
  if (!embedded() && !S.fromFile && !document.querySelector(`#graph-list li[data-name="${CSS.escape(name)}"]`)) refreshList().catch(() => {});
  document.querySelectorAll("#graph-list li").forEach((li) => li.classList.toggle("active", !S.fromFile && li.dataset.name === name));
  renderCompareTab();
  S.openMs = performance.now() - t0;
  S.timing = { fetchParse: t1 - t0, prepare: t2 - t1, rest: performance.now() - t2 };
  setStatus(`opened ${g.nodes.length} nodes, ${S.E} edges in ${(S.openMs / 1000).toFixed(2)} s`);
}

// Lays the graph out again (the filters changed what is shown). A fitted view is fitted again; a view the user
// moved keeps the world point at the canvas centre where it was, relative to the graph's size, and its zoom
// relative to the fit, so the graph neither shrinks into a corner nor jumps.
export function relayout() {
  const old = S.layout && !S.fitted ? { w: S.world.w, h: S.world.h, fit: fittedView().k } : null;
  const c = $("graph").getBoundingClientRect(), v = S.view;
  const rx = old ? (c.width / 2 - v.x) / v.k / old.w : 0, ry = old ? (c.height / 2 - v.y) / v.k / old.h : 0;
  computeLayout(); S.layoutGen = (S.layoutGen || 0) + 1;
  if (!old) { if (S.fitted) fitView(); }
  else {
    const k = (v.k * fittedView().k) / old.fit;
    S.view = { k, x: c.width / 2 - rx * S.world.w * k, y: c.height / 2 - ry * S.world.h * k };
  }
  syncFilters();
  renderTextView();
}

// the edge slider is logarithmic: 0 shows every edge, 1000 only the strongest (|w| = max)
const sliderToFrac = (v) => (v <= 0 ? 0 : 10 ** (-4 + (4 * v) / 1000));
const fracToSlider = (f) => (f <= 0 ? 0 : Math.max(0, Math.min(1000, Math.round(((Math.log10(f) + 4) / 4) * 1000))));
function syncEdgeSlider() {
  $("edge-thr").value = fracToSlider(S.edgeThr);
  $("edge-val").textContent = `≥ ${(S.edgeThr * S.maxW).toPrecision(2)} · ${edgesOver(S.edgeThr).toLocaleString("en")} edges`;
  $("edge-val").classList.toggle("muted", !S.allEdges);
  $("edge-val").title = S.allEdges ? "" : "the full edge layer's threshold (not drawn now: moving the slider shows all edges)";
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

// opts.announce: the live region's line instead of "selected …"; keepTab: clearing the selection leaves the panel
export function select(id, opts = {}) {
  const was = S.clicked;
  if (id && S.byId.has(id)) showTab("feature");     // first: a new panel's history entry keeps the old selection
  S.clicked = id && S.byId.has(id) ? id : null;
  S.clickedEdge = null;
  // a node the filters hide is shown while it is selected
  if (S.forcedClick || (S.clicked && !S.vis[S.nodeIdx.get(S.clicked)])) { relayout(); renderNodeList(); }
  else if (was !== S.clicked) renderTextView();
  document.querySelectorAll("#node-list li").forEach((li) => li.classList.toggle("active", li.dataset.node === S.clicked));
  requestDraw(); writeUrl();
  if (!S.clicked) { if (!opts.keepTab) $("tab-feature").replaceChildren(el("p", { class: "muted" }, "Click a node in the graph, or focus the graph and use the arrow keys.")); renderPinned(); return; }
  const n = S.byId.get(S.clicked);
  $("announce").textContent = opts.announce || `selected ${nodeLabel(n)}`;
  renderPinned();
  const sel = $("iv-target");
  if (isFeature(n)) sel.value = `${n.layer}/${n.feature}@${n.ctx_idx}`;
  return renderNodePanel(S.clicked);
}

// an edge of the canvas (index into S.src/S.tgt/S.w): its weight and, if the graph has them, its heads
export function selectEdge(e) {
  showTab("feature");
  S.clicked = null; S.clickedEdge = e;
  document.querySelectorAll("#node-list li").forEach((li) => li.classList.remove("active"));
  renderEdgePanel(e);
  requestDraw(); writeUrl();
}

// Showing another panel is a navigation (a history entry), unless it restores one (opts.restore, S.restoring).
function showTab(name, opts = {}) {
  const btn = document.querySelector(`#tabs button[data-tab="${name}"]`);
  if (!btn || getComputedStyle(btn).display === "none") name = "feature";     // not offered here (static page, comparison)
  const nav = name !== S.tab && !opts.restore && !S.restoring && S.graph;
  if (nav) writeUrl(true);
  S.tab = name;
  // one tab in the Tab order (the selected one); arrow keys move between tabs (keys.js)
  document.querySelectorAll("#tabs button").forEach((b) => {
    const on = b.dataset.tab === name;
    b.classList.toggle("active", on); b.setAttribute("aria-selected", String(on)); b.tabIndex = on ? 0 : -1;
  });
  for (const t of TABS) $("tab-" + t).hidden = t !== name;
  if (nav) pushUrl();
}

// the column of the prompt token under screen x, or -1
function tokenAt(x) {
  const L = S.layout, wx = (x - S.view.x) / S.view.k;
  for (let c = 0; c < L.nCols; c++) if (wx >= L.colX[c] && wx < L.colX[c + 1]) return c;
  return -1;
}

// shows node id whatever hides it (a hidden one is unhidden), centres it and selects it: search results
function revealNode(id) {
  if (!S.byId.has(id)) return;
  if (S.hidden.delete(id)) { relayout(); renderNodeList(); }
  select(id);
  const i = S.nodeIdx.get(id), c = $("graph").getBoundingClientRect();
  S.view.x = c.width / 2 - S.layout.xy[2 * i] * S.view.k; S.view.y = c.height / 2 - S.layout.xy[2 * i + 1] * S.view.k;
  S.fitted = false;
  requestDraw(); writeUrl();
  $("graph").focus();
}

Object.assign(H, {
  select, selectEdge, showTab, togglePin: (id) => togglePin(id), fetchGraph, showGraph, openGraph, openCompare, redraw: () => requestDraw(), showFile, attend: openAttend, reveal: revealNode, toggleHidden,
  refilter: () => { relayout(); syncEdgeSlider(); renderNodeList(); renderPinned(); requestDraw(); writeUrl(); },
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
      const col = !n && k === null && y > r.height - TOKEN_H ? tokenAt(x) : -1;    // the token axis
      if (id !== S.hover) { S.hover = id; requestDraw("overlay"); if (n) showNodeCard(n); }
      if (k !== S.hoverEdge) { S.hoverEdge = k; requestDraw("overlay"); if (k !== null) tip.replaceChildren(edgeTip(k)); }
      if (col >= 0) tip.replaceChildren(el("div", { class: "card-title" }, `token ${col}: “${tokenText(col)}”`));
      tip.hidden = !n && k === null && col < 0;
      if (!tip.hidden) placeCard(tip, x, y);
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
  bindTraceForm((name) => openGraph(name, { push: true }));
  bindPanes();
  bindOpenFile();
  $("prune").addEventListener("input", (e) => {
    S.prune = Number(e.target.value); $("prune-val").textContent = S.prune.toFixed(2);
    relayout(); renderNodeList(); requestDraw(); writeUrl();
  });
  // the slider sets the full edge layer's threshold: moving it shows that layer
  $("edge-thr").addEventListener("input", (e) => { S.edgeThr = sliderToFrac(Number(e.target.value)); S.allEdges = true; syncFilters(); syncEdgeSlider(); requestDraw(); writeUrl(); });
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
  $("cmp-exit").addEventListener("click", () => navigateTo(S.compare.a));
  $("cmp-open-b").addEventListener("click", () => navigateTo(S.compare.b));
  bindCanvas($("graph"));
  bindKeys({ select, zoomAt, togglePin, showTab });
  bindTabs(showTab);
  bindFilters();
  bindSearch();
  window.addEventListener("resize", () => requestDraw());
  window.addEventListener("popstate", () => restoreFromUrl());
}

// test, benchmark and scripting hook
window.mechscope = {
  state: S, render: RENDER, openGraph, openCompare, select, selectEdge, requestDraw, zoomAt, supernodeBoxes: () => supernodeBoxes(S.view),
  drawnEdges, reveal: revealNode, shares,
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
    const opts = S.info.static || embedded() ? null : loadTraceOptions().catch((e) => setStatus(`trace options: ${e.message}`, true));
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
    await opts;
  } catch (e) { setStatus(e.message, true); }
}

bind();
syncModeInputs();
attach($("graph"));
boot();
