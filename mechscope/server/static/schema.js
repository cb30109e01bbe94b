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

const where = (path) => path || "the file";

// The first way `v` breaks `schema`, as one line, or "" when it follows it. Arrays are walked with loops (graphs
// hold a million links); recursion only follows the schema's nesting, a few levels.
export function firstProblem(v, schema, path = "") {
  const s = schema;
  if (s.type !== undefined) {
    const types = Array.isArray(s.type) ? s.type : [s.type];
    if (!types.some((t) => hasType(v, t))) return `${where(path)}: should be ${types.join(" or ")}, not ${v === null ? "null" : Array.isArray(v) ? "an array" : typeof v}`;
  }
  if (s.enum !== undefined && !s.enum.some((e) => e === v)) return `${where(path)}: should be one of ${s.enum.map((e) => JSON.stringify(e)).join(", ")}`;
  if (typeof v === "string" && s.minLength !== undefined && v.length < s.minLength) return `${where(path)}: should have at least ${s.minLength} characters`;
  if (typeof v === "number" && s.minimum !== undefined && v < s.minimum) return `${where(path)}: should be at least ${s.minimum}`;
  if (Array.isArray(v)) {
    if (s.minItems !== undefined && v.length < s.minItems) return `${where(path)}: should have at least ${s.minItems} items`;
    if (s.maxItems !== undefined && v.length > s.maxItems) return `${where(path)}: should have at most ${s.maxItems} items`;
    const pre = s.prefixItems || [];
    for (let i = 0; i < Math.min(pre.length, v.length); i++) {
      const p = firstProblem(v[i], pre[i], `${path}[${i}]`);
      if (p) return p;
    }
    if (s.items !== undefined) {
      for (let i = pre.length; i < v.length; i++) {
        const p = firstProblem(v[i], s.items, `${path}[${i}]`);
        if (p) return p;
      }
    }
  }
  if (isObject(v)) {
    for (const k of s.required || []) if (!(k in v)) return `${where(path)}: lacks "${k}"`;
    for (const [k, sub] of Object.entries(s.properties || {})) {
      if (!(k in v)) continue;
      const p = firstProblem(v[k], sub, path ? `${path}.${k}` : k);
      if (p) return p;
    }
  }
  return "";
}
