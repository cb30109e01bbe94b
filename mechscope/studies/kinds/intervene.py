"""Experiment kinds that swap a concept between prompts (swap, beside its controls) and locate where the
difference lives (locate); evidence by default. Steering: `steer.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from mechscope.configs import require
from mechscope.studies.kinds.common import DEFAULT_MARGIN, ControlledOptions, fmt_top
from mechscope.studies.kinds.where import where_it_lives
from mechscope.studies.registry import Context, ExperimentOptions, Result, experiment


@dataclass(kw_only=True)
class SwapOptions(ControlledOptions):
    """Concept transplant; passes when some factor makes `expect_top` (the donor's answer) the top token and
    its probability beats both controls by more than `margin` (default 0.05).

    Precondition (else "not applicable"): the model answers the donor with `expect_top` and the recipient with
    `expect_before` (its own answer; if not given, any token but `expect_top`). A failed variant is located
    (`where_it_lives`): "not visible" when the features alone do not carry the difference."""

    prompt: str
    donor: str
    expect_top: str
    expect_before: str | None = None
    factors: list[float] = field(default_factory=lambda: [1.0])
    max_layer: int | None = None
    span: Literal["span", "rest", "diff"] = "span"
    with_skip: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.factors), "swap: factors must list at least one factor")

    def single_tokens(self) -> list[str]:
        return [self.expect_top] + ([self.expect_before] if self.expect_before else []) + super().single_tokens()

    def swap_pairs(self) -> list[tuple[str, str]]:
        return [(self.prompt, self.donor)]

    def precondition(self) -> str:
        own = f"with {self.expect_before!r}" if self.expect_before else f"with something other than {self.expect_top!r}"
        return f"the model answers the donor with {self.expect_top!r} and the recipient {own}"

    def control_problem(self) -> str | None:
        if self.prompt == self.donor:
            return "the donor is the recipient (the swap would be its own donor-is-recipient control)"
        return None

    def bar(self) -> float:
        return DEFAULT_MARGIN if self.margin is None else float(self.margin)

    def rule(self) -> str:
        return (
            f"passes when, at some factor in {self.factors}, the donor's answer {self.expect_top!r} becomes the top "
            f"token and its probability beats both controls (as many random features injected instead; the "
            f"recipient as its own donor) by more than {self.bar():g}"
        )


def _p_after(ctx: Context, plan, tid: int) -> tuple[float, list]:
    from mechscope.interventions import run_with_edits

    ids = ctx.model.tokenize(plan.prompt).ids
    p = torch.softmax(run_with_edits(ctx.model, ctx.ts, ids, plan.edits, None, plan.skip_patches)[-1], -1)
    return float(p[tid]), ctx.top(p, 3)


def _swap_try(ctx: Context, o: SwapOptions, factor: float, tid: int) -> dict:
    """The swap at one factor and its two controls: p(expected answer) under each, top tokens of the swap."""
    from mechscope.interventions import plan_swap, random_swap, self_swap

    m, ts = ctx.model, ctx.ts
    plan = plan_swap(
        m, ts, o.prompt, o.donor, factor=factor, max_layer=o.max_layer, span=o.span, with_skip=bool(o.with_skip)
    )
    p, after = _p_after(ctx, plan, tid)
    p_rand, _ = _p_after(ctx, random_swap(plan, ts, o.control_seed), tid)
    p_self, _ = _p_after(ctx, self_swap(m, ts, plan, o.max_layer), tid)
    top = after[0][0] == o.expect_top
    return {
        "factor": factor,
        "after": after,
        "p": round(p, 4),
        "p_random": round(p_rand, 4),
        "p_self": round(p_self, 4),
        "top": top,
        "beats": p - max(p_rand, p_self) > o.bar(),
        "n_removed": len(plan.ablate),
        "n_injected": len(plan.inject),
        "swapped": plan.swapped,
    }


def _swap_applicable(ctx: Context, o: SwapOptions, base) -> str | None:
    donor_top = ctx.top(ctx.probs(o.donor), 1)[0][0]
    if donor_top != o.expect_top:
        return f"the model answers the donor with {donor_top!r}, not {o.expect_top!r}"
    if o.expect_before and base[0][0] != o.expect_before:
        return f"the model answers the recipient with {base[0][0]!r}, not {o.expect_before!r}"
    if base[0][0] == o.expect_top:
        return f"the model already answers the recipient with {o.expect_top!r}"
    return None


@experiment("swap")
def exp_swap(ctx: Context, o: SwapOptions) -> Result:
    title = o.title or f"Swap {o.prompt!r} ← {o.donor!r}"
    base = ctx.top(ctx.probs(o.prompt), 3)
    why = _swap_applicable(ctx, o, base)
    if why:
        summary = f"not applicable: {why} (before: {fmt_top(base)})."
        return Result("swap", title, None, summary, {"before": base}, status="not applicable")
    tid = ctx.model.token_id(o.expect_top)
    tries = [_swap_try(ctx, o, f, tid) for f in o.factors]
    passed = any(t["top"] and t["beats"] for t in tries)
    lines = "; ".join(f"×{t['factor']}: {fmt_top(t['after'])}" for t in tries)
    summary = (
        f"before: {fmt_top(base)}. After suppressing {tries[0]['n_removed']} recipient features and injecting "
        f"{tries[0]['n_injected']} donor features ({tries[0]['swapped']})"
        f"{' (with the skip term)' if o.with_skip else ''}: {lines}. "
        f"Expected top token {o.expect_top!r}: {'reached' if any(t['top'] for t in tries) else 'not reached'}"
        f"{', beating the controls' if passed else ''}."
    )
    control = "; ".join(
        f"×{t['factor']}: p({o.expect_top!r}) swap {t['p']:.3f} vs random {t['p_random']:.3f}, self {t['p_self']:.3f}"
        for t in tries
    )
    numbers = {"before": base, "tries": tries}
    status = "passed" if passed else "failed"
    if not passed:
        own = ctx.model.token_id(o.expect_before or base[0][0])

        def measure(p: torch.Tensor) -> float:  # the donor's answer's lead over the recipient's
            return float(p[tid] - p[own])

        status, where, text = where_it_lives(
            ctx, o.prompt, o.donor, measure, lambda b, a: a > 0, f"p({o.expect_top!r}) − p(recipient's answer)"
        )
        numbers.update(where)
        summary += " " + text
    return Result("swap", title, passed, summary, numbers, status=status, control=control)


@dataclass(kw_only=True)
class LocateOptions(ExperimentOptions):
    """Which MLP component carries the difference; passes when the features alone move the answer.

    Precondition: the model answers the recipient with watch[0] and the donor with watch[1]. A failure means
    the features do not carry the difference: "not visible" with this dictionary."""

    prompt: str
    donor: str
    watch: list[str]  # [recipient's answer, donor's answer]
    span: Literal["span", "rest", "diff"] = "rest"

    def __post_init__(self) -> None:
        require(len(self.watch) == 2, f"locate: watch needs two tokens (recipient's, donor's answer), got {self.watch}")

    def single_tokens(self) -> list[str]:
        return list(self.watch) + super().single_tokens()

    def swap_pairs(self) -> list[tuple[str, str]]:
        return [(self.prompt, self.donor)]

    def precondition(self) -> str:
        return f"the model answers the recipient with {self.watch[0]!r} and the donor with {self.watch[1]!r}"

    def rule(self) -> str:
        return (
            f"passes when patching the donor's transcoder-feature part alone (all layers, span {self.span!r}) makes "
            f"{self.watch[1]!r} beat {self.watch[0]!r}; a failure means the features do not carry the difference"
        )


@experiment("locate")
def exp_locate(ctx: Context, o: LocateOptions) -> Result:
    """Which part of the MLPs carries the difference between two prompts (features, skip term or error)."""
    from mechscope.interventions import LOCATE_COMPONENTS, locate_concept

    watch = o.watch
    title = o.title or f"Where does {o.prompt!r} vs {o.donor!r} live?"
    tops = [ctx.top(ctx.probs(x), 1)[0][0] for x in (o.prompt, o.donor)]
    if tops != list(watch):
        why = f"the model answers the recipient with {tops[0]!r} and the donor with {tops[1]!r}, not {watch}"
        return Result("locate", title, None, f"not applicable: {why}.", {"tops": tops}, status="not applicable")
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
    control = f"unpatched: {watch[0]!r} {p['none'][0]:.3f} / {watch[1]!r} {p['none'][1]:.3f}"
    status = "passed" if passed else "not visible"
    return Result("locate", title, passed, summary, {"probs": p}, status=status, control=control)
