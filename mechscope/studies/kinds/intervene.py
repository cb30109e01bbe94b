"""Experiment kinds that intervene on features to test a mechanism: swap, locate, steer (evidence by default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from mechscope.configs import require
from mechscope.studies.kinds.common import entropy, fmt_top, label
from mechscope.studies.registry import Context, ExperimentOptions, Result, experiment


@dataclass(kw_only=True)
class SwapOptions(ExperimentOptions):
    """Concept transplant; passes when some factor makes `expect_top` (the donor's answer) the top token.

    Judged only where it can be: the model must answer the donor prompt with `expect_top` and the recipient
    with something else (else `passed` is None: "not applicable", as the lens does)."""

    prompt: str
    donor: str
    expect_top: str
    factors: list[float] = field(default_factory=lambda: [1.0])
    max_layer: int | None = None
    span: Literal["span", "rest", "diff"] = "span"
    with_skip: bool = False

    def single_tokens(self) -> list[str]:
        return [self.expect_top]

    def swap_pairs(self) -> list[tuple[str, str]]:
        return [(self.prompt, self.donor)]


@experiment("swap")
def exp_swap(ctx: Context, o: SwapOptions) -> Result:
    from mechscope.interventions import swap

    title = o.title or f"Swap {o.prompt!r} ← {o.donor!r}"
    base = ctx.top(ctx.probs(o.prompt), 3)
    donor_top = ctx.top(ctx.probs(o.donor), 1)[0][0]
    if donor_top != o.expect_top or base[0][0] == o.expect_top:
        why = (
            f"the model answers the donor with {donor_top!r}, not {o.expect_top!r}"
            if donor_top != o.expect_top
            else f"the model already answers the recipient with {o.expect_top!r}"
        )
        return Result("swap", title, None, f"not applicable: {why} (before: {fmt_top(base)}).", {"before": base})
    tries = []
    for factor in o.factors:
        res = swap(
            ctx.model,
            ctx.ts,
            o.prompt,
            o.donor,
            factor=factor,
            max_layer=o.max_layer,
            span=o.span,
            with_skip=bool(o.with_skip),
        )
        after = [(r["token"], round(r["prob"], 4)) for r in res["after"][:3]]
        tries.append(
            {
                "factor": factor,
                "after": after,
                "n_removed": len(res["removed"]),
                "n_injected": len(res["injected"]),
                "positions": res["positions"],
                "swapped": res["swapped"],
            }
        )
    success = [t for t in tries if t["after"][0][0] == o.expect_top]
    passed = bool(success)
    lines = "; ".join(f"×{t['factor']}: {fmt_top(t['after'])}" for t in tries)
    summary = (
        f"before: {fmt_top(base)}. After suppressing {tries[0]['n_removed']} recipient features and injecting "
        f"{tries[0]['n_injected']} donor features ({tries[0]['swapped']})"
        f"{' (with the skip term)' if o.with_skip else ''}: {lines}. "
        f"Expected top token {o.expect_top!r}: {'reached' if passed else 'not reached'}."
    )
    return Result("swap", title, passed, summary, {"before": base, "tries": tries})


@dataclass(kw_only=True)
class LocateOptions(ExperimentOptions):
    """Which MLP component carries the difference; passes when the features alone move the answer."""

    prompt: str
    donor: str
    watch: list[str]  # [recipient's answer, donor's answer]
    span: Literal["span", "rest", "diff"] = "rest"

    def __post_init__(self) -> None:
        require(len(self.watch) == 2, f"locate: watch needs two tokens (recipient's, donor's answer), got {self.watch}")

    def single_tokens(self) -> list[str]:
        return list(self.watch)

    def swap_pairs(self) -> list[tuple[str, str]]:
        return [(self.prompt, self.donor)]


@experiment("locate")
def exp_locate(ctx: Context, o: LocateOptions) -> Result:
    """Which part of the MLPs carries the difference between two prompts (features, skip term or error)."""
    from mechscope.interventions import LOCATE_COMPONENTS, locate_concept

    watch = o.watch
    res = locate_concept(ctx.model, ctx.ts, o.prompt, o.donor, watch, span=o.span)
    p = res["probs"]
    # the component "moves the answer" when the donor's token overtakes the recipient's
    moves = {c: p[c][1] > p[c][0] for c in LOCATE_COMPONENTS}
    carriers = [c for c in ("features", "skip", "error") if moves[c]]
    passed = moves["features"]
    rows = "; ".join(f"{c}: {watch[0]!r} {v[0]:.3f} / {watch[1]!r} {v[1]:.3f}" for c, v in p.items())
    summary = (
        f"Donor components patched into the recipient at positions {res['positions']}, all layers — {rows}. "
        f"Components that alone make {watch[1]!r} beat {watch[0]!r}: {', '.join(carriers) or 'none'}"
        f"{' (the whole MLP output does)' if moves['mlp_out'] else ''}. "
        + (
            "The transcoder features carry the concept: a feature swap can work."
            if passed
            else "The transcoder features do not carry it; a feature-level swap cannot flip the answer with this set."
        )
    )
    return Result("locate", o.title or f"Where does {o.prompt!r} vs {o.donor!r} live?", passed, summary, {"probs": p})


@dataclass(kw_only=True)
class SteerOptions(ExperimentOptions):
    """Set the features that distinguish `source` from `against` at a position of `prompt`."""

    prompt: str
    source: str
    against: str
    source_pos: int = -1
    against_pos: int = -1
    pos: int = -1
    top_n: int = 10
    factor: float = 1.0
    measure: Literal["entropy", "prob"] = "entropy"
    token: str | None = None  # with measure: prob
    expect: Literal["increase", "decrease"] = "decrease"
    min_change: float = 0.0  # the least move in the expected direction that counts (nats or probability)

    def __post_init__(self) -> None:
        require(self.measure != "prob" or self.token is not None, "steer: measure 'prob' needs a token")
        require(self.min_change >= 0, f"steer: min_change must be ≥ 0, got {self.min_change}")

    def single_tokens(self) -> list[str]:
        return [self.token] if self.token is not None else []


@experiment("steer")
def exp_steer(ctx: Context, o: SteerOptions) -> Result:
    from mechscope.interventions import Edit, FeatureRef, active_features, run_with_edits

    m = ctx.model
    src_ids, ag_ids, ids = m.tokenize(o.source).ids, m.tokenize(o.against).ids, m.tokenize(o.prompt).ids
    pos_s = o.source_pos % len(src_ids)
    pos_a = o.against_pos % len(ag_ids)
    pos = o.pos % len(ids)
    src = {(l, f): a for l, f, a in active_features(m, ctx.ts, src_ids, pos_s)}
    ag = {(l, f): a for l, f, a in active_features(m, ctx.ts, ag_ids, pos_a)}
    distinct = sorted(((k, a - ag.get(k, 0.0)) for k, a in src.items()), key=lambda t: -t[1])[: o.top_n]
    factor = float(o.factor)
    edits = [Edit(FeatureRef(l, f, pos), "set", src[(l, f)] * factor) for (l, f), _ in distinct]
    with torch.no_grad():
        before = torch.softmax(m.forward(ids[None])[0, -1].float(), -1)
        after = torch.softmax(run_with_edits(m, ctx.ts, ids, edits)[-1], -1)
    if o.measure == "entropy":
        b, a = entropy(before), entropy(after)
        what = "next-token entropy (nats)"
    else:
        tid = m.token_id(o.token)
        b, a = float(before[tid]), float(after[tid])
        what = f"p({o.token!r})"
    passed = (b - a if o.expect == "decrease" else a - b) > o.min_change
    feats = [f"{l}/{f}" + (f" “{label(ctx, l, f)}”" if label(ctx, l, f) else "") for (l, f), _ in distinct]
    summary = (
        f"{len(edits)} features that are more active at {o.source!r}[{pos_s}] than at {o.against!r}[{pos_a}] set to "
        f"{factor}× their activation at {o.prompt!r}[{pos}]: {what} {b:.3f} → {a:.3f} (expected to {o.expect}"
        f"{f' by more than {o.min_change:g}' if o.min_change else ''}). "
        f"Top tokens before: {fmt_top(ctx.top(before))}; after: {fmt_top(ctx.top(after))}."
    )
    return Result(
        "steer",
        o.title or f"Steer {o.prompt!r} with {o.source!r} − {o.against!r}",
        passed,
        summary,
        {"before": b, "after": a, "features": feats},
    )
