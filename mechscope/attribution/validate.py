"""Check a graph against the model: predicted (graph) vs measured (ablation) effects of its top features.

>>> v = validate_graph(model, ts, graph, top_n=20)                 # doctest: +SKIP
>>> v["spearman"], v["sign_agreement"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.transcoders.edits import Edit, FeatureRef, run_with_edits
from mechscope.transcoders.module import TranscoderSet

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


def spearman(a: list[float], b: list[float]) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ra, rb = ta.argsort().argsort().double(), tb.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra @ rb) / den) if den > 0 else float("nan")


def total_effects(graph) -> Tensor:
    """Signed total effect of every node on every target through feature→feature paths: A + A·A + ...  [N, N]"""
    A = graph.A.clone()
    fs = graph.kinds()[0]
    # only features propagate (their activation moves 1:1 with their pre-activation while active)
    prop = torch.zeros_like(A)
    prop[:, fs] = A[:, fs]
    total, term = A.clone(), A.clone()
    for _ in range(graph.meta["n_layers"] + 2):
        term = prop @ term
        if float(term.abs().max()) < 1e-9:
            break
        total += term
    return total


@torch.no_grad()
def validate_graph(model: ModelAdapter, ts: TranscoderSet, graph, top_n: int = 20) -> dict:
    """Predicted (graph) vs actual (ablation) effect on the first logit target of the top-N features.

    Predicted: −(total linear effect of the node on the target's centred logit), from the unpruned graph.
    Actual: the change in that centred logit when the feature is ablated at its position in the real model
    (attention frozen to the clean run).
    """
    toks = model.tokenize(graph.meta["prompt"])
    ids = toks.ids
    fs, _, _, ls = graph.kinds()
    tgt = ls.start
    tok_id = graph.nodes[tgt]["feature"]
    if tok_id >= model.vocab_size:
        raise MechscopeError("validation needs a token logit target, not a logit difference")
    T = total_effects(graph)
    infl = graph.node_influence()
    feats = sorted(range(fs.stop), key=lambda i: -float(infl[i]))[:top_n]
    patterns: dict[int, Tensor] = {}
    with model.attention_patterns(record=patterns):
        clean = model.forward(ids[None].to(model.device))[0, -1].float()
    base = float(clean[tok_id] - clean.mean())
    rows = []
    for i in feats:
        nd = graph.nodes[i]
        ref = FeatureRef(int(nd["layer"]), nd["feature"], nd["ctx_idx"])
        after = run_with_edits(model, ts, ids, [Edit(ref, "ablate")], patterns)[-1]
        actual = float(after[tok_id] - after.mean()) - base
        rows.append(
            {
                "node": nd["node_id"],
                "feature": str(ref),
                "predicted": -float(T[tgt, i]),
                "actual": actual,
                "influence": float(infl[i]),
            }
        )
    rho = spearman([r["predicted"] for r in rows], [r["actual"] for r in rows]) if len(rows) > 2 else float("nan")
    sign = sum((r["predicted"] > 0) == (r["actual"] > 0) for r in rows) / max(1, len(rows))
    return {"target": graph.nodes[tgt]["clerp"], "n": len(rows), "spearman": rho, "sign_agreement": sign, "nodes": rows}
