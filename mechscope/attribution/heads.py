"""Head loadings: a link between positions split exactly into the attention heads of its last hop.

Attention is causal, so along any path of the frozen model a signal's position never decreases. A link s → t with
s at position p_s < p_t therefore enters p_t exactly once: through some head (l, h) attending from p_t to some
p' < p_t. Splitting the link's paths by that hop is exact and complete:

    weight(s → t) = Σ_{l, h} Σ_{p' < p_t} A_{l,h}[p_t, p'] · ĝ_t[l, h] · v_s[l, h, p']

where ĝ_t[l, h] = ∂ t's input / ∂ (head h's output at p_t, before the output projection) [head_dim] — from p_t on
every path stays at p_t — and v_s[l, h, p'] = s's part of head h's value at p' [head_dim] (every path from s to
(l, p'), however many hops). The term with p' = p_s is the one-hop part (a signal at p_s at layer l never left it);
the rest came through earlier hops: the link's `multi_hop` share.

ĝ comes from one batched backward pass (a row per target), v_s from one forward pass batched over sources with
only that source's value as input, so the cost is a few hundred rows for a pruned graph, not one per head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from mechscope.attribution.replacement import PromptState, frozen_forward
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.attribution.graph import Graph
    from mechscope.models.adapter import ModelAdapter
    from mechscope.models.attention import Captured


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
    batch: int = 32,
    keep_share: float = 1.0,
    max_heads: int = 0,
    workers: int = 1,
) -> dict[tuple[int, int], dict]:
    """{(target, source): {"heads": [[layer, head, weight], ...], "multi_hop": weight of the paths with more than
    one hop, and "heads_rest" when heads were left out}} for node-index pairs of `graph`; heads + heads_rest sum to
    the link's weight.

    logit_vecs: [n_logits, d] the readout vectors of the graph's logit nodes (as `attribute` used them).
    keep_share / max_heads: keep the largest heads until they carry this share of Σ|part| (at most max_heads;
    0 = no limit); the rest is summed into "heads_rest" (a graph has tens of thousands of links × L·H heads).
    workers: backward chunks run at once (see `_target_grads`).
    """
    if not links:
        return {}
    tgts = sorted({t for t, _ in links})
    srcs = sorted({s for _, s in links})
    g = _target_grads(model, ts, st, graph, tgts, logit_vecs, batch, workers)  # [T, L, H, hd]
    pat = torch.stack([st.patterns[l][0].float().cpu() for l in range(model.n_layers)])  # [L, H, n, n]
    H = pat.shape[1]
    t_row = {t: i for i, t in enumerate(tgts)}
    pos = torch.tensor([nd["ctx_idx"] for nd in graph.nodes])
    by_src: dict[int, list[int]] = {}
    for t, s in links:
        by_src.setdefault(s, []).append(t)
    out: dict[tuple[int, int], dict] = {}
    for a in range(0, len(srcs), batch):
        chunk = srcs[a : a + batch]
        vals = _source_values(model, ts, st, graph, chunk)  # [S, L, KV, n, hd]
        rep = H // vals.shape[2]
        for j, s in enumerate(chunk):
            v = vals[j].repeat_interleave(rep, dim=1)  # [L, H, n, hd]
            ts_ = by_src[s]
            p_t = pos[ts_]  # [T]
            proj = torch.einsum("tlhd,lhnd->tlhn", g[[t_row[t] for t in ts_]], v)  # [T, L, H, n]
            w = proj * pat[:, :, p_t, :].permute(2, 0, 1, 3)  # attention from each target's position  [T, L, H, n]
            w = w * (torch.arange(w.shape[-1]) < p_t[:, None])[:, None, None, :]  # hops from earlier positions only
            per_head = w.sum(-1)  # [T, L, H]
            one_hop = w[..., int(pos[s])].sum((1, 2))  # [T] a signal still at p_s when it hops
            multi = (per_head.sum((1, 2)) - one_hop).tolist()
            for t, item, mh in zip(ts_, _sparse(per_head, keep_share, max_heads), multi):
                item["multi_hop"] = mh
                out[(t, s)] = item
    return out


def _sparse(per_head: Tensor, keep_share: float, max_heads: int) -> list[dict]:
    """per_head [T, L, H] -> per row {"heads": [[l, h, part], ...] largest |part| first, "heads_rest": what the
    left-out heads carry (only when some were left out)}. Vectorised: a default graph has ~10^5 links."""
    T, L, H = per_head.shape
    flat = per_head.reshape(T, L * H)
    mag, order = flat.abs().sort(1, descending=True)
    before = mag.cumsum(1) - mag  # Σ|part| of the larger heads
    keep = (mag > 0) & (before < keep_share * mag.sum(1, keepdim=True))
    if max_heads:
        keep[:, max_heads:] = False
    vals = flat.gather(1, order)
    rest = (flat.sum(1) - (vals * keep).sum(1)).tolist()
    n_keep, n_nz = keep.sum(1).tolist(), (mag > 0).sum(1).tolist()
    order_l, vals_l = order.tolist(), vals.tolist()
    out = []
    for r in range(T):
        k = n_keep[r]
        item: dict = {"heads": [[i // H, i % H, v] for i, v in zip(order_l[r][:k], vals_l[r][:k])]}
        if k < n_nz[r]:
            item["heads_rest"] = rest[r]
        out.append(item)
    return out


def _captured_run(model: ModelAdapter, ts: Source, st: PromptState, **kw) -> tuple[object, dict[int, Captured]]:
    cap: dict[int, Captured] = {}
    with model.capture_qk(cap):
        run = frozen_forward(model, ts, st, **kw)
    return run, cap


def _target_grads(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    graph: Graph,
    tgts: list[int],
    logit_vecs: Tensor,
    batch: int,
    workers: int = 1,
) -> Tensor:
    """ĝ [T, L, H, hd]: each target's gradient at every head's output (before the output projection) at the
    target's own position, by batched backward passes (rows as in rows.py: the target's read vector at its site).
    With workers > 1 the chunks' backward passes run at once on threads (the forward is done before: it patches
    the model), as `Attributor.rows` does with single-threaded torch."""
    run, cap = _captured_run(model, ts, st)
    outs = [run.final, *run.mlp_in]  # site L (logits) first, then each layer's MLP input
    heads_out = [cap[l].out for l in range(model.n_layers)]
    n_log0 = graph.n_feat + graph.n_err + graph.n_tok

    def chunk_grads(chunk: list[int]) -> Tensor:  # [r, L, H, hd]
        G = [o.new_zeros(len(chunk), *o.shape) for o in outs]
        for r, t in enumerate(chunk):
            nd = graph.nodes[t]
            if nd["feature_type"] == "logit":
                G[0][r, 0, nd["ctx_idx"]] = logit_vecs[t - n_log0].to(G[0])
            else:
                l = int(nd["layer"])
                G[1 + l][r, 0, nd["ctx_idx"]] = ts.enc_weights(l)[0][nd["feature"]].detach().to(G[0])
        with torch.enable_grad():
            grads = torch.autograd.grad(outs, heads_out, G, retain_graph=True, is_grads_batched=True, allow_unused=True)
        pos = torch.tensor([graph.nodes[t]["ctx_idx"] for t in chunk])
        rows = torch.arange(len(chunk))
        per_layer = [
            gr[rows, 0, :, pos].detach().float().cpu()  # [r, H, hd]
            if gr is not None
            else torch.zeros(len(chunk), heads_out[l].shape[1], heads_out[l].shape[-1])
            for l, gr in enumerate(grads)
        ]
        return torch.stack(per_layer, 1)

    chunks = [tgts[a : a + batch] for a in range(0, len(tgts), batch)]
    if workers > 1 and len(chunks) > 1 and model.device.type == "cpu":
        with ThreadPoolExecutor(min(workers, len(chunks)), thread_name_prefix="mechscope-heads") as pool:
            return torch.cat(list(pool.map(chunk_grads, chunks)))  # re-raises a worker's exception
    return torch.cat([chunk_grads(c) for c in chunks])


def _source_values(model: ModelAdapter, ts: Source, st: PromptState, graph: Graph, srcs: list[int]) -> Tensor:
    """v_s [S, L, KV, n, hd]: each source's part of every layer's values, by one forward pass batched over
    sources (only that source's value as input; the model's own constants, GPT-2's biases, subtracted)."""
    L, S = model.n_layers, len(srcs)
    n, d = st.embed.shape
    emb = st.embed.new_zeros(S, n, d)
    src = [st.embed.new_zeros(S, n, d) for _ in range(L)]
    for b, i in enumerate(srcs):
        nd = graph.nodes[i]
        p = nd["ctx_idx"]
        if nd["feature_type"] == "embedding":
            emb[b, p] = st.embed[p]
        elif nd["feature_type"] == "mlp reconstruction error":
            src[int(nd["layer"])][b, p] = st.error[int(nd["layer"]), p]
        else:
            l, f = int(nd["layer"]), nd["feature"]
            for w in ts.write_layers(l):
                src[w][b, p] = float(st.acts[l, p, f]) * ts.dec_weights(l, w).detach().float()[f].to(emb)
    with torch.no_grad():
        _, cap = _captured_run(model, ts, st, batch=S, src_values=src, emb_value=emb, grad=False)
        vals = torch.stack([cap[l].value.float().cpu() for l in range(L)], 1)  # [S, L, KV, n, hd]
        if model.family.affine_biases or any(name.endswith("bias") for name, _ in model.model.named_parameters()):
            z = torch.zeros_like(st.embed)
            _, cz = _captured_run(model, ts, st, src_values=[z] * L, emb_value=z, grad=False)
            vals -= torch.stack([cz[l].value.float().cpu() for l in range(L)], 1)
    return vals
