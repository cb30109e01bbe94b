"""Attribution rows: the direct effects of every source node on a batch of targets, by batched backward passes.

Edge s → t is the direct effect of source s on target t's input through the frozen (linear) model, times the
source's value (a_s·W_dec[s], the error vector e[l,p], or the embedding); a feature writes to every layer in its
source's `write_layers`, so its edge sums over those layers (see mechscope/attribution/attribute.py for the
formulas and mechscope/transcoders/source.py for sources).

Rows are computed with vector-Jacobian products, batched over targets with `is_grads_batched` (vmap over the
backward pass: one forward, many rows). Structure that is exploited:
  * causality: a target at position p only needs the prompt prefix [0..p] (one cheap forward per prefix);
  * layering: a row joins the backward sweep at its own layer (see `Attributor._rows_chunk`);
  * MLPs carry no backward path except the transcoder skip term; attention and norms are frozen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.attribution.memory import prefix_graphs_gb
from mechscope.attribution.replacement import FrozenRun, PromptState, frozen_forward
from mechscope.cancel import checkpoint
from mechscope.transcoders.source import Source, dec_rows, readers

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.attribution.attribute import AttributionConfig
    from mechscope.models.adapter import ModelAdapter


@dataclass
class Target:
    """One attribution row: the direction `vec` read at (layer, pos); layer == n_layers reads the final residual."""

    layer: int  # n_layers for logits
    pos: int
    vec: Tensor  # [d] direction read at that site
    row: int  # index into the rows table


class Attributor:
    """Computes attribution rows of one prompt (see the module docstring); keeps the prefix forwards it reuses."""

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
                vecs.append(dec_rows(ts, l, w, nz[sel, 2]).cpu() * self.feat_val[sel, None])
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
        # Head loadings need each row's gradient at every head's output at the row's own position; the backward
        # passes cross those outputs anyway, so the prefix forwards keep them (see `rows`' head_grads).
        self.capture_heads = cfg.heads

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
            self.runs[pos] = frozen_forward(
                self.m, self.ts, self.st, batch=1, upto_pos=pos, capture_heads=self.capture_heads
            )
        return self.runs[pos]

    def rows(self, targets: list[Target], out: Tensor | None = None, head_grads: Tensor | None = None) -> Tensor:
        """Compute rows [len(targets), n_src] (their constant terms go to self.bias_terms), into `out` if given.

        head_grads: [len(targets), L, heads, head_dim] to fill with each row's gradient at every head's output
        (before the output projection) at the row's own position, zero at layers above the row — what head
        loadings need (mechscope/attribution/heads.py); needs `capture_heads` set before the first row.

        One chunk serves up to batch_size rows, each row's gradient entering at its own site; its layer sweep
        (`_rows_chunk`) costs about Σ over its rows of (row's layer × prefix length), plus a fixed overhead per
        backward call that makes small batches dear (a row costs ~2× more in a batch of 8 than in one of 64).
        So targets are cut into chunks by `_chunks`: consecutive positions are pooled (last first) until they
        fill a batch and run on the longest prefix among them (positions after a target carry nothing to it,
        so its row is unchanged), and each pool is sorted by layer, so a chunk spans few layers and its sweep
        needs few segments (one backward call each).

        With T workers (`torch.get_num_threads()` when `attribute` starts, i.e. --threads), T chunks run at
        once, each backward on one thread (`attribute` runs torch single-threaded). The backward is a long chain of small operations; splitting each of them over threads makes
        every one wait at a barrier for all threads, and on a busy machine a descheduled thread stalls them all
        (measured: 7.3 s with 1 thread vs 50 s with 2 beside other work). Whole chunks per thread never wait.
        """
        out = torch.zeros(len(targets), self.n_src) if out is None else out
        chunks = _chunks(targets, self.cfg.batch_size, self.workers if self.keep_all_runs else 1)
        workers = min(self.workers, len(chunks))
        if workers <= 1 or not self.keep_all_runs or self.m.device.type != "cpu":
            for pos, chunk in chunks:
                checkpoint()  # a cancelled server job stops here (between backward passes)
                self._rows_chunk(self.run_for(pos), pos, [targets[i] for i in chunk], out, chunk, head_grads)
            return out
        for pos, _ in chunks:  # every forward first (they patch the model): the workers only run backward passes
            self.run_for(pos)
        if self.m.family.affine_biases:
            self.zero_sites()

        def work(item: tuple[int, list[int]]) -> None:
            checkpoint()
            pos, chunk = item
            self._rows_chunk(self.runs[pos], pos, [targets[i] for i in chunk], out, chunk, head_grads)

        with ThreadPoolExecutor(workers, thread_name_prefix="mechscope-rows") as pool:
            list(pool.map(work, chunks))  # re-raises a worker's exception (e.g. a cancelled job)
        return out

    def _rows_chunk(
        self,
        run: FrozenRun,
        pos: int,
        tg: list[Target],
        out: Tensor,
        out_idx: list[int],
        head_grads: Tensor | None = None,
    ) -> None:
        """Rows of one chunk by a sweep down the layers: each row joins the batch at its own layer.

        One backward from the chunk's top layer would carry every row through every layer below the top,
        though a row entering at layer l has nothing above l (measured: 1.5-1.8x the needed work at 2,048 rows).
        Instead the chunk's distinct target layers cut the frozen model into segments; each segment is one
        batched backward from the rows carried so far (their gradient at the residual after the segment's top
        block) plus the rows entering there, down to the residual below the segment (the embeddings at the
        bottom). Every path from below a block to above it passes through that residual, so the carried
        gradient is exact. A segment crosses the attention of blocks lo..lay (of lo..L-1 below the logits); with
        head_grads, their outputs are among the backward's inputs too (nearly free: the backward computes them).
        """
        L, n, d = self.L, pos + 1, self.m.d_model
        dev = run.emb.device
        order = sorted(range(len(tg)), key=lambda b: -tg[b].layer)  # top layer first: the batch grows downwards
        tg, out_idx = [tg[b] for b in order], [out_idx[b] for b in order]
        layers = sorted({t.layer for t in tg}, reverse=True)
        rows = torch.zeros(len(tg), self.n_src)
        bias = torch.zeros(len(tg))  # constant terms: b_dec carried to the target
        hg = None
        if head_grads is not None:
            if run.attn_out is None:
                raise RuntimeError("head gradients need the prefix forwards to capture heads (capture_heads)")
            hg = torch.zeros(len(tg), *head_grads.shape[1:])
            at = torch.tensor([t.pos for t in tg])
        carry: Tensor | None = None  # [b_old, 1, n, d] gradient at run.resid[lay] of the rows already in
        b_old = 0
        for i, lay in enumerate(layers):
            b_all = b_old + sum(1 for t in tg if t.layer == lay)
            lo = layers[i + 1] + 1 if i + 1 < len(layers) else 0  # lowest block of this segment
            G = torch.zeros(b_all, 1, n, d, device=dev)
            for b in range(b_old, b_all):
                G[b, 0, tg[b].pos] = tg[b].vec.to(dev)
            outs, gouts = [run.final if lay == L else run.mlp_in[lay]], [G]
            if carry is not None:
                outs.append(run.resid[lay])
                gouts.append(torch.cat([carry, carry.new_zeros(b_all - b_old, 1, n, d)]))
            src_layers = list(range(lo, min(lay + (carry is not None), L)))
            inputs = [run.resid[lo - 1] if lo > 0 else run.emb] + [run.src[l] for l in src_layers]
            attn_layers = list(range(lo, min(lay, L - 1) + 1)) if hg is not None else []
            inputs += [run.attn_out[l] for l in attn_layers]  # type: ignore[index]
            grads = torch.autograd.grad(
                outs, inputs, gouts, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
            for l, g in zip(src_layers, grads[1 : 1 + len(src_layers)]):
                if g is not None:
                    bias[:b_all] += self.edges_into(l, g[:, 0].detach().cpu(), rows[:b_all])
            for l, g in zip(attn_layers, grads[1 + len(src_layers) :]):
                if g is not None:  # [b, 1, heads, n, hd] -> each row at its own position
                    hg[:b_all, l] = g[torch.arange(b_all), 0, :, at[:b_all]].detach().float().cpu()  # type: ignore[index]
            carry, b_old = grads[0], b_all
        assert carry is not None  # the last segment ends at the embeddings
        self.tokens_into(carry[:, 0].detach().cpu(), rows)
        if self.m.family.affine_biases:
            zin, zfinal = self.zero_sites()
            for b, t in enumerate(tg):
                bias[b] += float(t.vec.float().cpu() @ (zfinal[t.pos] if t.layer == L else zin[t.layer][t.pos]))
        out[out_idx] = rows
        if hg is not None:
            head_grads[out_idx] = hg  # type: ignore[index]
        for b, i in enumerate(out_idx):
            self.bias_terms[i] = float(bias[b].detach())

    def tokens_into(self, g: Tensor, rows: Tensor) -> None:
        """Set the token-embedding columns of `rows` [b, n_src] from the rows' gradient g [b, n, d] at the
        embeddings (n ≤ the prompt's length)."""
        tok0 = self.n_feat + self.L * self.n
        rows[:, tok0 : tok0 + g.shape[1]] = (g * self.embed[: g.shape[1]]).sum(-1)

    def edges_into(self, l: int, g: Tensor, rows: Tensor) -> Tensor:
        """Add the edges from layer l's error and feature nodes to `rows` [b, n_src], given the rows' gradient
        g [b, n, d] at layer l's MLP output (n ≤ the prompt's length: a prefix); return the constant term b_dec[l]
        carries to each row [b]. Columns: features (in `feat` order), then error nodes (l·n + p), then tokens
        (`tokens_into`). Any gradient works: QK attribution passes a query's or key's coordinates."""
        n = g.shape[1]
        e0 = self.n_feat + l * self.n
        rows[:, e0 : e0 + n] = (g * self.error[l, :n]).sum(-1)
        idx = self.pad_idx[l][:n]  # [n, kmax]
        valid = idx >= 0
        if valid.any():
            e = torch.bmm(g.transpose(0, 1), self.pad_dec[l][:n].transpose(1, 2))  # [n, b, kmax]
            # add, not assign: a cross-layer feature's edge sums its contributions through every write layer
            rows.index_add_(1, idx[valid], e.permute(1, 0, 2)[:, valid])
        return g.sum(1) @ self.b_dec[l]


# positions are pooled until a pool holds this many batches: fewer prefix forwards, layer-sorted chunks; 2 was
# fastest on gemma3-270m (19 tokens, 2,048 rows: 6.8–7.6 s against 7.6–8.1 s for 1 and 8.1–9.0 s for 4)
POOL_BATCHES = 2


def _chunks(targets: list[Target], batch: int, workers: int = 1) -> list[tuple[int, list[int]]]:
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
