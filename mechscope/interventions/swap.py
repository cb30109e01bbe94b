"""Concept swap: suppress the recipient prompt's features where it differs from a donor, inject the donor's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

from mechscope.errors import MechscopeError
from mechscope.guards import check_forward
from mechscope.interventions.steer import intervene
from mechscope.transcoders.edits import Edit, FeatureRef, features_at, mlp_inputs
from mechscope.transcoders.module import TranscoderSet

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


def _differing_positions(a: list[str], b: list[str]) -> tuple[list[int], list[int]]:
    """Where two prompts differ: aligned positions if equally long, else the last token of the differing span."""
    if len(a) == len(b):
        d = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return d, d
    pre = 0
    while pre < min(len(a), len(b)) and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < min(len(a), len(b)) - pre and a[-1 - suf] == b[-1 - suf]:
        suf += 1
    if pre >= len(a) - suf or pre >= len(b) - suf:
        return [], []
    return [len(a) - suf - 1], [len(b) - suf - 1]


def aligned_positions(a: list[str], b: list[str], span: str = "diff") -> tuple[list[int], list[int]]:
    """Recipient and donor positions to swap. span='diff': where the prompts differ; span='rest': that,
    plus every later position, aligned from the end (the shared suffix, e.g. " is in the state of")."""
    pa, pb = _differing_positions(a, b)
    if span == "diff" or not pa:
        return pa, pb
    if span != "rest":
        raise MechscopeError(f"--span {span!r}: expected 'diff' or 'rest'")
    first = pa[0] if len(a) == len(b) else pa[-1]
    n = len(a) - first
    if len(b) - n < 0:
        raise MechscopeError("--span rest: the donor is shorter than the recipient's swapped span")
    return list(range(first, len(a))), list(range(len(b) - n, len(b)))


def swap(
    model: ModelAdapter,
    ts: TranscoderSet,
    prompt: str,
    donor: str,
    remove: list[Edit] | None = None,
    pos: list[int] | None = None,
    donor_pos: list[int] | None = None,
    factor: float = 1.0,
    max_layer: int | None = None,
    generate: int = 0,
    top_k: int = 5,
    watch: list[str] | None = None,
    span: str = "diff",
    with_skip: bool = False,
) -> dict:
    """Concept transplant: suppress the recipient's concept features and inject the donor's.

    Positions default to those where the two prompts' tokens differ (e.g. " Dallas" vs " Oakland"), or with
    span='rest' to those and every later position. With `remove=None` ("auto") every feature active there
    at layers ≤ max_layer is ablated and the donor's features at its position are set to factor × their
    donor activation. with_skip also replaces the transcoders' linear skip term there by the donor's
    (the part of the MLP that no feature represents; see `locate_concept`).

    >>> swap(m, ts, "Michael Jordan plays the sport of", "Tiger Woods plays the sport of", span="rest", factor=1.5)  # doctest: +SKIP
    """
    if not math.isfinite(factor):
        raise MechscopeError("--factor must be finite")
    rt, dt = model.tokenize(prompt), model.tokenize(donor)
    n_max = max(len(rt.strs), len(dt.strs))
    check_forward(
        model, ts, n_max, generate=max(generate, 0), what=f"swapping on {n_max} tokens (+{generate} generated)"
    )
    diff_r, diff_d = aligned_positions(rt.strs, dt.strs, span)
    pos = pos or diff_r
    donor_pos = donor_pos or diff_d
    if not pos or not donor_pos:
        raise MechscopeError("the prompts do not differ: give --pos and --donor-pos")
    if len(pos) != len(donor_pos):
        raise MechscopeError("--pos and --donor-pos need the same number of positions")
    for name, ps, n in (("--pos", pos, len(rt.strs)), ("--donor-pos", donor_pos, len(dt.strs))):
        bad = [p for p in ps if not -n <= p < n]
        if bad:
            raise MechscopeError(f"{name} {bad[0]} out of range for a {n}-token prompt")
    pos, donor_pos = [p % len(rt.strs) for p in pos], [q % len(dt.strs) for q in donor_pos]
    max_layer = model.n_layers - 1 if max_layer is None else max_layer
    edits: list[Edit] = []
    removed, injected = [], []
    xr = mlp_inputs(model, rt.ids) if remove is None else []  # one forward per prompt, not per position
    xd = mlp_inputs(model, dt.ids)
    for p, q in zip(pos, donor_pos):
        if remove is None:
            for l, f, a in features_at(ts, xr, p):
                if l <= max_layer:
                    edits.append(Edit(FeatureRef(l, f, p), "ablate"))
                    removed.append(f"{l}/{f}@{p}")
        for l, f, a in features_at(ts, xd, q):
            if l <= max_layer:
                edits.append(Edit(FeatureRef(l, f, p), "set", a * factor))
                injected.append(f"{l}/{f}@{p}={a * factor:.3g}")
    if remove:
        edits = list(remove) + edits
        removed = [str(e.ref) for e in remove]
    skip_patches = None
    if with_skip:
        skip_patches = {l: {p: xd[l][q] for p, q in zip(pos, donor_pos)} for l in range(max_layer + 1)}
    res = intervene(model, ts, prompt, edits, generate=generate, top_k=top_k, watch=watch, skip_patches=skip_patches)
    res.update(
        {
            "donor": donor,
            "positions": pos,
            "donor_positions": donor_pos,
            "factor": factor,
            "span": span,
            "with_skip": with_skip,
            "removed": removed,
            "injected": injected,
            "n_edits": len(edits),
        }
    )
    return res
