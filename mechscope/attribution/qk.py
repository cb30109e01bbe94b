"""QK attribution: why a head looks where it looks, as (query-side node × key-side node) pairs.

With attention patterns, residual-norm scales and the q/k-norm scales (Gemma 3, Qwen3) frozen at their values
on the prompt, the query of head h at position q and its key at position k are affine in the nodes of the local
replacement model: features, error nodes and token embeddings at any position (earlier positions arrive through
the frozen attention of lower layers), plus constants (biases, transcoder b_dec, GPT-2's position embeddings).
Rotary is a fixed linear map per position. Writing query = Σ_s Q_s + Q_bias and key = Σ_t K_t + K_bias,

    score(q, k) = scaling · query · key = Σ_{s, t} scaling · Q_s · K_t        (pre-softmax, pre-soft-cap)

splits exactly into pairs. Gemma 2's soft-cap tanh(score / c) · c comes after: the pre-cap score is decomposed.

Q_s and K_t come from batched backward passes of 2 × head_dim rows (every query and key coordinate) through the
frozen replacement model; a node's vector is its gradient times its value, as for graph edges
(mechscope/attribution/qk_vectors.py). The constants are measured on a run with every node zeroed, so the pairs
summing to the score is a check, not an identity. The result and its sums: mechscope/attribution/qk_result.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mechscope.attribution.qk_result import QKAttribution, QKNode, top_pair_index
from mechscope.attribution.qk_vectors import frozen_qk, frozen_score, node_vectors, prefix_qk_scales
from mechscope.attribution.replacement import prepare
from mechscope.errors import MechscopeError
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from torch import Tensor

    from mechscope.models.adapter import ModelAdapter
    from mechscope.models.attention import Captured

__all__ = [
    "QK_FAMILIES",
    "QKAttribution",
    "QKNode",
    "check_head",
    "frozen_qk",
    "frozen_score",
    "qk_attribution",
    "resolve_pos",
    "top_pair_index",
]

#: families whose attention goes through mechscope's attention function with query/key capture
QK_FAMILIES = ("llama", "gemma2", "gemma3", "qwen3", "gpt2")


def check_head(model: ModelAdapter, layer: int, head: int) -> None:
    """One-line errors for an unsupported family or a layer/head out of range."""
    if model.family.name not in QK_FAMILIES:
        raise MechscopeError(f"QK attribution does not support the {model.family.name} family yet")
    if not 0 <= layer < model.n_layers:
        raise MechscopeError(f"--layer must lie in 0..{model.n_layers - 1} for {model.name}, got {layer}")
    n_heads = int(model.cfg.num_attention_heads if hasattr(model.cfg, "num_attention_heads") else model.cfg.n_head)
    if not 0 <= head < n_heads:
        raise MechscopeError(f"--head must lie in 0..{n_heads - 1} for {model.name}, got {head}")


def resolve_pos(pos: int | None, n: int, what: str, default: int) -> int:
    """A position in the prompt; negative counts from the end (-1 = last)."""
    if pos is None:
        return default
    p = pos + n if pos < 0 else pos
    if not 0 <= p < n:
        raise MechscopeError(f"--{what} {pos} is outside the prompt ({n} tokens: 0..{n - 1})")
    return p


def qk_attribution(
    model: ModelAdapter,
    ts: Source,
    prompt: str,
    layer: int,
    head: int,
    query: int | None = None,
    key: int | None = None,
    chat: bool = False,
    batch_size: int = 128,
    threads: int | None = None,
) -> QKAttribution:
    """Decompose head (layer, head)'s score at (query, key) into node pairs (see the module docstring).

    threads: backward passes run at once (default: torch's current thread count, which is put back afterwards).

    query defaults to the last position; key to the position the head attends to most after the first token
    (BOS is usually an attention sink), or 0 when the query is 0. Negative positions count from the end.

    >>> a = qk_attribution(m, ts, "Dallas is in the state of", layer=12, head=2, key=1)      # doctest: +SKIP
    >>> a.score, a.pairs_total, a.top_pairs(5), a.totals("key")                            # doctest: +SKIP
    """
    before = torch.get_num_threads()
    threads = threads or before
    # one thread per backward pass, as attribute()'s rows, with as many passes at once as there were threads: the
    # long chain of small backward ops waits at every op's barrier for all threads, and on a busy machine that
    # costs more than a second thread gains (measured: 5.6 s against 20 s on gemma3-270m layer 9, load 11, 2 cores)
    torch.set_num_threads(1)
    try:
        return _qk_attribution(model, ts, prompt, layer, head, query, key, chat, batch_size, workers=threads)
    finally:
        torch.set_num_threads(before)


def _qk_attribution(
    model: ModelAdapter,
    ts: Source,
    prompt: str,
    layer: int,
    head: int,
    query: int | None,
    key: int | None,
    chat: bool,
    batch_size: int,
    workers: int,
) -> QKAttribution:
    check_head(model, layer, head)
    ts.requires_grad_(False)  # transcoder weights are constants here (as in `attribute`)
    toks = model.tokenize(prompt, chat=chat)
    n = toks.ids.shape[0]
    q = resolve_pos(query, n, "query", n - 1)
    k = resolve_pos(key, n, "key", 0) if key is not None else None
    if k is not None and k > q:
        raise MechscopeError(f"--key {k} comes after --query {q}: the causal mask hides it (score undefined)")
    qk_scales: dict[str, Tensor] = {}
    cap: dict[int, Captured] = {}
    # positions after the query change nothing at or before it (causality): work on the prefix
    with model.qk_norm_scales(record=qk_scales), model.capture_qk(cap):
        st = prepare(model, ts, toks.ids[: q + 1], toks.strs[: q + 1], upto_layer=layer)  # nothing above is read
    if layer not in cap:
        raise MechscopeError(f"layer {layer}'s attention did not run through mechscope's attention function")
    qc, kc, _, _, scaling, softcap, mask = cap[layer]
    kvh = head // (qc.shape[1] // kc.shape[1])
    scores = scaling * (kc[0, kvh].float() @ qc[0, head, q].float())  # [q+1]
    pattern = st.patterns[layer][0, head, q].float()
    if k is None:
        k = int(pattern[1:].argmax()) + 1 if q > 0 else 0
    if mask is not None and float(mask[0, 0, q, k]) < -1e4:
        raise MechscopeError(f"key {k} is masked for query {q} at layer {layer} (outside its sliding window)")
    key_scales = prefix_qk_scales(model, toks.ids[: k + 1], layer) if k < q else qk_scales
    q_nodes, k_nodes, q_vecs, k_vecs = node_vectors(
        model, ts, st, (qk_scales, key_scales), layer, ((head, q), (kvh, k)), batch_size, workers
    )
    return QKAttribution(
        layer=layer,
        head=head,
        query=q,
        key=k,
        tokens=list(st.tokens),
        score=float(scores[k]),
        scaling=scaling,
        softcap=softcap,
        scores=scores.tolist(),
        pattern=pattern.tolist(),
        q_nodes=q_nodes,
        k_nodes=k_nodes,
        q_vecs=q_vecs,
        k_vecs=k_vecs,
        query_vec=qc[0, head, q].float().cpu(),
        key_vec=kc[0, kvh, k].float().cpu(),
        state=(st, qk_scales),
    )
