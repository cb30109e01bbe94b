"""The lens's swap measurement: each judged pair's features-only swap at every factor, and its aggregates.

Shared by the full run (`evaluate_lens`), the swaps-only pass (`eval-lens --subset swaps`, `evaluate_swaps`) and
the probes (`probe-lens`), so the three report the same numbers for the same pairs.

>>> res = evaluate_swaps(m, ts, load_suite(), LensConfig(subset="swaps"))      # doctest: +SKIP
>>> res["overall"]["swap_success"], res["overall"]["swap_success_x2"]         # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import torch

from mechscope.errors import MechscopeError
from mechscope.lens.config import LensConfig
from mechscope.lens.suite import CATEGORIES, Suite, SwapPair
from mechscope.edits import Edit

SWAP_TARGET = 0.60  # the target for swap_success (also in evaluate.TARGETS)


@torch.no_grad()
def clean_top1(model, text: str) -> int:
    """The model's own top-1 next token after `text` (no transcoders); logits at the last position only."""
    h = model.forward(model.tokenize(text).ids[None].to(model.device), logits=False)[0, -1]
    return int(model.logits_from_resid(h).argmax())


def clean_answers(model, suite: Suite) -> dict[str, int]:
    """{prompt id: the model's top-1} for every prompt that takes part in a swap pair."""
    prompts = suite.by_id()
    in_pairs = {i for s in suite.swaps for i in (s.recipient, s.donor)}
    return {i: clean_top1(model, prompts[i].prompt) for i in sorted(in_pairs)}


def judged(model, pair: SwapPair, prompts: dict, clean: dict[str, int]) -> bool:
    """A swap can only be judged where the model answers both prompts as the suite says, and they differ."""
    r, d = prompts[pair.recipient], prompts[pair.donor]
    want_r, want_d = model.token_id(r.answer), model.token_id(d.answer)
    return clean[r.id] == want_r and clean[d.id] == want_d and want_r != want_d


def swap_row(model, ts, pair: SwapPair, prompts: dict, clean: dict[str, int], cfg: LensConfig) -> dict:
    """One pair's outcome: `applicable` (judged), and per factor the swapped top-1 and whether it is the donor's
    answer (`success_xF`); `success` = any factor. A pair the swap cannot align is recorded as refused."""
    from mechscope.interventions import plan_swap, run_plan

    r, d = prompts[pair.recipient], prompts[pair.donor]
    want_d = model.token_id(d.answer)
    row = {
        "recipient": r.id,
        "donor": d.id,
        "category": r.category,
        "recipient_answer": r.answer,
        "donor_answer": d.answer,
    }
    row["applicable"] = judged(model, pair, prompts, clean)
    if not row["applicable"]:
        row["success"] = None
        return row
    try:
        plan = plan_swap(model, ts, r.prompt, d.prompt, factor=1.0, span=cfg.swap_span, with_skip=False)
    except MechscopeError as err:  # e.g. the pair shares no context to align on: not a swap to judge
        row.update(applicable=False, success=None, refused=str(err))
        return row
    for f in cfg.factors:
        # the plan at factor f is the plan at 1 with every injected value × f (f > 0): planned once, not per factor
        scaled = replace(plan, factor=f, inject=[Edit(e.ref, "set", e.value * f) for e in plan.inject])
        res = run_plan(model, ts, scaled, top_k=3)
        row[f"top1_x{f:g}"] = res["after"][0]["token"]
        row[f"success_x{f:g}"] = res["after"][0]["id"] == want_d
    row["success"] = any(row[f"success_x{f:g}"] for f in cfg.factors)
    return row


def swap_stats(swaps: list[dict], factors: tuple[float, ...]) -> dict:
    """n_pairs, n_pairs_applicable, swap_success (any factor) and swap_success_xF over the judged pairs (None
    when no pair is judged)."""
    ok = [s for s in swaps if s["applicable"]]

    def share(key: str) -> float | None:
        return sum(bool(s[key]) for s in ok) / len(ok) if ok else None

    out: dict = {"n_pairs": len(swaps), "n_pairs_applicable": len(ok), "swap_success": share("success")}
    for f in factors:
        out[f"swap_success_x{f:g}"] = share(f"success_x{f:g}")
    return out


def select(suite: Suite, cfg: LensConfig) -> Suite:
    """The suite as `cfg` selects it: categories, then the quick subset (the swaps subset keeps every pair)."""
    if cfg.categories:
        suite = suite.only(cfg.categories)
    if cfg.subset == "quick":
        suite = suite.quick()
    return suite


def evaluate_swaps(
    model, transcoders, suite: Suite, cfg: LensConfig | None = None, clean: dict[str, int] | None = None
) -> dict:
    """The swaps-only pass: every judged pair's features-only swap at each factor, no graphs, in the JSON shape of
    `evaluate_lens` where the fields overlap (`overall` and `categories` hold only the swap fields; `prompts` and
    `index` are absent, since nothing was measured there). `clean`: the model's answers (`clean_answers`) when
    the caller has them already.

    >>> evaluate_swaps(m, ts, load_suite(), LensConfig(subset="swaps"))["overall"]["swap_success_x1"]  # doctest: +SKIP
    """
    from mechscope.progress import counter

    cfg = cfg or LensConfig(subset="swaps")
    t0 = time.time()
    suite = select(suite.for_model(model.name, model.tokenizer), cfg)
    if not suite.swaps:
        raise MechscopeError("the lens suite has no swap pair left for this model")
    prompts = suite.by_id()
    clean = clean if clean is not None else clean_answers(model, suite)
    # round-robin over categories, as the full run does, so a run cut short by the budget covers them all
    queues: dict[str, list[SwapPair]] = {}
    for s in suite.swaps:
        queues.setdefault(prompts[s.recipient].category, []).append(s)
    order = [q[i] for i in range(max(map(len, queues.values()))) for q in queues.values() if i < len(q)]
    swaps: list[dict] = []
    not_run: list[str] = []
    with counter("lens: swaps", len(order), "pairs", enabled=cfg.progress) as bar:
        for pair in order:
            bar.detail = f"{pair.recipient} <- {pair.donor}"
            if cfg.budget_s and time.time() - t0 > cfg.budget_s:
                not_run.append(f"swap:{pair.recipient}<-{pair.donor}")
            else:
                swaps.append(swap_row(model, transcoders, pair, prompts, clean, cfg))
            bar.update()
    rank = {(s.recipient, s.donor): i for i, s in enumerate(suite.swaps)}
    swaps.sort(key=lambda r: rank[(r["recipient"], r["donor"])])
    cats = {
        c: swap_stats([s for s in swaps if s["category"] == c], cfg.factors)
        for c in CATEGORIES
        if any(s["category"] == c for s in swaps)
    }
    overall = swap_stats(swaps, cfg.factors)
    v = overall["swap_success"]
    return {
        "model": model.name,
        "transcoders": transcoders.meta.get("path", ""),
        "suite": suite.record(),
        "config": asdict(cfg),
        "overall": overall,
        "categories": cats,
        "targets": {
            "swap_success": {"target": SWAP_TARGET, "value": v, "met": None if v is None else v >= SWAP_TARGET}
        },
        "swaps": swaps,
        "not_run": not_run,
        "elapsed_s": round(time.time() - t0, 1),
    }
