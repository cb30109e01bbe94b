"""Which head to explain when none is named: the top logit's strongest cross-position edge, and the head most
likely to carry it.

Without head loadings (the exact split of an edge into heads), the choice is a documented heuristic: in the
pruned attribution graph of the top logit, the cross-position link of largest |weight| (sources at BOS only when
no other link crosses positions: BOS is an attention sink, rarely what a user asks about); then, among the layers
the link can cross at (above its source's layer, up to its target's), the head with the largest attention weight
from the target's position to the source's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import torch

from mechscope.errors import MechscopeError

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.attribution.graph import Graph
    from mechscope.models.adapter import ModelAdapter


@dataclass
class HeadChoice:
    """The chosen head and the link it was chosen for (node ids as in the graph JSON)."""

    layer: int
    head: int
    query: int  # the link's target position
    key: int  # the link's source position
    attention: float  # pattern[layer][head, query, key]
    source: str
    target: str
    weight: float

    def reason(self) -> str:
        return (
            f"strongest cross-position link of the top logit's graph, {self.source} → {self.target} "
            f"({self.weight:+.3g}); head {self.layer}.{self.head} attends most from {self.query} to {self.key} "
            f"({self.attention:.3f})"
        )


def strongest_cross_link(graph: Graph) -> tuple[int, int] | None:
    """(target, source) node indices of the pruned graph's cross-position link of largest |weight|, or None."""
    _, edge_mask, _ = graph.prune()
    pos = torch.tensor([nd["ctx_idx"] for nd in graph.nodes])
    W = graph.A.abs() * edge_mask
    cross = pos[:, None] != pos[None, :]
    for allowed in (cross & (pos[None, :] > 0), cross):
        M = W * allowed
        if float(M.max()) > 0:
            t, s = divmod(int(M.argmax()), M.shape[1])
            return t, s
    return None


def _layer_range(graph: Graph, t: int, s: int, n_layers: int) -> tuple[int, int]:
    """Attention layers a link s → t can cross at: above the source's MLP (tokens: from 0), up to the target's
    read (logits: every layer)."""
    src, tgt = graph.nodes[s], graph.nodes[t]
    lo = 0 if src["feature_type"] == "embedding" else int(src["layer"]) + 1
    hi = n_layers - 1 if tgt["feature_type"] == "logit" else int(tgt["layer"])
    return lo, hi


def choose_head(model: ModelAdapter, ids: torch.Tensor, graph: Graph) -> HeadChoice:
    """The head to explain for a prompt (ids: [n]) and its top-logit graph (see the module docstring).

    >>> g = attribute(m, ts, "Dallas is in the state of", AttributionConfig(max_logits=1))   # doctest: +SKIP
    >>> choose_head(m, m.tokenize("Dallas is in the state of").ids, g).reason()               # doctest: +SKIP
    """
    link = strongest_cross_link(graph)
    if link is None:
        raise MechscopeError("the graph has no link between positions to explain; name a head with --layer/--head")
    t, s = link
    q, k = graph.nodes[t]["ctx_idx"], graph.nodes[s]["ctx_idx"]
    lo, hi = _layer_range(graph, t, s, model.n_layers)
    if lo > hi:
        raise MechscopeError("the strongest cross-position link crosses no attention layer; name --layer/--head")
    patterns: dict[int, torch.Tensor] = {}
    with torch.no_grad(), model.attention_patterns(record=patterns):
        model.forward(ids[None].to(model.device), logits=False)
    best = max(
        ((float(patterns[l][0, h, q, k]), l, h) for l in range(lo, hi + 1) for h in range(patterns[l].shape[1])),
    )
    return HeadChoice(
        layer=best[1],
        head=best[2],
        query=q,
        key=k,
        attention=best[0],
        source=graph.nodes[s]["node_id"],
        target=graph.nodes[t]["node_id"],
        weight=float(graph.A[t, s]),
    )
