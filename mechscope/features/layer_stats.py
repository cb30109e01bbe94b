"""One layer's feature statistics from the sparse activations the index collected, in vectorised reductions.

Input: the layer's top-k activations per token (`vals`, `idxs`: [N, k]) over `n_chunks` chunks of T tokens.
Output (`LayerStats`): per feature its firing count, density, mean and maximum activation and log-binned
histogram; the chunks of its top examples (all chunks) and of its label evidence (even chunks only: odd ones
score the label); random active examples; examples drawn from each activation quantile band; and the tokens it
fires on most often. No Python loop over features or entries, and no sort of all entries (a layer of 2M tokens
holds 64M of them): per-feature examples come from a scatter-max into (feature, chunk) cells and a top-k over
each feature's chunks, quantile bands from per-feature histograms of the fp16 values.

>>> st = layer_stats(vals, idxs, ids, tok_key, cfg, F, gen)    # doctest: +SKIP
>>> st.density[331], st.fires[331][:3]                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.features.config import IndexConfig

HIST_EDGES = torch.logspace(-3, 3, 31)


@dataclass
class Picks:
    """Chosen examples: per entry its feature, rank, activation, chunk, position in the chunk (and band)."""

    feature: Tensor
    rank: Tensor
    value: Tensor
    chunk: Tensor
    pos: Tensor
    band: Tensor | None = None


@dataclass
class LayerStats:
    count: Tensor  # [F] firings
    density: Tensor  # [F]
    mean_act: Tensor
    max_act: Tensor
    hist: Tensor  # [F, bins]
    top: Picks  # strongest chunk maxima, all chunks
    evidence: Picks  # strongest chunk maxima, even chunks (the label's evidence)
    random: Picks  # random active entries, one per chunk
    quantile: Picks  # random entries within each activation quantile band, one per chunk
    band_range: Tensor  # [F, bands, 2]: lowest and highest activation of each band
    fires: Tensor  # [F, n_fire, 2] (key id, count), key -1 where fewer; count-descending
    key_total: Tensor  # [K] occurrences of each token key (position 0 left out)


_CELLS = 1 << 26  # (feature, chunk) cells per block of features: 512 MB of int64 at most


def _group_rank(group: Tensor, order_key: Tensor) -> tuple[Tensor, Tensor]:
    """Order entries by group, then by `order_key` descending; returns (order, rank within the group)."""
    o1 = torch.argsort(order_key, descending=True, stable=True)
    o2 = torch.argsort(group[o1], stable=True)
    order = o1[o2]
    g = group[order]
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = g[1:] != g[:-1]
    idx = torch.arange(len(g))
    first = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), 0).values
    return order, idx - first


def _half_bits(val: Tensor) -> Tensor:
    """Non-negative activations as int64 keys that sort as the values do (fp16's bit pattern is monotonic)."""
    return val.half().view(torch.int16).long()


def _pick(
    feat: Tensor, val: Tensor, pos: Tensor, prio: Tensor, keep: Tensor, n: int, T: int, n_chunks: int, F: int
) -> Picks:
    """The n entries of highest `prio` per feature among `keep`, one per chunk (the best entry of each chunk).

    No sort of all entries: each (feature, chunk) cell keeps its best entry by a scatter-max of `prio` << 32 | entry
    index (prio: non-negative, < 2^31), then each feature's n best cells come from a top-k over its chunks.
    """
    sel = keep.nonzero().squeeze(-1)  # entry indices
    key = (prio[sel] << 32) | sel
    f, c = feat[sel], pos[sel] // T
    out: list[tuple[Tensor, Tensor, Tensor]] = []
    block = max(1, _CELLS // n_chunks)
    for f0 in range(0, F, block):
        fb = min(block, F - f0)
        m = (f >= f0) & (f < f0 + fb) if fb < F else slice(None)
        cells = torch.full((fb * n_chunks,), -1, dtype=torch.long)
        cells.scatter_reduce_(0, (f[m] - f0) * n_chunks + c[m], key[m], "amax")
        best, _ = cells.view(fb, n_chunks).topk(min(n, n_chunks), dim=1)  # [fb, n], descending
        ok = best >= 0
        rank = torch.arange(best.shape[1]).expand_as(best)[ok]
        out.append((best[ok] & 0xFFFFFFFF, rank, ok))
    entry = torch.cat([e for e, _, _ in out]) if out else torch.zeros(0, dtype=torch.long)
    rank = torch.cat([r for _, r, _ in out]) if out else torch.zeros(0, dtype=torch.long)
    p = pos[entry]
    return Picks(feat[entry], rank, val[entry], p // T, p % T)


def _quantile_bands(feat: Tensor, bits: Tensor, count: Tensor, bands: int, F: int) -> Tensor:
    """Each entry's activation quantile band within its feature (0: the weakest quarter, bands−1: the top).

    From each feature's histogram over fp16 values (exact, no sort): an entry's rank is the number of its feature's
    entries below it, and its band that rank's share of the feature's count (tied values share a band).
    """
    nb = 1 << 15
    hist = torch.bincount(feat * nb + bits, minlength=F * nb)
    below = hist.cumsum(0) - hist  # entries before this (feature, value) cell in (feature, value) order
    first = below[torch.arange(F) * nb]  # ... before the feature's first cell
    rank = below[feat * nb + bits] - first[feat]
    return (rank * bands // count[feat].long().clamp_min(1)).clamp(max=bands - 1)


def _fire_tokens(feat: Tensor, keys: Tensor, F: int, n_keep: int) -> Tensor:
    """[F, n_keep, 2]: the token keys each feature fires on most often, with counts (key −1: none)."""
    K = int(keys.max()) + 1 if len(keys) else 1
    u, n = torch.unique(feat * K + keys, return_counts=True)
    uf, uk = u // K, u % K
    order, rank = _group_rank(uf, n.float())
    keep = order[rank < n_keep]
    out = torch.full((F, n_keep, 2), -1, dtype=torch.long)
    out[uf[keep], rank[rank < n_keep], 0] = uk[keep]
    out[uf[keep], rank[rank < n_keep], 1] = n[keep]
    return out


def layer_stats(
    vals: Tensor, idxs: Tensor, n_chunks: int, T: int, tok_key: Tensor, cfg: IndexConfig, F: int, gen
) -> LayerStats:
    """Statistics of one layer (see the module docstring); `tok_key[i]`: the token key at flat position i."""
    act = vals > 0
    feat = idxs[act]
    val = vals[act].float()
    bits = _half_bits(val)
    pos = act.nonzero()[:, 0]  # flat token index of each entry
    del act
    count = torch.bincount(feat, minlength=F).float()
    density = count / (n_chunks * (T - 1))  # position 0 never counts
    sum_act = torch.zeros(F).index_add_(0, feat, val)
    max_act = torch.zeros(F).scatter_reduce_(0, feat, val, "amax")
    bins = torch.bucketize(val, HIST_EDGES).clamp(max=len(HIST_EDGES))
    hist = torch.zeros(F, len(HIST_EDGES) + 1).index_put_((feat, bins), torch.ones_like(val), accumulate=True)
    del bins
    even = (pos // T) % 2 == 0
    everything = torch.ones_like(even)
    prio = torch.randint(0, 1 << 31, val.shape, generator=gen)
    band = _quantile_bands(feat, bits, count, cfg.n_quantiles, F)
    lo = torch.full((F * cfg.n_quantiles,), float("inf")).scatter_reduce_(0, feat * cfg.n_quantiles + band, val, "amin")
    hi = torch.zeros(F * cfg.n_quantiles).scatter_reduce_(0, feat * cfg.n_quantiles + band, val, "amax")
    key_total = torch.bincount(tok_key[torch.arange(len(tok_key)) % T != 0])
    args = (feat, val, pos)
    quantile = [_pick(*args, prio, band == b, cfg.n_per_quantile, T, n_chunks, F) for b in range(cfg.n_quantiles)]
    for b, q in enumerate(quantile):
        q.band = torch.full_like(q.rank, b)
    return LayerStats(
        count=count,
        density=density,
        mean_act=sum_act / count.clamp_min(1),
        max_act=max_act,
        hist=hist,
        top=_pick(*args, bits, everything, cfg.n_top, T, n_chunks, F),
        evidence=_pick(*args, bits, even, cfg.n_evidence, T, n_chunks, F),
        random=_pick(*args, prio, everything, cfg.n_random, T, n_chunks, F),
        quantile=Picks(*(torch.cat([getattr(q, k) for q in quantile]) for k in Picks.__dataclass_fields__)),
        band_range=torch.stack([lo, hi], -1).view(F, cfg.n_quantiles, 2),
        fires=_fire_tokens(feat, tok_key[pos], F, cfg.n_fire_tokens),
        key_total=key_total,
    )


def by_feature(p: Picks, F: int) -> list[list[int]]:
    """Entry indices of `p` grouped per feature, each in rank order (band, then rank, for quantile picks)."""
    out: list[list[int]] = [[] for _ in range(F)]
    key = p.rank if p.band is None else p.band * 1000 + p.rank
    for i in torch.argsort(p.feature * 1_000_000 + key).tolist():
        out[int(p.feature[i])].append(i)
    return out
