"""attribute(): the attribution graph of one prompt in the local replacement model.

Edge s → t is the direct effect of source s on target t's input through the frozen (linear) model:
  feature target (l, p, f):  d(W_enc[f] · x_l[p]) / d(source)   (its pre-activation)
  logit target (token):      d((W_U[tok] − mean W_U) · final[p_last]) / d(source)
times the source's value (a_s·W_dec[s], the error vector e[l,p], or the embedding). A feature writes to every
layer in its source's `write_layers` (its read layer only for per-layer transcoders; it and later ones for a
cross-layer transcoder, see mechscope/transcoders/source.py), so its edge is the sum over those layers of
d(target)/d(MLP output of w) · a_s·W_dec[s→w].

Rows are computed with vector-Jacobian products, batched over targets with `is_grads_batched`
(vmap over the backward pass: one forward, many rows). Structure that is exploited:
  * causality: a target at position p only needs the prompt prefix [0..p] (one cheap forward per prefix);
  * layering: a target at layer l only back-propagates through layers < l (autograd never visits the rest);
  * MLPs carry no backward path except the transcoder skip term; attention and norms are frozen.
Which features get rows is chosen in rounds by their estimated influence on the logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.attribution.graph import Graph, row_normalize
from mechscope.attribution.replacement import FrozenRun, PromptState, frozen_forward, prepare
from mechscope.configs import param, require
from mechscope.cancel import checkpoint
from mechscope.errors import MechscopeError
from mechscope.attribution.memory import check_trace, estimate_memory_gb, prefix_graphs_gb, trace_gb  # noqa: F401 (re-exported)
from mechscope.guards import check_gb, default_max_memory_gb
from mechscope.transcoders.source import Source, check_fits_model, readers

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

log = logging.getLogger(__name__)


@dataclass
class AttributionConfig:
    """Knobs of `attribute`. Defaults follow circuit-tracer (0.95 / 10 logits, 0.8 / 0.98 pruning).

    Front ends that truly differ use a named preset (`PRESETS`): "interactive" traces fewer feature nodes
    so the web page and case studies answer in seconds.

    >>> AttributionConfig(node_threshold=1.5)
    Traceback (most recent call last):
    mechscope.errors.MechscopeError: --node-threshold must lie in (0, 1], got 1.5
    """

    max_feature_nodes: int = param(2048, help="most feature nodes that get attribution rows (most influential first)")
    logit_prob: float = param(0.95, help="explain the top logits up to this cumulative probability")
    max_logits: int = param(10, help="explain at most this many logits")
    targets: list[str] = param(
        default_factory=list,
        flag="--target",
        metavar="TOKEN",
        help="logit token to explain instead of the top logits (repeatable)",
    )
    logit_diff: tuple[str, str] | None = param(None, metavar=("TOKEN_A", "TOKEN_B"), help="explain logit(A) − logit(B)")
    batch_size: int = param(64, help="attribution rows per backward pass")
    node_threshold: float = param(0.8, help="pruning: keep the nodes that carry this share of the influence")
    edge_threshold: float = param(0.98, help="pruning: keep the edges that carry this share of the influence")
    max_memory_gb: float = param(
        default_factory=default_max_memory_gb,
        help="refuse prompts whose graph would need more memory than this (GB; default 8 or $MECHSCOPE_MAX_MEMORY_GB)",
    )
    prefix_cache_gb: float = param(1.0, help="keep all prefix forwards alive up to this size (GB)")

    def __post_init__(self) -> None:
        require(self.max_feature_nodes >= 0, "--max-feature-nodes must be ≥ 0")
        require(self.batch_size >= 1, "--batch-size must be at least 1")
        require(
            0 < self.logit_prob <= 1 and self.max_logits >= 1, "--logit-prob must lie in (0, 1] and --max-logits be ≥ 1"
        )
        for name in ("node_threshold", "edge_threshold"):
            v = getattr(self, name)
            require(0 < v <= 1, f"--{name.replace('_', '-')} must lie in (0, 1], got {v}")
        require(self.max_memory_gb > 0 and self.prefix_cache_gb >= 0, "--max-memory-gb must be positive")
        if self.logit_diff is not None:
            require(
                len(self.logit_diff) == 2 and self.logit_diff[0] != self.logit_diff[1],
                f"--logit-diff needs two different tokens, got {self.logit_diff[0]!r} twice",
            )


#: Named presets where front ends really differ: the CLI's `trace` uses "full"; the web page and the case
#: studies use "interactive" (fewer rows, answers in seconds on a CPU).
PRESETS: dict[str, AttributionConfig] = {
    "full": AttributionConfig(),
    "interactive": AttributionConfig(max_feature_nodes=512),
}


@dataclass
class _Target:
    layer: int  # n_layers for logits
    pos: int
    vec: Tensor  # [d] direction read at that site
    row: int  # index into the rows table


def _logit_targets(
    model: ModelAdapter, st: PromptState, cfg: AttributionConfig
) -> tuple[list[str], list[int], Tensor, Tensor, Tensor]:
    """(token strings, vocab ids, readout vectors [k, d], influence weights [k], probabilities [k])."""
    probs = torch.softmax(st.logits[-1], -1)
    W_U = model.W_U.float()
    mean_u = W_U.mean(0)
    if cfg.logit_diff:
        a, b = (model.token_id(t) for t in cfg.logit_diff)
        vec = (W_U[a] - W_U[b])[None]
        label = f"{cfg.logit_diff[0]} − {cfg.logit_diff[1]}"
        return [label], [model.vocab_size], vec, torch.ones(1), probs[a : a + 1].cpu()
    if cfg.targets:
        ids = [model.token_id(t) for t in cfg.targets]
    else:
        order = probs.argsort(descending=True)
        ids, cum = [], 0.0
        for i in order[: cfg.max_logits].tolist():
            ids.append(i)
            cum += float(probs[i])
            if cum >= cfg.logit_prob:
                break
    idx = torch.tensor(ids)
    p = probs.cpu()[idx]
    weights = p / p.sum() if float(p.sum()) > 0 else torch.full_like(p, 1 / len(ids))
    return [model.tokenizer.decode([i]) for i in ids], ids, W_U[idx.to(W_U.device)] - mean_u, weights, p


class _Attributor:
    def __init__(self, model: ModelAdapter, ts: Source, st: PromptState, cfg: AttributionConfig) -> None:
        self.m, self.ts, self.st, self.cfg = model, ts, st, cfg
        L, n = model.n_layers, st.ids.shape[0]
        self.L, self.n = L, n
        # Row tables and bookkeeping live on the CPU; only the frozen forward/backward run on model.device.
        acts = st.acts.cpu()
        nz = acts.nonzero()  # [n_act, 3] (layer, pos, feature)
        self.feat = nz
        self.feat_val = acts[nz[:, 0], nz[:, 1], nz[:, 2]]
        self.embed = st.embed.cpu()  # [n, d]
        self.error = st.error.cpu()  # [L, n, d]
        self.b_dec = [ts.out_bias(l).detach().float().cpu() for l in range(L)]
        self.n_feat = nz.shape[0]
        self.n_src = self.n_feat + L * n + n  # features, errors (l*n+p), tokens
        # Per write layer w: which active features write to it (read at w for per-layer transcoders; at w or
        # below for cross-layer ones), and their scaled decoder vectors a_s·W_dec[s→w]. Padded per position so
        # one bmm per layer gives all edges into that layer's output; a source's edge sums over its write layers.
        self.pad_idx: list[Tensor] = []  # L x [n, kmax] global feature index, -1 = padding
        self.pad_dec: list[Tensor] = []  # L x [n, kmax, d]
        d = model.d_model
        for w in range(L):
            sels, vecs = [], []
            for l in readers(ts, w):
                sel = (nz[:, 0] == l).nonzero().squeeze(-1)
                sels.append(sel)
                vecs.append(ts.dec_weights(l, w).detach().float().cpu()[nz[sel, 2]] * self.feat_val[sel, None])
            sel = torch.cat(sels) if sels else torch.zeros(0, dtype=torch.long)
            vec = torch.cat(vecs) if vecs else torch.zeros(0, d)
            pos = nz[sel, 1]
            counts = torch.bincount(pos, minlength=n)
            kmax = max(1, int(counts.max()) if sel.numel() else 1)
            idx = torch.full((n, kmax), -1, dtype=torch.long)
            dec = torch.zeros(n, kmax, d)
            # slot of each entry within its position, in the order given (stable sort: no Python loop, which a
            # cross-layer transcoder's L²/2 (layer, feature) pairs would make slow)
            order = torch.argsort(pos, stable=True)
            sel, vec, pos = sel[order], vec[order], pos[order]
            slot = torch.arange(pos.numel()) - (torch.cumsum(counts, 0) - counts)[pos]
            idx[pos, slot] = sel
            dec[pos, slot] = vec
            self.pad_idx.append(idx)
            self.pad_dec.append(dec)
        self.runs: dict[int, FrozenRun] = {}
        self.keep_all_runs = prefix_graphs_gb(model, n) <= cfg.prefix_cache_gb
        self.bias_terms: dict[int, float] = {}
        self.zero: tuple[list[Tensor], Tensor] | None = None
        self.workers = 1  # chunks run at once (see `rows`)

    def zero_sites(self) -> tuple[list[Tensor], Tensor]:
        """Every target site of the frozen model run with all leaves zero: (L x [n, d] MLP inputs, [n, d] final).

        The frozen model is affine in its leaves; this is its constant part: what biases outside the transcoders
        (GPT-2's attention and LayerNorm biases, its position embeddings) add to every target. It is zero for
        bias-free families, so it is only computed for families that declare `affine_biases`. One full-length
        run serves every position: patterns are causal, so a prefix sees the same values.
        """
        if self.zero is None:
            z = torch.zeros_like(self.st.embed)
            run = frozen_forward(self.m, self.ts, self.st, src_values=[z] * self.L, emb_value=z)
            self.zero = ([x[0].detach().float().cpu() for x in run.mlp_in], run.final[0].detach().float().cpu())
        return self.zero

    def run_for(self, pos: int) -> FrozenRun:
        # Rows are computed in rounds, each visiting every position: keep every prefix graph when they fit
        # (they grow as n_pos²; ~170 MB for 17 tokens on gemma3-270m), else one at a time.
        if pos not in self.runs:
            if not self.keep_all_runs:
                self.runs = {}
            self.runs[pos] = frozen_forward(self.m, self.ts, self.st, batch=1, upto_pos=pos)
        return self.runs[pos]

    def rows(self, targets: list[_Target]) -> Tensor:
        """Compute rows [len(targets), n_src] (their constant terms go to self.bias_terms).

        One backward call serves up to batch_size rows, each row's gradient entering at its own site. A call
        costs about batch × prefix length × top layer, plus a fixed overhead that makes small batches dear
        (a row costs ~2× more in a batch of 8 than in one of 64). So targets are cut into chunks by `_chunks`:
        consecutive positions are pooled (last first) until they fill a batch and run on the longest
        prefix among them (positions after a target carry nothing to it, so its row is unchanged), and
        each pool is sorted by layer, so a chunk's rows enter at nearby layers.

        With T workers (`torch.get_num_threads()` when `attribute` starts, i.e. --threads), T chunks run at
        once, each backward on one thread (`attribute` runs torch single-threaded). The backward is a long chain of small operations; splitting each of them over threads makes
        every one wait at a barrier for all threads, and on a busy machine a descheduled thread stalls them all
        (measured: 7.3 s with 1 thread vs 50 s with 2 beside other work). Whole chunks per thread never wait.
        """
        out = torch.zeros(len(targets), self.n_src)
        chunks = _chunks(targets, self.cfg.batch_size, self.workers if self.keep_all_runs else 1)
        workers = min(self.workers, len(chunks))
        if workers <= 1 or not self.keep_all_runs or self.m.device.type != "cpu":
            for pos, chunk in chunks:
                checkpoint()  # a cancelled server job stops here (between backward passes)
                self._rows_chunk(self.run_for(pos), pos, [targets[i] for i in chunk], out, chunk)
            return out
        for pos, _ in chunks:  # every forward first (they patch the model): the workers only run backward passes
            self.run_for(pos)
        if self.m.family.affine_biases:
            self.zero_sites()

        def work(item: tuple[int, list[int]]) -> None:
            checkpoint()
            pos, chunk = item
            self._rows_chunk(self.runs[pos], pos, [targets[i] for i in chunk], out, chunk)

        with ThreadPoolExecutor(workers, thread_name_prefix="mechscope-rows") as pool:
            list(pool.map(work, chunks))  # re-raises a worker's exception (e.g. a cancelled job)
        return out

    def _rows_chunk(self, run: FrozenRun, pos: int, tg: list[_Target], out: Tensor, out_idx: list[int]) -> None:
        L, n, d = self.L, pos + 1, self.m.d_model
        layers = sorted({t.layer for t in tg})
        sites, Gs = [], []
        dev = run.emb.device
        for lay in layers:
            G = torch.zeros(len(tg), 1, n, d, device=dev)
            for b, t in enumerate(tg):
                if t.layer == lay:
                    G[b, 0, t.pos] = t.vec.to(dev)
            sites.append(run.final if lay == L else run.mlp_in[lay])  # [1, n, d]
            Gs.append(G)
        top = max(layers)
        inputs = [run.emb] + run.src[:top]
        grads = torch.autograd.grad(sites, inputs, Gs, retain_graph=True, is_grads_batched=True, allow_unused=True)
        g_emb = grads[0][:, 0].detach().cpu()  # [b, n, d]
        rows = torch.zeros(len(tg), self.n_src)
        tok0 = self.n_feat + L * self.n
        rows[:, tok0 : tok0 + n] = (g_emb * self.embed[:n]).sum(-1)
        bias = torch.zeros(len(tg))  # constant terms: b_dec carried to the target
        for l in range(top):
            g = grads[1 + l]
            if g is None:
                continue
            g = g[:, 0].detach().cpu()  # [b, n, d]
            e0 = self.n_feat + l * self.n
            rows[:, e0 : e0 + n] = (g * self.error[l, :n]).sum(-1)
            bias += g.sum(1) @ self.b_dec[l]
            idx = self.pad_idx[l][:n]  # [n, kmax]
            valid = idx >= 0
            if valid.any():
                e = torch.bmm(g.transpose(0, 1), self.pad_dec[l][:n].transpose(1, 2))  # [n, b, kmax]
                # add, not assign: a cross-layer feature's edge sums its contributions through every write layer
                rows.index_add_(1, idx[valid], e.permute(1, 0, 2)[:, valid])
        if self.m.family.affine_biases:
            zin, zfinal = self.zero_sites()
            for b, t in enumerate(tg):
                bias[b] += float(t.vec.float().cpu() @ (zfinal[t.pos] if t.layer == L else zin[t.layer][t.pos]))
        out[out_idx] = rows
        for b, i in enumerate(out_idx):
            self.bias_terms[i] = float(bias[b].detach())


# positions are pooled until a pool holds this many batches: fewer prefix forwards, layer-sorted chunks; 2 was
# fastest on gemma3-270m (19 tokens, 2,048 rows: 6.8–7.6 s against 7.6–8.1 s for 1 and 8.1–9.0 s for 4)
POOL_BATCHES = 2


def _chunks(targets: list[_Target], batch: int, workers: int = 1) -> list[tuple[int, list[int]]]:
    """Backward batches: (prefix position, target indices) — pooled positions, layer-sorted (see `rows`).

    A round with few targets is still cut into at least `workers` chunks, so every worker has one.
    """
    by_pos: dict[int, list[int]] = {}
    for i in sorted(range(len(targets)), key=lambda i: (targets[i].pos, targets[i].layer)):
        by_pos.setdefault(targets[i].pos, []).append(i)
    pools: list[tuple[int, list[int]]] = []
    for pos in sorted(by_pos, reverse=True):
        if pools and len(pools[-1][1]) < batch * POOL_BATCHES:
            pools[-1][1].extend(by_pos[pos])  # runs on the pool's first (longest) prefix
        else:
            pools.append((pos, list(by_pos[pos])))
    cuts = [-(-len(m) // batch) for _, m in pools]
    while sum(cuts) < min(workers, len(targets)):  # split the pool with the most rows per chunk
        j = max(range(len(pools)), key=lambda j: len(pools[j][1]) / cuts[j])
        cuts[j] += 1
    out = []
    for (pos, members), n_chunks in zip(pools, cuts):
        members.sort(key=lambda i: (targets[i].layer, targets[i].pos))
        size = -(-len(members) // n_chunks)  # equal chunks: 70 rows → 35 + 35, not 64 + 6
        out += [(pos, members[s : s + size]) for s in range(0, len(members), size)]
    return out


def attribute(
    model: ModelAdapter, ts: Source, prompt: str, cfg: AttributionConfig | None = None, chat: bool = False
) -> Graph:
    """Trace one prompt into an attribution graph.

    >>> from mechscope import load_model
    >>> from mechscope.transcoders import load_default_transcoders
    >>> m = load_model("gemma3-270m"); ts = load_default_transcoders(m)
    >>> g = attribute(m, ts, "Dallas is in the state of")
    >>> g.scores()["replacement_score"]                           # doctest: +SKIP
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # whole backward chunks run in parallel instead (see _Attributor.rows)
    try:
        return _attribute(model, ts, prompt, cfg, chat, workers=threads)
    finally:
        torch.set_num_threads(threads)


def _attribute(
    model: ModelAdapter, ts: Source, prompt: str, cfg: AttributionConfig | None, chat: bool, workers: int
) -> Graph:
    cfg = cfg or AttributionConfig()
    if cfg.max_feature_nodes < 0 or cfg.batch_size < 1:
        raise MechscopeError("--max-feature-nodes must be ≥ 0 and the batch size ≥ 1")
    if not 0 < cfg.node_threshold <= 1 or not 0 < cfg.edge_threshold <= 1:
        raise MechscopeError("thresholds must lie in (0, 1]")
    check_fits_model(ts, model.n_layers, model.d_model, model.name)
    t0 = time.time()
    ts.requires_grad_(False)  # transcoder weights are constants here; gradients flow only through activations
    toks = model.tokenize(prompt, chat=chat)
    n = toks.ids.shape[0]
    if n < 2:
        raise MechscopeError("prompt is too short to trace: it needs at least one token after BOS")
    check_trace(model, ts, n, cfg)  # before any forward: a long prompt is refused in seconds, not killed by OOM
    st = prepare(model, ts, toks.ids, toks.strs)
    labels, vocab_ids, vecs, weights, probs = _logit_targets(model, st, cfg)
    att = _Attributor(model, ts, st, cfg)
    att.workers = workers
    need = estimate_memory_gb(model, n, att.n_feat, cfg)
    check_gb(need, cfg.max_memory_gb, f"tracing {n} tokens ({att.n_feat} active features)")
    L = model.n_layers
    # 1. logit rows
    logit_targets = [_Target(L, n - 1, vecs[i], i) for i in range(len(labels))]
    logit_rows = att.rows(logit_targets)
    logit_bias = [att.bias_terms[i] for i in range(len(labels))]
    # 2. feature rows, chosen in rounds by estimated influence on the logits
    chosen: list[int] = []
    chosen_rows: list[Tensor] = []
    chosen_bias: list[float] = []
    budget = min(cfg.max_feature_nodes, att.n_feat)
    round_size = max(cfg.batch_size, budget // 8)
    N, nl = att.n_feat, len(labels)
    # |rows| normalised to sum 1, restricted to feature columns, kept across rounds (each row is normalised
    # once, when computed): chosen rows at [0, k), then the logit rows at [k, k + nl)
    norm = torch.zeros(budget + nl, N)
    norm[:nl] = row_normalize(logit_rows)[:, :N]
    while len(chosen) < budget:
        checkpoint()  # between rounds: a cancelled server job stops here
        # influence of features on logits over the rows known so far:
        # propagate logits -> chosen features -> ... (only chosen rows carry influence further)
        k = len(chosen)
        x = torch.cat([torch.zeros(k), weights])
        infl = torch.zeros(N)
        chosen_idx = torch.tensor(chosen, dtype=torch.long)
        for _ in range(L + 2):
            contrib = x @ norm[: k + nl]  # [N]
            infl += contrib
            if not k or float(contrib.abs().sum()) < 1e-12:
                break
            x = torch.cat([contrib[chosen_idx], torch.zeros(nl)])
        infl[chosen_idx] = -1
        cand = infl.argsort(descending=True)[: min(round_size, budget - k)]
        cand = cand[infl[cand] > 0]
        if not cand.numel():
            break
        targets = []
        for j, fi in enumerate(cand.tolist()):
            l, p, f = att.feat[fi].tolist()
            targets.append(_Target(l, p, ts.enc_weights(l)[0].float()[f], j))
        att.bias_terms = {}
        rows = att.rows(targets)
        for j, fi in enumerate(cand.tolist()):
            l, p, f = att.feat[fi].tolist()
            chosen.append(fi)
            chosen_rows.append(rows[j])
            chosen_bias.append(
                att.bias_terms[j] + float(ts.enc_weights(l)[1][f].detach())
            )  # float(): works from any device
        k2 = len(chosen)
        norm[k:k2] = row_normalize(rows)[:, :N]
        norm[k2 : k2 + nl] = row_normalize(logit_rows)[:, :N]
    elapsed_rows = time.time() - t0
    graph = Graph.build(
        model=model,
        ts=ts,
        st=st,
        feat=att.feat,
        feat_val=att.feat_val,
        chosen=chosen,
        chosen_rows=chosen_rows,
        chosen_bias=chosen_bias,
        logit_rows=logit_rows,
        logit_bias=logit_bias,
        logit_labels=labels,
        logit_ids=vocab_ids,
        logit_probs=probs,
        logit_weights=weights,
        logit_vecs=vecs,
        cfg=cfg,
        prompt=prompt,
    )
    graph.meta["elapsed_s"] = round(time.time() - t0, 3)
    graph.meta["rows_s"] = round(elapsed_rows, 3)
    return graph
