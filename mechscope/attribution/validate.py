"""Check a graph against the model: predicted (graph) vs measured (ablation) effects of its top features.

Predicted: the graph's total effect of ablating a feature on the target's centred logit, through every path
of features that the graph has rows for (`total_effects`). Measured three ways, each a feature ablation:
  * ``frozen`` (the published check, the main ``spearman``): in the local replacement model of the prompt —
    attention patterns and norm scales frozen, MLPs replaced by transcoders with their error terms held fixed;
    downstream features are re-encoded, so their thresholds still act;
  * ``linear``: the same with every feature's on/off state frozen too (active features move 1:1 with their
    pre-activation): the model the graph describes exactly, so predicted = measured when every active
    feature has a row (a check of the machinery, not of the dictionary);
  * ``unfrozen``: the real model with attention frozen only (norms and downstream MLPs live, errors free).

>>> from mechscope.interventions import validate_graph
>>> v = validate_graph(model, ts, graph, top_n=20)
>>> v["n"] <= 20 and -1 <= v["spearman"] <= 1
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.attribution.replacement import PromptState, no_mlp, prepare
from mechscope.errors import MechscopeError
from mechscope.edits import Edit, FeatureRef, run_with_edits
from mechscope.transcoders.source import Source, check_same_kind, readers

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

MODES = ("frozen", "linear", "unfrozen")


def spearman(a: list[float], b: list[float]) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ra, rb = ta.argsort().argsort().double(), tb.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra @ rb) / den) if den > 0 else float("nan")


def total_effects(graph) -> Tensor:
    """Signed total effect of every node (its whole value) on every node's input, through feature paths.  [N, N]

    A[t, s] is s's whole output (a_s·W_dec[s]) carried to t's pre-activation. A feature t that moves by δ
    passes on δ/a_t of each of its own edges (its activation moves 1:1 with its pre-activation while it is
    active), so paths multiply by A[:, t] / a_t: T = A + P·A + P²·A + …, P = A[:, features] / a[features].
    (Propagating A[:, t] itself, without the 1/a_t, was the mistake that made validation look unfaithful.)
    """
    A = graph.A.double()
    fs = graph.kinds()[0]
    act = torch.tensor([float(graph.nodes[i]["activation"]) for i in range(fs.stop)], dtype=torch.float64)
    prop = torch.zeros_like(A)
    ok = act.abs() > 0
    prop[:, fs] = torch.where(ok[None, :], A[:, fs] / torch.where(ok, act, 1.0)[None, :], 0.0)
    total, term = A.clone(), A.clone()
    for _ in range(graph.meta["n_layers"] + 2):
        term = prop @ term
        if float(term.abs().max()) < 1e-12:
            break
        total += term
    return total.float()


@torch.no_grad()
def replacement_readout(
    model: ModelAdapter, ts: Source, st: PromptState, vec: Tensor, ablate: FeatureRef | None, linear: bool
) -> float:
    """vec · final-normed residual at the last position, in the local replacement model of `st`, with the
    feature `ablate` set to zero. linear=True also freezes every feature's on/off state (see module doc)."""
    L = model.n_layers
    cur: dict[int, Tensor] = {}
    acts_at: dict[int, Tensor] = {}  # read layer -> activations this run (layers run in order: readers first)
    final: list[Tensor] = []

    def rec_in(l: int):
        def fn(x: Tensor) -> None:
            cur[l] = x

        return fn

    def out(l: int):
        def fn(y: Tensor) -> Tensor:
            x = cur[l][0].float()
            if linear:  # a = a_clean + mask·(pre − pre_clean): the graph's own linearisation
                pre = ts.layer_pre_acts(l, x).float() - ts.layer_pre_acts(l, st.mlp_in[l]).float()
                acts = st.acts[l] + (st.acts[l] != 0) * pre
            else:
                acts = ts.layer_encode(l, x).float()
                acts[0] = 0  # position 0's features live in its error node (as in `prepare`)
            if ablate is not None and ablate.layer == l:
                acts[ablate.pos, ablate.feature] = 0
            acts_at[l] = acts
            new = ts.out_bias(l).float() + st.error[l] + ts.layer_skip(l, x).float()
            for r in readers(ts, l):  # every feature that writes to l, read here or below
                new = new + acts_at[r] @ ts.dec_weights(r, l).float()
            return new[None].to(y.dtype)

        return fn

    hooks = {"ln_final.hook_normalized": lambda x: final.append(x)}
    for l in range(L):
        hooks[f"blocks.{l}.hook_mlp_in"] = rec_in(l)
        hooks[f"blocks.{l}.hook_mlp_out"] = out(l)
    with (
        model.frozen(scales=st.scales),
        model.attention_patterns(override=st.patterns),
        model.hooks(hooks),
        no_mlp(model),
    ):
        model.forward(st.ids[None].to(model.device), logits=False)
    return float(final[-1][0, -1].float() @ vec.to(final[-1].device).float())


@torch.no_grad()
def validate_graph(model: ModelAdapter, ts: Source, graph, top_n: int = 20) -> dict:
    """Predicted (graph) vs measured (ablation) effect on the first logit target of the top-N features.

    Returns `spearman` / `sign_agreement` for the published comparison (frozen local replacement model),
    `spearman_linear`, `spearman_unfrozen` (and their sign agreements) beside it, and one row per feature.
    """
    check_same_kind(ts, graph.meta)
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
    st = prepare(model, ts, ids, toks.strs)
    W_U = model.W_U.float()
    vec = W_U[tok_id] - model.W_U_mean  # the centred logit the graph's target rows read (before any soft-cap)
    base = {m: replacement_readout(model, ts, st, vec, None, linear=m == "linear") for m in ("frozen", "linear")}
    clean = st.logits[-1]
    base["unfrozen"] = float(clean[tok_id] - clean.mean())
    rows = []
    for i in feats:
        nd = graph.nodes[i]
        ref = FeatureRef(int(nd["layer"]), nd["feature"], nd["ctx_idx"])
        after = run_with_edits(model, ts, ids, [Edit(ref, "ablate")], st.patterns)[-1]
        meas = {m: replacement_readout(model, ts, st, vec, ref, linear=m == "linear") for m in ("frozen", "linear")}
        meas["unfrozen"] = float(after[tok_id] - after.mean())
        row = {"node": nd["node_id"], "feature": str(ref), "predicted": -float(T[tgt, i]), "influence": float(infl[i])}
        row.update({"actual": meas["frozen"] - base["frozen"]})
        row.update({f"actual_{m}": meas[m] - base[m] for m in ("linear", "unfrozen")})
        rows.append(row)
    out = {"target": graph.nodes[tgt]["clerp"], "n": len(rows)}
    pred = [r["predicted"] for r in rows]
    for m, key in (("frozen", "actual"), ("linear", "actual_linear"), ("unfrozen", "actual_unfrozen")):
        act = [r[key] for r in rows]
        sfx = "" if m == "frozen" else f"_{m}"
        out[f"spearman{sfx}"] = spearman(pred, act) if len(rows) > 2 else float("nan")
        out[f"sign_agreement{sfx}"] = sum((p > 0) == (a > 0) for p, a in zip(pred, act)) / max(1, len(rows))
    out["nodes"] = rows
    return out
