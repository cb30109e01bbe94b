// Small helpers shared by every module of the page: DOM building, number formatting, the API and model jobs.

export const $ = (id) => document.getElementById(id);

// hooks the app fills in (select a node or an edge, pin, show a tab, open a graph, explain a head) so the panels
// need not import the app
export const H = { select: () => {}, togglePin: () => {}, redraw: () => {}, changed: () => {} };

// el("button", {class: "x", onclick: f, "aria-label": "..."}, child, "text"): event handlers are bound with
// addEventListener, never written as attributes, so the page runs under `script-src 'self'`.
export function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of kids) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

export const SVGNS = "http://www.w3.org/2000/svg";
export function svgEl(tag, attrs = {}, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of kids) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

export const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
export const pct = (r) => (r === null || r === undefined ? "–" : `${(100 * r).toFixed(r < 0.1 ? 1 : 0)}%`);

// A notebook view embeds its data in the page (no server): the API answers from it.
let EMBED;
export function embedded() {
  if (EMBED === undefined) {
    const tag = document.getElementById("mechscope-embed");
    EMBED = tag ? JSON.parse(tag.textContent) : null;
  }
  return EMBED;
}

function embedAnswer(path) {
  const E = embedded();
  if (path === "/api/info") return E.info;
  if (path === "/api/graphs") return E.graph ? [{ name: E.name, prompt: E.graph.metadata.prompt }] : [];
  if (path.startsWith("/api/graphs/")) return E.graph;
  const m = /^\/api\/features\/(\d+)\/(\d+)$/.exec(path);
  if (m && E.features && E.features[`${m[1]}/${m[2]}`]) return E.features[`${m[1]}/${m[2]}`];
  if (m) return { id: `${m[1]}/${m[2]}`, missing_index: true, examples: [], top_logits: [], bottom_logits: [], hist: { edges: [], counts: [] } };
  throw new Error("this view is static: run `python -m mechscope serve` for model computations");
}

export async function api(path, body, method) {
  if (embedded()) return embedAnswer(path);
  const opt = body === undefined ? { method: method || "GET" } : { method: method || "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opt);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || data.detail || `HTTP ${r.status}`);
  return data;
}

// The status line is a polite live region: it changes only when something happens (a job is queued, starts, ends),
// so a screen reader is not read a ticking timer; the seconds count in #status-timer, which is hidden from it.
export function setStatus(text, error = false) {
  const s = $("status");
  if (s.textContent !== text) s.textContent = text;
  s.className = error ? "error" : "";
  setTimer("");
}

function setTimer(text) { const t = $("status-timer"); if (t && t.textContent !== text) t.textContent = text; }

// the model job being waited for (one at a time is shown); the header's Cancel button deletes it
export const JOBS = { current: null, cancelled: null };

export async function waitJob(job, label) {
  const t0 = Date.now(), cancel = $("cancel-btn");
  JOBS.current = job;
  cancel.hidden = false;
  try {
    for (;;) {
      if (job.status === "done") { setStatus(`${label} done in ${((Date.now() - t0) / 1000).toFixed(1)} s`); return job.result; }
      if (job.status === "error") throw new Error(job.error);
      // a running job stops at the server's next checkpoint and its result is dropped: the page stops waiting at once
      if (job.status === "cancelled" || JOBS.cancelled === job.id) throw new Error(`${label} cancelled`);
      setStatus(job.status === "queued" ? `${label}: queued (position ${job.position})` : `${label}: running…`);
      setTimer(` ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      await new Promise((r) => setTimeout(r, 300));
      job = await api(`/api/jobs/${job.id}`);
      JOBS.current = job;
    }
  } finally {
    if (JOBS.current && JOBS.current.id === job.id) { JOBS.current = null; cancel.hidden = true; }
  }
}

export async function cancelJob() {
  const job = JOBS.current;
  if (!job) return;
  await api(`/api/jobs/${job.id}`, undefined, "DELETE");
  JOBS.cancelled = job.id;
  setStatus(`cancelling ${job.kind}…`);
}

export function download(name, blob) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
}
