// A JSON Schema check for the keywords the graph schema uses (type, required, properties, items, prefixItems,
// enum, minLength, minimum, minItems, maxItems; title, description and $schema are notes). Written for the page:
// it stops at the first problem and says where, e.g. `nodes[12].ctx_idx: should be at least 0`. A schema with a
// keyword it does not know is refused outright (`unknownKeywords`), so a richer schema is never half-checked.

const KEYWORDS = new Set(["type", "required", "properties", "items", "prefixItems", "enum", "minLength", "minimum", "minItems", "maxItems"]);
const NOTES = new Set(["$schema", "title", "description"]);

// keywords of `schema` (at any depth) this checker does not implement
export function unknownKeywords(schema) {
  const out = new Set(), todo = [schema];
  while (todo.length) {
    const s = todo.pop();
    if (!s || typeof s !== "object") continue;
    for (const [k, v] of Object.entries(s)) {
      if (!KEYWORDS.has(k) && !NOTES.has(k)) out.add(k);
      if (k === "properties") for (const x of Object.values(v)) todo.push(x);
      else if (k === "items") todo.push(v);
      else if (k === "prefixItems") for (const x of v) todo.push(x);
    }
  }
  return [...out];
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

function hasType(v, t) {
  if (t === "integer") return Number.isInteger(v);
  if (t === "number") return typeof v === "number";
  if (t === "array") return Array.isArray(v);
  if (t === "object") return isObject(v);
  if (t === "null") return v === null;
  return typeof v === t;   // string, boolean
}

const kindOf = (v) => (v === null ? "null" : Array.isArray(v) ? "an array" : typeof v);

// Each schema is compiled once into a function (v) → null, or [where, what] for its first problem, `where` relative
// to v; a path is built only on the way back from a problem, so a million valid links cost no strings.
const COMPILED = new WeakMap();
function compile(s) {
  if (COMPILED.has(s)) return COMPILED.get(s);
  const checks = [];
  if (s.type !== undefined) {
    const types = Array.isArray(s.type) ? s.type : [s.type];
    checks.push((v) => (types.some((t) => hasType(v, t)) ? null : ["", `should be ${types.join(" or ")}, not ${kindOf(v)}`]));
  }
  if (s.enum !== undefined) checks.push((v) => (s.enum.some((e) => e === v) ? null : ["", `should be one of ${s.enum.map((e) => JSON.stringify(e)).join(", ")}`]));
  if (s.minLength !== undefined) checks.push((v) => (typeof v === "string" && v.length < s.minLength ? ["", `should have at least ${s.minLength} characters`] : null));
  if (s.minimum !== undefined) checks.push((v) => (typeof v === "number" && v < s.minimum ? ["", `should be at least ${s.minimum}`] : null));
  if (s.minItems !== undefined) checks.push((v) => (Array.isArray(v) && v.length < s.minItems ? ["", `should have at least ${s.minItems} items`] : null));
  if (s.maxItems !== undefined) checks.push((v) => (Array.isArray(v) && v.length > s.maxItems ? ["", `should have at most ${s.maxItems} items`] : null));
  const pre = (s.prefixItems || []).map(compile), items = s.items !== undefined ? compile(s.items) : null;
  if (pre.length || items) {
    checks.push((v) => {
      if (!Array.isArray(v)) return null;
      for (let i = 0; i < v.length; i++) {
        const f = i < pre.length ? pre[i] : items;
        if (!f) break;
        const p = f(v[i]);
        if (p) return [`[${i}]${p[0]}`, p[1]];
      }
      return null;
    });
  }
  const req = s.required || [], props = Object.entries(s.properties || {}).map(([k, sub]) => [k, compile(sub)]);
  if (req.length || props.length) {
    checks.push((v) => {
      if (!isObject(v)) return null;
      for (const k of req) if (!(k in v)) return ["", `lacks "${k}"`];
      for (const [k, f] of props) {
        if (!(k in v)) continue;
        const p = f(v[k]);
        if (p) return [`.${k}${p[0]}`, p[1]];
      }
      return null;
    });
  }
  const fn = (v) => {
    for (const c of checks) { const p = c(v); if (p) return p; }
    return null;
  };
  COMPILED.set(s, fn);
  return fn;
}

// The first way `v` breaks `schema`, as one line (`nodes[12].ctx_idx: should be at least 0`), or "" when it follows it.
export function firstProblem(v, schema) {
  const p = compile(schema)(v);
  if (!p) return "";
  const at = p[0].replace(/^\./, "");
  return `${at || "the file"}: ${p[1]}`;
}
