// Finding a node: a combobox over the open graph's nodes, by label (a feature's label, a token, an output's
// token) or by id ("10_385_6", "10/385", "10/385@6"). Choosing one shows it even if a filter hides it, centres
// it and selects it. Keys: / focuses the box, ↑ ↓ move, Enter chooses, Escape closes.
import { S, hiddenBy, isFeature, nodeLabel } from "./graph.js";
import { $, H, el } from "./util.js";

const FOUND_MAX = 12;

// nodes matching query q, best first: exact ids, then labels that start with q, then any that contain it
export function searchNodes(q, limit = FOUND_MAX) {
  q = q.trim().toLowerCase();
  if (!q) return [];
  const hits = [];
  S.nodes.forEach((n, i) => {
    const lf = isFeature(n) ? `${n.layer}/${n.feature}` : "", lab = nodeLabel(n).toLowerCase(), id = n.node_id.toLowerCase();
    let rank = -1;
    if (id === q || (lf && `${lf}@${n.ctx_idx}` === q)) rank = 0;
    else if (lf === q) rank = 1;
    else if (lab.startsWith(q) || (n.clerp || "").toLowerCase().startsWith(q)) rank = 2;
    else if (lab.includes(q) || id.includes(q)) rank = 3;
    if (rank >= 0) hits.push([rank, n.influence ?? 1, i]);
  });
  hits.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
  return hits.slice(0, limit).map((h) => S.nodes[h[2]]);
}

export function bindSearch() {
  const box = $("node-search"), list = $("search-results");
  let found = [], active = -1;
  const close = () => { list.hidden = true; box.setAttribute("aria-expanded", "false"); box.removeAttribute("aria-activedescendant"); active = -1; };
  const mark = (k) => {
    active = k;
    [...list.children].forEach((li, j) => li.setAttribute("aria-selected", String(j === k)));
    if (k >= 0 && list.children[k]) { box.setAttribute("aria-activedescendant", list.children[k].id); list.children[k].scrollIntoView({ block: "nearest" }); }
  };
  const choose = (n) => { close(); box.value = ""; H.reveal(n.node_id); };
  const fill = () => {
    found = S.graph ? searchNodes(box.value) : [];
    list.textContent = "";
    found.forEach((n, k) => {
      const why = hiddenBy(n);
      list.append(el("li", { role: "option", id: `found-${k}`, "data-node": n.node_id, "aria-selected": "false",
        onmousedown: (e) => { e.preventDefault(); choose(n); } },
        nodeLabel(n), why ? el("span", { class: "muted" }, ` (${why})`) : null));
    });
    if (box.value.trim() && !found.length) list.append(el("li", { class: "muted", role: "option", "aria-disabled": "true" }, "no node matches"));
    list.hidden = !box.value.trim();
    box.setAttribute("aria-expanded", String(!list.hidden));
    mark(found.length ? 0 : -1);
  };
  box.addEventListener("input", fill);
  box.addEventListener("blur", () => setTimeout(close, 100));
  box.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      if (list.hidden) fill();
      if (found.length) mark((active + (e.key === "ArrowDown" ? 1 : found.length - 1)) % found.length);
    } else if (e.key === "Enter") {
      e.preventDefault();
      if (found[active >= 0 ? active : 0]) choose(found[active >= 0 ? active : 0]);
    } else if (e.key === "Escape") { e.stopPropagation(); close(); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && !/^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) { e.preventDefault(); box.focus(); }
  });
}
