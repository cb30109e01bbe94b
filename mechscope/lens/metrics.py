"""The per-graph numbers of the lens: score formulas, the top logit's input split, label specificity.

All graph quantities use the normalisation of the replacement score: Â = row-normalised |A| of the unpruned
graph (`mechscope.attribution.graph.row_normalize`), influence = w·(Â + Â² + ...), w = the logit weights.
"""

from __future__ import annotations

import re

import torch

from mechscope.attribution.graph import Graph, influence, row_normalize
from mechscope.features.labels import norm_token

# Function words and other tokens too frequent to name a concept ("a single frequent token" is not a label).
FREQUENT_TOKENS = frozenset(
    [
        "the",
        "a",
        "an",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "and",
        "or",
        "but",
        "not",
        "no",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "he",
        "she",
        "they",
        "we",
        "you",
        "i",
        "his",
        "her",
        "their",
        "our",
        "your",
        "my",
        "me",
        "him",
        "them",
        "us",
        "there",
        "here",
        "which",
        "who",
        "whom",
        "what",
        "when",
        "where",
        "why",
        "how",
        "if",
        "then",
        "than",
        "so",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "will",
        "would",
        "can",
        "could",
        "should",
        "may",
        "might",
        "must",
        "shall",
        "about",
        "into",
        "over",
        "under",
        "up",
        "down",
        "out",
        "off",
        "also",
        "only",
        "just",
        "very",
        "more",
        "most",
        "some",
        "any",
        "all",
        "each",
        "every",
        "such",
        "other",
        "one",
        "two",
        "le",
        "la",
        "les",
        "des",
        "de",
        "du",
        "un",
        "une",
        "et",
        "est",
        "en",
        "au",
        "aux",
        "pour",
        "dans",
        "sur",
        "qui",
        "que",
        "ce",
        "pas",
        "il",
        "elle",
        "ne",
        "se",
        "sa",
        "son",
        "ses",
        "der",
        "die",
        "das",
        "den",
        "dem",
        "des",
        "und",
        "ist",
        "nicht",
        "mit",
        "ein",
        "eine",
        "einer",
        "von",
        "zu",
        "im",
        "für",
        "auf",
        "es",
        "sie",
        "er",
        "wird",
        "el",
        "los",
        "las",
        "que",
        "es",
        "una",
        "uno",
        "por",
        "para",
        "con",
        "del",
        "se",
        "como",
        "su",
        "al",
        "lo",
        "的",
        "是",
        "在",
        "了",
        "和",
        "有",
        "我",
        "他",
        "这",
        "不",
        "人",
        "一",
        "s",
        "t",
        "d",
        "ll",
        "re",
        "ve",
        "m",
    ]
)


def circuit_tracer_scores(g: Graph) -> dict[str, float]:
    """Replacement and completeness as circuit-tracer's `compute_graph_scores` computes them.

    replacement = Σ influence(tokens) / (Σ influence(tokens) + Σ influence(errors))  — the same as ours;
    completeness = Σ_i (1 − Σ_err Â[i, err]) · (influence_i + w_i) / Σ_i (influence_i + w_i) over ALL rows,
    so rows without inputs (token and error nodes: Â[i] = 0) count as fully explained. Ours (`Graph.scores`)
    averages over rows that have inputs only, which is lower whenever error nodes carry influence.
    """
    _, es, ts_, _ = g.kinds()
    An = row_normalize(g.A)
    infl = influence(An, g.w)
    tok, err = float(infl[ts_].sum()), float(infl[es].sum())
    repl = tok / (tok + err) if tok + err > 0 else 0.0
    non_err = 1 - An[:, es].sum(1)
    out = infl + g.w
    comp = float((non_err * out).sum() / out.sum().clamp_min(1e-30))
    return {"replacement_score": repl, "completeness_score": comp}


def top_logit_split(g: Graph) -> dict[str, float]:
    """Where the top logit's direct input comes from: shares of feature, token-embedding and error nodes.

    Definition: for the top logit node t (the most probable target), share_K = Σ_{j∈K} |A[t, j]| / Σ_j |A[t, j]|,
    i.e. row t of Â, the normalisation the replacement score uses. Every path from t to the inputs either
    leaves through a feature node or goes straight to a token embedding (the path through the skip terms
    and attention) or to an error node, so `feature_share` is exactly the share of t's end-to-end influence
    that passes through at least one feature. Active features that got no node (beyond max_feature_nodes)
    are outside A, as in the scores; `dropped_share` = |their summed effect| / (Σ_j |A[t, j]| + that), for
    judging whether the node budget hides much.
    """
    fs, es, ts_, ls = g.kinds()
    row = g.A[ls.start].abs()
    tot = float(row.sum())
    if tot <= 0:
        return {"feature_share": 0.0, "token_share": 0.0, "error_share": 0.0, "dropped_share": 0.0}
    dropped = abs(float(g.dropped[ls.start]))
    return {
        "feature_share": float(row[fs].sum()) / tot,
        "token_share": float(row[ts_].sum()) / tot,
        "error_share": float(row[es].sum()) / tot,
        "dropped_share": dropped / (tot + dropped),
    }


def top_features(g: Graph, n: int = 20) -> list[str]:
    """The n most influential feature nodes of the unpruned graph, as `L/F@P`, most influential first."""
    fs = g.kinds()[0]
    infl = g.node_influence()[fs]
    order = torch.argsort(infl, descending=True)[:n]
    return [
        f"{g.nodes[i]['layer']}/{g.nodes[i]['feature']}@{g.nodes[i]['ctx_idx']}"
        for i in order.tolist()
        if float(infl[i]) > 0
    ]


def is_specific_label(label: str | None) -> bool:
    """Whether an automatic label names something specific.

    Not specific: no label; "mixed: …", "unclear", "dead …"; a token class or script/language only
    ("whitespace", "punctuation", "digits", "code", "French text"); and labels whose named tokens are all
    frequent or trivial — function words (FREQUENT_TOKENS) or a single character (a letter, a digit, a
    sign). Specific: the input side names at least one other token (`"Texas"`, `"Texas" / "Austin"`), or,
    when the input side says nothing, the output side does (`→ say "Austin"`).

    >>> is_specific_label('"Texas" → say "Austin"'), is_specific_label('mixed: "iterator" / "ダー"'), is_specific_label('"the"')
    (True, False, False)
    """
    if not label:
        return False
    inp, _, out = label.partition("→")
    inp, out = inp.strip(), out.strip()
    if inp.startswith("say "):  # an output-only label has no arrow: 'say "Austin"'
        inp, out = "", inp
    if inp.startswith(("mixed", "dead")):
        return False
    if inp and not re.search(r'"[^"]+"', inp):
        return False  # a class ("digits"), a language ("French text"), "unclear"
    named = re.findall(r'"([^"]+)"', inp) if inp else re.findall(r'"([^"]+)"', out)
    return any(_content_token(t) for t in named)


def _content_token(tok: str) -> bool:
    t = norm_token(tok)
    # one character names nothing, except a CJK character (a whole word: "小")
    long_enough = len(t) > 1 or (len(t) == 1 and ord(t) >= 0x2E80)
    return long_enough and t not in FREQUENT_TOKENS and any(c.isalnum() for c in t) and not t.isdigit()
