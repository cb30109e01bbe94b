"""A feature's logit effects as a dashboard shows them: relative to the mean unembedding, variants merged.

The direct effect of feature f on token t is d_f · diag(g) · u_t (decoder, final-norm gain, unembedding row).
Raw, its top entries are dominated by rare tokens (untrained multilingual pieces) whose unembedding rows all
lean the same way, along the mean unembedding direction ū: a decoder with any component along ū "promotes"
all of them at once. So the effect is taken relative to that direction: the decoder's component along ū is
removed first, (d − (d·ū)ū) · u_t, which leaves the common rise of every token out and ranks the tokens the
feature singles out. Then case and leading-space variants (" Texas", "Texas", " texas") are merged into one
entry, the variant with the largest effect standing for all.

>>> merge_variants([(" Texas", 2.0), ("Texas", 1.5), (" texas", 1.0), (" Ohio", 0.9)], 3)
[(' Texas', 2.0), (' Ohio', 0.9)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from mechscope.features.labels import norm_token

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.models.adapter import ModelAdapter

CANDIDATES = 4  # candidates per kept entry before merging: one word has up to ~4 variants in a vocabulary


def merge_variants(pairs: list[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    """The first n entries of `pairs` (best first) with case / leading-space variants merged into the first."""
    seen: set[str] = set()
    out: list[tuple[str, float]] = []
    for tok, v in pairs:
        k = norm_token(tok) or tok  # whitespace tokens stay apart ("\n" is not " ")
        if k in seen:
            continue
        seen.add(k)
        out.append((tok, v))
        if len(out) == n:
            break
    return out


def relative_logits(
    model: ModelAdapter, W_dec: Tensor, n: int, decode: Callable[[int], str]
) -> tuple[list[list[tuple[str, float]]], list[list[tuple[str, float]]]]:
    """Per feature (row of `W_dec`), the n most promoted and n most suppressed tokens, relative to the mean
    unembedding direction, variants merged; values to 4 significant digits."""
    import torch

    gain = model.family.norm_gain(model.final_norm).float()
    W_U = model.W_U.float()
    mean_dir = W_U.mean(0)
    mean_dir = mean_dir / mean_dir.norm().clamp_min(1e-12)
    k = min(W_U.shape[0], n * CANDIDATES)
    tops: list[list[tuple[str, float]]] = []
    bots: list[list[tuple[str, float]]] = []
    with torch.no_grad():
        for s in range(0, W_dec.shape[0], 256):
            dec = W_dec[s : s + 256].float()
            if model.family.norm_kind == "layer":  # LayerNorm (GPT-2) removes the mean first
                dec = dec - dec.mean(-1, keepdim=True)
            dec = dec * gain
            dec = dec - (dec @ mean_dir)[:, None] * mean_dir  # relative to the mean unembedding direction
            eff = dec @ W_U.T  # [256, vocab]
            for vals, ids, sign, dest in (
                (*eff.topk(k, -1), 1.0, tops),
                (*(-eff).topk(k, -1), -1.0, bots),
            ):
                for v_row, i_row in zip(vals.tolist(), ids.tolist()):
                    pairs = [(decode(i), float(f"{sign * v:.4g}")) for i, v in zip(i_row, v_row)]
                    dest.append(merge_variants(pairs, n))
    return tops, bots
