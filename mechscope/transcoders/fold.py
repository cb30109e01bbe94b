"""Folding the constant part of always-on latents into the decoder bias.

A latent that fires on every token of a text with activation a ≥ m there writes at least m·W_dec[i] everywhere: a
constant that belongs in b_dec. The fold moves it: b_dec += m·W_dec[i], and the latent's activation drops by m
(b_enc[i] −= m; a JumpReLU threshold θ becomes max(θ − m, 0)). What is left is the part that varies with the
token, which is what an attribution graph should show.

Where it is exact, and where not:

* On the measured text, exact up to float rounding, by choice of m. A latent firing on every token keeps firing
  with a − m (its decoder output plus the bias gives the same sum). For TopK, lowering a pre-activation could let
  an unchosen latent into the top k; m is therefore also at most the latent's smallest margin over the best
  unchosen pre-activation on the text (minus a small tolerance), so the TopK choice is the same on every token
  measured. JumpReLU keeps its choice because pre-activation and threshold move together.
* With `min_density` below 1, on the tokens of the text where a folded latent was silent the output gains
  m·W_dec[i] (reported as `max_abs_change`).
* On other text: where a folded latent is silent, the output gains m·W_dec[i]; for TopK, where its margin is
  below m, a latent that was chosen can drop out of the top k; for JumpReLU with θ < m, activations in (θ, m] are
  cut to 0 (the bias keeps m of them).
* Saved as float16, bfloat16 or int8 (whose biases are float16), b_enc is rounded towards a smaller fold, so the
  TopK choice survives the rounding; b_dec's rounding is storage error, as in any saved set.

>>> rep = fold_dense(model, ts, "shipped:gemma3-270m", tokens=16384)      # doctest: +SKIP
>>> rep["folded"], rep["max_abs_change"]                                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.transcoders.module import TranscoderSet

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

#: a TopK fold stays this share of the pre-activations' scale inside the smallest margin (float rounding)
MARGIN_TOL = 1e-4


@dataclass
class LayerStats:
    """One layer's latents over the text: tokens where each fired, and (over those tokens) the smallest activation,
    the smallest TopK margin (chosen pre-activation − best unchosen one) and the activation sum."""

    fired: Tensor
    min_act: Tensor
    min_margin: Tensor
    act_sum: Tensor
    pre_scale: Tensor

    @classmethod
    def empty(cls, f: int) -> LayerStats:
        inf = torch.full((f,), float("inf"), dtype=torch.float64)
        zeros = torch.zeros(f, dtype=torch.float64)
        return cls(torch.zeros(f, dtype=torch.long), inf.clone(), inf.clone(), zeros, zeros.clone())

    def add(self, pre: Tensor, acts: Tensor, k: int | None) -> None:
        """pre, acts: [n, F] of one batch; k: the TopK k (None for thresholded activations)."""
        on = acts > 0
        inf = torch.tensor(float("inf"), dtype=acts.dtype)
        self.fired += on.sum(0).cpu()
        self.min_act = torch.minimum(self.min_act, torch.where(on, acts, inf).amin(0).double().cpu())
        self.act_sum += acts.sum(0).double().cpu()
        self.pre_scale = torch.maximum(self.pre_scale, pre.abs().amax(0).double().cpu())
        if k is not None and k < pre.shape[-1]:
            best_out = pre.topk(k + 1, dim=-1).values[:, k : k + 1]  # the best unchosen pre-activation per token
            margin = torch.where(on, pre - best_out, inf).amin(0)
            self.min_margin = torch.minimum(self.min_margin, margin.double().cpu())


def _text_inputs(model: ModelAdapter, corpus: str, tokens: int, seq_len: int, batch: int) -> Iterator[list[Tensor]]:
    """Per batch, every layer's MLP inputs [n, d] of exactly `tokens` tokens of the held-out text (position 0
    of each sequence left out), read as the census reads it."""
    from mechscope.corpus.sources import chunk_stream

    sites = [f"blocks.{l}.hook_mlp_in" for l in range(model.n_layers)]
    chunks = chunk_stream(model.tokenizer, corpus, "heldout", seq_len, seed=0, chunk_buffer=0)
    n = 0
    while n < tokens:
        got = [c for _, c in zip(range(batch), chunks)]
        if not got:
            break
        with torch.no_grad():
            cache = model.run_with_cache(torch.stack(got).to(model.device), sites, logits=False)
        need = min(tokens - n, len(got) * (seq_len - 1))
        n += need
        yield [cache[s][:, 1:].flatten(0, 1)[:need].float() for s in sites]
    if n == 0:
        raise MechscopeError(f"corpus {corpus} has too little held-out text for one sequence of {seq_len} tokens")


@torch.no_grad()
def measure(model: ModelAdapter, ts: TranscoderSet, corpus: str, tokens: int, seq_len: int = 128, batch: int = 8):
    """(per-layer LayerStats, tokens measured) over the text."""
    stats = [LayerStats.empty(ts.d_transcoder) for _ in range(len(ts))]
    k = ts.cfg.k if ts.cfg.activation == "topk" else None
    n = 0
    for xs in _text_inputs(model, corpus, tokens, seq_len, batch):
        for l, x in enumerate(xs):
            pre = ts[l].pre_acts(x)
            stats[l].add(pre, ts[l].activation(pre), k)
        n += xs[0].shape[0]
    return stats, n


def _shift_towards_less(b: Tensor, target: Tensor, dtype: str) -> Tensor:
    """b − m rounded to the storage's bias precision, never below `target` = b − m (a smaller fold, not larger)."""
    store = {"float16": torch.float16, "int8": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    if store is None:
        return target
    r = target.to(store)
    up = torch.nextafter(r, torch.full_like(r, float("inf")))
    return torch.where(r.float() < target, up, r).float()


@torch.no_grad()
def apply_fold(ts: TranscoderSet, stats: list[LayerStats], n: int, min_density: float, dtype: str) -> list[dict]:
    """Fold every latent firing on at least `min_density` of the n tokens (see the module); edits `ts` in place and
    returns one row per folded latent (layer, latent, density, shift, share of its mean activation moved)."""
    rows = []
    for l, (tc, st) in enumerate(zip(ts, stats)):
        dense = st.fired >= max(1, min_density * n)
        m = st.min_act.clone()
        if tc.cfg.activation == "topk":
            m = torch.minimum(m, st.min_margin - MARGIN_TOL * st.pre_scale)
        chosen = (dense & (m > 0)).nonzero().squeeze(-1)
        if len(chosen) == 0:
            continue
        b_old = tc.b_enc.data[chosen].float()
        b_new = _shift_towards_less(b_old, b_old - m[chosen].float(), dtype)
        shift = b_old - b_new  # what is actually folded, after the storage's rounding
        tc.b_dec.data += (shift.unsqueeze(-1) * tc.W_dec.data[chosen].float()).sum(0).to(tc.b_dec.dtype)
        tc.b_enc.data[chosen] = b_new.to(tc.b_enc.dtype)
        th = tc.threshold.data[chosen]
        tc.threshold.data[chosen] = torch.where(th > 0, (th - shift).clamp_min(0), th).to(th.dtype)
        mean = st.act_sum[chosen] / st.fired[chosen].clamp_min(1)
        for i, s, mu in zip(chosen.tolist(), shift.tolist(), mean.tolist()):
            rows.append(
                {
                    "layer": l,
                    "latent": i,
                    "density": round(float(st.fired[i]) / n, 4),
                    "shift": round(s, 6),
                    "moved_share": round(s / mu, 4) if mu > 0 else 0.0,
                }
            )
    return rows


@torch.no_grad()
def compare(
    model: ModelAdapter, before: TranscoderSet, after: TranscoderSet, corpus: str, tokens: int, seq_len: int, batch: int
) -> dict:
    """Largest change of any layer's reconstruction on the text, absolute and relative to the output's RMS."""
    worst, sq, count = 0.0, 0.0, 0
    for xs in _text_inputs(model, corpus, tokens, seq_len, batch):
        for l, x in enumerate(xs):
            y0, y1 = before[l](x), after[l](x)
            worst = max(worst, float((y1 - y0).abs().max()))
            sq += float(y0.pow(2).sum())
            count += y0.numel()
    rms = (sq / max(1, count)) ** 0.5
    return {"max_abs_change": worst, "max_change_over_rms": worst / rms if rms > 0 else 0.0}


def fold_dense(
    model: ModelAdapter,
    ts: TranscoderSet,
    corpus: str = "shipped:gemma3-270m",
    tokens: int = 16384,
    min_density: float = 1.0,
    seq_len: int = 128,
    batch: int = 8,
    dtype: str = "float32",
    verify: bool = True,
) -> dict:
    """Fold the constant part of every latent firing on ≥ `min_density` of `tokens` held-out tokens of `corpus`
    into b_dec (in place; see the module); `dtype`: the precision the set will be saved in. Returns the folded
    latents, their count per layer and, with `verify`, the largest change of the reconstruction on the text.

    >>> rep = fold_dense(model, ts, tokens=16384)   # doctest: +SKIP
    >>> rep["folded"], rep["per_layer"][:3]         # doctest: +SKIP
    (9, [0, 1, 0])
    """
    if getattr(ts, "kind", "plt") != "plt":
        raise MechscopeError("fold-dense folds per-layer transcoder sets; this is a cross-layer transcoder")
    if ts.cfg.activation not in ("topk", "jumprelu", "relu"):
        raise MechscopeError(f"fold-dense does not know the activation {ts.cfg.activation!r}")
    if not 0 < min_density <= 1:
        raise MechscopeError("--min-density is a share of tokens: give a value in (0, 1]")
    before = copy.deepcopy(ts) if verify else None
    stats, n = measure(model, ts, corpus, tokens, seq_len, batch)
    rows = apply_fold(ts, stats, n, min_density, dtype)
    per_layer = [sum(r["layer"] == l for r in rows) for l in range(len(ts))]
    rep = {"corpus": corpus, "tokens": n, "min_density": min_density, "folded": len(rows), "per_layer": per_layer}
    rep["latents"] = rows
    if before is not None:
        rep.update(compare(model, before, ts, corpus, tokens, seq_len, batch))
    return rep
