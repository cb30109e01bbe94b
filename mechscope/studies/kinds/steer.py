"""The steer kind: set the features that distinguish one prompt from another, beside two controls of the same
size (random features; the recipient's own most active features), and locate a failure (evidence)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mechscope.configs import require
from mechscope.studies.kinds.common import ControlledOptions, entropy, fmt_top, label
from mechscope.studies.kinds.where import where_it_lives
from mechscope.studies.registry import Context, Result, experiment


@dataclass(kw_only=True)
class SteerOptions(ControlledOptions):
    """Set the features that distinguish `source` from `against` at a position of `prompt`.

    Passes when the measure moves in the expected direction by more than `min_change` and by more than `margin`
    (default: min_change) beyond both controls. Precondition: the model itself shows the move between the
    prompt and the prompt it is steered toward (`toward`: 'source' when prompt is `against`, 'against' when it
    is `source`; give it otherwise) by more than min_change."""

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
    toward: Literal["source", "against"] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.measure != "prob" or self.token is not None, "steer: measure 'prob' needs a token")
        require(self.min_change >= 0, f"steer: min_change must be ≥ 0, got {self.min_change}")

    def single_tokens(self) -> list[str]:
        return ([self.token] if self.token is not None else []) + super().single_tokens()

    def target(self) -> str | None:
        """The prompt the steering moves toward (None: not stated and not inferable)."""
        if self.toward:
            return self.source if self.toward == "source" else self.against
        return self.source if self.prompt == self.against else self.against if self.prompt == self.source else None

    def what(self) -> str:
        return "next-token entropy (nats)" if self.measure == "entropy" else f"p({self.token!r})"

    def precondition(self) -> str | None:
        t = self.target()
        if t is None:
            return super().precondition()
        return (
            f"the model's {self.what()} {self.expect}s from {self.prompt!r} to {t!r} by more than {self.min_change:g}"
        )

    def control_problem(self) -> str | None:
        if self.top_n < 1:
            return "top_n must be ≥ 1 (the controls move as many features as the experiment)"
        if self.source == self.against:
            return "source and against are the same prompt: no features distinguish them"
        return None

    def bar(self) -> float:
        return float(self.min_change if self.margin is None else self.margin)

    def rule(self) -> str:
        return (
            f"passes when the {self.what()} moves in the expected direction ({self.expect}) by more than "
            f"{self.min_change:g}, and by more than {self.bar():g} beyond both controls ({self.top_n} random features "
            f"edited alike; the prompt's own {self.top_n} most active features set to {self.factor:g}× themselves)"
        )


def _measure(ctx: Context, o: SteerOptions):
    tid = ctx.model.token_id(o.token) if o.measure == "prob" else None
    return (lambda p: entropy(p)) if tid is None else (lambda p: float(p[tid]))


def _effect(o: SteerOptions, before: float, after: float) -> float:
    return before - after if o.expect == "decrease" else after - before


def _edits(ctx: Context, o: SteerOptions, pos: int, active: dict):
    from mechscope.interventions import Edit, FeatureRef, active_features

    m = ctx.model
    src_ids, ag_ids = m.tokenize(o.source).ids, m.tokenize(o.against).ids
    src = {(l, f): a for l, f, a in active_features(m, ctx.ts, src_ids, o.source_pos % len(src_ids))}
    ag = {(l, f): a for l, f, a in active_features(m, ctx.ts, ag_ids, o.against_pos % len(ag_ids))}
    distinct = sorted(((k, a - ag.get(k, 0.0)) for k, a in src.items()), key=lambda t: -t[1])[: o.top_n]
    edits = [Edit(FeatureRef(l, f, pos), "set", src[(l, f)] * float(o.factor)) for (l, f), _ in distinct]
    own = sorted(((l, f, a) for (l, p), fs in active.items() for f, a in fs.items()), key=lambda t: -t[2])
    self_edits = [Edit(FeatureRef(l, f, pos), "set", a * float(o.factor)) for l, f, a in own[: o.top_n]]
    return distinct, edits, self_edits


@experiment("steer")
def exp_steer(ctx: Context, o: SteerOptions) -> Result:
    from mechscope.interventions import active_features, random_like, run_with_edits

    m, title = ctx.model, o.title or f"Steer {o.prompt!r} with {o.source!r} − {o.against!r}"
    measure, target = _measure(ctx, o), o.target()
    ids = m.tokenize(o.prompt).ids
    pos = o.pos % len(ids)
    with torch.no_grad():
        before = torch.softmax(m.forward(ids[None])[0, -1].float(), -1)
    b = measure(before)
    if target is not None and not _effect(o, b, measure(ctx.probs(target))) > o.min_change:
        t = measure(ctx.probs(target))
        why = f"the model's {o.what()} is {b:.3f} for the prompt and {t:.3f} for {target!r}, not the {o.expect} the claim needs"
        return Result(
            "steer", title, None, f"not applicable: {why}.", {"before": b, "target": t}, status="not applicable"
        )
    active: dict = {}
    for l, f, a in active_features(m, ctx.ts, ids, pos):
        active.setdefault((l, pos), {})[f] = a
    distinct, edits, self_edits = _edits(ctx, o, pos, active)
    runs = {"steer": edits, "random": random_like(edits, ctx.ts, active, o.control_seed), "self": self_edits}
    with torch.no_grad():
        after = {k: torch.softmax(run_with_edits(m, ctx.ts, ids, e)[-1], -1) for k, e in runs.items()}
    eff = {k: _effect(o, b, measure(p)) for k, p in after.items()}
    a = measure(after["steer"])
    passed = eff["steer"] > o.min_change and eff["steer"] - max(eff["random"], eff["self"]) > o.bar()
    feats = [f"{l}/{f}" + (f" “{label(ctx, l, f)}”" if label(ctx, l, f) else "") for (l, f), _ in distinct]
    summary = (
        f"{len(edits)} features that are more active at {o.source!r} than at {o.against!r} set to {o.factor}× "
        f"their activation at {o.prompt!r}[{pos}]: {o.what()} {b:.3f} → {a:.3f} (expected to {o.expect}"
        f"{f' by more than {o.min_change:g}' if o.min_change else ''}). "
        f"Top tokens before: {fmt_top(ctx.top(before))}; after: {fmt_top(ctx.top(after['steer']))}."
    )
    control = f"move in the expected direction: steer {eff['steer']:+.3f}, random {eff['random']:+.3f}, self {eff['self']:+.3f}"
    numbers = {"before": b, "after": a, "effects": eff, "features": feats}
    status = "passed" if passed else "failed"
    if not passed and target is not None:
        status, where, text = where_it_lives(
            ctx, o.prompt, target, measure, lambda x, y: _effect(o, x, y) > o.min_change, o.what()
        )
        numbers.update(where)
        summary += " " + text
    return Result("steer", title, passed, summary, numbers, status=status, control=control)
