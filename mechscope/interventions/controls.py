"""Controls for feature interventions: the same edit made with features that should not matter.

An intervention that flips an answer only says something about the features it moved if moving other features
of the same size does not flip it too. Two controls, both built from an intervention's own edits:

* `random_like`: the same number of edits in the same layers and positions, with the same modes and values,
  on features drawn at random (never one the intervention itself edits). Injections draw from the whole layer;
  edits that lower an active feature (ablations, `set` below its activation) draw from the features active
  there, so the control removes as much as the intervention does instead of zeroing silent features.
* `self_swap`: a concept swap whose donor is the recipient itself (the recipient's own features re-injected at
  the same positions, × the same factor): what the factor alone does.

>>> plan = plan_swap(m, ts, "Dallas is in the state of", "Oakland is in the state of", factor=2)   # doctest: +SKIP
>>> run_plan(m, ts, random_swap(plan, ts, active, seed=0))["after"][0]                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from mechscope.errors import MechscopeError
from mechscope.interventions.swap import SwapPlan, plan_swap
from mechscope.edits import Edit, FeatureRef
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

Active = dict[tuple[int, int], dict[int, float]]  # (layer, pos) -> {feature: activation} where it is active


def _draw(pool: list[int], k: int, gen: torch.Generator) -> list[int]:
    if len(pool) < k:
        raise MechscopeError(f"the random control needs {k} features to draw from, only {len(pool)} are left")
    return [pool[int(i)] for i in torch.randperm(len(pool), generator=gen)[:k]]


def random_like(edits: list[Edit], ts: Source, active: Active, seed: int = 0) -> list[Edit]:
    """Edits of the same size on random other features (see the module docstring); deterministic per seed.

    `active`: the features active at each edited (layer, position) of the prompt edited, with their activations.

    >>> from mechscope.edits import Edit, FeatureRef
    >>> random_like([Edit(FeatureRef(0, 3, 1), "set", 2.0)], ts, {(0, 1): {}}, seed=0)
    [Edit(ref=FeatureRef(layer=0, feature=..., pos=1), mode='set', value=2.0)]
    """
    gen = torch.Generator().manual_seed(seed)
    groups: dict[tuple[int, int | None, bool], list[Edit]] = {}
    for e in edits:
        act = active.get((e.ref.layer, e.ref.pos), {})
        lowers = (
            e.mode == "ablate"
            or (e.mode == "scale" and e.value < 1)
            or (e.mode == "set" and e.value < act.get(e.ref.feature, 0.0))
        )
        groups.setdefault((e.ref.layer, e.ref.pos, lowers), []).append(e)
    used = {(e.ref.layer, e.ref.pos, e.ref.feature) for e in edits}
    out: list[Edit] = []
    for (l, p, lowers), es in groups.items():
        if lowers:  # remove as much as the intervention does: other features that are on there
            pool = [f for f in active.get((l, p), {}) if (l, p, f) not in used]
        else:
            pool = [f for f in range(ts.d_transcoder) if (l, p, f) not in used]
        for e, f in zip(es, _draw(sorted(pool), len(es), gen)):
            value = e.value
            if lowers and e.mode == "set":  # the same relative cut on the drawn feature
                own = active[(l, p)][e.ref.feature]
                value = active[(l, p)][f] * (e.value / own if own else 0.0)
            out.append(Edit(FeatureRef(l, f, p), e.mode, value))
    return out


def random_swap(plan: SwapPlan, ts: Source, seed: int = 0) -> SwapPlan:
    """The swap's random-feature control: the same ablation (and skip patch), the donor's injected features
    replaced by as many random features of the same layers and positions, set to the same values."""
    return dataclasses.replace(plan, inject=random_like(plan.inject, ts, {}, seed))


def self_swap(model: ModelAdapter, ts: Source, plan: SwapPlan, max_layer: int | None = None) -> SwapPlan:
    """The donor-is-recipient control: the recipient's own features (and skip term) at the swapped positions,
    re-injected there × the same factor; at factor 1 this is the unedited model."""
    pos = list(dict.fromkeys(r for r, _ in plan.pairs))  # every swapped position, suppressed-only ones too
    return plan_swap(
        model,
        ts,
        plan.prompt,
        plan.prompt,
        pos=pos,
        donor_pos=pos,
        factor=plan.factor,
        max_layer=max_layer,
        span=plan.span,
        with_skip=plan.with_skip,
    )
