"""Concept swap: suppress the recipient prompt's features where it differs from a donor, inject the donor's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.guards import check_forward
from mechscope.progress import warn
from mechscope.interventions.steer import intervene
from mechscope.edits import Edit, FeatureRef, features_at, mlp_inputs
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


SPANS = ("span", "rest", "diff")


def _shared(a: list[str], b: list[str]) -> tuple[int, int]:
    """Lengths of the shared prefix and the shared suffix (not overlapping the prefix)."""
    pre = 0
    while pre < min(len(a), len(b)) and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < min(len(a), len(b)) - pre and a[-1 - suf] == b[-1 - suf]:
        suf += 1
    return pre, suf


def aligned_pairs(a: list[str], b: list[str], span: str = "span", bos: bool = False) -> list[tuple[int, int | None]]:
    """(recipient position, donor position or None) pairs to swap, for token lists `a` (recipient), `b` (donor).

    span='span' (default): the whole differing span, aligned on the shared prefix and suffix and matched from
    its end (a name's last token usually carries the entity); a recipient token with no partner is only
    suppressed (donor None), a donor token with no partner is injected at the span's first recipient position.
    span='rest': that, plus every later position (the shared suffix, e.g. " plays the sport of").
    span='diff': the old default — per position if equally long, else only the span's last token.
    Equally long prompts pair position by position where they differ. `bos`: position 0 is a special token,
    which is no shared context. Raises MechscopeError when the prompts share no context to align on.

    >>> aligned_pairs(["<s>", "Tiger", " Woods", " plays"], ["<s>", "Ser", "ena", " Williams", " plays"], bos=True)
    [(1, 1), (1, 2), (2, 3)]
    """
    if span not in SPANS:
        raise MechscopeError(f"--span {span!r}: expected one of {', '.join(SPANS)}")
    pre, suf = _shared(a, b)
    if pre + suf - int(bos and pre > 0) <= 0:
        raise MechscopeError(
            "the two prompts share no context (no common tokens before or after the swapped span) to align the swap on"
        )
    ra, rb = range(pre, len(a) - suf), range(pre, len(b) - suf)
    if not len(ra) or not len(rb):
        if len(ra) == len(rb):
            return []
        raise MechscopeError(
            "one prompt's differing span is empty (the other only inserts tokens): nothing to align the swap on"
        )
    if len(a) == len(b) and span in ("diff", "span"):
        return [(i, i) for i in ra if a[i] != b[i]]
    if span == "diff":
        return [(ra[-1], rb[-1])]
    pairs: list[tuple[int, int | None]] = []
    for k in range(max(len(ra), len(rb))):  # matched from the span's end
        r = ra[-1 - k] if k < len(ra) else None
        d = rb[-1 - k] if k < len(rb) else None
        pairs.append((ra[0] if r is None else r, d))
    pairs.sort(key=lambda t: (t[0], -1 if t[1] is None else t[1]))
    if span == "rest":
        pairs += [(len(a) - suf + j, len(b) - suf + j) for j in range(suf)]
    return pairs


def alignment_doubts(a: list[str], b: list[str], bos: bool = False) -> list[str]:
    """Why an automatic alignment of recipient `a` and donor `b` may pair unrelated things: the prompts share at
    most one token of context (beyond BOS), or the differing spans' lengths are far apart. Empty when it looks
    like one entity swapped for another in the same sentence.

    >>> alignment_doubts(["<s>", "Dallas", " is", " in"], ["<s>", "Oak", "land", " is", " in"], bos=True)
    []
    >>> alignment_doubts(["<s>", "Dallas", " is", " of"], ["<s>", "The", " big", " city", " of"], bos=True)[0][:40]
    'the prompts share only 1 token of contex'
    """
    pre, suf = _shared(a, b)
    shared = a[int(bos and pre > 0) : pre] + (a[len(a) - suf :] if suf else [])
    ra, rb = a[pre : len(a) - suf], b[pre : len(b) - suf]
    out = []
    if len(shared) <= 1:
        what = ", ".join(repr(t) for t in shared) or "nothing"
        out.append(
            f"the prompts share only {len(shared)} token of context ({what}), so {''.join(ra)!r} is aligned with "
            f"{''.join(rb)!r}: the swap may pair unrelated tokens; give two prompts that differ only in the entity"
        )
    short, long_ = sorted((len(ra), len(rb)))
    if short and long_ >= 3 * short and long_ - short >= 3:
        out.append(
            f"the differing spans have {len(ra)} and {len(rb)} tokens ({''.join(ra)!r} <- {''.join(rb)!r}): they "
            "may not be the same kind of thing; check the printed pairs"
        )
    return out


def aligned_positions(a: list[str], b: list[str], span: str = "span", bos: bool = False) -> tuple[list[int], list[int]]:
    """One-to-one recipient and donor positions of `aligned_pairs` (for patching a component position by
    position): each recipient position with its partner matched from the span's end; unmatched ones dropped."""
    return one_to_one(aligned_pairs(a, b, span, bos))


def one_to_one(pairs: list[tuple[int, int | None]]) -> tuple[list[int], list[int]]:
    """Each recipient position once, with its last donor partner (the end-matched one, not a folded one)."""
    pa, pb, seen = [], [], set()
    for r, d in sorted((t for t in pairs if t[1] is not None), key=lambda t: (t[0], -t[1])):
        if r not in seen:
            seen.add(r)
            pa.append(r)
            pb.append(d)
    return pa, pb


def describe_pairs(a: list[str], b: list[str], pairs: list[tuple[int, int | None]]) -> str:
    """'1 'Tiger' ← 1 'Ser', …' — which recipient positions received which donor positions."""
    return ", ".join(f"{r} {a[r]!r} ← " + ("(suppressed only)" if d is None else f"{d} {b[d]!r}") for r, d in pairs)


@dataclass
class SwapPlan:
    """What a swap edits, before it runs: the recipient's features ablated, the donor's injected (each `set` to
    factor × its donor activation at the paired recipient position), the skip patches (with_skip) and the pairs.
    Controls (`mechscope.interventions.controls`) rebuild it with other features of the same size."""

    prompt: str
    donor: str
    pairs: list[tuple[int, int | None]]
    swapped: str
    ablate: list[Edit]
    inject: list[Edit]
    skip_patches: dict[int, dict[int, Tensor]] | None
    factor: float
    span: str
    with_skip: bool
    remove: list[Edit] | None = None
    doubts: list[str] = field(default_factory=list)  # why the automatic alignment may pair unrelated tokens
    donor_top: dict | None = None  # the donor prompt's own answer, unmodified: {"token", "id", "prob"}

    @property
    def edits(self) -> list[Edit]:
        return list(self.remove or []) + self.ablate + self.inject

    def info(self) -> dict:
        """The JSON-able description `swap` adds to its result."""
        return {
            "donor": self.donor,
            "positions": list(dict.fromkeys(r for r, _ in self.pairs)),
            "donor_positions": [q for _, q in self.pairs if q is not None],
            "pairs": [list(t) for t in self.pairs],
            "swapped": self.swapped,
            "factor": self.factor,
            "span": self.span,
            "with_skip": self.with_skip,
            "removed": [str(e.ref) for e in self.remove] if self.remove else [str(e.ref) for e in self.ablate],
            "injected": [f"{e.ref}={e.value:.3g}" for e in self.inject],
            "n_edits": len(self.edits),
            "alignment_warnings": self.doubts,
        }


@torch.no_grad()
def donor_run(model: ModelAdapter, ids: Tensor) -> tuple[list[Tensor], dict]:
    """One forward of the donor prompt: every layer's MLP input (as `mlp_inputs`) and its own top-1 answer
    {"token", "id", "prob"}; the logits are computed at the last position only (Gemma's output layer is large)."""
    sites = [f"blocks.{l}.hook_mlp_in" for l in range(model.n_layers)]
    cache: dict[str, Tensor] = {}

    def saver(site: str):
        def fn(x: Tensor) -> None:
            cache[site] = x.detach()

        return fn

    with model.hooks({s: saver(s) for s in sites}):
        h = model.forward(ids[None].to(model.device), logits=False)[0, -1]
    p = torch.softmax(model.logits_from_resid(h).float(), -1)
    top = int(p.argmax())
    answer = {"token": model.tokenizer.decode([top]), "id": top, "prob": float(p[top])}
    return [cache[s][0] for s in sites], answer


def _bos_first(model: ModelAdapter, toks) -> bool:
    bos = model.tokenizer.bos_token_id
    return bos is not None and int(toks.ids[0]) == bos


def _pairs(
    model: ModelAdapter, rt, dt, span: str, pos: list[int] | None, donor_pos: list[int] | None
) -> list[tuple[int, int | None]]:
    """The (recipient, donor) position pairs: given ones (the other side aligned), else `aligned_pairs`."""
    bos_first = _bos_first(model, rt)
    if not (pos or donor_pos):
        return aligned_pairs(rt.strs, dt.strs, span, bos=bos_first)
    if not (pos and donor_pos):  # the other side defaults to the aligned one-to-one positions
        ap, ad = one_to_one(aligned_pairs(rt.strs, dt.strs, span, bos=bos_first))
        pos, donor_pos = pos or ap, donor_pos or ad
    if len(pos) != len(donor_pos):
        raise MechscopeError("--pos and --donor-pos need the same number of positions")
    for name, ps, n in (("--pos", pos, len(rt.strs)), ("--donor-pos", donor_pos, len(dt.strs))):
        bad = [p for p in ps if not -n <= p < n]
        if bad:
            raise MechscopeError(f"{name} {bad[0]} out of range for a {n}-token prompt")
    return [(p % len(rt.strs), q % len(dt.strs)) for p, q in zip(pos, donor_pos)]


def plan_swap(
    model: ModelAdapter,
    ts: Source,
    prompt: str,
    donor: str,
    remove: list[Edit] | None = None,
    pos: list[int] | None = None,
    donor_pos: list[int] | None = None,
    factor: float = 1.0,
    max_layer: int | None = None,
    span: str = "span",
    with_skip: bool = False,
    generate: int = 0,
) -> SwapPlan:
    """The edits of `swap` (same arguments), without running them.

    >>> plan = plan_swap(m, ts, "Dallas is in the state of", "Oakland is in the state of")
    >>> {e.mode for e in plan.inject}                 # each donor feature `set` to factor × its donor activation
    {'set'}
    """
    if not math.isfinite(factor):
        raise MechscopeError("--factor must be finite")
    rt, dt = model.tokenize(prompt), model.tokenize(donor)
    n_max = max(len(rt.strs), len(dt.strs))
    check_forward(
        model, ts, n_max, generate=max(generate, 0), what=f"swapping on {n_max} tokens (+{generate} generated)"
    )
    pairs = _pairs(model, rt, dt, span, pos, donor_pos)
    if not pairs:
        raise MechscopeError("the prompts do not differ: give --pos and --donor-pos")
    doubts = [] if (pos or donor_pos) else alignment_doubts(rt.strs, dt.strs, bos=_bos_first(model, rt))
    for d in doubts:
        warn(f"swap: {d}")
    max_layer = model.n_layers - 1 if max_layer is None else max_layer
    xr = mlp_inputs(model, rt.ids) if remove is None else []  # one forward per prompt, not per position
    xd, donor_top = donor_run(model, dt.ids)  # the donor's answer costs no extra forward
    ablate: list[Edit] = []
    if remove is None:
        for p in dict.fromkeys(r for r, _ in pairs):  # each recipient position once, in order
            ablate += [Edit(FeatureRef(l, f, p), "ablate") for l, f, _ in features_at(ts, xr, p) if l <= max_layer]
    inject: dict[tuple[int, int, int], float] = {}  # (layer, feature, recipient pos) -> value
    for p, q in pairs:
        if q is None:
            continue
        for l, f, a in features_at(ts, xd, q):
            if l <= max_layer:  # a donor span longer than the recipient's folds in: the larger value wins
                inject[(l, f, p)] = max(inject.get((l, f, p), 0.0), a * factor)
    skip_patches = None
    if with_skip:  # the skip term of each recipient position becomes its end-matched partner's
        one = dict(zip(*one_to_one(pairs)))
        skip_patches = {l: {p: xd[l][q] for p, q in one.items()} for l in range(max_layer + 1)}
    return SwapPlan(
        prompt,
        donor,
        pairs,
        describe_pairs(rt.strs, dt.strs, pairs),
        ablate,
        [Edit(FeatureRef(l, f, p), "set", v) for (l, f, p), v in inject.items()],
        skip_patches,
        factor,
        span,
        with_skip,
        list(remove) if remove else None,
        doubts,
        donor_top,
    )


def run_plan(model: ModelAdapter, ts: Source, plan: SwapPlan, generate: int = 0, top_k: int = 5, watch=None) -> dict:
    """Run a planned swap (or a control built from one): `intervene`'s result plus the plan's description, and
    `donor_answer`: the donor prompt's own top-1 answer (`prob`: in the donor run, unmodified) with its
    probability and rank after the swap when it is among the top_k (else None) — a swap cannot be expected to
    give the donor's answer where the donor prompt itself does not."""
    res = intervene(
        model, ts, plan.prompt, plan.edits, generate=generate, top_k=top_k, watch=watch, skip_patches=plan.skip_patches
    )
    res.update(plan.info())
    if plan.donor_top:
        hit = [(k, r) for k, r in enumerate(res["after"], 1) if r["id"] == plan.donor_top["id"]]
        res["donor_answer"] = {
            **plan.donor_top,
            "after": hit[0][1]["prob"] if hit else None,
            "rank_after": hit[0][0] if hit else None,
        }
    return res


def swap(
    model: ModelAdapter,
    ts: Source,
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
    span: str = "span",
    with_skip: bool = False,
) -> dict:
    """Concept transplant: suppress the recipient's concept features and inject the donor's.

    Positions default to `aligned_pairs(span)`: the whole span where the prompts differ (" Tiger Woods" vs
    " Serena Williams", of any token lengths), aligned on their shared context; span='rest' adds every later
    position. With `remove=None` ("auto") every feature active at a swapped recipient position at layers ≤
    max_layer is ablated and the donor's features at its partner position(s) are set to factor × their donor
    activation. with_skip also replaces the transcoders' linear skip term there by the donor's (the part of the
    MLP that no feature represents; see `locate_concept`). The result's `swapped` says which recipient
    positions received which donor positions.

    >>> swap(m, ts, "Michael Jordan plays the sport of", "Tiger Woods plays the sport of", factor=1.5)  # doctest: +SKIP
    """
    if generate < 0:
        raise MechscopeError("--generate must be ≥ 0")
    plan = plan_swap(model, ts, prompt, donor, remove, pos, donor_pos, factor, max_layer, span, with_skip, generate)
    return run_plan(model, ts, plan, generate=generate, top_k=top_k, watch=watch)
