// The subgraph pane: pinned nodes and supernodes (grouped, renamed and edited in the page) laid out by token
// position × layer like Neuronpedia's subgraph, with the summed edges between them; the auto flowchart fills it.
import { S, inSupernode, isFeature, layerRow, nodeLabel, shortLabel } from "./graph.js";
import { scoresText } from "./subscores.js";
import { labelsSaved } from "./reading.js";
import { $, H, api, download, el, setStatus, svgEl } from "./util.js";

// the open graph's name on the server; a graph opened from a file has none
function storedName(what) {
  if (S.fromFile) throw new Error(`${what} needs the graph on the server; ${S.fromFile} was opened from a file (Save JSON keeps your pins in it)`);
  return S.name;
}

export function togglePin(id) {
  S.pinned = S.pinned.includes(id) ? S.pinned.filter((x) => x !== id) : [...S.pinned, id];
  const b = $("pin-btn");
  if (b && S.clicked === id) { b.textContent = S.pinned.includes(id) ? "Unpin" : "Pin"; b.setAttribute("aria-pressed", String(S.pinned.includes(id))); }
  setStatus(S.pinned.includes(id) ? `pinned ${id} (Subgraph tab)` : `unpinned ${id}`);
  renderPinned(); H.changed("pins");
}

export function renderPinned() {
  const ul = $("pinned-list");
  ul.textContent = "";
  S.supernodes.forEach((sn, si) => ul.append(supernodeItem(sn, si)));
  for (const id of S.pinned) {
    if (inSupernode(id) || !S.byId.has(id)) continue;
    const cb = el("input", { type: "checkbox", "data-pin": id, "aria-label": `check ${id} for grouping` });
    cb.checked = S.checked.has(id);
    cb.addEventListener("change", () => (cb.checked ? S.checked.add(id) : S.checked.delete(id)));
    const lab = nodeLabel(S.byId.get(id));
    // the name is a button: reachable with Tab, opened with Enter or Space
    ul.append(el("li", {}, cb, el("button", { type: "button", title: lab, class: "linkbtn pin-name", "data-node": id, onclick: () => H.select(id) }, lab),
      el("button", { type: "button", "aria-label": `unpin ${id}`, onclick: () => togglePin(id) }, "×")));
  }
  if (!ul.children.length) ul.append(el("li", { class: "muted" }, "Pin nodes (P or Shift+click on the graph) to build a subgraph."));
  fillTargets();
  renderSubgraph();
  const scores = scoresText();
  $("sg-scores").textContent = scores; $("sg-scores-tab").textContent = scores;
}

function supernodeItem(sn, si) {
  const name = el("input", { type: "text", value: sn[0], class: "sn-name", "aria-label": "supernode name", "data-sn-index": si });
  name.addEventListener("change", () => {
    const v = name.value.trim();
    if (!v || S.supernodes.some((x, j) => j !== si && x[0] === v)) { name.value = sn[0]; setStatus("a supernode needs a unique, non-empty name", true); return; }
    sn[0] = v; renderPinned(); H.changed("supernodes");
  });
  const members = el("ul", { class: "sn-members", hidden: !S.expanded?.has(si) });
  for (const id of sn.slice(1)) {
    const n = S.byId.get(id);
    members.append(el("li", {}, el("button", { type: "button", class: "linkbtn", onclick: () => H.select(id) }, n ? nodeLabel(n) : id),
      el("button", { type: "button", "aria-label": `remove ${id} from ${sn[0]}`, class: "sn-remove", "data-member": id, onclick: () => {
        sn.splice(sn.indexOf(id), 1);
        if (sn.length < 2) S.supernodes.splice(S.supernodes.indexOf(sn), 1);
        renderPinned(); H.changed("supernodes");
      } }, "×")));
  }
  const toggle = el("button", { type: "button", "aria-expanded": String(!members.hidden), onclick: () => {
    S.expanded = S.expanded || new Set();
    if (S.expanded.has(si)) S.expanded.delete(si); else S.expanded.add(si);
    renderPinned();
  } }, `${sn.length - 1} members`);
  const add = el("button", { type: "button", class: "sn-add", title: "add the selected node", onclick: () => {
    const id = S.clicked;
    if (!id || sn.includes(id)) { setStatus("select a node that is not in this supernode first", true); return; }
    const other = inSupernode(id);
    if (other) other.splice(other.indexOf(id), 1);
    sn.push(id);
    if (!S.pinned.includes(id)) S.pinned.push(id);
    renderPinned(); H.changed("supernodes");
  } }, "+ selected");
  const ungroup = el("button", { type: "button", onclick: () => { S.supernodes.splice(si, 1); renderPinned(); H.changed("supernodes"); } }, "ungroup");
  return el("li", { class: "supernode", "data-supernode": sn[0] }, el("div", { class: "row" }, el("span", {}, "◆"), name, toggle, add, ungroup), members);
}

export function groupChecked() {
  const ids = [...S.checked].filter((id) => S.pinned.includes(id) && !inSupernode(id));
  const name = $("group-name").value.trim();
  if (ids.length < 1) { setStatus("check pinned nodes to group", true); return; }
  if (!name) { setStatus("type a name for the supernode", true); $("group-name").focus(); return; }
  if (S.supernodes.some((sn) => sn[0] === name)) { setStatus(`a supernode is already called ${name}`, true); return; }
  S.supernodes.push([name, ...ids]); S.checked.clear(); $("group-name").value = "";
  renderPinned(); H.changed("supernodes");
}

function fillTargets() {
  const sel = $("iv-target"), keep = sel.value;
  sel.textContent = "";
  for (const sn of S.supernodes) sel.append(el("option", { value: "sn:" + sn[0] }, `supernode ${sn[0]}`));
  const ids = [...S.pinned];
  if (S.clicked && !ids.includes(S.clicked)) ids.unshift(S.clicked);
  for (const id of ids) {
    const n = S.byId.get(id);
    if (n && isFeature(n)) sel.append(el("option", { value: `${n.layer}/${n.feature}@${n.ctx_idx}` }, (id === S.clicked ? "selected " : "") + nodeLabel(n)));
  }
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

export function subgraphItems() {
  const items = [];
  for (const sn of S.supernodes) items.push({ key: "sn:" + sn[0], label: sn[0], ids: sn.slice(1).filter((i) => S.byId.has(i)), sn: true });
  for (const id of S.pinned) if (!inSupernode(id) && S.byId.has(id)) items.push({ key: id, label: shortLabel(S.byId.get(id)), ids: [id], sn: false });
  for (const it of items) {
    const ns = it.ids.map((i) => S.byId.get(i));
    it.row = ns.length ? Math.round(ns.reduce((a, n) => a + layerRow(n, S.L), 0) / ns.length) : 0;
    it.col = ns.length ? Math.round(ns.reduce((a, n) => a + n.ctx_idx, 0) / ns.length) : 0;
  }
  return items.filter((it) => it.ids.length);
}

// boxes by position (x) × layer (y, outputs on top); boxes sharing a cell sit side by side
export function renderSubgraph() {
  const box = $("flowchart");
  box.textContent = "";
  const items = S.graph ? subgraphItems() : [];
  $("subgraph-pane").hidden = !items.length || !!S.sgHidden;
  $("sg-show").hidden = !items.length || !S.sgHidden;
  if (!items.length) return;
  const cols = [...new Set(items.map((i) => i.col))].sort((a, b) => a - b), rows = [...new Set(items.map((i) => i.row))].sort((a, b) => b - a);
  const cell = new Map();
  for (const it of items) { const k = `${it.row}:${it.col}`; if (!cell.has(k)) cell.set(k, []); cell.get(k).push(it); }
  const BW = 118, BH = 38, GX = 16, GY = 34, ML = 34, MB = 22;
  const colSlots = cols.map((c) => { let m = 1; for (const r of rows) m = Math.max(m, (cell.get(`${r}:${c}`) || []).length); return m; });
  const colX = []; let x = ML;
  cols.forEach((c, ci) => { colX.push(x); x += colSlots[ci] * (BW + GX); });
  const W = x + 4, TOPM = 24, Hh = rows.length * (BH + GY) + MB + TOPM;   // TOPM: room for arcs over the top row
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${Hh}`, id: "flow-svg", xmlns: "http://www.w3.org/2000/svg", width: W, height: Hh, role: "img", "aria-label": "subgraph of pinned nodes and supernodes" });
  // arrowheads of a fixed size scaled to the boxes (not to the stroke), their tips on the target box's edge: a
  // path stops AH short of the box and the head (its base at the path's end) fills the gap
  const AH = Math.round(BH / 5), COLS = { pos: "#1a5fb4", neg: "#c01c28" };
  svg.append(svgEl("defs", {}, ...Object.entries(COLS).map(([k, fill]) => svgEl("marker", { id: `arr-${k}`, viewBox: "0 0 10 10", refX: 0, refY: 5,
    markerWidth: AH, markerHeight: AH, markerUnits: "userSpaceOnUse", orient: "auto" }, svgEl("path", { d: "M0,0 L10,5 L0,10 z", fill })))));
  const pos = new Map();
  rows.forEach((r, ri) => {
    const y = TOPM + ri * (BH + GY);
    svg.append(svgEl("text", { x: 2, y: y + BH / 2 + 4, "font-size": 10, fill: "#4a5060" }, r === 0 ? "Emb" : r === S.L + 1 ? "Out" : `L${r - 1}`));
    cols.forEach((c, ci) => (cell.get(`${r}:${c}`) || []).forEach((it, j) => pos.set(it.key, { x: colX[ci] + j * (BW + GX), y })));
  });
  const toks = S.graph.metadata.prompt_tokens;
  cols.forEach((c, ci) => svg.append(svgEl("text", { x: colX[ci] + 4, y: Hh - 6, "font-size": 10, fill: "#1d2330" }, JSON.stringify(toks[c] ?? "").slice(0, 18))));
  // summed weights between items, from the full edge list through the adjacency arrays
  const member = new Map();
  items.forEach((it) => it.ids.forEach((id) => member.set(S.nodeIdx.get(id), it.key)));
  const agg = new Map();
  for (const [i, a] of member) {
    for (let k = S.outStart[i]; k < S.outStart[i + 1]; k++) {
      const e = S.outList[k], b = member.get(S.tgt[e]);
      if (b !== undefined && b !== a) agg.set(a + "|" + b, (agg.get(a + "|" + b) || 0) + S.w[e]);
    }
  }
  let mx = 1e-9;
  for (const v of agg.values()) mx = Math.max(mx, Math.abs(v));
  for (const [k, wgt] of agg) {
    const [a, b] = k.split("|"), pa = pos.get(a), pb = pos.get(b), xa = pa.x + BW / 2, xb = pb.x + BW / 2;
    // up to a box above, down to one below, and over the top to one in the same row (never across the boxes)
    const d = pb.y + BH <= pa.y ? `M${xa},${pa.y} C${xa},${pa.y - 20} ${xb},${pb.y + BH + AH + 20} ${xb},${pb.y + BH + AH}`
      : pb.y >= pa.y + BH ? `M${xa},${pa.y + BH} C${xa},${pa.y + BH + 20} ${xb},${pb.y - AH - 20} ${xb},${pb.y - AH}`
        : `M${xa},${pa.y} C${xa},${pa.y - GY + 4} ${xb},${pb.y - AH - GY + 4} ${xb},${pb.y - AH}`;
    svg.append(svgEl("path", { d, fill: "none", stroke: COLS[wgt >= 0 ? "pos" : "neg"], "stroke-width": (1 + 4 * Math.abs(wgt) / mx).toFixed(2),
      "marker-end": `url(#arr-${wgt >= 0 ? "pos" : "neg"})`, opacity: 0.8, "data-src": a, "data-dst": b, "data-head": AH }, svgEl("title", {}, `${wgt.toFixed(3)}`)));
  }
  for (const it of items) {
    const p = pos.get(it.key);
    const g = svgEl("g", { "data-item": it.key, tabindex: "0", role: "button", "aria-label": it.label });
    g.append(svgEl("rect", { x: p.x, y: p.y, width: BW, height: BH, rx: 6, fill: it.sn ? "#fff4d6" : "#e8eefc", stroke: it.sn ? "#9a6700" : "#667" }));
    const t = it.label.length > 19 ? it.label.slice(0, 18) + "…" : it.label;
    g.append(svgEl("text", { x: p.x + 6, y: p.y + 16, "font-size": 11, "font-family": "system-ui, sans-serif", fill: "#1d2330" }, (it.sn ? "◆ " : "") + t));
    g.append(svgEl("text", { x: p.x + 6, y: p.y + 30, "font-size": 9, fill: "#4a5060" }, it.sn ? `${it.ids.length} nodes` : it.key));
    g.append(svgEl("title", {}, it.label));
    g.addEventListener("click", () => H.select(it.ids[0]));
    g.addEventListener("keydown", (e) => { if (e.key === "Enter") H.select(it.ids[0]); });
    svg.append(g);
  }
  box.append(el("div", { class: "svg-wrap" }, svg));
}

export async function suggest() {
  const box = $("suggestions"), name = storedName("suggesting groups");
  box.textContent = "…";
  const res = await api(`/api/graphs/${encodeURIComponent(name)}/suggest`);
  box.textContent = "";
  res.supernodes.slice(0, 8).forEach((sn) => {
    box.append(el("div", { class: "row" }, el("span", {}, `${sn[0]}: ${sn.length - 1} features`),
      el("button", { type: "button", onclick: () => addSupernodes([sn]) }, "accept")));
  });
  if (!res.supernodes.length) box.textContent = "no grouping suggested";
}

function addSupernodes(list, pinned = []) {
  const names = new Set(list.map((sn) => sn[0]));
  S.supernodes = S.supernodes.filter((sn) => !names.has(sn[0]));   // re-applying replaces, never duplicates
  for (const id of pinned) if (S.byId.has(id) && !S.pinned.includes(id)) S.pinned.push(id);
  let added = 0;
  for (const sn of list) {
    const ids = sn.slice(1).filter((id) => S.byId.has(id) && !inSupernode(id));   // a node keeps the group the user gave it
    for (const id of ids) if (!S.pinned.includes(id)) S.pinned.push(id);
    if (ids.length) { S.supernodes.push([sn[0], ...ids]); added++; }
  }
  renderPinned(); H.changed("supernodes");
  return added;
}

// automatic flowchart: the server groups the most influential features into labelled boxes (its own SVG)
export async function autoFlowchart() {
  const box = $("auto-flowchart");
  box.textContent = "…";
  const fc = await api(`/api/graphs/${encodeURIComponent(storedName("the auto flowchart"))}/flowchart`);
  box.textContent = "";
  // parsed as SVG (not HTML), so nothing in it runs; the server escapes labels anyway
  const doc = new DOMParser().parseFromString(fc.svg, "image/svg+xml");
  const svg = doc.documentElement;
  if (svg.nodeName !== "svg" || doc.getElementsByTagName("parsererror").length) throw new Error("the server sent a broken flowchart");
  svg.setAttribute("id", "auto-flow-svg");
  const feats = fc.boxes.filter((b) => b.kind === "features").length;
  const apply = () => setStatus(`applied ${addSupernodes(fc.qParams.supernodes, fc.qParams.pinnedIds)} supernodes from the auto flowchart`);
  box.append(el("h4", {}, "Auto flowchart"),
    el("div", { class: "row" }, el("span", { class: "muted" }, `${feats} feature boxes · ${fc.arrows.length} arrows`),
      el("button", { id: "auto-flow-apply", type: "button", title: "pin every box's nodes and make each feature box a supernode", onclick: apply }, "Apply as supernodes"),
      el("button", { type: "button", onclick: () => download(`${S.name}-auto-flowchart.svg`, new Blob([fc.svg], { type: "image/svg+xml" })) }, "Export SVG")));
  const node = document.importNode(svg, true);
  const byBox = new Map(fc.boxes.map((b) => [b.id, b]));
  node.querySelectorAll("g[data-box]").forEach((g) => g.addEventListener("click", () => {
    const b = byBox.get(g.dataset.box), id = b && b.members.find((m) => S.byId.has(m));
    if (id) H.select(id);
  }));
  box.append(el("div", { class: "svg-wrap" }, node));
}

// "Save": the explicit action that writes pins, supernodes and edited labels into the graph file on the server
export async function saveToServer() {
  if (S.compare) throw new Error("a comparison is not saved: open either graph to save its pins and labels");
  storedName("saving");
  await api(`/api/graphs/${encodeURIComponent(S.name)}/qparams`, { pinnedIds: S.pinned, supernodes: S.supernodes, clickedId: S.clicked || "",
    hiddenIds: [...S.hidden], densityThreshold: S.densityThr });
  if (S.dirtyLabels.size) {
    const labels = {};
    for (const id of S.dirtyLabels) labels[id] = S.labels[id];
    await api(`/api/graphs/${encodeURIComponent(S.name)}/labels`, { labels });
    S.dirtyLabels.clear();
    labelsSaved();
  }
  S.cache.delete(S.name);
  setStatus("saved pins, supernodes, hidden nodes, the density filter and labels into the graph on the server");
}
