"""Head loadings: a link between positions split exactly into the attention heads of its last hop.

Attention is causal, so along any path of the frozen model a signal's position never decreases. A link s → t with
s at position p_s < p_t therefore enters p_t exactly once: through some head (l, h) attending from p_t to some
p' < p_t. Splitting the link's paths by that hop is exact and complete:

    weight(s → t) = Σ_{l, h} Σ_{p' < p_t} A_{l,h}[p_t, p'] · ĝ_t[l, h] · v_s[l, h, p']

where ĝ_t[l, h] = ∂ t's input / ∂ (head h's output at p_t, before the output projection) [head_dim] — from p_t on
every path stays at p_t — and v_s[l, h, p'] = s's part of head h's value at p' [head_dim] (every path from s to
(l, p'), however many hops). The term with p' = p_s is the one-hop part (a signal at p_s at layer l never left it);
the rest came through earlier hops: the link's `multi_hop` share.

ĝ comes from the trace's own backward passes (they cross every head's output: `Attributor.rows` keeps it at each
row's position), v_s from forward passes batched over sources with only that source's value as input, cut to the
positions and blocks a source can reach (mechscope/attribution/head_parts.py). So the cost is one forward row per
source of the pruned graph, not a backward row per head.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.attribution.config import AttributionConfig
from mechscope.attribution.head_parts import head_shape, link_parts
from mechscope.attribution.replacement import PromptState
from mechscope.attribution.rows import Attributor, Target
from mechscope.transcoders.source import Source, enc_rows

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.attribution.graph import Graph
    from mechscope.models.adapter import ModelAdapter


def cross_links(graph: Graph, edge_mask: Tensor) -> list[tuple[int, int]]:
    """(target, source) node indices of the kept links between different positions."""
    pos = torch.tensor([nd["ctx_idx"] for nd in graph.nodes])
    m = edge_mask & (pos[:, None] != pos[None, :])
    t, s = m.nonzero(as_tuple=True)
    return list(zip(t.tolist(), s.tolist()))


def head_loadings(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    graph: Graph,
    links: list[tuple[int, int]],
    logit_vecs: Tensor,
    batch: int = 64,
    keep_share: float = 1.0,
    max_heads: int = 0,
    workers: int = 1,
    target_grads: tuple[Tensor, dict[int, int]] | None = None,
) -> HeadLoadings:
    """{(target, source): {"heads": [[layer, head, weight], ...], "multi_hop": weight of the paths with more than
    one hop, and "heads_rest" when heads were left out}} for node-index pairs of `graph`; heads + heads_rest sum to
    the link's weight.

    logit_vecs: [n_logits, d] the readout vectors of the graph's logit nodes (as `attribute` used them).
    keep_share / max_heads: keep the largest heads until they carry this share of Σ|part| (at most max_heads;
    0 = no limit); the rest is summed into "heads_rest" (a graph has tens of thousands of links × L·H heads).
    batch: targets per backward pass and most sources per forward pass; workers: backward chunks and forward passes
    run at once on threads (as `attribute` runs its rows: single-threaded torch, whole passes per thread).
    target_grads: (ĝ [*, L, heads, head_dim], target node -> row), the targets' gradients at the heads' outputs
    when the trace kept them (`attribute` does: its backward passes cross every head); otherwise computed here.

    >>> g = attribute(m, ts, "Dallas is in the state of", AttributionConfig(heads=True))   # doctest: +SKIP
    >>> next(iter(g.heads.values()))                         # doctest: +SKIP
    {'heads': [[9, 2, 0.41], [4, 0, 0.12], ...], 'heads_rest': 0.003, 'multi_hop': 0.05}
    """
    if not links:
        return HeadLoadings.from_parts([], torch.zeros(0, model.n_layers, 1), torch.zeros(0))
    if target_grads is None:
        target_grads = target_head_grads(
            model, ts, st, graph, sorted({t for t, _ in links}), logit_vecs, batch, workers
        )
    grads, grad_row = target_grads
    parts, one_hop = link_parts(model, ts, st, graph, links, grads, grad_row, chunk=batch, workers=workers)
    per_head = parts.reshape(len(links), model.n_layers, -1)
    return HeadLoadings.from_parts(links, per_head, parts.sum(1) - one_hop, keep_share, max_heads)


def target_head_grads(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    graph: Graph,
    tgts: list[int],
    logit_vecs: Tensor,
    batch: int = 32,
    workers: int = 1,
) -> tuple[Tensor, dict[int, int]]:
    """(ĝ [T, L, heads, head_dim], target node -> row): each target's gradient at every head's output at its own
    position, by the attribution rows' batched backward passes (mechscope/attribution/rows.py) with heads kept."""
    att = Attributor(model, ts, st, AttributionConfig(batch_size=batch))
    att.capture_heads, att.workers = True, workers
    n_log0 = graph.n_feat + graph.n_err + graph.n_tok
    targets = []
    for r, t in enumerate(tgts):
        nd = graph.nodes[t]
        if nd["feature_type"] == "logit":
            targets.append(Target(model.n_layers, nd["ctx_idx"], logit_vecs[t - n_log0].float(), r))
        else:
            l = int(nd["layer"])
            targets.append(Target(l, nd["ctx_idx"], enc_rows(ts, l, torch.tensor([nd["feature"]]))[0][0], r))
    grads = torch.zeros(len(tgts), model.n_layers, *head_shape(model))
    att.rows(targets, head_grads=grads)
    return grads, {t: r for r, t in enumerate(tgts)}


class HeadLoadings(Mapping):
    """Head loadings of many links, {(target, source): {"heads": [[layer, head, part], ...], "multi_hop": m,
    and "heads_rest": r when heads were left out}}, kept as tensors: a link's dict is built when it is read (a
    default graph has ~6·10^4 cross-position links; building them all costs about as much as computing them).

    >>> hl = HeadLoadings.from_parts([(5, 2)], torch.tensor([[[0.5, 0.0], [0.0, -0.25]]]), torch.tensor([0.1]))
    >>> hl[(5, 2)]
    {'heads': [[0, 0, 0.5], [1, 1, -0.25]], 'multi_hop': 0.10000000149011612}
    """

    def __init__(
        self,
        links: list[tuple[int, int]],
        order: Tensor,
        parts: Tensor,
        n_keep: Tensor,
        rest: Tensor,
        n_nonzero: Tensor,
        multi_hop: Tensor,
        n_heads: int,
    ) -> None:
        self.index = {link: i for i, link in enumerate(links)}
        self._t = (order, parts, n_keep, rest, n_nonzero, multi_hop)
        self.n_heads = n_heads
        self._lists: tuple | None = None

    @classmethod
    def from_parts(
        cls,
        links: list[tuple[int, int]],
        per_head: Tensor,
        multi_hop: Tensor,
        keep_share: float = 1.0,
        max_heads: int = 0,
    ) -> HeadLoadings:
        """From per_head [links, L, H] (each link's part per head) and multi_hop [links]: the largest heads until
        they carry keep_share of Σ|part| (at most max_heads; 0 = no limit), largest |part| first."""
        T, L, H = per_head.shape
        flat = per_head.reshape(T, L * H)
        mag, order = flat.abs().sort(1, descending=True)
        before = mag.cumsum(1) - mag  # Σ|part| of the larger heads
        keep = (mag > 0) & (before < keep_share * mag.sum(1, keepdim=True))
        if max_heads:
            keep[:, max_heads:] = False
        vals = flat.gather(1, order)
        rest = flat.sum(1) - (vals * keep).sum(1)
        n_keep = keep.sum(1)
        width = int(n_keep.max()) if T else 0  # only the kept columns are stored
        return cls(links, order[:, :width], vals[:, :width], n_keep, rest, (mag > 0).sum(1), multi_hop, H)

    def _as_lists(self) -> tuple:
        if self._lists is None:  # one tolist per field: per-element tensor reads would cost microseconds each
            order, parts, n_keep, rest, n_nz, multi = self._t
            H = self.n_heads
            self._lists = (
                (order // H).tolist(),
                (order % H).tolist(),
                parts.tolist(),
                n_keep.tolist(),
                rest.tolist(),
                n_nz.tolist(),
                multi.tolist(),
            )
        return self._lists

    def __getitem__(self, link: tuple[int, int]) -> dict:
        r = self.index[link]
        layer, head, part, n_keep, rest, n_nz, multi = self._as_lists()
        k = n_keep[r]
        item: dict = {"heads": [list(x) for x in zip(layer[r][:k], head[r][:k], part[r][:k])]}
        if k < n_nz[r]:
            item["heads_rest"] = rest[r]
        item["multi_hop"] = multi[r]
        return item

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)
