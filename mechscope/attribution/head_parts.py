"""The per-head parts of cross-position links: each source's values carried forward, met with each target's
gradient at the heads (see mechscope/attribution/heads.py for the decomposition and its exactness).

For a link s → t (positions p_s < p_t) and head h of layer l,

    part[l, h] = ĝ_t[l, h] · o_s[l, h, p_t],        o_s[l, h, p] = Σ_{p' < p} A_{l,h}[p, p'] · v_s[l, h, p']

with ĝ_t the target's gradient at the head's output at p_t (from the trace's own backward passes: `Attributor.rows`
with head_grads) and v_s the source's part of the head's value at p' (every path from s, however many hops). The
one-hop part is the p' = p_s term, A_{l,h}[p_t, p_s] · ĝ_t[l, h] · v_s[l, h, p_s].

v_s comes from lean forward passes of the frozen model (mechscope/attribution/value_run.py) with only the source's
value as input, batched over sources and cut to what they can reach: a source is zero before its position and
below its block, and a value at p' matters only for a target after p', so a run of sources covers only positions
min p_s .. max p_t − 1 (`window`) and the blocks after its earliest source up to its targets' highest attention
layer. Sources are sorted by position, then block, and cut into runs by dynamic programming (`plan_runs`); runs go
at once on threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.attribution.replacement import PromptState, window
from mechscope.attribution.value_run import module_names, value_run
from mechscope.transcoders.source import Source, dec_rows

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.attribution.graph import Graph
    from mechscope.models.adapter import ModelAdapter


def head_shape(model: ModelAdapter) -> tuple[int, int]:
    """(query heads, head_dim) of the model's attention."""
    cfg = model.cfg
    H = int(cfg.num_attention_heads)
    return H, int(getattr(cfg, "head_dim", None) or model.d_model // H)


def kv_heads(model: ModelAdapter) -> int:
    """Key/value heads (fewer than query heads under GQA)."""
    return int(getattr(model.cfg, "num_key_value_heads", None) or head_shape(model)[0])


def has_constants(model: ModelAdapter) -> bool:
    """Whether the frozen model has constants besides the transcoders' (GPT-2's biases and positions): then a
    run with every input zero is subtracted to keep only a source's own part."""
    return model.family.affine_biases or any(name.endswith("bias") for name, _ in model.model.named_parameters())


def entry_block(node: dict) -> int:
    """The first decoder block whose output holds a source node: its layer (features and errors enter at their
    MLP output), or -1 for a token embedding (before block 0)."""
    return -1 if node["feature_type"] == "embedding" else int(node["layer"])


def top_attention(node: dict, n_layers: int) -> int:
    """The highest layer whose attention a target node reads through: its own layer (a feature reads the MLP
    input, after that layer's attention), or the last for a logit."""
    return n_layers - 1 if node["feature_type"] == "logit" else int(node["layer"])


def link_parts(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    graph: Graph,
    links: list[tuple[int, int]],
    grads: Tensor,
    grad_row: dict[int, int],
    chunk: int = 64,
    workers: int = 1,
) -> tuple[Tensor, Tensor]:
    """(parts [len(links), L · heads] (head h of layer l at l · heads + h), one-hop part [len(links)]) for
    (target, source) node-index pairs of `graph` between different positions.

    grads: [*, L, heads, head_dim] targets' gradients at the heads' outputs at their positions (zero above their
    layer); grad_row: target node index -> its row in `grads`. chunk: most sources per forward pass; workers:
    passes run at once on threads (each single-threaded: `value_run` patches nothing).
    """
    ctx = _Targets(graph, links, grads, grad_row, model.n_layers)
    ctx.names = module_names(model)
    parts = torch.zeros(len(links), ctx.G.shape[1])
    one_hop = torch.zeros(len(links))
    pat = torch.stack([st.patterns[l][0].float().cpu() for l in range(model.n_layers)])  # [L, H, n, n]
    runs = [r for r in plan_runs(graph, ctx.lt, ctx.ls, model.n_layers, chunk) if len(r.blocks)]

    def work(run: SourceRun) -> None:  # each run writes its own links' rows
        _run_parts(model, ts, st, graph, run, ctx, pat, parts, one_hop)

    if workers > 1 and len(runs) > 1:
        with ThreadPoolExecutor(min(workers, len(runs)), thread_name_prefix="mechscope-heads") as pool:
            list(pool.map(work, runs))  # re-raises a worker's exception
    else:
        for run in runs:
            work(run)
    return parts, one_hop


class _Targets:
    """The links as tensors, and the targets' gradients sorted by position, then layer, so that the targets at p
    that read a block's attention are one slice (a target's gradient is zero above its layer): G [T, L · H, hd]."""

    def __init__(self, graph: Graph, links: list[tuple[int, int]], grads: Tensor, grad_row: dict[int, int], L: int):
        nodes = graph.nodes
        self.L = L
        self.pos = torch.tensor([nd["ctx_idx"] for nd in nodes])
        self.lt, self.ls = (torch.tensor(x) for x in zip(*links))
        top = torch.tensor([top_attention(nd, L) if nd["feature_type"] != "embedding" else -1 for nd in nodes])
        tgts = self.lt.unique()
        tgts = tgts[torch.argsort(self.pos[tgts] * (L + 1) + top[tgts])]
        self.G = grads[torch.tensor([grad_row[t] for t in tgts.tolist()])].reshape(len(tgts), L * grads.shape[2], -1)
        self.row = torch.full((len(nodes),), -1)
        self.row[tgts] = torch.arange(len(tgts))
        self.key = self.pos[tgts] * (L + 1) + top[tgts]  # sorted
        self.names: dict = {}  # module -> path (value_run's norm scales)

    def at(self, p: int, first_block: int) -> tuple[int, int]:
        """The slice of G of the targets at position p whose layer is at least `first_block`."""
        lo = int(torch.searchsorted(self.key, p * (self.L + 1) + first_block))
        return lo, int(torch.searchsorted(self.key, p * (self.L + 1) + self.L))


def _run_parts(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    graph: Graph,
    run: SourceRun,
    ctx: _Targets,
    pat: Tensor,
    parts: Tensor,
    one_hop: Tensor,
) -> None:
    """The parts of one run's links: its sources' values met with their targets' gradients, position by position."""
    srcs, pos, lt, ls = run.sources, ctx.pos, ctx.lt, ctx.ls
    col = torch.full((len(graph.nodes),), -1)  # source node -> its column in the run
    col[srcs] = torch.arange(len(srcs))
    ks = (col[ls] >= 0).nonzero()[:, 0]  # the run's links
    V = _source_values(model, ts, st, graph, run, ctx.names)  # [Lb, KV, w, S, hd] at the run's blocks
    H = pat.shape[1]
    lh = slice(run.blocks.start * H, run.blocks.stop * H)  # those blocks' heads
    a, b = run.first_pos, run.last_pos
    p_src = pos[srcs] - a
    v1 = V[:, :, p_src, torch.arange(len(srcs))]  # [Lb, KV, S, hd] each source's value at its own position
    for p in pos[lt[ks]].unique().tolist():
        kp = ks[pos[lt[ks]] == p]  # the run's links into position p
        lo, hi = ctx.at(p, run.blocks.start)
        G = ctx.G[lo:hi, lh]  # the targets at p reading these blocks (a slice, no copy): [T_p, Lb · H, hd]
        ti, sj = ctx.row[lt[kp]] - lo, col[ls[kp]]
        kp, ti, sj = kp[ti >= 0], ti[ti >= 0], sj[ti >= 0]  # a target below the blocks: its link is zero
        A = pat[run.blocks, :, p, a : b + 1]  # [Lb, H, w] attention rows of p over the run's positions
        o = _cross_output(V, A, p - a)  # [Lb · H, S, hd]
        parts[kp, lh] = torch.bmm(G.transpose(0, 1), o.transpose(1, 2))[:, ti, sj].T  # [Lb·H, T_p, S] -> links
        # one hop: head h's attention from p to the source's own position times the source's value there
        a1 = A[:, :, p_src] * (p_src < p - a)  # [Lb, H, S]
        o1 = a1.view(*v1.shape[:2], -1, len(srcs))[..., None] * v1[:, :, None]  # [Lb, KV, H / KV, S, hd]
        one_hop[kp] = (G.reshape(hi - lo, -1) @ o1.permute(3, 0, 1, 2, 4).reshape(len(srcs), -1).T)[ti, sj]


@dataclass
class SourceRun:
    """One forward pass over a chunk of sources: positions first_pos..last_pos, blocks `blocks`; sources whose
    entry block is below the first block (entry = blocks.start - 1) come in with the embeddings."""

    sources: list[int]
    first_pos: int
    last_pos: int
    blocks: range


#: a block of a forward pass costs about this many (source × position) units beyond its work: calls and hooks,
#: ~0.9 ms against ~25 µs per unit on gemma3-270m
BLOCK_OVERHEAD = 36


def plan_runs(graph: Graph, lt: Tensor, ls: Tensor, n_layers: int, most: int = 64) -> list[SourceRun]:
    """Cut the links' sources into forward passes of at most `most`, minimising Σ sources × positions × blocks
    (+ BLOCK_OVERHEAD per block): sources sorted by position, then entry block; the cut points by dynamic
    programming over that order. A source needs positions p_s .. (its last target's) − 1 and blocks after its
    entry up to its targets' highest attention layer."""
    nodes = graph.nodes
    pos = torch.tensor([nd["ctx_idx"] for nd in nodes])
    top = torch.tensor([top_attention(nd, n_layers) if nd["feature_type"] != "embedding" else -1 for nd in nodes])
    last = torch.full((len(nodes),), -1).scatter_reduce(0, ls, pos[lt] - 1, "amax")  # last value position needed
    high = torch.full((len(nodes),), -1).scatter_reduce(0, ls, top[lt], "amax")  # highest attention read
    # source -> [position, entry block, last value position, top attention layer]
    need = {s: [int(pos[s]), entry_block(nodes[s]), int(last[s]), int(high[s])] for s in ls.unique().tolist()}
    order = sorted(need, key=lambda s: (need[s][0], need[s][1]))
    n = len(order)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for i in range(1, n + 1):  # best[i]: cheapest plan for order[:i]; the last run is order[j:i]
        a, e, b, top = 10**9, 10**9, -1, -1
        for j in range(i - 1, max(-1, i - most - 1), -1):
            p, ej, bj, tj = need[order[j]]
            a, e, b, top = min(a, p), min(e, ej), max(b, bj), max(top, tj)
            blocks = max(0, top - e)  # blocks e + 1 .. top
            cost = best[j] + blocks * ((i - j) * (b - a + 1) + BLOCK_OVERHEAD)
            if cost < best[i]:
                best[i], cut[i] = cost, j
    runs, i = [], n
    while i > 0:
        j = cut[i]
        srcs = order[j:i]
        e = min(need[s][1] for s in srcs)
        runs.append(
            SourceRun(
                srcs,
                min(need[s][0] for s in srcs),
                max(need[s][2] for s in srcs),
                range(e + 1, max(need[s][3] for s in srcs) + 1),
            )
        )
        i = j
    return runs[::-1]


def _cross_output(V: Tensor, A: Tensor, p: int) -> Tensor:
    """Each source's part of every head's output at window position p from earlier positions only:
    [Lb · H, S, hd].  V: [Lb, KV, w, S, hd] values; A: [Lb, H, w] the attention rows of p."""
    Lb, KV, w, S, hd = V.shape
    H = A.shape[1]
    A = A * (torch.arange(w) < p)  # the same position is no hop
    # one product per (layer, kv head): its query heads' rows [H / KV, w] @ values [w, S · hd]
    # (head h reads kv head h // (H / KV))
    o = torch.bmm(A.reshape(Lb * KV, H // KV, w), V.view(Lb * KV, w, S * hd))
    return o.view(Lb * H, S, hd)


def _source_values(
    model: ModelAdapter, ts: Source, st: PromptState, graph: Graph, run: SourceRun, names: dict | None = None
) -> Tensor:
    """v_s [Lb, KV, w, S, hd] for the run's blocks and positions: each source's part of those layers' attention
    values, by one lean frozen forward (`value_run`) batched over sources with only that source's value as input."""
    d = model.d_model
    a, w, blocks = run.first_pos, run.last_pos - run.first_pos + 1, run.blocks
    extra = has_constants(model)  # one more batch element with every input zero: the constants, subtracted
    S = len(run.sources)
    emb = st.embed.new_zeros(S + extra, w, d)  # the residual entering the first block
    src: dict[int, Tensor] = {}
    for j, i in enumerate(run.sources):
        nd = graph.nodes[i]
        p = nd["ctx_idx"]
        if nd["feature_type"] == "embedding":
            emb[j, p - a] = st.embed[p]
            continue
        if nd["feature_type"] == "mlp reconstruction error":
            writes = {int(nd["layer"]): st.error[int(nd["layer"]), p]}
        else:
            l, f = int(nd["layer"]), nd["feature"]
            idx = torch.tensor([f])
            writes = {wl: float(st.acts[l, p, f]) * dec_rows(ts, l, wl, idx)[0] for wl in ts.write_layers(l)}
        for wl, vec in writes.items():
            if wl < blocks.start:  # written below the first block: already in the residual entering it
                emb[j, p - a] += vec.to(emb)
            else:
                src.setdefault(wl, emb.new_zeros(emb.shape))[j, p - a] += vec.to(emb)
    with torch.no_grad():
        vals = value_run(model, ts, window(st, a, run.last_pos), emb, src, blocks, names)
    KV, hd = vals[blocks[0]].shape[1], vals[blocks[0]].shape[-1]
    out = torch.empty(len(blocks), KV, w, S, hd)
    for i, l in enumerate(blocks):
        v = vals[l].float().cpu()
        out[i] = (v[:S] - v[S:] if extra else v).permute(1, 2, 0, 3)
    return out
