"""Which head to explain when none is named: the head that carries the most of the top logit's strongest
cross-position link.

In the pruned attribution graph of the top logit, the cross-position link of largest |weight| is taken (sources
at BOS only when no other link crosses positions: BOS is an attention sink, rarely what a user asks about); its
head loadings (mechscope/attribution/heads.py: the exact split of the link into the heads of its last hop) name
the head with the largest |part|. Query = the link's target position, key = its source position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import torch

from mechscope.errors import MechscopeError

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.attribution.graph import Graph
    from mechscope.models.adapter import ModelAdapter
    from mechscope.transcoders.source import Source


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
    weight: float  # the link's weight
    part: float  # the part of it whose last hop is this head
    multi_hop: float  # the part of the link (all heads) carried by paths of more than one hop

    def reason(self) -> str:
        return (
            f"strongest cross-position link of the top logit's graph, {self.source} → {self.target} "
            f"({self.weight:+.3g}); head {self.layer}.{self.head} carries {self.part:+.3g} of it (last hop; "
            f"multi-hop paths {self.multi_hop:+.3g} over all heads)"
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


def choose_head(model: ModelAdapter, ts: Source, ids: torch.Tensor, strs: list[str], graph: Graph) -> HeadChoice:
    """The head to explain for a prompt (ids: [n]) and its top-logit graph (see the module docstring).

    >>> from mechscope.attribution import AttributionConfig, attribute
    >>> g = attribute(m, ts, "Dallas is in the state of", AttributionConfig(max_logits=1))
    >>> t = m.tokenize("Dallas is in the state of")
    >>> choose_head(m, ts, t.ids, t.strs, g).layer < m.n_layers
    True
    """
    from mechscope.attribution.heads import head_loadings
    from mechscope.attribution.replacement import prepare

    link = strongest_cross_link(graph)
    if link is None:
        raise MechscopeError("the graph has no link between positions to explain; name a head with --layer/--head")
    t, s = link
    st = prepare(model, ts, ids, strs)
    logit_ids = [x["id"] for x in graph.meta["top_logits"]]
    vecs = model.W_U.float()[logit_ids] - model.W_U_mean  # the readout vectors the graph's logit rows used
    res = head_loadings(model, ts, st, graph, [link], vecs)[link]
    if not res["heads"]:
        raise MechscopeError("the strongest cross-position link crosses no attention head; name --layer/--head")
    layer, head, part = max(res["heads"], key=lambda x: abs(x[2]))
    q, k = graph.nodes[t]["ctx_idx"], graph.nodes[s]["ctx_idx"]
    return HeadChoice(
        layer=layer,
        head=head,
        query=q,
        key=k,
        attention=float(st.patterns[layer][0, head, q, k]),
        source=graph.nodes[s]["node_id"],
        target=graph.nodes[t]["node_id"],
        weight=float(graph.A[t, s]),
        part=part,
        multi_hop=res["multi_hop"],
    )
