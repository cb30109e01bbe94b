"""The per-graph numbers of the lens: score formulas, the top logit's input split, label specificity.

All graph quantities use the normalisation of the replacement score: Â = row-normalised |A| of the unpruned
graph (`mechscope.attribution.graph.row_normalize`), influence = w·(Â + Â² + ...), w = the logit weights.
"""

from __future__ import annotations

import re

import torch

from mechscope.attribution.graph import Graph, influence, row_normalize
from mechscope.features.labels import is_content, norm_token
from mechscope.features.words import FREQUENT_TOKENS  # noqa: F401 (re-exported: the lens defined it first)


def circuit_tracer_scores(g: Graph) -> dict[str, float]:
    """Replacement and completeness as circuit-tracer's `compute_graph_scores` computes them.

    replacement = Σ influence(tokens) / (Σ influence(tokens) + Σ influence(errors))  — the same as ours;
    completeness = Σ_i (1 − Σ_err Â[i, err]) · (influence_i + w_i) / Σ_i (influence_i + w_i) over ALL rows,
    so rows without inputs (token and error nodes: Â[i] = 0) count as fully explained. `Graph.scores`'s
    `input_completeness_score` averages over rows that have inputs only, which is lower whenever error nodes
    carry influence; `Graph.scores` also gives this one, as `ct_completeness_score`, for an unpruned graph.
    """
    _, es, ts_, _ = g.kinds()
    An = row_normalize(g.A)
    infl = influence(An, g.w)
    tok, err = float(infl[ts_].sum()), float(infl[es].sum())
    repl = tok / (tok + err) if tok + err > 0 else 0.0
    non_err = 1 - An[:, es].sum(1)
    out = infl + g.w
    comp = float((non_err * out).sum() / out.sum().clamp_min(1e-30))
    return {"replacement_score": repl, "ct_completeness_score": comp}


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


VERIFIED_F1 = 0.25  # held-out F1 a specific label needs to count as verified (the label judge, docs/lens.md)


def judge_label(label: str | None, heldout_f1: float | None) -> dict:
    """The label judge: is the label specific, how well does it predict where its feature fires on held-out text
    (F1; a label that claims nothing checkable scores 0), and is it both (`verified`: specific, F1 ≥ VERIFIED_F1).

    >>> judge_label('"Texas"', 0.6), judge_label('"Texas"', 0.1)["verified"], judge_label("mixed: x", None)["f1"]
    ({'specific': True, 'f1': 0.6, 'verified': True}, False, 0.0)
    """
    specific = is_specific_label(label)
    f1 = float(heldout_f1) if heldout_f1 is not None else 0.0
    return {"specific": specific, "f1": f1, "verified": specific and f1 >= VERIFIED_F1}


def _content_token(tok: str) -> bool:
    return is_content(norm_token(tok))
