"""One layer's feature statistics from the sparse activations the index collected, in vectorised reductions.

Input: the layer's top-k activations per token (`vals`, `idxs`: [N, k]) over `n_chunks` chunks of T tokens.
Output (`LayerStats`): per feature its firing count, density, mean and maximum activation and log-binned
histogram; the chunks of its top examples (all chunks) and of its label evidence (even chunks only: odd ones
score the label); random active examples; examples drawn from each activation quantile band; and the tokens it
fires on most often. No Python loop over features or entries: per-feature groups come from sorting.

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


def _one_per_chunk(group: Tensor, chunk: Tensor, prio: Tensor, n_chunks: int) -> Tensor:
    """Indices of the entries with the highest `prio` of each (group, chunk): examples show distinct windows."""
    order, rank = _group_rank(group * n_chunks + chunk, prio)
    return order[rank == 0]


def _pick(feat: Tensor, val: Tensor, pos: Tensor, prio: Tensor, keep: Tensor, n: int, T: int, band=None) -> Picks:
    """The n entries of highest `prio` per feature (per band) among `keep`, one per chunk."""
    sel = keep.nonzero().squeeze(-1)
    f, v, p, pr = feat[sel], val[sel], pos[sel], prio[sel]
    g = f if band is None else f * 64 + band[sel]
    c = p // T
    one = _one_per_chunk(g, c, pr, int(c.max()) + 1 if len(c) else 1)
    order, rank = _group_rank(g[one], pr[one])
    take = one[order[rank < n]]
    r = rank[rank < n]
    return Picks(f[take], r, v[take], c[take], p[take] % T, None if band is None else band[sel][take])


def _quantile_bands(feat: Tensor, val: Tensor, count: Tensor, bands: int) -> Tensor:
    """Each entry's activation quantile band within its feature (0: the weakest quarter, bands−1: the top)."""
    order, rank = _group_rank(feat, -val)  # ascending activation within each feature
    band = torch.empty_like(feat)
    band[order] = (rank * bands // count[feat[order]].long()).clamp(max=bands - 1)
    return band


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
    v = vals.float()
    act = v > 0
    feat = idxs[act]
    val = v[act]
    pos = act.nonzero()[:, 0]  # flat token index of each entry
    count = torch.bincount(feat, minlength=F).float()
    density = count / (n_chunks * (T - 1))  # position 0 never counts
    sum_act = torch.zeros(F).index_add_(0, feat, val)
    max_act = torch.zeros(F).scatter_reduce_(0, feat, val, "amax")
    bins = torch.bucketize(val, HIST_EDGES).clamp(max=len(HIST_EDGES))
    hist = torch.zeros(F, len(HIST_EDGES) + 1).index_put_((feat, bins), torch.ones_like(val), accumulate=True)
    even = (pos // T) % 2 == 0
    everything = torch.ones_like(even)
    prio = torch.rand(val.shape, generator=gen)
    band = _quantile_bands(feat, val, count, cfg.n_quantiles)
    lo = torch.full((F * cfg.n_quantiles,), float("inf")).scatter_reduce_(0, feat * cfg.n_quantiles + band, val, "amin")
    hi = torch.zeros(F * cfg.n_quantiles).scatter_reduce_(0, feat * cfg.n_quantiles + band, val, "amax")
    key_total = torch.bincount(tok_key[torch.arange(len(tok_key)) % T != 0])
    return LayerStats(
        count=count,
        density=density,
        mean_act=sum_act / count.clamp_min(1),
        max_act=max_act,
        hist=hist,
        top=_pick(feat, val, pos, val, everything, cfg.n_top, T),
        evidence=_pick(feat, val, pos, val, even, cfg.n_evidence, T),
        random=_pick(feat, val, pos, prio, everything, cfg.n_random, T),
        quantile=_pick(feat, val, pos, prio, everything, cfg.n_per_quantile, T, band=band),
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
