// Downloads: the graph JSON (with the page's labels and view state as qParams), the main view as SVG or PNG.
import { S, isError } from "./graph.js";
import { RENDER, edgeGroup, forEachDrawnEdge, groupRGB, nodeColor, radius, supernodeBoxes, toScreen } from "./render.js";
import { $, download, setStatus } from "./util.js";

export function exportJSON() {
  if (!S.graph) return;
  if (S.compare) {      // a comparison's JSON is its diff, as `mechscope diff A B --json` writes it
    const name = `${S.compare.a}-vs-${S.compare.b}.diff.json`, { node_keys: _, ...diff } = S.compare.diff;   // the page's own extra
    download(name, new Blob([JSON.stringify(diff)], { type: "application/json" }));
    setStatus(`downloaded ${name}`);
    return;
  }
  const g = { ...S.graph, qParams: { ...(S.graph.qParams || {}), pinnedIds: S.pinned, supernodes: S.supernodes, clickedId: S.clicked || "",
    hiddenIds: [...S.hidden], densityThreshold: S.densityThr } };
  download(`${S.name}.json`, new Blob([JSON.stringify(g)], { type: "application/json" }));
  setStatus(`downloaded ${S.name}.json`);
}

export function exportPNG() {
  if (!S.graph) return;
  $("graph").toBlob((b) => download(`${S.name}.png`, b), "image/png");
}

const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));

// the same edges, nodes and labels as the canvas shows now, as vector graphics
export function mainViewSVG() {
  const r = $("graph").getBoundingClientRect(), w = Math.round(r.width), h = Math.round(r.height), v = S.view;
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="system-ui, sans-serif" font-size="11">`,
    `<rect width="${w}" height="${h}" fill="#fff"/>`];
  const lines = [];
  forEachDrawnEdge(v, w, h, (e, lvl, x1, y1, x2, y2) => {
    const rel = (lvl + 0.5) / 5;
    lines.push(`<line x1="${x1.toFixed(1)}" y1="${y1.toFixed(1)}" x2="${x2.toFixed(1)}" y2="${y2.toFixed(1)}" stroke="rgb(${groupRGB(edgeGroup(e))})" stroke-opacity="${(0.12 + 0.6 * rel * rel).toFixed(2)}" stroke-width="${(0.5 + 2.5 * rel * rel).toFixed(2)}"/>`);
  });
  out.push(`<g id="edges">${lines.join("")}</g><g id="nodes">`);
  S.nodes.forEach((n, i) => {
    if (!S.vis[i]) return;
    const p = toScreen(i, v), rr = radius(n);
    if (p.x < -10 || p.y < -10 || p.x > w + 10 || p.y > h + 10) return;
    const title = `<title>${esc(n.node_id)}</title>`;
    if (isError(n)) out.push(`<rect x="${(p.x - rr).toFixed(1)}" y="${(p.y - rr).toFixed(1)}" width="${2 * rr}" height="${2 * rr}" fill="${nodeColor(n)}">${title}</rect>`);
    else out.push(`<circle cx="${p.x.toFixed(1)}" cy="${p.y.toFixed(1)}" r="${rr.toFixed(1)}" fill="${nodeColor(n)}"${S.pinned.includes(n.node_id) ? ' stroke="#b8860b" stroke-width="2"' : ""}>${title}</circle>`);
  });
  out.push("</g>");
  for (const b of supernodeBoxes(v)) out.push(`<rect x="${b.x.toFixed(1)}" y="${b.y.toFixed(1)}" width="${b.w.toFixed(1)}" height="${b.h.toFixed(1)}" fill="none" stroke="#9a6700" stroke-dasharray="4 3"/><text x="${b.x.toFixed(1)}" y="${(b.y - 3).toFixed(1)}" fill="#7a5200">◆ ${esc(b.name)}</text>`);
  for (const l of RENDER.labels) out.push(`<text x="${l.x.toFixed(1)}" y="${(l.y + 4).toFixed(1)}" fill="#1d2330" stroke="#fff" stroke-width="3" paint-order="stroke">${esc(l.text)}</text>`);
  out.push("</svg>");
  return out.join("\n");
}

export function exportSVG() {
  if (!S.graph) return;
  download(`${S.name}.svg`, new Blob([mainViewSVG()], { type: "image/svg+xml" }));
}
