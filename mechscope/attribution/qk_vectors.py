"""The node vectors of a QK attribution: each node's part of a head's query at q and of its key at k.

With attention patterns, residual-norm scales and q/k-norm scales frozen, the query and the key are affine in the
nodes of the local replacement model, so a node's part of them is its gradient times its value, as for graph edges:
head_dim backward rows per side (every coordinate), batched, through the frozen model. The query side runs on the
prompt up to q, the key side on the prompt up to k (positions after k carry nothing to it: causality), each row on
the blocks below the head's layer only. Constants (biases, b_dec, GPT-2's positions) make the bias node.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.attribution.config import AttributionConfig
from mechscope.attribution.head_parts import has_constants
from mechscope.attribution.qk_result import QKNode
from mechscope.attribution.replacement import FrozenRun, PromptState, frozen_forward, only_blocks
from mechscope.attribution.rows import Attributor
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter
    from mechscope.models.attention import Captured


def frozen_qk(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    qk_scales: dict[str, Tensor],
    layer: int,
    src_values: list[Tensor] | None = None,
    emb_value: Tensor | None = None,
    upto_pos: int | None = None,
) -> tuple[Tensor, Tensor, float, FrozenRun]:
    """(query [heads, n, hd], key [kv_heads, n, hd], scaling, run) of `layer` in the frozen replacement model,
    with its graph back to the run's leaves (blocks above `layer` are not run). `src_values` / `emb_value` replace
    the nodes' values (checks); `upto_pos` runs the prompt up to there (qk_scales recorded on that prefix)."""
    cap: dict[int, Captured] = {}
    with model.qk_norm_scales(freeze=qk_scales), model.capture_qk(cap):
        run = frozen_forward(
            model, ts, st, src_values=src_values, emb_value=emb_value, upto_pos=upto_pos, blocks=range(layer + 1)
        )
    qv, kv, scaling = cap[layer].query, cap[layer].key, cap[layer].scaling
    return qv[0], kv[0], scaling, run


def frozen_score(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    qk_scales: dict[str, Tensor],
    layer: int,
    head: int,
    q: int,
    k: int,
    src_values: list[Tensor] | None = None,
    emb_value: Tensor | None = None,
) -> float:
    """The pre-cap score of (layer, head) at (q, k) in the frozen model, with nodes' values replaced: the
    brute-force side of the exactness checks (perturb one node, measure the change).

    >>> st, qk_scales = qk_attribution(m, ts, "Dallas is in the state of", 9, 2).state     # doctest: +SKIP
    >>> frozen_score(m, ts, st, qk_scales, 9, 2, 6, 1)                                     # doctest: +SKIP
    """
    with torch.no_grad():
        qv, kv, scaling, _ = frozen_qk(model, ts, st, qk_scales, layer, src_values, emb_value)
    kvh = head // (qv.shape[0] // kv.shape[0])
    return float(scaling * (qv[head, q].detach().double() @ kv[kvh, k].detach().double()))


def prefix_qk_scales(model: ModelAdapter, ids: Tensor, layer: int) -> dict[str, Tensor]:
    """The q/k norms' scales of blocks up to `layer` on a prompt prefix (ids [n]), for a frozen run on that prefix
    (they are kept per position in a layout that differs by family, so they are recorded again, not sliced)."""
    rec: dict[str, Tensor] = {}
    if model.family.qk_norms:
        with torch.no_grad(), model.qk_norm_scales(record=rec), only_blocks(model, range(layer + 1)):
            model.forward(ids[None].to(model.device), logits=False)
    return rec


def node_vectors(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    qk_scales: tuple[dict[str, Tensor], dict[str, Tensor]],
    layer: int,
    at: tuple[tuple[int, int], tuple[int, int]],
    batch_size: int,
    workers: int = 1,
) -> tuple[list[QKNode], list[QKNode], Tensor, Tensor]:
    """Node vectors of the query at q and the key at k: ([S_q] nodes, [S_k] nodes, [S_q, hd], [S_k, hd]), bias
    last on each side. at: ((head, q), (kv head, k)); qk_scales: the q/k-norm scales on the prompt up to q and up
    to k. The 2 × head_dim rows are cut into at least `workers` chunks, run at once on single-threaded torch (as
    `Attributor.rows` does: whole backward passes per thread never wait at a barrier for a descheduled thread)."""
    (head, q), (kvh, k) = at
    att = Attributor(model, ts, st, AttributionConfig())
    with torch.enable_grad():
        qv, kv, _, run_q = frozen_qk(model, ts, st, qk_scales[0], layer)
        run_k = run_q
        if k < q:  # the key side on the prompt up to k: a smaller graph for its rows
            _, kv, _, run_k = frozen_qk(model, ts, st, qk_scales[1], layer, upto_pos=k)
    hd = qv.shape[-1]
    rows = torch.zeros(2, hd, att.n_src)  # [query | key coordinate, n_src]
    const = torch.zeros(2, hd)
    sides = ((qv, run_q, (head, q)), (kv, run_k, (kvh, k)))
    n_chunks = max(-(-hd // batch_size), -(-workers // 2) if model.device.type == "cpu" else 1)
    size = -(-hd // n_chunks)
    jobs = [(side, a) for side in (0, 1) for a in range(0, hd, size)]

    def work(job: tuple[int, int]) -> None:
        side, a = job
        vec, run, where = sides[side]
        r = min(size, hd - a)
        const[side, a : a + r] += _coordinate_rows(att, run, vec, layer, where, a, rows[side, a : a + r])

    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="mechscope-qk") as pool:
            list(pool.map(work, jobs))  # re-raises a worker's exception
    else:
        for job in jobs:
            work(job)
    if has_constants(model):
        # the model's own constants (biases, GPT-2's positions): query and key with every node at zero. A model
        # without biases gives exactly zero there, so the run is skipped.
        z = [torch.zeros_like(st.embed)] * (model.n_layers + 1)
        with torch.no_grad():
            qz, kz, _, _ = frozen_qk(model, ts, st, qk_scales[0], layer, src_values=z[1:], emb_value=z[0])
        const += torch.stack([qz[head, q], kz[kvh, k]]).detach().float().cpu()
    nodes = source_nodes(att, st)
    q_nodes, q_vecs = _side(nodes, rows[0], const[0], q)
    k_nodes, k_vecs = _side(nodes, rows[1], const[1], k)
    return q_nodes, k_nodes, q_vecs, k_vecs


def _coordinate_rows(
    att: Attributor, run: FrozenRun, vec: Tensor, layer: int, at: tuple[int, int], a: int, block: Tensor
) -> Tensor:
    """Rows of coordinates a .. a + len(block) of vec[at] (vec: the layer's query [heads, n, hd] or key, with its
    graph) into `block` [r, n_src]; returns their constant part from the transcoders' b_dec [r]."""
    r = block.shape[0]
    G = vec.new_zeros(r, *vec.shape)
    G[torch.arange(r), at[0], at[1], torch.arange(a, a + r)] = 1
    inputs = [run.emb, *run.src[:layer]]  # MLP outputs at or above `layer` come after its attention
    with torch.enable_grad():
        grads = torch.autograd.grad([vec], inputs, [G], retain_graph=True, is_grads_batched=True, allow_unused=True)
    const = torch.zeros(r)
    for l, g in enumerate(grads[1:]):
        if g is not None:  # writes the feature and error columns into `block` (a view of the table)
            const += att.edges_into(l, g[:, 0].detach().float().cpu(), block)
    if grads[0] is not None:
        att.tokens_into(grads[0][:, 0].detach().float().cpu(), block)
    return const


def source_nodes(att: Attributor, st: PromptState) -> list[QKNode]:
    """Every source node in the Attributor's column order: features, errors (layer-major), tokens."""
    out = [QKNode(f"{l}_{f}_{p}", "feature", l, p, f) for l, p, f in att.feat.tolist()]
    out += [QKNode(f"err_{l}_{p}", "error", l, p) for l in range(att.L) for p in range(att.n)]
    out += [QKNode(f"E_{int(st.ids[p])}_{p}", "token", None, p, token=st.tokens[p]) for p in range(att.n)]
    return out


def _side(nodes: list[QKNode], rows: Tensor, const: Tensor, pos: int) -> tuple[list[QKNode], Tensor]:
    """The nodes with a non-zero part on one side (at or before `pos`), their vectors [S, hd], bias last.
    Dropping exact zeros changes no sum."""
    vecs = rows.T  # [n_src, hd]
    keep = [i for i in (vecs.abs().sum(1) > 0).nonzero()[:, 0].tolist() if nodes[i].pos <= pos]
    return [nodes[i] for i in keep] + [QKNode("bias", "bias")], torch.cat([vecs[keep], const[None]])
