"""attribute(): the attribution graph of one prompt in the local replacement model.

Edge s → t is the direct effect of source s on target t's input through the frozen (linear) model:
  feature target (l, p, f):  d(W_enc[f] · x_l[p]) / d(source)   (its pre-activation)
  logit target (token):      d((W_U[tok] − mean W_U) · final[p_last]) / d(source)
times the source's value (a_s·W_dec[s], the error vector e[l,p], or the embedding). A feature writes to every
layer in its source's `write_layers` (its read layer only for per-layer transcoders; it and later ones for a
cross-layer transcoder, see mechscope/transcoders/source.py), so its edge is the sum over those layers of
d(target)/d(MLP output of w) · a_s·W_dec[s→w].

Rows are computed by batched backward passes in mechscope/attribution/rows.py.
Which features get rows is chosen in rounds by their estimated influence on the logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging
import time
import torch
from torch import Tensor

from mechscope.attribution.config import PRESETS, AttributionConfig  # noqa: F401 (re-exported)
from mechscope.attribution.graph import Graph, row_normalize
from mechscope.attribution.graph_build import build_graph
from mechscope.attribution.replacement import PromptState, prepare
from mechscope.attribution.rows import Attributor, Target
from mechscope.cancel import checkpoint
from mechscope.errors import MechscopeError
from mechscope.attribution.memory import check_trace, estimate_memory_gb, prefix_graphs_gb, trace_gb  # noqa: F401 (re-exported)
from mechscope.guards import check_gb
from mechscope.transcoders.source import Source, check_fits_model, enc_rows

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

log = logging.getLogger(__name__)


def _logit_targets(
    model: ModelAdapter, st: PromptState, cfg: AttributionConfig
) -> tuple[list[str], list[int], Tensor, Tensor, Tensor]:
    """(token strings, vocab ids, readout vectors [k, d], influence weights [k], probabilities [k])."""
    probs = torch.softmax(st.logits[-1], -1)
    W_U = model.W_U.float()
    if cfg.logit_diff:
        a, b = (model.token_id(t) for t in cfg.logit_diff)
        vec = (W_U[a] - W_U[b])[None]
        label = f"{cfg.logit_diff[0]} − {cfg.logit_diff[1]}"
        return [label], [model.vocab_size], vec, torch.ones(1), probs[a : a + 1].cpu()
    if cfg.targets:
        ids = [model.token_id(t) for t in cfg.targets]
    else:
        order = probs.topk(min(cfg.max_logits, probs.numel())).indices  # sorted, without sorting 262k entries
        ids, cum = [], 0.0
        for i in order.tolist():
            ids.append(i)
            cum += float(probs[i])
            if cum >= cfg.logit_prob:
                break
    idx = torch.tensor(ids)
    p = probs.cpu()[idx]
    weights = p / p.sum() if float(p.sum()) > 0 else torch.full_like(p, 1 / len(ids))
    return [model.tokenizer.decode([i]) for i in ids], ids, W_U[idx.to(W_U.device)] - model.W_U_mean, weights, p


def _hint_targets(model: ModelAdapter, st: PromptState, cfg: AttributionConfig) -> list[str]:
    """Say at once when a chosen target is probably not the token meant (see `attribution.targets`)."""
    from mechscope.attribution.targets import target_hints
    from mechscope.progress import warn

    chosen = list(cfg.logit_diff or cfg.targets or [])
    hints = target_hints(model, torch.softmax(st.logits[-1].float(), -1), chosen) if chosen else []
    for h in hints:
        warn(h)
    return hints


def attribute(
    model: ModelAdapter,
    ts: Source,
    prompt: str,
    cfg: AttributionConfig | None = None,
    chat: bool = False,
    threads: int | None = None,
) -> Graph:
    """Trace one prompt into an attribution graph.

    threads: CPU threads for this trace (default: torch's current count). torch's thread count is per process,
    so the trace sets it for its own phases and puts it back as it was, whatever happens.

    >>> from mechscope import load_model
    >>> from mechscope.transcoders import load_default_transcoders
    >>> m = load_model("gemma3-270m"); ts = load_default_transcoders(m)
    >>> g = attribute(m, ts, "Dallas is in the state of")
    >>> round(g.scores()["replacement_score"], 2)                 # 2,048 feature rows
    0.55
    """
    before = torch.get_num_threads()
    workers = threads or before
    try:
        torch.set_num_threads(workers)  # the clean forward uses every thread; rows run `workers` passes at once
        return _attribute(model, ts, prompt, cfg, chat, workers=workers)
    finally:
        torch.set_num_threads(before)


#: a feature budget at least this share of the active features computes every feature's row in one pass
ALL_AT_ONCE = 0.9


def _feature_target(att: Attributor, ts: Source, fi: int, row: int) -> Target:
    """The row of active feature `fi`: its encoder direction read at its layer and position."""
    l, p, f = att.feat[fi].tolist()
    return Target(l, p, enc_rows(ts, l, torch.tensor([f]))[0][0], row)


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
    st = prepare(model, ts, toks.ids, toks.strs)  # the clean forward uses every thread
    labels, vocab_ids, vecs, weights, probs = _logit_targets(model, st, cfg)
    hints = _hint_targets(model, st, cfg)
    torch.set_num_threads(1)  # from here whole backward chunks run in parallel instead (see Attributor.rows)
    att = Attributor(model, ts, st, cfg)
    att.workers = workers
    need = estimate_memory_gb(model, n, att.n_feat, cfg)
    check_gb(need, cfg.max_memory_gb, f"tracing {n} tokens ({att.n_feat} active features)")
    L = model.n_layers
    # 1. logit rows (with --heads, every row also keeps its gradient at each head's output: see heads.py)
    hg = _HeadGrads(model, att, len(labels)) if cfg.heads else None
    logit_targets = [Target(L, n - 1, vecs[i], i) for i in range(len(labels))]
    logit_rows = att.rows(logit_targets, head_grads=hg.logits if hg else None)
    logit_bias = [att.bias_terms[i] for i in range(len(labels))]
    # 2. feature rows, chosen in rounds by estimated influence on the logits
    chosen: list[int] = []
    chosen_bias: list[float] = []
    N, nl = att.n_feat, len(labels)
    budget = min(cfg.max_feature_nodes, N)
    round_size = max(cfg.batch_size, budget // 8)
    # Rows land in `table` (in place: no copies of ~100 MB later); chosen feature j's row is table[row_of[j]].
    # A budget near every active feature computes every row in one pass (full chunks, nothing to rank first)
    # and replays the rounds' choices on them, so it chooses exactly what the rounds would, and never costs
    # more than the all-features graph.
    everything = budget >= ALL_AT_ONCE * N
    table = torch.empty(N if everything else budget, att.n_src)
    if hg:
        hg.table = torch.zeros(table.shape[0], *hg.logits.shape[1:])
    row_of: list[int] = []
    all_bias: dict[int, float] = {}
    if everything and N:
        att.bias_terms = {}
        att.rows([_feature_target(att, ts, fi, fi) for fi in range(N)], out=table, head_grads=hg.table if hg else None)
        all_bias = att.bias_terms
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
        cand = cand[infl[cand] > 0].tolist()
        if not cand:
            break
        if everything:
            rows, bias, row_of = table[cand], [all_bias[fi] for fi in cand], row_of + cand
        else:
            att.bias_terms = {}
            rows = att.rows(
                [_feature_target(att, ts, fi, j) for j, fi in enumerate(cand)],
                out=table[k : k + len(cand)],
                head_grads=hg.table[k : k + len(cand)] if hg else None,
            )
            bias, row_of = [att.bias_terms[j] for j in range(len(cand))], row_of + list(range(k, k + len(cand)))
        for fi, b in zip(cand, bias):
            l, _, f = att.feat[fi].tolist()
            chosen.append(fi)
            chosen_bias.append(b + float(enc_rows(ts, l, torch.tensor([f]))[1][0]))  # float(): works from any device
        k2 = len(chosen)
        norm[k:k2] = row_normalize(rows)[:, :N]
        norm[k2 : k2 + nl] = row_normalize(logit_rows)[:, :N]
    elapsed_rows = time.time() - t0
    graph = build_graph(
        model=model,
        ts=ts,
        st=st,
        feat=att.feat,
        feat_val=att.feat_val,
        chosen=chosen,
        chosen_rows=table,
        chosen_row_of=row_of,
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
    if hg:  # head loadings of the pruned graph's cross-position links (mechscope/attribution/heads.py)
        from mechscope.attribution.heads import cross_links, head_loadings

        t1 = time.time()
        links = cross_links(graph, graph.prune()[1])
        grads = hg.for_targets(graph, sorted({t for t, _ in links}), dict(zip(chosen, row_of)))
        # the 99% of each link's Σ|part| in at most 8 heads, the rest summed: a default graph has ~10^5 links
        graph.heads = head_loadings(
            model, ts, st, graph, links, vecs, keep_share=0.99, max_heads=8, workers=workers, target_grads=grads
        )
        graph.meta["heads_s"] = round(time.time() - t1, 3)
    graph.meta["elapsed_s"] = round(time.time() - t0, 3)
    if hints:
        graph.meta["target_hints"] = hints
    graph.meta["rows_s"] = round(elapsed_rows, 3)
    return graph


class _HeadGrads:
    """The rows' gradients at every head's output (`Attributor.rows`' head_grads), kept for head loadings:
    [rows, L, heads, head_dim] for the logits and the feature table (rows of unchosen features stay zero)."""

    def __init__(self, model: ModelAdapter, att: Attributor, n_logits: int) -> None:
        from mechscope.attribution.head_parts import head_shape

        att.capture_heads = True
        self.logits = torch.zeros(n_logits, model.n_layers, *head_shape(model))
        self.table = self.logits[:0]
        self.feat = {tuple(x): i for i, x in enumerate(att.feat.tolist())}  # (layer, pos, feature) -> index

    def for_targets(self, graph: Graph, tgts: list[int], row_of: dict[int, int]) -> tuple[Tensor, dict[int, int]]:
        """(ĝ [T, L, heads, head_dim], target node -> row) for graph node indices `tgts`. row_of: feature index ->
        its row in the table."""
        n_log0 = graph.n_feat + graph.n_err + graph.n_tok
        out = torch.empty(len(tgts), *self.logits.shape[1:])
        for r, t in enumerate(tgts):
            nd = graph.nodes[t]
            if t >= n_log0:
                out[r] = self.logits[t - n_log0]
            else:
                out[r] = self.table[row_of[self.feat[(int(nd["layer"]), nd["ctx_idx"], nd["feature"])]]]
        return out, {t: r for r, t in enumerate(tgts)}
