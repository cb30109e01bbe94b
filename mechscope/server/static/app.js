// mechscope web microscope: plain JavaScript, canvas graph view, no third-party code.
"use strict";

const S = {            // all view state
  info: null, name: null, graph: null, nodes: [], byId: new Map(), links: [],
  view: { x: 0, y: 0, k: 1 }, clicked: null, hover: null, pinned: [], supernodes: [], checked: new Set(),
  prune: 1.0, layout: new Map(), maxW: 1,
  featureSeq: 0,       // bumped by every feature panel opened, so a slow answer cannot fill a newer panel
  probe: null, probeSeq: 0,
};
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of kids) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const isFeature = (n) => n.feature_type === "cross layer transcoder";

async function api(path, body) {
  const opt = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opt);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || data.detail || `HTTP ${r.status}`);
  return data;
}

function setStatus(text, error = false) { const s = $("status"); s.textContent = text; s.className = error ? "error" : ""; }

async function waitJob(job, label) {
  const t0 = Date.now();
  for (;;) {
    if (job.status === "done") { setStatus(`${label} done in ${((Date.now() - t0) / 1000).toFixed(1)} s`); return job.result; }
    if (job.status === "error") throw new Error(job.error);
    setStatus(job.status === "queued" ? `${label}: queued (position ${job.position})` : `${label}: running… ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    await new Promise((r) => setTimeout(r, 400));
    job = await api(`/api/jobs/${job.id}`);
  }
}

// ---------------------------------------------------------------- graphs
async function refreshList() {
  const list = await api("/api/graphs");
  const ul = $("graph-list"); ul.textContent = "";
  for (const g of list) {
    ul.append(el("li", { "data-name": g.name, title: g.prompt, class: g.name === S.name ? "active" : "", onclick: () => openGraph(g.name) }, g.prompt || g.name));
  }
}

async function openGraph(name, clicked) {
  const g = await api(`/api/graphs/${encodeURIComponent(name)}`);
  S.name = name; S.graph = g; S.nodes = g.nodes; S.links = g.links;
  S.byId = new Map(g.nodes.map((n) => [n.node_id, n]));
  S.pinned = (g.qParams?.pinnedIds || []).filter((id) => S.byId.has(id));
  S.supernodes = (g.qParams?.supernodes || []).map((sn) => sn.filter((x, i) => i === 0 || S.byId.has(x)));
  S.maxW = Math.max(1e-9, ...g.links.map((l) => Math.abs(l.weight)));
  S.clicked = null; S.checked.clear();
  $("auto-flowchart").textContent = "";   // it belonged to the previous graph
  const info = g.metadata.info || {};
  $("graph-title").textContent = `${g.metadata.prompt}`;
  $("scores").textContent = `replacement ${fmt(info.replacement_score)} (pruned ${fmt(info.pruned_replacement_score)}) · completeness ${fmt(info.completeness_score)} (pruned ${fmt(info.pruned_completeness_score)}) · ${g.nodes.length} nodes, ${g.links.length} edges · top: ${(info.top_logits || []).slice(0, 3).map((t) => `"${t.token}" ${fmt(t.prob, 2)}`).join(", ")}`;
  $("iv-prompt").value = g.metadata.prompt;
  if (!$("probe-text").value) $("probe-text").value = g.metadata.prompt;
  layout(); fit(); draw(); renderNodeList(); renderPinned(); refreshList();
  location.hash = `graph=${encodeURIComponent(name)}`;
  if (clicked && S.byId.has(clicked)) select(clicked);
}

function visible(n) {
  if (!isFeature(n) && n.feature_type !== "mlp reconstruction error") return true;
  return n.influence === null || n.influence === undefined || n.influence <= S.prune || S.pinned.includes(n.node_id);
}

function layerRow(n, L) {
  if (n.feature_type === "embedding") return 0;
  if (n.feature_type === "logit") return L + 1;
  return Number(n.layer) + 1;
}

function layout() {
  const toks = S.graph.metadata.prompt_tokens, L = S.info ? S.info.n_layers : 1 + Math.max(...S.nodes.filter(isFeature).map((n) => Number(n.layer)), 0);
  S.L = L; S.cols = toks.length;
  const cells = new Map();
  for (const n of S.nodes) {
    const key = `${layerRow(n, L)}:${n.ctx_idx}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(n);
  }
  const colW = 120, rowH = 44;
  S.layout.clear();
  for (const [key, ns] of cells) {
    const [row, col] = key.split(":").map(Number);
    ns.sort((a, b) => (a.influence ?? 0) - (b.influence ?? 0));
    ns.forEach((n, i) => {
      const spread = Math.min(colW - 16, ns.length * 12);
      const x = col * colW + colW / 2 + (ns.length > 1 ? (i / (ns.length - 1) - 0.5) * spread : 0);
      const y = (L + 1 - row) * rowH + 30;
      S.layout.set(n.node_id, { x, y });
    });
  }
  S.world = { w: S.cols * colW, h: (L + 2) * rowH + 40 };
}

function fit() {
  const c = $("graph"), r = c.getBoundingClientRect();
  if (!S.world) return;
  const k = Math.min(r.width / S.world.w, r.height / S.world.h) * 0.95;
  S.view = { k, x: (r.width - S.world.w * k) / 2, y: (r.height - S.world.h * k) / 2 };
}

function radius(n) {
  if (!isFeature(n)) return 5;
  return 3 + 6 * (1 - Math.min(1, n.influence ?? 1));
}

function nodeColor(n) {
  switch (n.feature_type) {
    case "embedding": return "#2e7d32";
    case "logit": return "#e66100";
    case "mlp reconstruction error": return "#9a9996";
    default: {
      const a = Math.min(1, Math.log1p(Math.max(0, n.activation || 0)) / 3);
      return `rgb(${Math.round(120 - 90 * a)},${Math.round(150 - 80 * a)},${Math.round(230 - 40 * a)})`;
    }
  }
}

function toScreen(p) { return { x: p.x * S.view.k + S.view.x, y: p.y * S.view.k + S.view.y }; }

function draw() {
  const c = $("graph"), dpr = window.devicePixelRatio || 1, r = c.getBoundingClientRect();
  c.width = r.width * dpr; c.height = r.height * dpr;
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, r.width, r.height);
  if (!S.graph) return;
  ctx.save();
  ctx.translate(S.view.x, S.view.y); ctx.scale(S.view.k, S.view.k);
  // token labels and layer guides
  ctx.fillStyle = "#889"; ctx.font = "11px system-ui"; ctx.textAlign = "center";
  S.graph.metadata.prompt_tokens.forEach((t, i) => ctx.fillText(JSON.stringify(t).slice(1, -1).slice(0, 14), i * 120 + 60, S.world.h - 4));
  const focus = S.clicked;
  const vis = new Set(S.nodes.filter(visible).map((n) => n.node_id));
  for (const l of S.links) {
    if (!vis.has(l.source) || !vis.has(l.target)) continue;
    const a = S.layout.get(l.source), b = S.layout.get(l.target);
    const rel = Math.abs(l.weight) / S.maxW;
    const on = focus && (l.source === focus || l.target === focus);
    if (!on && rel < 0.01 && S.links.length > 3000) continue;
    ctx.strokeStyle = l.weight >= 0 ? `rgba(26,95,180,${on ? 0.9 : 0.15 + 0.5 * rel})` : `rgba(192,28,40,${on ? 0.9 : 0.15 + 0.5 * rel})`;
    ctx.lineWidth = (on ? 1.5 : 0.4) + 3 * rel;
    ctx.beginPath(); ctx.moveTo(a.x, a.y); ctx.lineTo(b.x, b.y); ctx.stroke();
  }
  for (const n of S.nodes) {
    if (!vis.has(n.node_id)) continue;
    const p = S.layout.get(n.node_id), rr = radius(n);
    ctx.fillStyle = nodeColor(n);
    ctx.beginPath();
    if (n.feature_type === "mlp reconstruction error") ctx.rect(p.x - rr, p.y - rr, 2 * rr, 2 * rr);
    else ctx.arc(p.x, p.y, rr, 0, 2 * Math.PI);
    ctx.fill();
    if (S.pinned.includes(n.node_id)) { ctx.strokeStyle = "#f5c211"; ctx.lineWidth = 2.5; ctx.stroke(); }
    if (n.node_id === focus) { ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.stroke(); }
    if (n.feature_type === "logit") { ctx.fillStyle = "#e66100"; ctx.fillText(n.clerp.replace(/^Output /, "").slice(0, 22), p.x, p.y - 9); }
  }
  ctx.restore();
}

function nodeAt(mx, my) {
  let best = null, bd = 12;
  for (const n of S.nodes) {
    if (!visible(n)) continue;
    const s = toScreen(S.layout.get(n.node_id));
    const d = Math.hypot(s.x - mx, s.y - my);
    if (d < bd) { bd = d; best = n; }
  }
  return best;
}

function nodeLabel(n) {
  if (isFeature(n)) return `${n.layer}/${n.feature}@${n.ctx_idx}${n.clerp ? " “" + n.clerp + "”" : ""}`;
  if (n.feature_type === "mlp reconstruction error") return `error L${n.layer}@${n.ctx_idx}`;
  if (n.feature_type === "embedding") return `token ${JSON.stringify(n.clerp)} @${n.ctx_idx}`;
  return n.clerp;
}

function renderNodeList() {
  const ul = $("node-list"); ul.textContent = "";
  const top = S.nodes.filter((n) => isFeature(n) && visible(n)).sort((a, b) => a.influence - b.influence).slice(0, 40);
  for (const n of top) ul.append(el("li", { "data-node": n.node_id, title: nodeLabel(n), onclick: () => select(n.node_id) }, nodeLabel(n)));
}

// ---------------------------------------------------------------- feature panel
async function select(id) {
  const seq = ++S.featureSeq;
  S.clicked = id; draw(); showTab("feature");
  document.querySelectorAll("#node-list li").forEach((li) => li.classList.toggle("active", li.dataset.node === id));
  const n = S.byId.get(id), box = $("tab-feature"); box.textContent = "";
  const pinBtn = el("button", { id: "pin-btn", type: "button", onclick: () => togglePin(id) }, S.pinned.includes(id) ? "Unpin" : "Pin");
  box.append(el("div", { class: "row" }, el("strong", {}, nodeLabel(n)), pinBtn));
  box.append(el("div", { class: "muted" }, `type ${n.feature_type} · activation ${fmt(n.activation)} · influence ${fmt(n.influence)}`));
  if (isFeature(n) && !(await loadFeatureDetail(box, n.layer, n.feature, seq))) return;
  box.append(el("h4", {}, "Strongest inputs"), edgeTable(S.links.filter((l) => l.target === id), "source"));
  box.append(el("h4", {}, "Strongest outputs"), edgeTable(S.links.filter((l) => l.source === id), "target"));
  const sel = $("iv-target");
  if (isFeature(n)) {
    const v = `${n.layer}/${n.feature}@${n.ctx_idx}`;
    if (![...sel.options].some((o) => o.value === v)) sel.prepend(el("option", { value: v }, `clicked ${v}`));
    sel.value = v;
  }
}

// Appends the index's dashboard of one feature to `box`; false when a newer panel replaced this one meanwhile.
async function loadFeatureDetail(box, layer, feature, seq) {
  const detail = el("div", { id: "feature-detail" }, "loading…");
  box.append(detail);
  let d;
  try { d = await api(`/api/features/${layer}/${feature}`); }
  catch (e) { if (seq !== S.featureSeq) return false; detail.textContent = e.message; return true; }
  if (seq !== S.featureSeq) return false;
  renderFeature(d);
  return true;
}

function edgeTable(links, end) {
  const t = el("table");
  links.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8).forEach((l) => {
    const other = S.byId.get(l[end]);
    t.append(el("tr", { class: "edge-row", onclick: () => select(other.node_id) },
      el("td", { class: l.weight >= 0 ? "pos" : "neg" }, fmt(l.weight)), el("td", {}, nodeLabel(other))));
  });
  if (!links.length) t.append(el("tr", {}, el("td", { class: "muted" }, "none in the pruned graph")));
  return t;
}

function renderFeature(d) {
  const box = $("feature-detail"); box.textContent = "";
  if (d.missing_index) { box.append(el("p", { class: "muted" }, "No feature index for this model (mechscope index-features).")); return; }
  box.append(el("div", { id: "feature-label" }, el("strong", {}, `“${d.label}”`), ` confidence ${fmt(d.label_confidence, 2)}`));
  box.append(el("div", { class: "muted" }, `density ${fmt(d.density, 5)} · max ${fmt(d.max_act, 2)}`));
  box.append(el("h4", {}, "Top examples"));
  for (const ex of d.examples) {
    const div = el("div", { class: "ex" }, el("span", { class: "muted" }, `${ex.kind === "top" ? "▲" : "•"} ${fmt(ex.activation, 2)} `));
    ex.tokens.forEach((t, i) => {
      const s = el("span", { class: "tok" + (i === ex.max_pos ? " max" : "") }, t);
      s.style.background = `rgba(230,97,0,${ex.acts[i] * 0.8})`;
      div.append(s);
    });
    box.append(div);
  }
  const lt = el("table");
  for (let i = 0; i < Math.min(8, d.top_logits.length); i++) {
    const [pt, pv] = d.top_logits[i], [nt, nv] = d.bottom_logits[i] || ["", 0];
    lt.append(el("tr", {}, el("td", { class: "pos" }, JSON.stringify(pt)), el("td", {}, fmt(pv, 2)), el("td", { class: "neg" }, JSON.stringify(nt)), el("td", {}, fmt(nv, 2))));
  }
  box.append(el("h4", {}, "Logit effects (promotes | suppresses)"), lt);
  const counts = d.hist.counts || [];
  if (counts.length) {
    const mx = Math.max(...counts, 1), w = 340, h = 50, bw = w / counts.length;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`); svg.setAttribute("width", w); svg.setAttribute("height", h);
    counts.forEach((c, i) => {
      const r = document.createElementNS(svg.namespaceURI, "rect");
      const hh = (c / mx) * (h - 2);
      r.setAttribute("x", i * bw); r.setAttribute("y", h - hh); r.setAttribute("width", bw - 1); r.setAttribute("height", hh); r.setAttribute("fill", "#62a0ea");
      svg.append(r);
    });
    box.append(el("h4", {}, "Activation histogram (log bins)"), svg);
  }
}

// ---------------------------------------------------------------- pins, supernodes, flowchart
function togglePin(id) {
  S.pinned = S.pinned.includes(id) ? S.pinned.filter((x) => x !== id) : [...S.pinned, id];
  const b = $("pin-btn"); if (b && S.clicked === id) b.textContent = S.pinned.includes(id) ? "Unpin" : "Pin";
  renderPinned(); draw();
}

function groupOf(id) { return S.supernodes.find((sn) => sn.slice(1).includes(id)); }

function renderPinned() {
  const ul = $("pinned-list"); ul.textContent = "";
  for (const sn of S.supernodes) {
    ul.append(el("li", { class: "supernode", "data-supernode": sn[0] }, el("span", {}, `◆ ${sn[0]} (${sn.length - 1})`),
      el("button", { type: "button", onclick: () => { S.supernodes = S.supernodes.filter((x) => x !== sn); renderPinned(); } }, "ungroup")));
  }
  for (const id of S.pinned) {
    if (groupOf(id)) continue;
    const cb = el("input", { type: "checkbox", "data-pin": id });
    cb.checked = S.checked.has(id);
    cb.addEventListener("change", () => (cb.checked ? S.checked.add(id) : S.checked.delete(id)));
    ul.append(el("li", {}, cb, el("span", { title: nodeLabel(S.byId.get(id)) }, nodeLabel(S.byId.get(id))),
      el("button", { type: "button", onclick: () => togglePin(id) }, "×")));
  }
  const sel = $("iv-target"), keep = sel.value; sel.textContent = "";
  for (const sn of S.supernodes) sel.append(el("option", { value: "sn:" + sn[0] }, `supernode ${sn[0]}`));
  for (const id of S.pinned) { const n = S.byId.get(id); if (isFeature(n)) sel.append(el("option", { value: `${n.layer}/${n.feature}@${n.ctx_idx}` }, nodeLabel(n))); }
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  renderFlowchart();
}

function groupChecked() {
  const ids = [...S.checked].filter((id) => S.pinned.includes(id));
  if (ids.length < 2) { setStatus("check at least two pinned nodes to group", true); return; }
  const name = (window.prompt("Supernode name", "concept") || "").trim();
  if (!name) return;
  S.supernodes.push([name, ...ids]); S.checked.clear(); renderPinned();
}

async function suggest() {
  const box = $("suggestions"); box.textContent = "…";
  const res = await api(`/api/graphs/${encodeURIComponent(S.name)}/suggest`);
  box.textContent = "";
  res.supernodes.slice(0, 8).forEach((sn) => {
    box.append(el("div", { class: "row" }, el("span", {}, `${sn[0]}: ${sn.length - 1} features`),
      el("button", { type: "button", onclick: () => { for (const id of sn.slice(1)) if (!S.pinned.includes(id)) S.pinned.push(id); S.supernodes.push(sn); renderPinned(); draw(); } }, "accept")));
  });
  if (!res.supernodes.length) box.textContent = "no grouping suggested";
}

// automatic flowchart: the server groups the most influential features into labelled boxes (its own SVG)
async function autoFlowchart() {
  const box = $("auto-flowchart"); box.textContent = "…";
  const fc = await api(`/api/graphs/${encodeURIComponent(S.name)}/flowchart`);
  box.textContent = "";
  // parsed as SVG (not HTML), so nothing in it runs; the server escapes labels anyway
  const doc = new DOMParser().parseFromString(fc.svg, "image/svg+xml");
  const svg = doc.documentElement;
  if (svg.nodeName !== "svg" || doc.getElementsByTagName("parsererror").length) throw new Error("the server sent a broken flowchart");
  svg.setAttribute("id", "auto-flow-svg");
  const feats = fc.boxes.filter((b) => b.kind === "features").length;
  box.append(el("h4", {}, "Auto flowchart"),
    el("div", { class: "row" }, el("span", { class: "muted" }, `${feats} feature boxes · ${fc.arrows.length} arrows`),
      el("button", { id: "auto-flow-apply", type: "button", title: "pin every box's nodes and make each feature box a supernode", onclick: () => applyFlowchart(fc) }, "Apply as supernodes"),
      el("button", { type: "button", onclick: () => download(`${S.name}-auto-flowchart.svg`, new Blob([fc.svg], { type: "image/svg+xml" })) }, "Export SVG")));
  const node = document.importNode(svg, true);
  const byBox = new Map(fc.boxes.map((b) => [b.id, b]));
  node.querySelectorAll("g[data-box]").forEach((g) => g.addEventListener("click", () => {
    const b = byBox.get(g.dataset.box), id = b && b.members.find((m) => S.byId.has(m));
    if (id) select(id);
  }));
  box.append(el("div", { class: "svg-wrap" }, node));
}

function applyFlowchart(fc) {
  const q = fc.qParams, names = new Set(q.supernodes.map((sn) => sn[0]));
  S.supernodes = S.supernodes.filter((sn) => !names.has(sn[0]));   // re-applying replaces, never duplicates
  for (const id of q.pinnedIds) if (S.byId.has(id) && !S.pinned.includes(id)) S.pinned.push(id);
  let added = 0;
  for (const sn of q.supernodes) {
    // a node keeps the group the user gave it
    const ids = sn.slice(1).filter((id) => S.byId.has(id) && !groupOf(id));
    if (ids.length) { S.supernodes.push([sn[0], ...ids]); added++; }
  }
  renderPinned(); draw();
  setStatus(`applied ${added} supernodes from the auto flowchart (Save keeps them with the graph)`);
}

function flowItems() {
  const items = [];
  for (const sn of S.supernodes) items.push({ key: "sn:" + sn[0], label: sn[0], ids: sn.slice(1) });
  for (const id of S.pinned) if (!groupOf(id)) items.push({ key: id, label: nodeLabel(S.byId.get(id)), ids: [id] });
  for (const it of items) {
    const ns = it.ids.map((i) => S.byId.get(i)).filter(Boolean);
    it.rank = Math.min(...ns.map((n) => layerRow(n, S.L))) + Math.max(...ns.map((n) => n.ctx_idx)) / 100;
  }
  return items.sort((a, b) => a.rank - b.rank);
}

function renderFlowchart() {
  const box = $("flowchart"); box.textContent = "";
  if (!S.graph) return;
  const items = flowItems();
  if (!items.length) { box.append(el("p", { class: "muted" }, "Pin nodes to build the flowchart.")); return; }
  const ranks = [...new Set(items.map((i) => Math.floor(i.rank)))].sort((a, b) => a - b);
  const colW = 150, boxW = 130, boxH = 34, gap = 14;
  const cols = new Map(ranks.map((r) => [r, []]));
  items.forEach((it) => cols.get(Math.floor(it.rank)).push(it));
  const h = Math.max(...[...cols.values()].map((c) => c.length)) * (boxH + gap) + gap;
  const w = ranks.length * colW + 10;
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`); svg.setAttribute("xmlns", NS); svg.setAttribute("id", "flow-svg");
  const pos = new Map();
  ranks.forEach((r, ci) => cols.get(r).forEach((it, ri) => pos.set(it.key, { x: 5 + ci * colW, y: gap + ri * (boxH + gap) })));
  const member = new Map(); items.forEach((it) => it.ids.forEach((id) => member.set(id, it.key)));
  const agg = new Map();
  for (const l of S.links) {
    const a = member.get(l.source), b = member.get(l.target);
    if (a && b && a !== b) agg.set(a + "|" + b, (agg.get(a + "|" + b) || 0) + l.weight);
  }
  const mx = Math.max(1e-9, ...[...agg.values()].map(Math.abs));
  const defs = document.createElementNS(NS, "defs");
  defs.innerHTML = '<marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>';
  svg.append(defs);
  for (const [k, wgt] of agg) {
    const [a, b] = k.split("|"), pa = pos.get(a), pb = pos.get(b);
    const line = document.createElementNS(NS, "path");
    const x1 = pa.x + boxW, y1 = pa.y + boxH / 2, x2 = pb.x, y2 = pb.y + boxH / 2;
    line.setAttribute("d", `M${x1},${y1} C${x1 + 30},${y1} ${x2 - 30},${y2} ${x2},${y2}`);
    line.setAttribute("fill", "none"); line.setAttribute("stroke", wgt >= 0 ? "#1a5fb4" : "#c01c28");
    line.setAttribute("stroke-width", 1 + 4 * Math.abs(wgt) / mx); line.setAttribute("marker-end", "url(#arr)");
    svg.append(line);
  }
  for (const it of items) {
    const p = pos.get(it.key), g = document.createElementNS(NS, "g");
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("x", p.x); r.setAttribute("y", p.y); r.setAttribute("width", boxW); r.setAttribute("height", boxH); r.setAttribute("rx", 6);
    r.setAttribute("fill", it.key.startsWith("sn:") ? "#fff4d6" : "#e8eefc"); r.setAttribute("stroke", "#667");
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", p.x + 6); t.setAttribute("y", p.y + 21); t.setAttribute("font-size", "11"); t.setAttribute("font-family", "system-ui, sans-serif");
    t.textContent = it.label.length > 22 ? it.label.slice(0, 21) + "…" : it.label;
    const title = document.createElementNS(NS, "title"); title.textContent = it.label;
    g.append(r, t, title); svg.append(g);
  }
  box.append(svg);
}

function download(name, blob) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name }); document.body.append(a); a.click(); a.remove();
}
function exportSVG() {
  const svg = $("flow-svg"); if (!svg) return;
  download(`${S.name}-flowchart.svg`, new Blob([new XMLSerializer().serializeToString(svg)], { type: "image/svg+xml" }));
}
function exportPNG() {
  const svg = $("flow-svg"); if (!svg) return;
  const vb = svg.viewBox.baseVal, img = new Image();
  img.onload = () => {
    const c = el("canvas"); c.width = vb.width * 2; c.height = vb.height * 2;
    const ctx = c.getContext("2d"); ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height); ctx.drawImage(img, 0, 0, c.width, c.height);
    c.toBlob((b) => download(`${S.name}-flowchart.png`, b), "image/png");
  };
  img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(new XMLSerializer().serializeToString(svg));
}

async function save() {
  await api(`/api/graphs/${encodeURIComponent(S.name)}/qparams`, { pinnedIds: S.pinned, supernodes: S.supernodes, clickedId: S.clicked || "" });
  setStatus("saved subgraph with the graph");
}

// ---------------------------------------------------------------- interventions
async function runIntervention() {
  const target = $("iv-target").value, mode = $("iv-mode").value, value = Number($("iv-value").value);
  if (!target) { setStatus("choose a feature or supernode (click or pin one)", true); return; }
  let feats = [target];
  if (target.startsWith("sn:")) {
    const sn = S.supernodes.find((x) => x[0] === target.slice(3));
    feats = sn.slice(1).map((id) => S.byId.get(id)).filter(isFeature).map((n) => `${n.layer}/${n.feature}@${n.ctx_idx}`);
  }
  const body = { prompt: $("iv-prompt").value, edits: feats.map((f) => ({ feature: f, mode, value })), freeze_attention: $("iv-freeze").checked, generate: Number($("iv-gen").value) };
  const out = $("iv-result"); out.textContent = "";
  try {
    const res = await waitJob(await api("/api/intervene", body), "intervention");
    const table = (rows) => { const t = el("table"); rows.forEach((r) => t.append(el("tr", {}, el("td", {}, JSON.stringify(r.token)), el("td", {}, fmt(r.prob))))); return t; };
    out.append(el("div", { class: "sidebyside" },
      el("div", { id: "iv-before" }, el("h4", {}, "Before"), table(res.before), el("p", { class: "ex" }, res.generation_before ?? "")),
      el("div", { id: "iv-after" }, el("h4", {}, "After"), table(res.after), el("p", { class: "ex" }, res.generation_after ?? ""))));
  } catch (e) { out.append(el("p", { class: "error" }, e.message)); setStatus(e.message, true); }
}

// ---------------------------------------------------------------- probe: features active at one token of any text
const pct = (r) => (r === null || r === undefined ? "–" : `${(100 * r).toFixed(0)}%`);

// pos given: that position of the last probed text (a click on one of its tokens); else the form's text and token
async function runProbe(pos) {
  const body = { text: pos === undefined ? $("probe-text").value : S.probe.text, limit: Number($("probe-limit").value) };
  if (pos !== undefined) body.pos = pos;
  else if ($("probe-token").value) body.token = $("probe-token").value;
  const seq = ++S.probeSeq, out = $("probe-result");
  $("probe-btn").disabled = true;
  try {
    const res = await waitJob(await api("/api/probe", body), "probe");
    if (seq !== S.probeSeq) return;     // a newer probe was asked for while this one waited
    S.probe = { ...res, text: body.text };
    renderProbe();
  } catch (e) {
    if (seq !== S.probeSeq) return;
    out.textContent = ""; out.append(el("p", { class: "error" }, e.message)); setStatus(e.message, true);
  } finally { if (seq === S.probeSeq) $("probe-btn").disabled = false; }
}

function renderProbe() {
  const P = S.probe, out = $("probe-result"); out.textContent = "";
  const toks = el("div", { id: "probe-tokens", class: "ex", title: "click a token to probe it" });
  P.tokens.forEach((t, i) => toks.append(el("span", { class: "tok" + (i === P.position ? " max" : ""), "data-pos": i,
    onclick: () => runProbe(i) }, t)));
  const noIndex = S.info && !S.info.has_index;
  out.append(toks, el("div", { class: "muted" }, `${P.features.length} features at ${JSON.stringify(P.token)} (position ${P.position})` +
    (noIndex ? " · no feature index: ranked by raw activation" : "")));
  const t = el("table", { id: "probe-hits" }, el("tr", {}, el("th", {}, "feature"), el("th", {}, "act"), el("th", { title: "share of the largest activation the index saw" }, "% max"), el("th", {}, "label")));
  for (const h of P.features) {
    t.append(el("tr", { class: "edge-row", "data-feature": h.id, title: `density ${fmt(h.density, 5)}`, onclick: () => openProbeHit(h) },
      el("td", {}, h.id), el("td", { class: "num" }, fmt(h.activation, 2)), el("td", { class: "num" }, pct(h.relative)), el("td", {}, h.label || "")));
  }
  if (!P.features.length) t.append(el("tr", {}, el("td", { class: "muted", colspan: 4 }, "no feature is active here")));
  out.append(t);
}

const sameTokens = (a, b) => a.length === b.length && a.every((t, i) => t === b[i]);

async function openProbeHit(h) {
  const P = S.probe, nid = `${h.layer}_${h.feature}_${P.position}`;
  // probed on the open graph's own tokens, the feature is a graph node: its panel then has edges, Pin and the intervention target
  if (S.graph && S.byId.has(nid) && sameTokens(S.graph.metadata.prompt_tokens, P.tokens)) return select(nid);
  const seq = ++S.featureSeq;
  S.clicked = null; draw(); showTab("feature");
  document.querySelectorAll("#node-list li").forEach((li) => li.classList.remove("active"));
  const box = $("tab-feature"); box.textContent = "";
  box.append(el("div", { class: "row" }, el("strong", {}, `${h.id}${h.label ? " “" + h.label + "”" : ""}`),
    el("button", { type: "button", onclick: () => showTab("probe") }, "Back to probe")));
  box.append(el("div", { class: "muted" }, `probed at ${JSON.stringify(P.token)} (position ${P.position}) · activation ${fmt(h.activation)} · ${pct(h.relative)} of max`));
  await loadFeatureDetail(box, h.layer, h.feature, seq);
}

// ---------------------------------------------------------------- tabs, events, boot
function showTab(name) {
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  for (const t of ["feature", "subgraph", "intervene", "probe"]) $("tab-" + t).hidden = t !== name;
}

function bind() {
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $("trace-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const prompt = $("prompt").value;
    $("trace-btn").disabled = true;
    try {
      const job = await api("/api/trace", { prompt, chat: $("chat").checked, max_feature_nodes: Number($("max-nodes").value) });
      const name = await waitJob(job, "trace");
      await openGraph(name);
    } catch (e) { setStatus(e.message, true); }
    finally { $("trace-btn").disabled = false; }
  });
  $("prune").addEventListener("input", (e) => { S.prune = Number(e.target.value); $("prune-val").textContent = S.prune.toFixed(2); draw(); renderNodeList(); });
  $("fit-btn").addEventListener("click", () => { fit(); draw(); });
  $("group-btn").addEventListener("click", groupChecked);
  $("suggest-btn").addEventListener("click", () => suggest().catch((e) => setStatus(e.message, true)));
  $("auto-flow-btn").addEventListener("click", () => autoFlowchart().catch((e) => { $("auto-flowchart").textContent = ""; setStatus(e.message, true); }));
  $("save-btn").addEventListener("click", () => save().catch((e) => setStatus(e.message, true)));
  $("svg-btn").addEventListener("click", exportSVG);
  $("png-btn").addEventListener("click", exportPNG);
  $("iv-run").addEventListener("click", runIntervention);
  $("probe-form").addEventListener("submit", (ev) => { ev.preventDefault(); runProbe(); });
  const c = $("graph");
  let drag = null;
  c.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, vx: S.view.x, vy: S.view.y, moved: false }; });
  window.addEventListener("mouseup", (e) => {
    if (drag && !drag.moved && S.graph) {
      const r = c.getBoundingClientRect(), n = nodeAt(e.clientX - r.left, e.clientY - r.top);
      if (n) { if (e.shiftKey) togglePin(n.node_id); else select(n.node_id); }
    }
    drag = null;
  });
  c.addEventListener("mousemove", (e) => {
    const r = c.getBoundingClientRect(), tip = $("tooltip");
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      S.view.x = drag.vx + dx; S.view.y = drag.vy + dy; draw(); return;
    }
    const n = S.graph && nodeAt(e.clientX - r.left, e.clientY - r.top);
    if (n) { tip.hidden = false; tip.textContent = nodeLabel(n); tip.style.left = e.clientX - r.left + 12 + "px"; tip.style.top = e.clientY - r.top + 12 + "px"; }
    else tip.hidden = true;
  });
  c.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = c.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top, f = Math.exp(-e.deltaY * 0.0015);
    S.view.x = mx - (mx - S.view.x) * f; S.view.y = my - (my - S.view.y) * f; S.view.k *= f; draw();
  }, { passive: false });
  window.addEventListener("resize", () => draw());
}

// test and scripting hook: screen position of a node (canvas coordinates relative to the page)
window.mechscope = {
  state: S,
  nodePosition(id) { const c = $("graph").getBoundingClientRect(), s = toScreen(S.layout.get(id)); return { x: c.left + s.x, y: c.top + s.y }; },
};

(async function boot() {
  bind();
  try {
    S.info = await api("/api/info");
    $("model-name").textContent = `${S.info.model} · ${S.info.n_layers} layers · ${S.info.d_transcoder} features/layer`;
    await refreshList();
    const m = /graph=([^&]+)/.exec(location.hash);
    if (m) await openGraph(decodeURIComponent(m[1]));
  } catch (e) { setStatus(e.message, true); }
})();
