// Interventions (watched tokens, before/after with the change, a history of runs) and the probe tab.
import { S } from "./graph.js";
import { loadFeatureDetail } from "./panels.js";
import { FLOOR, SIZE_FACTOR, disagreement, predict } from "./predict.js";
import { $, H, api, el, fmt, pct, setStatus, waitJob } from "./util.js";

export function syncModeInputs() {
  const ablate = $("iv-mode").value === "ablate";
  $("iv-value").disabled = ablate;
  $("iv-value").setAttribute("aria-disabled", String(ablate));
  $("iv-value-label").classList.toggle("disabled", ablate);
}

function editsFor(target) {
  if (!target.startsWith("sn:")) return [target];
  const sn = S.supernodes.find((x) => x[0] === target.slice(3));
  if (!sn) return [];
  return sn.slice(1).map((id) => S.byId.get(id)).filter((n) => n && n.feature_type === "cross layer transcoder")
    .map((n) => `${n.layer}/${n.feature}@${n.ctx_idx}`);
}

// "Austin, Dallas" -> [" Austin", " Dallas"]: a word after a space is what the next token usually is;
// a quoted item is taken exactly: "\n", "Austin"
export function parseWatch(text) {
  const out = [];
  for (const m of text.matchAll(/\s*(?:"((?:[^"\\]|\\.)*)"|([^,]+))\s*(?:,|$)/g)) {
    if (m[1] !== undefined) { try { out.push(JSON.parse(`"${m[1]}"`)); } catch { out.push(m[1]); } }
    else if (m[2] && m[2].trim()) out.push(" " + m[2].trim());
  }
  return out.slice(0, 20);
}

export async function runIntervention() {
  const out = $("iv-result"), target = $("iv-target").value, mode = $("iv-mode").value, raw = $("iv-value").value.trim();
  const fail = (msg) => { out.textContent = ""; out.append(el("p", { class: "error", role: "alert" }, msg)); setStatus(msg, true); };
  if (!target) return fail("choose a feature or supernode (select or pin one)");
  if (mode !== "ablate" && (raw === "" || !Number.isFinite(Number(raw)))) return fail(`enter a number for ${mode === "set" ? "set =" : "scale ×"}`);
  const feats = editsFor(target);
  if (!feats.length) return fail("that supernode holds no transcoder features");
  const watch = parseWatch($("iv-watch").value);
  const edits = feats.map((f) => (mode === "ablate" ? { feature: f, mode } : { feature: f, mode, value: Number(raw) }));
  const body = { prompt: $("iv-prompt").value, edits, freeze_attention: $("iv-freeze").checked, generate: Number($("iv-gen").value) || 0, watch, top_k: 10 };
  // the graph's prediction is made now, from the graph open now; the run brings the measured logits to set beside it
  const pred = predict(edits, body.prompt);
  if (pred.byId) body.logit_ids = [...pred.byId.keys()].slice(0, 20);
  out.textContent = "";
  $("iv-run").disabled = true;
  try {
    const res = await waitJob(await api("/api/intervene", body), "intervention");
    const run = { n: S.history.length + 1, target: $("iv-target").selectedOptions[0]?.textContent || target, mode, value: mode === "ablate" ? null : Number(raw), watch, res, pred, frozen: body.freeze_attention };
    S.history.push(run);
    showRun(run);
    renderHistory();
  } catch (e) { fail(e.message); }
  finally { $("iv-run").disabled = false; }
}

// one table: top tokens before and after and the watched ones, with the change in probability
function showRun(run) {
  const out = $("iv-result"), res = run.res;
  out.textContent = "";
  // keyed by token id when the server sends it: distinct tokens can decode to the same text
  const key = (r) => (r.id !== undefined ? `#${r.id}` : r.token), text = new Map();
  const before = new Map(), after = new Map(), watched = new Set();
  for (const r of res.before) { before.set(key(r), r.prob); text.set(key(r), r.token); }
  for (const r of res.after) { after.set(key(r), r.prob); text.set(key(r), r.token); }
  for (const w of res.watch || []) {
    const k = [...text].find(([, t]) => t === w.token)?.[0] ?? w.token;
    before.set(k, w.before); after.set(k, w.after); text.set(k, w.token); watched.add(k);
  }
  const toks = [...new Set([...watched, ...res.before.map(key), ...res.after.map(key)])];
  const t = el("table", { id: "iv-table" }, el("tr", {}, el("th", {}, "token"), el("th", { class: "num" }, "before"), el("th", { class: "num" }, "after"), el("th", { class: "num" }, "change")));
  for (const tok of toks) {
    const b = before.get(tok), a = after.get(tok), d = a !== undefined && b !== undefined ? a - b : null;
    t.append(el("tr", { class: watched.has(tok) ? "watched" : "" }, el("td", {}, (watched.has(tok) ? "👁 " : "") + JSON.stringify(text.get(tok))),
      el("td", { class: "num" }, b === undefined ? "< top" : fmt(b)), el("td", { class: "num" }, a === undefined ? "< top" : fmt(a)),
      el("td", { class: "num " + (d === null ? "" : d >= 0 ? "pos" : "neg") }, d === null ? "–" : (d >= 0 ? "+" : "") + fmt(d))));
  }
  out.append(el("h4", {}, `Run ${run.n}: ${run.mode}${run.value === null ? "" : " " + run.value} on ${run.target}`), t);
  out.append(predictionTable(run));
  if (res.generation_before !== undefined) {
    out.append(el("div", { class: "sidebyside" },
      el("div", { id: "iv-before" }, el("h4", {}, "Generated before"), el("p", { class: "ex" }, res.generation_before ?? "")),
      el("div", { id: "iv-after" }, el("h4", {}, "Generated after"), el("p", { class: "ex" }, res.generation_after ?? ""))));
  }
}

// the graph's predicted change of each output's centred logit beside the measured one, flagged where they disagree
function predictionTable(run) {
  const P = run.pred, box = el("div", { id: "iv-predict" });
  box.append(el("h4", {}, "The graph's prediction"));
  if (!P || !P.byId) { box.append(el("p", { class: "muted", id: "iv-predict-none" }, `not predicted: ${P ? P.why : "no graph"}`)); return box; }
  const meas = new Map((run.res.logits || []).map((r) => [r.id, r]));
  const t = el("table", { id: "iv-predict-table", title: "logit − mean logit: what the graph's output nodes read" },
    el("tr", {}, el("th", {}, "output"), el("th", { class: "num" }, "measured Δ"), el("th", { class: "num" }, "graph Δ"), el("th", {}, "")));
  let bad = 0, n = 0;
  for (const [id, p] of P.byId) {
    const r = meas.get(id), m = r ? r.after - r.before : null, why = m === null ? "" : disagreement(p, m);
    if (m !== null) n++;
    if (why) bad++;
    const ratio = why === "size" ? Math.max(Math.abs(p), Math.abs(m)) / Math.max(1e-9, Math.min(Math.abs(p), Math.abs(m))) : 0;
    const size = Math.abs(p) < FLOOR ? "graph ≈ 0" : Math.abs(m) < FLOOR ? "model ≈ 0" : `×${ratio.toFixed(1)}`;
    const flag = why === "sign" ? "⚠ sign differs" : why === "size" ? `⚠ size differs (${size})` : m === null ? "not measured" : "agrees";
    const sg = (x) => (x >= 0 ? "+" : "") + fmt(x);
    t.append(el("tr", { class: why ? "disagree" : "", "data-token-id": id, "data-flag": why || (m === null ? "none" : "agree") },
      el("td", {}, P.names.get(id) || String(id)), el("td", { class: "num" }, m === null ? "–" : sg(m)), el("td", { class: "num" }, sg(p)), el("td", {}, flag)));
  }
  box.append(el("p", { class: bad ? "disagree-note" : "muted", id: "iv-predict-summary" },
    bad ? `The graph disagrees with the model on ${bad} of ${n} outputs (sign, or size more than ×${SIZE_FACTOR} apart; changes under ${FLOOR} logit agree).`
      : `The graph agrees with the model on ${n} outputs (same sign, size within ×${SIZE_FACTOR}, or both under ${FLOOR} logit).`), t);
  const notes = [];
  if (P.missing && P.missing.length) notes.push(`${P.missing.length} edited feature(s) are not nodes of this graph and are left out of the prediction (${P.missing.slice(0, 3).join(", ")}${P.missing.length > 3 ? ", …" : ""})`);
  if (!run.frozen) notes.push("measured with attention live; the graph assumes it frozen");
  if (notes.length) box.append(el("p", { class: "muted small" }, notes.join("; ") + "."));
  return box;
}

function disagreements(run) {
  if (!run.pred || !run.pred.byId) return 0;
  let k = 0;
  for (const r of run.res.logits || []) if (run.pred.byId.has(r.id) && disagreement(run.pred.byId.get(r.id), r.after - r.before)) k++;
  return k;
}

function renderHistory() {
  const ul = $("iv-history");
  ul.textContent = "";
  for (const run of [...S.history].reverse()) {
    const top = run.res.after[0];
    const bad = disagreements(run);
    ul.append(el("li", { tabindex: "0", "data-run": run.n, class: "link", onclick: () => showRun(run), onkeydown: (e) => { if (e.key === "Enter") showRun(run); } },
      `#${run.n} ${run.mode}${run.value === null ? "" : " " + run.value} · ${run.target} → ${top ? JSON.stringify(top.token) + " " + fmt(top.prob, 2) : ""}` +
      (bad ? ` · ⚠ graph disagrees on ${bad}` : "")));
  }
}

// ---------------------------------------------------------------- probe: features active at one token of any text
export async function runProbe(pos) {
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
  const P = S.probe, out = $("probe-result");
  out.textContent = "";
  const toks = el("div", { id: "probe-tokens", class: "ex", title: "click a token to probe it" });
  P.tokens.forEach((t, i) => toks.append(el("span", { class: "tok" + (i === P.position ? " max" : ""), "data-pos": i, tabindex: "0",
    onclick: () => runProbe(i), onkeydown: (e) => { if (e.key === "Enter") runProbe(i); } }, t)));
  const noIndex = S.info && !S.info.has_index;
  out.append(toks, el("div", { class: "muted" }, `${P.features.length} features at ${JSON.stringify(P.token)} (position ${P.position})` +
    (noIndex ? " · no feature index: ranked by raw activation" : "")));
  const t = el("table", { id: "probe-hits" }, el("tr", {}, el("th", {}, "feature"), el("th", {}, "act"), el("th", { title: "share of the largest activation the index saw" }, "% max"), el("th", {}, "label")));
  for (const h of P.features) {
    t.append(el("tr", { class: "edge-row", "data-feature": h.id, title: `density ${fmt(h.density, 5)}`, tabindex: "0", onclick: () => openProbeHit(h),
      onkeydown: (e) => { if (e.key === "Enter") openProbeHit(h); } },
      el("td", {}, h.id), el("td", { class: "num" }, fmt(h.activation, 2)), el("td", { class: "num" }, pct(h.relative)), el("td", {}, h.label || "")));
  }
  if (!P.features.length) t.append(el("tr", {}, el("td", { class: "muted", colspan: 4 }, "no feature is active here")));
  out.append(t);
}

const sameTokens = (a, b) => a.length === b.length && a.every((t, i) => t === b[i]);

async function openProbeHit(h) {
  const P = S.probe, nid = `${h.layer}_${h.feature}_${P.position}`;
  // probed on the open graph's own tokens, the feature is a graph node: its panel then has edges, Pin and the intervention target
  if (S.graph && S.byId.has(nid) && sameTokens(S.graph.metadata.prompt_tokens, P.tokens)) return H.select(nid);
  const seq = ++S.featureSeq;
  H.select(null, { keepTab: true });
  H.showTab("feature");
  const box = $("tab-feature");
  box.textContent = "";
  box.append(el("div", { class: "row" }, el("strong", {}, `${h.id}${h.label ? " “" + h.label + "”" : ""}`),
    el("button", { type: "button", onclick: () => H.showTab("probe") }, "Back to probe")));
  box.append(el("div", { class: "muted" }, `probed at ${JSON.stringify(P.token)} (position ${P.position}) · activation ${fmt(h.activation)} · ${pct(h.relative)} of max`));
  await loadFeatureDetail(box, h.layer, h.feature, seq, h.activation);
}
