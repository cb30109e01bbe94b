"""QK attribution: why a head looks where it looks, as (query-side node × key-side node) pairs.

With attention patterns, residual-norm scales and the q/k-norm scales (Gemma 3, Qwen3) frozen at their values
on the prompt, the query of head h at position q and its key at position k are affine in the nodes of the local
replacement model: features, error nodes and token embeddings at any position (earlier positions arrive through
the frozen attention of lower layers), plus constants (biases, transcoder b_dec, GPT-2's position embeddings).
Rotary is a fixed linear map per position. Writing query = Σ_s Q_s + Q_bias and key = Σ_t K_t + K_bias,

    score(q, k) = scaling · query · key = Σ_{s, t} scaling · Q_s · K_t        (pre-softmax, pre-soft-cap)

splits exactly into pairs. Gemma 2's soft-cap tanh(score / c) · c comes after: the pre-cap score is decomposed.

Q_s and K_t come from one batched backward pass of 2 × head_dim rows (every query and key coordinate) through
the frozen replacement model; a node's vector is its gradient times its value, as for graph edges
(mechscope/attribution/rows.py). The constants are measured on a run with every node zeroed, so the pairs
summing to the score is a check, not an identity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mechscope.attribution.config import AttributionConfig
from mechscope.attribution.replacement import FrozenRun, PromptState, frozen_forward, prepare
from mechscope.attribution.rows import Attributor
from mechscope.errors import MechscopeError
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter
    from mechscope.models.attention import Captured

#: families whose attention goes through mechscope's attention function with query/key capture
QK_FAMILIES = ("llama", "gemma2", "gemma3", "qwen3", "gpt2")


@dataclass
class QKNode:
    """A query- or key-side node: id as in the graph JSON (`{l}_{f}_{p}`, `err_{l}_{p}`, `E_{tok}_{p}`) or "bias"."""

    id: str
    kind: str  # feature | error | token | bias
    layer: int | None = None
    pos: int | None = None
    feature: int | None = None
    token: str = ""

    def label(self) -> str:
        if self.kind == "feature":
            return f"{self.layer}/{self.feature}@{self.pos}"
        if self.kind == "error":
            return f"error {self.layer}@{self.pos}"
        if self.kind == "token":
            return f"token {self.token!r}@{self.pos}"
        return "bias (constants)"


@dataclass
class QKAttribution:
    """The decomposed score of one head at (query, key).  S_q / S_k: query- / key-side nodes (bias last).

    >>> from mechscope import load_model
    >>> from mechscope.transcoders import load_default_transcoders
    >>> m = load_model("gemma3-270m"); ts = load_default_transcoders(m)
    >>> a = qk_attribution(m, ts, "Dallas is in the state of", layer=9, head=2, key=2)
    >>> abs(a.pairs_total - a.score) <= 1e-5 * abs(a.score)       # doctest: +SKIP
    True
    """

    layer: int
    head: int
    query: int
    key: int
    tokens: list[str]  # the prompt up to the query
    score: float  # pre-softmax, pre-soft-cap score of the clean run (the model's own query and key)
    scaling: float
    softcap: float | None
    scores: list[float]  # pre-cap scores of every key 0..query (masked ones too)
    pattern: list[float]  # attention weights over keys 0..query
    q_nodes: list[QKNode]
    k_nodes: list[QKNode]
    q_vecs: Tensor  # [S_q, head_dim] each node's part of the query (bias last)
    k_vecs: Tensor  # [S_k, head_dim]
    query_vec: Tensor  # [head_dim] the clean query (checks)
    key_vec: Tensor  # [head_dim]
    state: tuple[PromptState, dict[str, Tensor]] | None = field(default=None, repr=False)  # for re-runs

    # The S_q × S_k pair matrix (pair (s, t) = scaling · Q_s · K_t) is never formed whole: on gemma3-270m's top
    # layer it has ~56 M entries. Its sums are regrouped (Σ_s Σ_t Q_s·K_t = Σ_s Q_s · Σ_t K_t) and its largest
    # entries found by a certified search (`top_pairs`).
    def pair_matrix(self) -> Tensor:
        """The whole pair matrix [S_q, S_k], float64 (small prompts, tests)."""
        return self.scaling * (self.q_vecs.double() @ self.k_vecs.double().T)

    @property
    def pairs_total(self) -> float:
        """The sum over all S_q × S_k pairs (float64)."""
        return float(self.scaling * (self.q_vecs.double().sum(0) @ self.k_vecs.double().sum(0)))

    @property
    def n_pairs(self) -> int:
        return self.q_vecs.shape[0] * self.k_vecs.shape[0]

    def totals(self, which: str) -> Tensor:
        """Marginals [S]: a query-side node's pairs summed over every key-side node (its part of the score), or
        a key-side node's over every query-side node. Each side's marginals sum to the score."""
        if which == "query":
            return self.scaling * (self.q_vecs.double() @ self.k_vecs.double().sum(0))
        return self.scaling * (self.k_vecs.double() @ self.q_vecs.double().sum(0))

    @property
    def score_scale(self) -> float:
        """scaling · |query| · |key|: the size float32 round-off of the score is relative to (a score near zero
        is a cancellation, so errors are reported against max(|score|, this))."""
        return float(abs(self.scaling) * self.query_vec.norm() * self.key_vec.norm())

    def rel_error(self) -> float:
        """|pairs_total − score| / max(|score|, score_scale)."""
        return abs(self.pairs_total - self.score) / max(abs(self.score), self.score_scale, 1e-30)

    @property
    def capped_score(self) -> float:
        c = self.softcap
        return float(torch.tanh(torch.tensor(self.score / c)) * c) if c else self.score

    def top_pairs(self, n: int = 20) -> list[dict]:
        """The n pairs of largest |weight|: query node, key node, weight (in score units). Exact: see `top_pair_index`."""
        out = []
        for i, j, w in top_pair_index(self.q_vecs, self.k_vecs, self.scaling, n):
            a, b = self.q_nodes[i], self.k_nodes[j]
            out.append(
                {
                    "query_node": a.id,
                    "key_node": b.id,
                    "weight": w,
                    "query_label": a.label(),
                    "key_label": b.label(),
                }
            )
        return out

    def side(self, which: str, n: int = 10) -> list[dict]:
        """Marginals: a query-side node's pairs summed over every key-side node (its part of the score), or the
        reverse. Each side's marginals sum to the score too."""
        tot = self.totals(which)
        nodes = self.q_nodes if which == "query" else self.k_nodes
        idx = tot.abs().topk(min(n, tot.numel())).indices.tolist()
        return [{"node": nodes[i].id, "label": nodes[i].label(), "total": float(tot[i])} for i in idx]

    def to_json(self, top: int = 20) -> dict:
        q_err = float((self.q_vecs.sum(0) - self.query_vec).norm() / self.query_vec.norm().clamp_min(1e-30))
        k_err = float((self.k_vecs.sum(0) - self.key_vec).norm() / self.key_vec.norm().clamp_min(1e-30))
        return {
            "layer": self.layer,
            "head": self.head,
            "query": self.query,
            "key": self.key,
            "query_token": self.tokens[self.query],
            "key_token": self.tokens[self.key],
            "score": self.score,
            "pairs_total": self.pairs_total,
            "scaling": self.scaling,
            "softcap": self.softcap,
            "capped_score": self.capped_score,
            "attention": self.pattern[self.key],
            "scores": self.scores,
            "pattern": self.pattern,
            "n_pairs": self.n_pairs,
            "query_side": self.side("query", top),
            "key_side": self.side("key", top),
            "pairs": self.top_pairs(top),
            "checks": {"rel_error": self.rel_error(), "query_rel_error": q_err, "key_rel_error": k_err},
            "convention": "pre-softmax score before any soft-cap; patterns, residual-norm and q/k-norm scales "
            "frozen at the clean run; 'bias' = every constant (biases, b_dec, position embeddings)",
        }


def top_pair_index(Q: Tensor, K: Tensor, scaling: float, n: int, block: int = 512) -> list[tuple[int, int, float]]:
    """The n entries of largest |scaling · Q @ K.T| as (i, j, value), without forming the product when a bound
    allows: |Q_i·K_j| ≤ |Q_i||K_j|, so after scanning the `block` longest rows of Q against all of K and all of Q
    against the `block` longest rows of K, no unscanned pair can beat the n-th best found once
    |Q_(block+1)||K_(block+1)| is below it. Otherwise the whole product is scanned, in blocks.  Q: [S_q, hd]
    """
    qn, kn = Q.norm(dim=1), K.norm(dim=1)
    qo, ko = qn.argsort(descending=True), kn.argsort(descending=True)
    a, b = qo[:block], ko[:block]
    cand: dict[tuple[int, int], float] = {}

    def scan(rows: Tensor, cols: Tensor) -> None:
        P = scaling * (Q[rows].double() @ K[cols].double().T)
        top = P.abs().flatten().topk(min(n, P.numel()))
        for f, v in zip(top.indices.tolist(), P.flatten()[top.indices].tolist()):
            cand[(int(rows[f // P.shape[1]]), int(cols[f % P.shape[1]]))] = v

    scan(a, ko)
    scan(qo, b)
    best = sorted(cand.items(), key=lambda kv: -abs(kv[1]))[:n]
    rest_q = float(qn[qo[block]]) if len(qo) > block else 0.0
    rest_k = float(kn[ko[block]]) if len(ko) > block else 0.0
    bound = abs(scaling) * rest_q * rest_k
    if len(best) < min(n, Q.shape[0] * K.shape[0]) or (best and bound > abs(best[-1][1])):
        for s in range(0, Q.shape[0], block):  # no certificate: scan everything, a block of rows at a time
            scan(torch.arange(s, min(s + block, Q.shape[0])), torch.arange(K.shape[0]))
        best = sorted(cand.items(), key=lambda kv: -abs(kv[1]))[:n]
    return [(i, j, v) for (i, j), v in best]


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
) -> QKAttribution:
    """Decompose head (layer, head)'s score at (query, key) into node pairs (see the module docstring).

    query defaults to the last position; key to the position the head attends to most after the first token
    (BOS is usually an attention sink), or 0 when the query is 0. Negative positions count from the end.
    """
    threads = torch.get_num_threads()
    # one thread per backward pass, as attribute()'s rows, with as many passes at once as there were threads: the
    # long chain of small backward ops waits at every op's barrier for all threads, and on a busy machine that
    # costs more than a second thread gains (measured: 5.6 s against 20 s on gemma3-270m layer 9, load 11, 2 cores)
    torch.set_num_threads(1)
    try:
        return _qk_attribution(model, ts, prompt, layer, head, query, key, chat, batch_size, workers=threads)
    finally:
        torch.set_num_threads(threads)


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
        st = prepare(model, ts, toks.ids[: q + 1], toks.strs[: q + 1])
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
    q_nodes, k_nodes, q_vecs, k_vecs = _decompose(model, ts, st, qk_scales, layer, head, q, k, batch_size, workers)
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


def frozen_qk(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    qk_scales: dict[str, Tensor],
    layer: int,
    src_values: list[Tensor] | None = None,
    emb_value: Tensor | None = None,
) -> tuple[Tensor, Tensor, float, FrozenRun]:
    """(query [heads, n, hd], key [kv_heads, n, hd], scaling, run) of `layer` in the frozen replacement model,
    with its graph back to the run's leaves. `src_values` / `emb_value` replace the nodes' values (checks)."""
    cap: dict[int, Captured] = {}
    with model.qk_norm_scales(freeze=qk_scales), model.capture_qk(cap):
        run = frozen_forward(model, ts, st, src_values=src_values, emb_value=emb_value)
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
    brute-force side of the exactness checks (perturb one node, measure the change)."""
    with torch.no_grad():
        qv, kv, scaling, _ = frozen_qk(model, ts, st, qk_scales, layer, src_values, emb_value)
    kvh = head // (qv.shape[0] // kv.shape[0])
    return float(scaling * (qv[head, q].detach().double() @ kv[kvh, k].detach().double()))


def _decompose(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    qk_scales: dict[str, Tensor],
    layer: int,
    head: int,
    q: int,
    k: int,
    batch_size: int,
    workers: int = 1,
) -> tuple[list[QKNode], list[QKNode], Tensor, Tensor]:
    """Node vectors of the query at q and the key at k: ([S_q] nodes, [S_k] nodes, [S_q, hd], [S_k, hd]).

    The 2 × head_dim rows are cut into at least `workers` chunks, run at once on single-threaded torch (as
    `Attributor.rows` does: whole backward passes per thread never wait at a barrier for a descheduled thread).
    """
    att = Attributor(model, ts, st, AttributionConfig())
    L = model.n_layers
    with torch.enable_grad():
        qv, kv, _, run = frozen_qk(model, ts, st, qk_scales, layer)
    hd = qv.shape[-1]
    kvh = head // (qv.shape[0] // kv.shape[0])
    rows = torch.zeros(2 * hd, att.n_src)  # rows [0, hd): query coordinates; [hd, 2 hd): key coordinates
    const = torch.zeros(2 * hd)
    n_chunks = max(-(-2 * hd // batch_size), workers if model.device.type == "cpu" else 1)
    size = -(-2 * hd // n_chunks)
    starts = list(range(0, 2 * hd, size))

    def work(a: int) -> None:
        r = min(size, 2 * hd - a)
        const[a : a + r] += _rows_block(att, run, qv, kv, layer, (head, q), (kvh, k), a, rows[a : a + r])

    if len(starts) > 1 and workers > 1:
        with ThreadPoolExecutor(min(workers, len(starts)), thread_name_prefix="mechscope-qk") as pool:
            list(pool.map(work, starts))  # re-raises a worker's exception
    else:
        for a in starts:
            work(a)
    if model.family.affine_biases or any(name.endswith("bias") for name, _ in model.model.named_parameters()):
        # the model's own constants (biases, GPT-2's positions): query and key with every node at zero. A model
        # without biases gives exactly zero there, so the run is skipped.
        z = torch.zeros_like(st.embed)
        with torch.no_grad():
            qz, kz, _, _ = frozen_qk(model, ts, st, qk_scales, layer, src_values=[z] * L, emb_value=z)
        const += torch.cat([qz[head, q], kz[kvh, k]]).detach().float().cpu()
    nodes = _nodes(att, st)
    q_nodes, q_vecs = _side(nodes, rows[:hd], const[:hd], q)
    k_nodes, k_vecs = _side(nodes, rows[hd:], const[hd:], k)
    return q_nodes, k_nodes, q_vecs, k_vecs


def _rows_block(
    att: Attributor,
    run: FrozenRun,
    qv: Tensor,
    kv: Tensor,
    layer: int,
    q_at: tuple[int, int],
    k_at: tuple[int, int],
    a: int,
    block: Tensor,
) -> Tensor:
    """Rows a .. a + len(block) (query coordinates below head_dim, key coordinates above) into `block`
    [r, n_src]; returns their constant part from the transcoders' b_dec [r].  qv: [heads, n, hd]"""
    hd, r, n = qv.shape[-1], block.shape[0], att.n
    gq, gk = qv.new_zeros(r, 1, *qv.shape), kv.new_zeros(r, 1, *kv.shape)
    i = torch.arange(a, a + r)
    on_q = i < hd
    gq[on_q.nonzero()[:, 0], 0, q_at[0], q_at[1], i[on_q]] = 1
    gk[(~on_q).nonzero()[:, 0], 0, k_at[0], k_at[1], i[~on_q] - hd] = 1
    inputs = [run.emb, *run.src[:layer]]  # MLP outputs at or above `layer` come after its attention
    with torch.enable_grad():
        grads = torch.autograd.grad(
            [qv[None], kv[None]], inputs, [gq, gk], retain_graph=True, is_grads_batched=True, allow_unused=True
        )
    const = torch.zeros(r)
    for l, g in enumerate(grads[1:]):
        if g is not None:  # `_edges` writes the feature and error columns into `block` (a view of the table)
            const += att._edges(l, g[:, 0].detach().float().cpu(), block)
    if grads[0] is not None:
        tok0 = att.n_feat + att.L * n
        block[:, tok0 : tok0 + n] = (grads[0][:, 0].detach().float().cpu() * att.embed[:n]).sum(-1)
    return const


def _nodes(att: Attributor, st: PromptState) -> list[QKNode]:
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
