"""Steer and ablate: set / scale / zero features and compare the next-token distribution before and after."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.guards import check_forward
from mechscope.interventions.generation import continue_pair, prompt_pair
from mechscope.edits import Edit, check_edits, run_with_edits
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


def _topk(logits: Tensor, tok, k: int) -> list[dict]:
    p = torch.softmax(logits, -1)
    v, i = p.topk(k)
    return [{"token": tok.decode([int(t)]), "id": int(t), "prob": float(x)} for x, t in zip(v, i)]


def intervene(
    model: ModelAdapter,
    ts: Source,
    prompt: str,
    edits: list[Edit],
    generate: int = 0,
    freeze_attention: bool = False,
    top_k: int = 5,
    chat: bool = False,
    watch: list[str] | None = None,
    skip_patches: dict[int, dict[int, Tensor]] | None = None,
    logit_ids: list[int] | None = None,
) -> dict:
    """Apply edits; report top-k next-token probabilities (and generations) before and after.

    logit_ids: tokens whose centred logit (logit − mean logit, what a graph's logit node reads) before and after is
    reported as `logits`, so a graph's predicted change can be set beside the measured one.

    >>> res = intervene(m, ts, "Dallas is in the state of", parse_edits([], ["12/345@5=-2"], []))   # doctest: +SKIP
    """
    toks = model.tokenize(prompt, chat=chat)
    ids = toks.ids
    if generate < 0:
        raise MechscopeError("--generate must be ≥ 0")
    check_forward(
        model, ts, ids.shape[0], generate=generate, what=f"intervening on {ids.shape[0]} tokens (+{generate} generated)"
    )
    edits = check_edits(model, ts, edits, ids.shape[0])
    bad = [i for i in logit_ids or [] if not 0 <= i < model.vocab_size]
    if bad:
        raise MechscopeError(f"logit id {bad[0]} is not a token id (the vocabulary has {model.vocab_size})")
    pair = None  # the prompt's KV cache, unedited and edited, when there is something to generate
    if generate and not freeze_attention:  # one batched pass answers both and fills the cache: [1, vocab] each
        pair = prompt_pair(model, ts, ids, edits, skip_patches)
        clean, after = pair.logits[:1], pair.logits[1:]
    else:
        patterns: dict[int, Tensor] = {}
        with torch.no_grad(), model.attention_patterns(record=patterns):
            clean = model.forward(ids[None].to(model.device))[0].float()
        after = run_with_edits(model, ts, ids, edits, patterns if freeze_attention else None, skip_patches)
        if generate:  # generation never freezes attention: its own pass
            pair = prompt_pair(model, ts, ids, edits, skip_patches)
    res = {
        "prompt": prompt,
        "prompt_tokens": toks.strs,
        "edits": [{"feature": str(e.ref), "mode": e.mode, "value": e.value} for e in edits],
        "freeze_attention": freeze_attention,
        "before": _topk(clean[-1], model.tokenizer, top_k),
        "after": _topk(after[-1], model.tokenizer, top_k),
    }
    if watch:
        pb, pa = torch.softmax(clean[-1], -1), torch.softmax(after[-1], -1)
        res["watch"] = [
            {"token": w, "before": float(pb[model.token_id(w)]), "after": float(pa[model.token_id(w)])} for w in watch
        ]
        hints = _watch_hints(model, pb, watch)
        if hints:
            res["watch_hints"] = hints
    if logit_ids:
        cb, ca = clean[-1] - clean[-1].mean(), after[-1] - after[-1].mean()
        res["logits"] = [
            {"id": i, "token": model.tokenizer.decode([i]), "before": float(cb[i]), "after": float(ca[i])}
            for i in logit_ids
        ]
    if pair is not None:
        gen = continue_pair(model, ts, pair, generate)
        res["generation_before"], res["generation_after"] = (model.tokenizer.decode(g.tokens) for g in gen)
    return res


def _watch_hints(model: ModelAdapter, probs: Tensor, watch: list[str]) -> list[str]:
    """`--watch Texas` when the model says " Texas": the same hint as a trace's `--target` gets."""
    from mechscope.attribution.targets import target_hints
    from mechscope.progress import warn

    hints = target_hints(model, probs, watch, what="watched token")
    for h in hints:
        warn(h)
    return hints
