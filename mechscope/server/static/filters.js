// The reading filters in the graph's header: dense features hidden (on by default, threshold in % of tokens),
// nodes hidden one by one (H on a selected node, or its panel's Hide), and the full edge layer's toggle. Their
// state is S.densityThr (1: off), S.hidden and S.allEdges, all in the URL.
import { DENSITY_DEFAULT, S } from "./graph.js";
import { $, H, setStatus } from "./util.js";

const DENSE_MIN_PCT = 0.01, DENSE_MAX_PCT = 100;
let densityPick = DENSITY_DEFAULT;      // the threshold the checkbox turns back on

export function syncFilters() {
  const on = S.densityThr < 1;
  if (on) densityPick = S.densityThr;
  $("dense-on").checked = on;
  $("dense-thr").value = String(Number((100 * densityPick).toPrecision(3)));
  $("dense-thr").disabled = !on;
  $("all-edges").checked = S.allEdges;
  const hc = S.hiddenCounts || { dense: 0, user: 0 };
  const anyDensity = S.nodes.some((n) => typeof n.density === "number");
  $("hidden-info").textContent = !anyDensity ? "(no densities: no feature index)" : on ? `${hc.dense} hidden` : "";
  $("unhide-btn").hidden = !S.hidden.size;
  $("unhide-btn").textContent = `show ${S.hidden.size} hidden`;
}

function changed() { syncFilters(); H.refilter(); }

export function bindFilters() {
  $("dense-on").addEventListener("change", (e) => { S.densityThr = e.target.checked ? densityPick : 1; changed(); });
  $("dense-thr").addEventListener("change", (e) => {
    const v = e.target.value === "" ? NaN : Number(e.target.value);
    if (!(v >= DENSE_MIN_PCT && v <= DENSE_MAX_PCT)) {
      setStatus(`the density threshold must lie between ${DENSE_MIN_PCT}% and ${DENSE_MAX_PCT}% of tokens`, true);
      e.target.value = String(Number((100 * densityPick).toPrecision(3)));
      return;
    }
    densityPick = v / 100; S.densityThr = densityPick; changed();
  });
  $("unhide-btn").addEventListener("click", () => { S.hidden.clear(); changed(); setStatus("every hidden node is shown again"); });
  $("all-edges").addEventListener("change", (e) => { S.allEdges = e.target.checked; changed(); });
}

// hides node `id` (or shows it again), e.g. from its panel or with H
export function toggleHidden(id) {
  if (S.hidden.has(id)) S.hidden.delete(id); else S.hidden.add(id);
  if (S.hidden.has(id) && S.clicked === id) H.select(null);
  setStatus(S.hidden.has(id) ? `hid ${id} (show it again: "show hidden")` : `showing ${id} again`);
  changed();
}
