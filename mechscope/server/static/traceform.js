// The trace form: its fields' defaults, ranges and help come from the server (/api/trace/options, built from the
// library's AttributionConfig: the CLI's defaults), never from this file. A value outside its range is refused
// here with one line, before anything is sent; the server refuses it again (400, one line) for any other client.
import { parseWatch } from "./intervene.js";
import { $, api, setStatus, waitJob } from "./util.js";

// the form's input for each numeric field of the options
const NUMBER_INPUTS = { max_feature_nodes: "max-nodes", node_threshold: "tr-node-thr", edge_threshold: "tr-edge-thr" };
let FIELDS = null;

const range = (f) => `${f.min_open ? "(" : "["}${f.min}, ${f.max === null ? "∞)" : f.max + "]"}`;

export async function loadTraceOptions() {
  const opts = await api("/api/trace/options");
  FIELDS = new Map(opts.fields.map((f) => [f.name, f]));
  for (const [name, id] of Object.entries(NUMBER_INPUTS)) {
    const f = FIELDS.get(name), inp = $(id);
    if (!f) continue;
    inp.value = String(f.default);
    inp.step = f.type === "int" ? "1" : "any";
    if (!f.min_open) inp.min = String(f.min);    // an open bound is checked below: the browser knows only closed ones
    if (f.max !== null) inp.max = String(f.max);
    inp.title = `${f.help}; ${range(f)}, default ${f.default}`;
  }
  const t = FIELDS.get("targets"), d = FIELDS.get("logit_diff");
  if (t) $("tr-targets").title = `${t.help}; at most ${t.max_items}, comma-separated ("Austin, Dallas"; quote for exact: "\\n")`;
  if (d) { $("tr-diff-a").title = `${d.help}: token A`; $("tr-diff-b").title = `${d.help}: token B`; }
  $("trace-form").dataset.ready = "1";
}

// "" when the input's value lies in the field's range, else why not
function numberProblem(f, raw) {
  const v = Number(raw);
  if (raw.trim() === "" || !Number.isFinite(v)) return "enter a number";
  if (f.type === "int" && !Number.isInteger(v)) return `must be a whole number (got ${raw})`;
  const low = f.min_open ? v <= f.min : v < f.min, high = f.max !== null && v > f.max;
  return low || high ? `must lie in ${range(f)} (got ${raw})` : "";
}

const labelOf = (inp) => { const lab = inp.closest("label"); return lab ? lab.textContent.trim() : inp.getAttribute("aria-label"); };

// the request body, or [null, input, message] for the first field the form refuses
function readForm() {
  const body = { prompt: $("prompt").value, chat: $("chat").checked };
  for (const [name, id] of Object.entries(NUMBER_INPUTS)) {
    const f = FIELDS.get(name), inp = $(id), why = numberProblem(f, inp.value);
    inp.setAttribute("aria-invalid", String(!!why));
    if (why) return [null, inp, `${labelOf(inp)}: ${why}`];
    body[name] = Number(inp.value);
  }
  const targets = parseWatch($("tr-targets").value), t = FIELDS.get("targets");
  if (targets.length > t.max_items) return [null, $("tr-targets"), `targets: at most ${t.max_items} (got ${targets.length})`];
  const a = parseWatch($("tr-diff-a").value)[0], b = parseWatch($("tr-diff-b").value)[0];
  if (!!a !== !!b) return [null, $(a ? "tr-diff-b" : "tr-diff-a"), "logit difference: give both tokens, A and B"];
  if (a && a === b) return [null, $("tr-diff-b"), `logit difference: A and B are the same token (${JSON.stringify(a)})`];
  if (a && targets.length) return [null, $("tr-targets"), "give targets or a logit difference, not both"];
  if (targets.length) body.targets = targets;
  if (a) body.logit_diff = [a, b];
  if ($("heads").checked) body.heads = true;
  return [body];
}

export function bindTraceForm(openGraph) {
  // the options drop over the page: a click anywhere else folds them away (a refusal below opens them again)
  document.addEventListener("click", (e) => { if (!$("trace-opts").contains(e.target)) $("trace-opts").open = false; });
  $("trace-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!FIELDS) { setStatus("the trace options have not arrived from the server yet", true); return; }
    const [body, inp, why] = readForm();
    if (!body) {
      const box = inp.closest("details");
      if (box) box.open = true;
      inp.focus();
      setStatus(why, true);
      return;
    }
    $("trace-btn").disabled = true;
    try {
      const name = await waitJob(await api("/api/trace", body), "trace");
      await openGraph(name);
    } catch (e) { setStatus(e.message, true); }
    finally { $("trace-btn").disabled = false; }
  });
}
