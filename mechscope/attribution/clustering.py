"""Clustering of a graph's features into supernodes: similarity (labels, position, layers, shared neighbours),
complete-linkage clusters, and grouping suggestions for the page. Reads only the graph JSON.

Its node `influence` is the *cumulative* influence of the pruner (smaller = more important); a node's own share
is recovered as the step from the previous node in that order.

>>> suggest_groups(graph_json, labels)[:1]       # [[name, node_id, node_id, ...]]          # doctest: +SKIP
"""

from __future__ import annotations

import math
import re

import numpy as np


NON_FEATURE = ("mlp reconstruction error", "embedding", "logit")
# words that say nothing about a feature's concept in our heuristic labels
_STOPWORDS = frozenset({"say", "text", "mixed", "unclear"})
# a special token at position 0 (<bos>, <s>, <|begin_of_text|>, <|im_start|>) carries no prompt content
_SPECIAL = re.compile(r"^<\|?[A-Za-z_][A-Za-z0-9_]*\|?>$")
CONTROL_TOKENS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


# ---------------------------------------------------------------------------------------- helpers
def is_feature(node: dict) -> bool:
    """Feature nodes of any transcoder kind ("cross layer transcoder", Neuronpedia's other names)."""
    return node.get("feature_type") not in NON_FEATURE


def node_layer(node: dict) -> int:
    try:
        return int(node["layer"])
    except (KeyError, TypeError, ValueError):
        return 0


def node_label(node: dict, labels: dict[str, str] | None) -> str:
    # the clerp holds labels edited in the page, so it wins over the index's
    return node.get("clerp") or (labels or {}).get(f"{node.get('layer')}/{node.get('feature')}", "")


def label_words(text: str) -> list[str]:
    """Concept words of a label, in order, without duplicates."""
    out: list[str] = []
    for w in re.findall(r"\w+", text.lower()):
        if w not in _STOPWORDS and w not in out:
            out.append(w)
    return out


def informative(label: str) -> bool:
    s = label.strip()
    return bool(s) and not s.lower().startswith(("mixed", "unclear"))


def _concept_words(label: str) -> list[str]:
    # a "mixed: …" label lists unrelated tokens; sharing one of them is not evidence of a shared concept
    return label_words(label) if informative(label) else []


def show_token(tok: str) -> str:
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
    ranked = sorted(
        (
            n
            for n in nodes
            if isinstance(n.get("influence"), (int, float)) and n.get("feature_type") not in ("logit", "embedding")
        ),
        key=lambda n: (float(n["influence"]), n["node_id"]),
    )
    out, prev = {}, 0.0
    for n in ranked:
        cum = float(n["influence"])
        out[n["node_id"]] = max(0.0, cum - prev)
        prev = max(prev, cum)
    return out


def rank_key(n: dict) -> tuple:
    inf = n.get("influence")
    has = isinstance(inf, (int, float)) and math.isfinite(inf)
    return (float(inf) if has else math.inf, -abs(float(n.get("activation") or 0.0)), n["node_id"])


def label_similarity(feats: list[dict], links: list[dict], labels: dict[str, str] | None) -> np.ndarray:
    """0.4·label-word Jaccard + 0.3·shared-neighbour Jaccard + 0.2·same position + 0.1·layer proximity."""
    n = len(feats)
    idx = {f["node_id"]: i for i, f in enumerate(feats)}
    vocab: dict[str, int] = {}
    word_ix = [[vocab.setdefault(w, len(vocab)) for w in _concept_words(node_label(f, labels))] for f in feats]
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
    lay = np.array([node_layer(f) for f in feats])
    prox = np.maximum(0.0, 1.0 - np.abs(lay[:, None] - lay[None, :]) / 4.0)
    return (0.4 * jaccard(Wm) + 0.3 * jaccard(Nm) + 0.2 * (pos[:, None] == pos[None, :]) + 0.1 * prox).astype(
        np.float64
    )


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
def suggest_groups(
    graph: dict, labels: dict[str, str] | None = None, threshold: float = 0.4, max_features: int = 1000
) -> list[list[str]]:
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
        keep = {n["node_id"] for n in sorted(feats, key=rank_key)[:max_features]}
        feats = [n for n in feats if n["node_id"] in keep]
    clusters = complete_linkage(label_similarity(feats, graph.get("links", []), labels), threshold)
    out = []
    for c in clusters:
        if len(c) < 2:
            continue
        members = [feats[i] for i in c]
        common = set.intersection(*(set(_concept_words(node_label(m, labels))) for m in members))
        lays = [node_layer(m) for m in members]
        name = " ".join(sorted(common)[:3]) or f"L{min(lays)}-{max(lays)}@{members[0]['ctx_idx']}"
        out.append([name] + [m["node_id"] for m in members])
    return sorted(out, key=lambda g: -len(g))  # stable: equal sizes keep the graph's node order
