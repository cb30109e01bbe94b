// Opening a graph file from this computer (the "Open file…" picker, or a file dropped on the page). The file is read
// and checked here, against what /api/graph-format serves: the graph schema (schema.js), the schema version this
// page reads and the largest graph it holds. A refusal is one line in the status bar and the open graph stays as
// it was: nothing is drawn until every check has passed. Graphs from the server's store get the version and size
// checks too.
import { isError, isFeature } from "./graph.js";
import { firstProblem, unknownKeywords } from "./schema.js";
import { $, H, api, embedded, setStatus } from "./util.js";

let FORMAT = null;
export function graphFormat() {
  if (!FORMAT) FORMAT = api("/api/graph-format").catch((e) => { FORMAT = null; throw e; });
  return FORMAT;
}

const count = (n) => n.toLocaleString("en");

// version and size: cheap, for every graph the page opens
export function shapeProblem(g, fmt) {
  if (!g || typeof g !== "object" || Array.isArray(g) || !Array.isArray(g.nodes) || !Array.isArray(g.links)) return "not a graph (no \"nodes\" and \"links\" lists)";
  const v = g.metadata && typeof g.metadata === "object" ? g.metadata.schema_version : undefined;
  // graphs written by circuit-tracer or Neuronpedia carry no version: their format is version 1's
  if (v !== undefined && v !== fmt.schema_version) return `a graph of schema version ${JSON.stringify(v)}; this page reads version ${fmt.schema_version}`;
  const L = fmt.limits;
  if (g.nodes.length > L.nodes || g.links.length > L.links) {
    return `${count(g.nodes.length)} nodes and ${count(g.links.length)} links: larger than the page holds (${count(L.nodes)} nodes, ${count(L.links)} links)`;
  }
  return "";
}

// what the schema cannot say but drawing needs: one node per id, numeric layers, positions inside the prompt
function drawProblem(g) {
  const seen = new Set(), nTok = g.metadata.prompt_tokens.length;
  if (!g.nodes.length) return "the graph has no nodes";
  for (let i = 0; i < g.nodes.length; i++) {
    const n = g.nodes[i];
    if (seen.has(n.node_id)) return `nodes[${i}].node_id: ${JSON.stringify(n.node_id)} appears twice`;
    seen.add(n.node_id);
    if ((isFeature(n) || isError(n)) && !/^\d{1,4}$/.test(n.layer)) return `nodes[${i}].layer: ${JSON.stringify(n.layer)} is not a layer number`;
    if (n.ctx_idx >= nTok) return `nodes[${i}].ctx_idx: position ${n.ctx_idx} is past the prompt's ${nTok} tokens`;
  }
  return "";
}

// every check, in the order that explains best: not JSON, not a graph, another version, too large, not the schema
export function graphFileProblem(text, fmt) {
  let g;
  try { g = JSON.parse(text); } catch (e) { return [null, `not JSON (${String(e.message).split("\n")[0]})`]; }
  const shape = shapeProblem(g, fmt);
  if (shape) return [null, shape];
  const unknown = unknownKeywords(fmt.schema);
  if (unknown.length) return [null, `the graph schema uses ${unknown.join(", ")}, which this page cannot check`];
  const bad = firstProblem(g, fmt.schema);
  if (bad) return [null, `not a graph of this schema: ${bad}`];
  const draw = drawProblem(g);
  return draw ? [null, `not a graph the page can draw: ${draw}`] : [g, ""];
}

export async function openFile(file) {
  const MB = (b) => (b / 2 ** 20).toFixed(b < 2 ** 20 ? 2 : 0);
  try {
    const fmt = await graphFormat();
    if (file.size > fmt.limits.bytes) throw new Error(`${file.name} is ${MB(file.size)} MB: larger than the page holds (${MB(fmt.limits.bytes)} MB)`);
    setStatus(`reading ${file.name}…`);
    const [g, why] = graphFileProblem(await file.text(), fmt);
    if (why) throw new Error(`${file.name}: ${why}`);
    H.showFile(g, file.name);
  } catch (e) { setStatus(String(e.message).replace(/\s*\n\s*/g, " "), true); }
}

// the picker button and dropping a file anywhere on the page
export function bindOpenFile() {
  if (embedded()) { $("open-file-btn").hidden = true; return; }   // a notebook view has no server to ask
  const input = $("open-file");
  $("open-file-btn").addEventListener("click", () => input.click());
  input.addEventListener("change", () => { if (input.files[0]) openFile(input.files[0]); input.value = ""; });
  const hasFile = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  window.addEventListener("dragover", (e) => { if (!hasFile(e)) return; e.preventDefault(); document.body.classList.add("dropping"); });
  window.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dropping"); });
  window.addEventListener("drop", (e) => {
    document.body.classList.remove("dropping");
    if (!hasFile(e)) return;
    e.preventDefault();
    const files = e.dataTransfer.files;
    if (files.length !== 1) { setStatus(`drop one graph file at a time (${files.length} dropped)`, true); return; }
    openFile(files[0]);
  });
}
