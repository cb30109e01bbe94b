"""Automatic flowcharts: the "subgraph with labelled supernodes" of Anthropic's case studies, built without a
human. The most influential features are clustered (`clustering`), the strongest clusters become boxes, the
prompt tokens that feed them become input boxes and the top two logits output boxes; arrows carry the summed
direct effects between boxes. Drawing is in `flowchart_svg`.

>>> fc = flowchart(graph_json, labels)                                                    # doctest: +SKIP
>>> print(fc.to_text()); open("f.svg", "w").write(fc.to_svg())                            # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from mechscope.attribution.clustering import (
    informative,
    node_label,
    node_layer,
    rank_key,
    show_token,
    label_similarity,
    label_words,
    complete_linkage,
    has_bos,
    influence_shares,
    is_feature,
)
from mechscope.errors import MechscopeError


# ---------------------------------------------------------------------------------------- flowchart
@dataclass
class Box:
    """One flowchart box: a group of features, one prompt token, or one output logit."""

    id: str  # "in{pos}", "f{rank}", "out{rank}"
    name: str
    kind: str  # input | features | output
    members: list[str]  # node ids of the graph JSON
    layers: list[int] = field(default_factory=list)  # sorted distinct layers (features only)
    positions: list[int] = field(default_factory=list)  # sorted distinct token positions
    influence: float = 0.0  # features: summed influence share; output: token probability; input: 0


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
        return {
            "prompt": self.prompt,
            "boxes": [asdict(b) for b in self.boxes],
            "arrows": [asdict(a) for a in self.arrows],
            "qParams": self.qparams(),
        }

    def to_text(self) -> str:
        """A readable summary: boxes from outputs down to inputs, each with its incoming arrows."""
        names = {b.id: b.name for b in self.boxes}
        n_feat = sum(b.kind == "features" for b in self.boxes)
        lines = [
            f"flowchart: {n_feat} feature boxes, {len(self.boxes) - n_feat} token boxes, {len(self.arrows)} arrows "
            "(summed direct effects)"
        ]
        for b in _display_order(self.boxes):
            if b.kind == "output":
                lines.append(f"  {b.id:<5} output    {b.name}  p={b.influence:.3f}")
            elif b.kind == "input":
                lines.append(f"  {b.id:<5} input     {b.name}  @{b.positions[0]}")
            else:
                pos = ",".join(str(p) for p in b.positions)
                lines.append(
                    f"  {b.id:<5} features  {b.name}  ({plural(len(b.members), 'feature')}, "
                    f"{layer_range(b.layers)} @{pos}; influence {b.influence:.3f})"
                )
            for a in self.arrows:
                if a.dst == b.id:
                    lines.append(f"          ← {a.weight:+.3g} from {a.src} {names[a.src]}")
        return "\n".join(lines)

    def to_svg(self) -> str:
        """A self-contained SVG: inputs at the bottom, feature rows by layer, outputs on top; arrow width ∝ weight
        (relative to the strongest arrow into the same box), blue = excitatory, red = inhibitory."""
        from mechscope.attribution.flowchart_svg import render_svg

        return render_svg(self)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def layer_range(layers: list[int]) -> str:
    if not layers:
        return ""
    lo, hi = min(layers), max(layers)
    return f"L{lo}" if lo == hi else f"L{lo}–{hi}"


def box_row(b: Box) -> tuple[int, int]:
    """(kind rank, layer) of a box's row: inputs lowest, outputs highest."""
    if b.kind == "input":
        return (0, 0)
    if b.kind == "output":
        return (2, 0)
    lays = sorted(b.layers) or [0]
    return (1, lays[(len(lays) - 1) // 2])  # lower median: a wide box sits where most of it is


def _display_order(boxes: list[Box]) -> list[Box]:
    return sorted(boxes, key=lambda b: (-box_row(b)[0], -box_row(b)[1], min(b.positions or [0]), b.id))


def flowchart(
    graph: dict,
    labels: dict[str, str] | None = None,
    n_features: int = 40,
    max_boxes: int = 10,
    *,
    threshold: float = 0.35,
    max_span: int | None = None,
    min_arrow: float = 0.1,
    max_in: int = 3,
) -> Flowchart:
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

    feats = sorted((n for n in nodes if is_feature(n) and n.get("ctx_idx") != skip_pos), key=rank_key)[:n_features]
    S = label_similarity(feats, links, labels)
    lay = np.array([node_layer(f) for f in feats])
    if max_span is None:
        # the logit nodes sit at layer n_layers + 1
        depth = max(
            [node_layer(n) - 1 for n in nodes if n.get("feature_type") == "logit"] + [int(lay.max(initial=0)) + 1]
        )
        max_span = max(2, depth // 4)
    # a box is one step of the computation: early token features and late output features stay apart
    S[np.abs(lay[:, None] - lay[None, :]) > max_span] = -np.inf
    clusters = complete_linkage(S, threshold)
    # clusters list members in rank order; strongest clusters first, the best member's rank breaking ties
    clusters.sort(key=lambda c: (-sum(share.get(feats[i]["node_id"], 0.0) for i in c), c[0]))
    boxes: list[Box] = []
    for k, c in enumerate(clusters[:max_boxes]):
        g = [feats[i] for i in c]
        boxes.append(
            Box(
                id=f"f{k + 1}",
                name=_box_name(g, labels, tokens),
                kind="features",
                members=[m["node_id"] for m in g],
                layers=sorted({node_layer(m) for m in g}),
                positions=sorted({int(m["ctx_idx"]) for m in g}),
                influence=round(sum(share.get(m["node_id"], 0.0) for m in g), 6),
            )
        )

    logits = sorted(
        (n for n in nodes if n.get("feature_type") == "logit"),
        key=lambda n: (-float(n.get("token_prob") or 0.0), n["node_id"]),
    )[:2]
    for k, n in enumerate(logits):
        boxes.append(
            Box(
                id=f"out{k + 1}",
                name=f'say "{_logit_token(n)}"',
                kind="output",
                members=[n["node_id"]],
                positions=[int(n["ctx_idx"])],
                influence=float(n.get("token_prob") or 0.0),
            )
        )
    emb: dict[int, list[str]] = {}
    for n in nodes:
        if n.get("feature_type") == "embedding" and n.get("ctx_idx") != skip_pos:
            emb.setdefault(int(n["ctx_idx"]), []).append(n["node_id"])
    for p in sorted(emb):
        tok = (
            tokens[p] if p < len(tokens) else next((n.get("clerp", "") for n in nodes if n["node_id"] == emb[p][0]), "")
        )
        boxes.append(Box(id=f"in{p}", name=f'"{show_token(tok)}"', kind="input", members=emb[p], positions=[p]))

    arrows = _arrows(boxes, links, min_arrow, max_in)
    used = {a.src for a in arrows} | {a.dst for a in arrows}
    boxes = [b for b in boxes if b.kind != "input" or b.id in used]
    _dedupe_names(boxes, tokens)
    return Flowchart(prompt=str(graph.get("metadata", {}).get("prompt", "")), boxes=boxes, arrows=arrows)


def _logit_token(n: dict) -> str:
    m = re.match(r'^Output "(.*)" \(p=', n.get("clerp", ""), re.S)
    tok = m.group(1) if m else (n.get("clerp") or f"#{n.get('feature')}")
    return show_token(tok)


def _arrows(boxes: list[Box], links: list[dict], min_arrow: float, max_in: int) -> list[Arrow]:
    owner = {m: b.id for b in boxes for m in b.members}
    order = {b.id: i for i, b in enumerate(boxes)}
    total: dict[tuple[str, str], float] = {}
    for link in links:  # the file's link order fixes the summation order, so sums are reproducible
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
    labs = [node_label(m, labels).strip() for m in members]
    pos = Counter(int(m["ctx_idx"]) for m in members)
    where = sorted(pos, key=lambda p: (-pos[p], p))[:2]
    toks = "/".join(show_token(tokens[p]) if p < len(tokens) else f"@{p}" for p in where)
    by_place = f"{toks}{'+' if len(pos) > 2 else ''} features {layer_range([node_layer(m) for m in members])}"
    name = _name_from_labels(labs)
    # a label that only repeats the token the box sits on ("is" at " is") says less than its layers do
    if name and name.strip('"').strip().lower() != toks.lower():
        return name
    return by_place


def _name_from_labels(labs: list[str]) -> str:
    n = len(labs)
    if 2 * sum(informative(x) for x in labs) > n:
        counts = Counter(x for x in labs if informative(x))
        lab, c = max(counts.items(), key=lambda kv: (kv[1], -labs.index(kv[0])))
        if 2 * c > n:
            return lab
        wcount = Counter(w for x in labs if informative(x) for w in label_words(x))
        # words in the order (and spelling) the strongest members' labels use them
        spelled: dict[str, str] = {}
        for x in labs:
            if informative(x):
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
            p = main_pos(b)
            where = f"@{show_token(tokens[p]) if p < len(tokens) else p} {layer_range(b.layers)}"
            name, k = (f"{b.name} {where}" if " features L" not in b.name else b.name), 1
            while name in seen:
                k += 1
                name = f"{b.name} ({k})"
            seen[name] += 1
            b.name = name


def main_pos(b: Box) -> int:
    """The position most of a box's members sit at (the later one on ties: information flows rightwards)."""
    if not b.positions:
        return 0
    if b.kind != "features":
        return b.positions[0]
    counts = Counter(int(m.rsplit("_", 1)[-1]) if m.rsplit("_", 1)[-1].isdigit() else b.positions[0] for m in b.members)
    return max(counts, key=lambda p: (counts[p], p))
