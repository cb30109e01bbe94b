"""Memory an attribution needs, known before any forward pass (so a long prompt is refused in seconds).

>>> check_trace(m, ts, m.tokenize("Dallas is in the state of").ids.shape[0], AttributionConfig())   # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechscope.guards import check_context, check_gb, forward_gb

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.attribution.config import AttributionConfig
    from mechscope.transcoders.source import Source
    from mechscope.models.adapter import ModelAdapter


def _graph_gb(model: ModelAdapter, n_tokens: float) -> float:
    """Memory a frozen forward's autograd graph holds: ≈ 24 saved [d] float32 vectors per layer and token."""
    return n_tokens * model.n_layers * model.d_model * 4 * 24 / 2**30


def prefix_graphs_gb(model: ModelAdapter, n_pos: int) -> float:
    """Memory held by the graphs of all n_pos prefix forwards (1 + 2 + … + n_pos tokens)."""
    return _graph_gb(model, n_pos * (n_pos + 1) / 2)


def estimate_memory_gb(model: ModelAdapter, n_pos: int, n_active: int, cfg: AttributionConfig) -> float:
    """Rough peak: batched backward buffers + rows table + the prefix forward graphs alive at once."""
    L, d = model.n_layers, model.d_model
    backward = cfg.batch_size * n_pos * d * 4 * (L * 6)
    # at most one row per active feature, however large the budget ("all features": --max-feature-nodes 1000000)
    # ×2: the rows table and the influence ranking's normalised copy of it
    rows = 2 * (min(cfg.max_feature_nodes, n_active) + cfg.max_logits) * (n_active + L * n_pos + n_pos) * 4
    if cfg.heads:  # every row's gradient at each head's output, kept for head loadings (attribute.py's _HeadGrads)
        cfg_m = model.cfg
        width = int(cfg_m.num_attention_heads) * int(getattr(cfg_m, "head_dim", None) or d // cfg_m.num_attention_heads)
        rows += (min(cfg.max_feature_nodes, n_active) + cfg.max_logits) * L * width * 4
    all_prefixes = prefix_graphs_gb(model, n_pos)
    graphs_gb = all_prefixes if all_prefixes <= cfg.prefix_cache_gb else _graph_gb(model, n_pos)
    return (backward + rows) / 2**30 + graphs_gb + 1.5


def trace_gb(model: ModelAdapter, ts: Source, n_pos: int, cfg: AttributionConfig) -> float:
    """Peak memory of `attribute`, known before any forward: the prompt state (dense feature activations
    [L, n, F] and five [L, n, d] tensors) held throughout, plus the larger of the clean forward's transients
    (recorded attention patterns, all logits) and the attribution phase (`estimate_memory_gb`, with the
    active-feature count bounded by k per site for TopK, or 128, a generous typical L0, otherwise)."""
    L, d, F = model.n_layers, model.d_model, ts.d_transcoder
    tc_cfg = getattr(ts, "cfg", None)
    k = getattr(tc_cfg, "k", 0) or 0
    per_site = min(F, k if getattr(tc_cfg, "activation", "") == "topk" and k else 128)
    state = (L * n_pos * F * 4 * 2 + L * n_pos * d * 4 * 5) / 2**30
    # a cross-layer feature's scaled decoder vector is kept for every layer it writes to (attribute's pad_dec)
    window = getattr(tc_cfg, "max_write_layers", None)
    if window is not None:
        writes = (L + 1) / 2 if window <= 0 else min(window, (L + 1) / 2)
        state += L * n_pos * per_site * writes * d * 4 / 2**30
    return state + max(
        forward_gb(model, n_pos, logits="all") + 1.5, estimate_memory_gb(model, n_pos, n_pos * L * per_site, cfg)
    )


def check_trace(model: ModelAdapter, ts: Source, n_pos: int, cfg: AttributionConfig) -> None:
    """Refuse a trace that cannot fit the context or `cfg.max_memory_gb`, from the token count alone (no forward).

    >>> check_trace(m, ts, m.tokenize("Dallas is in the state of").ids.shape[0], AttributionConfig())   # doctest: +SKIP
    """
    check_context(model, n_pos)
    check_gb(trace_gb(model, ts, n_pos, cfg), cfg.max_memory_gb, f"tracing {n_pos} tokens")


def set_resident_gb(meta: dict, stored: dict[str, int], mapped: bool, n_pos: int) -> float:
    """Memory a transcoder set holds while tracing n_pos tokens, from its config and its files' stored sizes
    (`mapped.stored_bytes`): loaded whole, its float32 copy; memory-mapped, one layer's encoder as stored (a layer's
    pages leave resident memory once it is encoded), the skip matrices dequantized, one float32 encoder chunk, and
    the pages of the active features' encoder and decoder rows (an upper bound from the active-feature count: k per
    site for TopK, else 128)."""
    from mechscope.transcoders.mapped import CHUNK
    from mechscope.transcoders.storage import float32_gb

    if not mapped:
        return float32_gb(meta)
    L, d, F = meta["n_layers"], meta["d_model"], meta["d_transcoder"]
    k = meta.get("k", 0) or 0
    per_site = min(F, k if meta.get("activation") == "topk" and k else 128)
    active = min(L * F, L * max(n_pos - 1, 1) * per_site)
    row = stored["dec"] / max(L * F, 1)  # bytes per feature over all its write layers
    dec = min(stored["dec"], active * max(row, 4096))  # a row touches at least one page
    enc_rows = min(stored["enc"], active * max(stored["enc"] / max(L * F, 1), 4096))  # chosen features' rows
    skip = L * d * d * 4 if meta.get("skip") else 0
    return (stored["enc"] / L + enc_rows + dec + skip + 2 * CHUNK * d * 4) / 2**30
