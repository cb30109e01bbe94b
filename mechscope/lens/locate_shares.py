"""Locate shares per layer: for the judged swap pairs, how much of the move toward the donor's answer arrives
through each part of each MLP (features, skip term, error) or through the token embedding.

Per pair, one patched run per (component, layer) — the donor's value of that one component at that one layer,
at the aligned positions (`locate_logits`, the machinery of `swap --locate`), every other layer left alone —
and one run with the donor's token embedding. Each run's effect is Δ = the change of the logit difference
(donor's answer − recipient's answer) at the last position. A pair's shares are |Δ| / Σ|Δ| over all its runs
(so they sum to 1: where the difference can be picked up, one component and layer at a time); the aggregate
is their mean over pairs. The signed mean Δ per layer says whether a component moves toward the donor (> 0).

>>> res = locate_shares(m, ts, suite, clean_answers(m, suite))                # doctest: +SKIP
>>> res["shares"]    # {"features": …, "skip": …, "error": …, "embedding": …}, summing to 1   # doctest: +SKIP
"""

from __future__ import annotations

from mechscope.errors import MechscopeError
from mechscope.lens.suite import Suite

COMPONENTS = ("features", "skip", "error")  # the per-layer parts; the embedding is one more, layer-free, run


def pair_runs(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """The runs of one pair: unpatched, the embedding, the whole MLP output at every layer (a reference: the most
    the MLPs can move), then each component at each layer alone."""
    runs = [("none", ()), ("embedding", ()), ("mlp_out", tuple(range(n_layers)))]
    return runs + [(c, (l,)) for l in range(n_layers) for c in COMPONENTS]


def pair_effects(model, ts, recipient: str, donor: str, want_r: int, want_d: int, span: str, batch: int) -> dict:
    """One pair's Δ logit difference per component and layer, its embedding Δ and its shares."""
    from mechscope.interventions import locate_logits

    L = model.n_layers
    runs = pair_runs(L)
    lg = locate_logits(model, ts, recipient, donor, runs, span=span, batch=batch)["logits"]
    m = (lg[:, want_d] - lg[:, want_r]).double()
    delta = (m - m[0]).tolist()
    by = {run: v for run, v in zip(runs, delta)}
    per = {c: [by[(c, (l,))] for l in range(L)] for c in COMPONENTS}
    total = abs(by[("embedding", ())]) + sum(abs(v) for c in COMPONENTS for v in per[c])
    row = {
        "base_logit_diff": float(m[0]),
        "delta_mlp_out_all_layers": by[("mlp_out", tuple(range(L)))],
        "delta_embedding": by[("embedding", ())],
        "delta": per,
        "shares": None,
        "shares_per_layer": None,
    }
    if total > 0:
        row["shares_per_layer"] = {c: [abs(v) / total for v in per[c]] for c in COMPONENTS}
        row["shares"] = {c: sum(row["shares_per_layer"][c]) for c in COMPONENTS}
        row["shares"]["embedding"] = abs(by[("embedding", ())]) / total
    return row


def locate_shares(
    model, ts, suite: Suite, clean: dict[str, int], span: str = "span", batch: int = 32, progress: bool = False
) -> dict:
    """Mean shares (overall and per layer) and mean signed Δ per layer over the suite's judged pairs (the model
    answers both prompts as the suite says); the per-pair rows under `pairs`. Pairs that cannot be aligned are
    listed under `refused`."""
    from mechscope.lens.swaps import judged
    from mechscope.progress import counter

    prompts = suite.by_id()
    todo = [s for s in suite.swaps if judged(model, s, prompts, clean)]
    L = model.n_layers
    rows, refused = [], []
    with counter("probe: locate", len(todo), "pairs", enabled=progress) as bar:
        for s in todo:
            r, d = prompts[s.recipient], prompts[s.donor]
            bar.detail = f"{r.id} <- {d.id}"
            try:
                row = pair_effects(
                    model, ts, r.prompt, d.prompt, model.token_id(r.answer), model.token_id(d.answer), span, batch
                )
            except MechscopeError as err:  # no shared context to align on
                refused.append({"recipient": r.id, "donor": d.id, "reason": str(err)})
            else:
                rows.append({"recipient": r.id, "donor": d.id, "category": r.category, **row})
            bar.update()
    scored = [x for x in rows if x["shares"] is not None]
    n = len(scored)
    out: dict = {"n_pairs": len(rows), "n_pairs_scored": n, "span": span, "refused": refused}
    if n:
        out["shares"] = {k: sum(x["shares"][k] for x in scored) / n for k in (*COMPONENTS, "embedding")}
        out["shares_per_layer"] = {
            c: [sum(x["shares_per_layer"][c][l] for x in scored) / n for l in range(L)] for c in COMPONENTS
        }
        out["mean_delta_per_layer"] = {
            c: [sum(x["delta"][c][l] for x in scored) / n for l in range(L)] for c in COMPONENTS
        }
        out["mean_delta_embedding"] = sum(x["delta_embedding"] for x in scored) / n
        out["mean_delta_mlp_out_all_layers"] = sum(x["delta_mlp_out_all_layers"] for x in scored) / n
    else:
        out["shares"] = out["shares_per_layer"] = out["mean_delta_per_layer"] = None
    out["pairs"] = rows
    return out
