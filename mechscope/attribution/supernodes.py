"""Supernodes from a graph JSON: grouping suggestions and automatic flowcharts of labelled supernodes.

A *flowchart* is the "subgraph with labelled supernodes" of Anthropic's case studies, built without a
human: the most influential features are clustered (similar labels, same position, nearby layers, shared
neighbours), the strongest clusters become boxes, the prompt tokens that feed them become input boxes and
the top two logits output boxes; arrows carry the summed direct effects between boxes.

Both functions read only the graph JSON (circuit-tracer / Neuronpedia format), so they work on files made
elsewhere too. Its node `influence` is the *cumulative* influence of the pruner (smaller = more important);
a node's own share is recovered as the step from the previous node in that order.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from mechscope.errors import MechscopeError

NON_FEATURE = ("mlp reconstruction error", "embedding", "logit")
# words that say nothing about a feature's concept in our heuristic labels
_STOPWORDS = frozenset({"say", "text", "mixed", "unclear"})
# a special token at position 0 (<bos>, <s>, <|begin_of_text|>, <|im_start|>) carries no prompt content
_SPECIAL = re.compile(r"^<\|?[A-Za-z_][A-Za-z0-9_]*\|?>$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

__all__ = ["Arrow", "Box", "Flowchart", "flowchart", "suggest_groups"]


# ---------------------------------------------------------------------------------------- helpers
def is_feature(node: dict) -> bool:
    """Feature nodes of any transcoder kind ("cross layer transcoder", Neuronpedia's other names)."""
    return node.get("feature_type") not in NON_FEATURE


def _layer(node: dict) -> int:
    try:
        return int(node["layer"])
    except (KeyError, TypeError, ValueError):
        return 0


def _label(node: dict, labels: dict[str, str] | None) -> str:
    # the clerp holds labels edited in the page, so it wins over the index's
    return node.get("clerp") or (labels or {}).get(f"{node.get('layer')}/{node.get('feature')}", "")


def _words(text: str) -> list[str]:
    """Concept words of a label, in order, without duplicates."""
    out: list[str] = []
    for w in re.findall(r"\w+", text.lower()):
        if w not in _STOPWORDS and w not in out:
            out.append(w)
    return out


def _informative(label: str) -> bool:
    s = label.strip()
    return bool(s) and not s.lower().startswith(("mixed", "unclear"))


def _concept_words(label: str) -> list[str]:
    # a "mixed: …" label lists unrelated tokens; sharing one of them is not evidence of a shared concept
    return _words(label) if _informative(label) else []


def _show_token(tok: str) -> str:
    return tok.strip() or repr(tok)


def has_bos(graph: dict) -> bool:
    """True when position 0 is a special start token (Gemma's <bos>), which the flowchart leaves out."""
    toks = graph.get("metadata", {}).get("prompt_tokens") or []
    return bool(toks) and bool(_SPECIAL.match(str(toks[0]).strip()))


def influence_shares(nodes: list[dict]) -> dict[str, float]:
    """Each ranked node's own influence share, from the cumulative `influence` field of the graph JSON.

    Nodes without an influence value get 0. Nodes dropped by pruning leave their share to the next kept one.
    """
    # token and logit nodes are not ranked by the pruner (circuit-tracer writes them a placeholder)
    ranked = sorted((n for n in nodes if isinstance(n.get("influence"), (int, float))
                     and n.get("feature_type") not in ("logit", "embedding")),
                    key=lambda n: (float(n["influence"]), n["node_id"]))
    out, prev = {}, 0.0
    for n in ranked:
        cum = float(n["influence"])
        out[n["node_id"]] = max(0.0, cum - prev)
        prev = max(prev, cum)
    return out


def _rank_key(n: dict) -> tuple:
    inf = n.get("influence")
    has = isinstance(inf, (int, float)) and math.isfinite(inf)
    return (float(inf) if has else math.inf, -abs(float(n.get("activation") or 0.0)), n["node_id"])


def _similarity(feats: list[dict], links: list[dict], labels: dict[str, str] | None) -> np.ndarray:
    """0.4·label-word Jaccard + 0.3·shared-neighbour Jaccard + 0.2·same position + 0.1·layer proximity."""
    n = len(feats)
    idx = {f["node_id"]: i for i, f in enumerate(feats)}
    vocab: dict[str, int] = {}
    word_ix = [[vocab.setdefault(w, len(vocab)) for w in _concept_words(_label(f, labels))] for f in feats]
    Wm = np.zeros((n, max(1, len(vocab))), dtype=np.float32)
    for i, ws in enumerate(word_ix):
        Wm[i, ws] = 1.0
    cols: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for link in links:
        s, t = link["source"], link["target"]
        if s in idx:
            pairs.append((idx[s], cols.setdefault(t, len(cols))))
        if t in idx:
            pairs.append((idx[t], cols.setdefault(s, len(cols))))
    Nm = np.zeros((n, max(1, len(cols))), dtype=np.float32)
    if pairs:
        r, c = np.array(pairs).T
        Nm[r, c] = 1.0

    def jaccard(M: np.ndarray) -> np.ndarray:
        inter = M @ M.T
        size = M.sum(1)
        union = size[:, None] + size[None, :] - inter
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

    pos = np.array([int(f.get("ctx_idx", 0)) for f in feats])
    lay = np.array([_layer(f) for f in feats])
    prox = np.maximum(0.0, 1.0 - np.abs(lay[:, None] - lay[None, :]) / 4.0)
    return (0.4 * jaccard(Wm) + 0.3 * jaccard(Nm) + 0.2 * (pos[:, None] == pos[None, :]) + 0.1 * prox).astype(np.float64)


def complete_linkage(S: np.ndarray, threshold: float) -> list[list[int]]:
    """Agglomerative clusters whose *every* pair has similarity ≥ `threshold` (clusters of row indices).

    Single linkage chains unrelated items through intermediates; complete linkage does not. The cluster
    similarity matrix is updated in place (a merged cluster's row is the element-wise minimum), and each row
    keeps its best partner so a merge only rescans the rows that pointed at the merged pair. Ties go to the
    lowest indices, so the result depends only on the input order.

    Example:
        >>> S = np.array([[1, .9, .1], [.9, 1, .8], [.1, .8, 1]])
        >>> complete_linkage(S, 0.5)
        [[0, 1], [2]]
    """
    n = S.shape[0]
    if n == 0:
        return []
    C = np.array(S, dtype=np.float64, copy=True)
    np.fill_diagonal(C, -np.inf)
    members: list[list[int]] = [[i] for i in range(n)]
    best = C.max(1)
    arg = C.argmax(1)
    while True:
        i = int(np.argmax(best))
        if not best[i] >= threshold:
            break
        j = int(arg[i])
        a, b = min(i, j), max(i, j)
        members[a] += members[b]
        members[b] = []
        row = np.minimum(C[a], C[b])
        C[a], C[:, a] = row, row
        C[a, a] = -np.inf
        C[b], C[:, b] = -np.inf, -np.inf
        best[b] = -np.inf
        # other rows only lost values, so their best partner stays valid unless it was a or b
        stale = np.flatnonzero(((arg == a) | (arg == b)) & np.isfinite(best))
        stale = np.union1d(stale, [a])
        best[stale] = C[stale].max(1)
        arg[stale] = C[stale].argmax(1)
    return [sorted(m) for m in members if m]


# ---------------------------------------------------------------------------------------- suggestions
def suggest_groups(graph: dict, labels: dict[str, str] | None = None, threshold: float = 0.4,
                   max_features: int = 1000) -> list[list[str]]:
    """Group feature nodes that look like one concept: similar labels, nearby layers, same position, shared edges.

    Similarity = 0.4·label-word Jaccard + 0.3·shared-neighbour Jaccard + 0.2·same position + 0.1·layer
    proximity; complete-linkage clusters (every pair ≥ `threshold`) of at least two features, among the
    `max_features` most influential ones. Returns [name, node_id, node_id, ...] lists (supernode format),
    biggest first.

    Example:
        >>> suggest_groups(json.load(open("graph.json")))[:1]      # doctest: +SKIP
        [['texas', '1_1_3', '2_5_3']]
    """
    feats = [n for n in graph.get("nodes", []) if is_feature(n)]
    if len(feats) > max_features:
        keep = {n["node_id"] for n in sorted(feats, key=_rank_key)[:max_features]}
        feats = [n for n in feats if n["node_id"] in keep]
    clusters = complete_linkage(_similarity(feats, graph.get("links", []), labels), threshold)
    out = []
    for c in clusters:
        if len(c) < 2:
            continue
        members = [feats[i] for i in c]
        common = set.intersection(*(set(_concept_words(_label(m, labels))) for m in members))
        lays = [_layer(m) for m in members]
        name = " ".join(sorted(common)[:3]) or f"L{min(lays)}-{max(lays)}@{members[0]['ctx_idx']}"
        out.append([name] + [m["node_id"] for m in members])
    return sorted(out, key=lambda g: -len(g))   # stable: equal sizes keep the graph's node order


# ---------------------------------------------------------------------------------------- flowchart
@dataclass
class Box:
    """One flowchart box: a group of features, one prompt token, or one output logit."""
    id: str                     # "in{pos}", "f{rank}", "out{rank}"
    name: str
    kind: str                   # input | features | output
    members: list[str]          # node ids of the graph JSON
    layers: list[int] = field(default_factory=list)      # sorted distinct layers (features only)
    positions: list[int] = field(default_factory=list)   # sorted distinct token positions
    influence: float = 0.0      # features: summed influence share; output: token probability; input: 0


@dataclass
class Arrow:
    """Summed direct-effect weight of the graph's links from `src` box to `dst` box (box ids)."""
    src: str
    dst: str
    weight: float


@dataclass
class Flowchart:
    """Boxes (inputs, feature groups, outputs) and the arrows kept between them."""
    prompt: str
    boxes: list[Box]
    arrows: list[Arrow]

    def box(self, box_id: str) -> Box:
        for b in self.boxes:
            if b.id == box_id:
                return b
        raise KeyError(box_id)

    def qparams(self) -> dict:
        """The flowchart as subgraph state: every member pinned, each feature box a supernode."""
        pinned = [m for b in self.boxes for m in b.members]
        return {"pinnedIds": pinned, "supernodes": [[b.name, *b.members] for b in self.boxes if b.kind == "features"]}

    def to_json(self) -> dict:
        """A plain dict: {"prompt", "boxes": [Box fields], "arrows": [{src, dst, weight}], "qParams"}."""
        return {"prompt": self.prompt, "boxes": [asdict(b) for b in self.boxes],
                "arrows": [asdict(a) for a in self.arrows], "qParams": self.qparams()}

    def to_text(self) -> str:
        """A readable summary: boxes from outputs down to inputs, each with its incoming arrows."""
        names = {b.id: b.name for b in self.boxes}
        n_feat = sum(b.kind == "features" for b in self.boxes)
        lines = [f"flowchart: {n_feat} feature boxes, {len(self.boxes) - n_feat} token boxes, {len(self.arrows)} arrows "
                 "(summed direct effects)"]
        for b in _display_order(self.boxes):
            if b.kind == "output":
                lines.append(f"  {b.id:<5} output    {b.name}  p={b.influence:.3f}")
            elif b.kind == "input":
                lines.append(f"  {b.id:<5} input     {b.name}  @{b.positions[0]}")
            else:
                pos = ",".join(str(p) for p in b.positions)
                lines.append(f"  {b.id:<5} features  {b.name}  ({_plural(len(b.members), 'feature')}, "
                             f"{_layer_range(b.layers)} @{pos}; influence {b.influence:.3f})")
            for a in self.arrows:
                if a.dst == b.id:
                    lines.append(f"          ← {a.weight:+.3g} from {a.src} {names[a.src]}")
        return "\n".join(lines)

    def to_svg(self) -> str:
        """A self-contained SVG: inputs at the bottom, feature rows by layer, outputs on top; arrow width ∝ weight
        (relative to the strongest arrow into the same box), blue = excitatory, red = inhibitory."""
        return _svg(self)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _layer_range(layers: list[int]) -> str:
    if not layers:
        return ""
    lo, hi = min(layers), max(layers)
    return f"L{lo}" if lo == hi else f"L{lo}–{hi}"


def _row(b: Box) -> tuple[int, int]:
    """(kind rank, layer) of a box's row: inputs lowest, outputs highest."""
    if b.kind == "input":
        return (0, 0)
    if b.kind == "output":
        return (2, 0)
    lays = sorted(b.layers) or [0]
    return (1, lays[(len(lays) - 1) // 2])   # lower median: a wide box sits where most of it is


def _display_order(boxes: list[Box]) -> list[Box]:
    return sorted(boxes, key=lambda b: (-_row(b)[0], -_row(b)[1], min(b.positions or [0]), b.id))


def flowchart(graph: dict, labels: dict[str, str] | None = None, n_features: int = 40, max_boxes: int = 10,
              *, threshold: float = 0.35, max_span: int | None = None, min_arrow: float = 0.1,
              max_in: int = 3) -> Flowchart:
    """An automatic flowchart of labelled supernodes from a graph JSON.

    The `n_features` most influential feature nodes (not at a <bos> position) are clustered by complete
    linkage (similarity as in `suggest_groups`, every pair ≥ `threshold`, no box spanning more than `max_span`
    layers: default a quarter of the model's depth, at least 2); the `max_boxes` clusters with the
    largest summed influence become boxes, joined by the prompt-token boxes that feed them and the top-2
    logits. An arrow's weight is the sum of the direct-effect links between two boxes; an arrow stays when
    |weight| ≥ `min_arrow` × the strongest arrow into its target, at most `max_in` per target. Token boxes
    left without an arrow are dropped. Box names: the label most members share, else the label words most
    share, else (labels mostly missing or "mixed: …") where the box sits, e.g. "Dallas features L0–2".

    Example:
        >>> fc = flowchart(json.load(open("graph.json")), max_boxes=6)   # doctest: +SKIP
        >>> print(fc.to_text())                                          # doctest: +SKIP
        flowchart: 6 feature boxes, 5 token boxes, 16 arrows (summed direct effects)
          out1  output    say "Austin"  p=0.412
                  ← +2.18 from f1 Texas
                  ← -1.1 from f2 is features L15–17
        ...
    """
    if n_features < 1 or max_boxes < 1:
        raise MechscopeError(f"n_features and max_boxes must be ≥ 1 (got {n_features}, {max_boxes})")
    if not 0 <= min_arrow <= 1 or max_in < 1:
        raise MechscopeError(f"min_arrow must lie in [0, 1] and max_in be ≥ 1 (got {min_arrow}, {max_in})")
    nodes: list[dict] = graph.get("nodes", [])
    links: list[dict] = graph.get("links", [])
    tokens: list[str] = [str(t) for t in graph.get("metadata", {}).get("prompt_tokens") or []]
    skip_pos = 0 if has_bos(graph) else None
    share = influence_shares(nodes)

    feats = sorted((n for n in nodes if is_feature(n) and n.get("ctx_idx") != skip_pos), key=_rank_key)[:n_features]
    S = _similarity(feats, links, labels)
    lay = np.array([_layer(f) for f in feats])
    if max_span is None:
        # the logit nodes sit at layer n_layers + 1
        depth = max([_layer(n) - 1 for n in nodes if n.get("feature_type") == "logit"] + [int(lay.max(initial=0)) + 1])
        max_span = max(2, depth // 4)
    # a box is one step of the computation: early token features and late output features stay apart
    S[np.abs(lay[:, None] - lay[None, :]) > max_span] = -np.inf
    clusters = complete_linkage(S, threshold)
    # clusters list members in rank order; strongest clusters first, the best member's rank breaking ties
    clusters.sort(key=lambda c: (-sum(share.get(feats[i]["node_id"], 0.0) for i in c), c[0]))
    boxes: list[Box] = []
    for k, c in enumerate(clusters[:max_boxes]):
        g = [feats[i] for i in c]
        boxes.append(Box(id=f"f{k + 1}", name=_box_name(g, labels, tokens), kind="features",
                         members=[m["node_id"] for m in g], layers=sorted({_layer(m) for m in g}),
                         positions=sorted({int(m["ctx_idx"]) for m in g}),
                         influence=round(sum(share.get(m["node_id"], 0.0) for m in g), 6)))

    logits = sorted((n for n in nodes if n.get("feature_type") == "logit"),
                    key=lambda n: (-float(n.get("token_prob") or 0.0), n["node_id"]))[:2]
    for k, n in enumerate(logits):
        boxes.append(Box(id=f"out{k + 1}", name=f'say "{_logit_token(n)}"', kind="output", members=[n["node_id"]],
                         positions=[int(n["ctx_idx"])], influence=float(n.get("token_prob") or 0.0)))
    emb: dict[int, list[str]] = {}
    for n in nodes:
        if n.get("feature_type") == "embedding" and n.get("ctx_idx") != skip_pos:
            emb.setdefault(int(n["ctx_idx"]), []).append(n["node_id"])
    for p in sorted(emb):
        tok = tokens[p] if p < len(tokens) else next((n.get("clerp", "") for n in nodes if n["node_id"] == emb[p][0]), "")
        boxes.append(Box(id=f"in{p}", name=f'"{_show_token(tok)}"', kind="input", members=emb[p], positions=[p]))

    arrows = _arrows(boxes, links, min_arrow, max_in)
    used = {a.src for a in arrows} | {a.dst for a in arrows}
    boxes = [b for b in boxes if b.kind != "input" or b.id in used]
    _dedupe_names(boxes, tokens)
    return Flowchart(prompt=str(graph.get("metadata", {}).get("prompt", "")), boxes=boxes, arrows=arrows)


def _logit_token(n: dict) -> str:
    m = re.match(r'^Output "(.*)" \(p=', n.get("clerp", ""), re.S)
    tok = m.group(1) if m else (n.get("clerp") or f"#{n.get('feature')}")
    return _show_token(tok)


def _arrows(boxes: list[Box], links: list[dict], min_arrow: float, max_in: int) -> list[Arrow]:
    owner = {m: b.id for b in boxes for m in b.members}
    order = {b.id: i for i, b in enumerate(boxes)}
    total: dict[tuple[str, str], float] = {}
    for link in links:   # the file's link order fixes the summation order, so sums are reproducible
        a, b = owner.get(link["source"]), owner.get(link["target"])
        if a is not None and b is not None and a != b:
            total[(a, b)] = total.get((a, b), 0.0) + float(link["weight"])
    into: dict[str, list[tuple[str, float]]] = {}
    for (a, b), w in sorted(total.items(), key=lambda kv: (order[kv[0][1]], order[kv[0][0]])):
        into.setdefault(b, []).append((a, w))
    out: list[Arrow] = []
    for b in sorted(into, key=order.__getitem__):
        cands = sorted(into[b], key=lambda aw: (-abs(aw[1]), order[aw[0]]))
        top = abs(cands[0][1])
        if top == 0:
            continue
        out += [Arrow(a, b, w) for a, w in cands[:max_in] if abs(w) >= min_arrow * top]
    return out


def _box_name(members: list[dict], labels: dict[str, str] | None, tokens: list[str]) -> str:
    """Shared label, else shared label words, else token position + layer range ("Dallas features L0–2")."""
    labs = [_label(m, labels).strip() for m in members]
    pos = Counter(int(m["ctx_idx"]) for m in members)
    where = sorted(pos, key=lambda p: (-pos[p], p))[:2]
    toks = "/".join(_show_token(tokens[p]) if p < len(tokens) else f"@{p}" for p in where)
    by_place = f"{toks}{'+' if len(pos) > 2 else ''} features {_layer_range([_layer(m) for m in members])}"
    name = _name_from_labels(labs)
    # a label that only repeats the token the box sits on ("is" at " is") says less than its layers do
    if name and name.strip('"').strip().lower() != toks.lower():
        return name
    return by_place


def _name_from_labels(labs: list[str]) -> str:
    n = len(labs)
    if 2 * sum(_informative(x) for x in labs) > n:
        counts = Counter(x for x in labs if _informative(x))
        lab, c = max(counts.items(), key=lambda kv: (kv[1], -labs.index(kv[0])))
        if 2 * c > n:
            return lab
        wcount = Counter(w for x in labs if _informative(x) for w in _words(x))
        # words in the order (and spelling) the strongest members' labels use them
        spelled: dict[str, str] = {}
        for x in labs:
            if _informative(x):
                for w in re.findall(r"\w+", x):
                    spelled.setdefault(w.lower(), w)
        shared = [spelled.get(w, w) for w in wcount if 2 * wcount[w] > n][:3]
        if shared:
            return " ".join(shared)
    return ""


def _dedupe_names(boxes: list[Box], tokens: list[str]) -> None:
    # supernode names identify groups in the page (interventions pick them by name), so they must be unique;
    # a repeated name gets where its box sits ("Texas @Dallas L3")
    seen: Counter = Counter()
    for b in boxes:
        if b.kind != "features":
            continue
        seen[b.name] += 1
        if seen[b.name] > 1:
            p = _main_pos(b)
            where = f"@{_show_token(tokens[p]) if p < len(tokens) else p} {_layer_range(b.layers)}"
            name, k = (f"{b.name} {where}" if " features L" not in b.name else b.name), 1
            while name in seen:
                k += 1
                name = f"{b.name} ({k})"
            seen[name] += 1
            b.name = name


# ---------------------------------------------------------------------------------------- SVG
_BLUE, _RED = "#1a5fb4", "#c01c28"
_FILL = {"input": "#e3f2e1", "features": "#fff4d6", "output": "#fde3cf"}
_BOX_H, _ROW_H, _GAP, _MARGIN = 38, 78, 16, 14


def _clean(s: str) -> str:
    return _CONTROL.sub("", s)


def _svg(fc: Flowchart) -> str:
    # rows by kind/layer (outputs on top), columns by token position, so a token's boxes stack above it
    row_keys = sorted({_row(b) for b in fc.boxes}, reverse=True)
    row_of = {b.id: row_keys.index(_row(b)) for b in fc.boxes}
    col_keys = sorted({_main_pos(b) for b in fc.boxes})
    width_of = {b.id: _box_width(b) for b in fc.boxes}
    cells: dict[tuple[int, int], list[Box]] = {}
    for b in sorted(fc.boxes, key=lambda b: (min(b.positions or [0]), b.id)):
        cells.setdefault((row_of[b.id], _main_pos(b)), []).append(b)
    cell_w = {k: sum(width_of[b.id] for b in v) + _GAP * (len(v) - 1) for k, v in cells.items()}
    col_w = {c: max(w for (r, cc), w in cell_w.items() if cc == c) for c in col_keys}
    col_x, x = {}, float(_MARGIN)
    for c in col_keys:
        col_x[c] = x
        x += col_w[c] + _GAP
    W = max(360.0, x - _GAP + _MARGIN)
    H = 2 * _MARGIN + 18 + max(1, len(row_keys)) * _ROW_H
    geo: dict[str, tuple[float, float, float]] = {}           # id -> (x, y, w)
    for (r, c), bs in cells.items():
        x = col_x[c] + (col_w[c] - cell_w[(r, c)]) / 2
        y = _MARGIN + 18 + r * _ROW_H + (_ROW_H - _BOX_H) / 2
        for b in bs:
            geo[b.id] = (x, y, width_of[b.id])
            x += width_of[b.id] + _GAP
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="mechscope-flowchart" viewBox="0 0 {W:.0f} {H:.0f}" '
           f'width="{W:.0f}" height="{H:.0f}" font-family="system-ui, sans-serif">',
           f"<title>{escape(_clean('flowchart: ' + fc.prompt))}</title>",
           '<defs>'
           f'<marker id="msfc-pos" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto">'
           f'<path d="M0,0 L10,5 L0,10 z" fill="{_BLUE}"/></marker>'
           f'<marker id="msfc-neg" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto">'
           f'<path d="M0,0 L10,5 L0,10 z" fill="{_RED}"/></marker></defs>',
           f'<rect x="0" y="0" width="{W:.0f}" height="{H:.0f}" fill="#ffffff"/>',
           f'<text x="{_MARGIN}" y="{_MARGIN + 8}" font-size="11" fill="#556">{escape(_clean(_trunc(fc.prompt, 90)))}</text>']
    strongest: dict[str, float] = {}
    for a in fc.arrows:
        strongest[a.dst] = max(strongest.get(a.dst, 0.0), abs(a.weight))
    names = {b.id: b.name for b in fc.boxes}
    for a in fc.arrows:
        (sx, sy, sw), (dx, dy, dw) = geo[a.src], geo[a.dst]
        if sy > dy:          # upwards: top of the source to the bottom of the target
            x1, y1, x2, y2 = sx + sw / 2, sy, dx + dw / 2, dy + _BOX_H
            # an arrow that skips rows bows sideways, so it does not seem to pass through the boxes between
            cols = {_main_pos(fc.box(a.src)), _main_pos(fc.box(a.dst))}
            hidden = any((r, c) in cells for r in range(row_of[a.dst] + 1, row_of[a.src]) for c in cols)
            bow = min(120.0, 45.0 * (row_of[a.src] - row_of[a.dst] - 1)) if hidden and abs(x1 - x2) < 40 else 0.0
            c1, c2 = (x1 + bow, y1 - 25 - bow / 2), (x2 + bow, y2 + 25 + bow / 2)
        elif sy < dy:        # downwards (a wide box feeding one it overlaps in layers)
            x1, y1, x2, y2 = sx + sw / 2, sy + _BOX_H, dx + dw / 2, dy
            c1, c2 = (x1, y1 + 25), (x2, y2 - 25)
        else:                # same row: side to side, bowed above the row
            left = sx < dx
            x1, y1 = (sx + sw, sy + _BOX_H / 3) if left else (sx, sy + _BOX_H / 3)
            x2, y2 = (dx, dy + _BOX_H / 3) if left else (dx + dw, dy + _BOX_H / 3)
            c1, c2 = (x1, y1 - 30), (x2, y2 - 30)
        colour, marker = (_BLUE, "msfc-pos") if a.weight >= 0 else (_RED, "msfc-neg")
        width = 1 + 4 * abs(a.weight) / (strongest[a.dst] or 1.0)
        title = escape(_clean(f"{names[a.src]} → {names[a.dst]}: {a.weight:+.4g}"))
        out.append(f'<path d="M{x1:.1f},{y1:.1f} C{c1[0]:.1f},{c1[1]:.1f} {c2[0]:.1f},{c2[1]:.1f} {x2:.1f},{y2:.1f}" '
                   f'fill="none" stroke="{colour}" stroke-opacity="0.8" stroke-width="{width:.2f}" '
                   f'marker-end="url(#{marker})" data-src={quoteattr(a.src)} data-dst={quoteattr(a.dst)}>'
                   f"<title>{title}</title></path>")
    for b in fc.boxes:
        x, y, w = geo[b.id]
        if b.kind == "features":
            sub = f"{_layer_range(b.layers)} · {_plural(len(b.members), 'feature')}"
        elif b.kind == "output":
            sub = f"output · p={b.influence:.3f}"
        else:
            sub = f"input · position {b.positions[0]}"
        tip = f"{b.name} ({b.kind}; {_plural(len(b.members), 'node')}: {' '.join(b.members[:12])}" \
              f"{' …' if len(b.members) > 12 else ''})"
        out.append(f'<g class="box {b.kind}" data-box={quoteattr(b.id)}><title>{escape(_clean(tip))}</title>'
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{_BOX_H}" rx="6" fill="{_FILL[b.kind]}" '
                   f'stroke="#667"/>'
                   f'<text x="{x + w / 2:.1f}" y="{y + 16:.1f}" font-size="12" text-anchor="middle" fill="#1d2330">'
                   f"{escape(_clean(_trunc(b.name, 34)))}</text>"
                   f'<text x="{x + w / 2:.1f}" y="{y + 30:.1f}" font-size="9" text-anchor="middle" fill="#667">'
                   f"{escape(_clean(sub))}</text></g>")
    out.append("</svg>")
    return "\n".join(out)


def _main_pos(b: Box) -> int:
    """The position most of a box's members sit at (the later one on ties: information flows rightwards)."""
    if not b.positions:
        return 0
    if b.kind != "features":
        return b.positions[0]
    counts = Counter(int(m.rsplit("_", 1)[-1]) if m.rsplit("_", 1)[-1].isdigit() else b.positions[0] for m in b.members)
    return max(counts, key=lambda p: (counts[p], p))


def _trunc(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _box_width(b: Box) -> float:
    return float(min(240, max(92, 7 * len(_trunc(b.name, 34)) + 18)))
