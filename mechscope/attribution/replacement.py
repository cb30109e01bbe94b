"""The local replacement model of one prompt.

MLPs are replaced by transcoders plus error terms e[l,p] = mlp_out[l,p] − tc(mlp_in[l,p]); attention
patterns and norm scales are frozen at their values on this prompt. The forward pass reproduces the
model's logits exactly, and everything except feature activations is linear in the residual stream.

Leaves of the frozen computation (what attribution differentiates with respect to):
  emb:      [B, n_pos, d]      token embeddings (the model's embedding output, scaled for Gemma)
  src[l]:   [B, n_pos, d]      layer l's non-skip MLP output: Σ a_f W_dec[f→l] + b_dec + e[l], the sum over
                               every feature that writes to layer l (read at l for per-layer transcoders, at
                               l or below for cross-layer ones: see mechscope/transcoders/source.py)
The skip term W_skip x[l] is recomputed from the frozen residual, so it carries gradient like attention does.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Iterator

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.transcoders.source import Source, reconstruct

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


@dataclass
class PromptState:
    """Everything the clean run of one prompt fixes.  Shapes use n = n_pos, L = n_layers, F = d_tc."""

    ids: Tensor  # [n]
    tokens: list[str]
    logits: Tensor  # [n, vocab] clean logits (after any final soft-cap: the model's output)
    embed: Tensor  # [n, d]
    mlp_in: Tensor  # [L, n, d]
    mlp_out: Tensor  # [L, n, d]
    acts: Tensor  # [L, n, F] activations of the features read at each layer (position 0 zeroed)
    recon: Tensor  # [L, n, d] Σ a_f W_dec[f→l] + b_dec over the features writing to l  (no skip)
    error: Tensor  # [L, n, d] mlp_out − recon − skip
    patterns: dict[int, Tensor]  # layer -> [1, heads, n, n]
    scales: dict[str, Tensor]  # norm module path -> 1/rms [1, ..., n, 1]
    logits_raw: Tensor | None = None  # [n, vocab] before the final soft-cap (Gemma 2), what logit targets read


@torch.no_grad()
def prepare(
    model: ModelAdapter, ts: Source, ids: Tensor, tokens: list[str], upto_layer: int | None = None
) -> PromptState:
    """Clean forward pass: cache embeddings, MLP inputs/outputs and attention patterns; encode features.

    Features at position 0 are zeroed (their activity there is an attention-sink artefact shared by every
    prompt; circuit-tracer does the same); their contribution is kept in that position's error node.
    `upto_layer`: run only blocks 0..upto_layer (for work that reads nothing above, as QK attribution of a head
    there): the layers above are all zero, no features, no pattern, and the logits are not computed ([n, 0]).
    """
    L = model.n_layers
    top = L - 1 if upto_layer is None else upto_layer
    sites = ["hook_embed"] + [f"blocks.{l}.hook_mlp_{k}" for l in range(top + 1) for k in ("in", "out")]
    if model.final_softcap and upto_layer is None:
        sites.append("ln_final.hook_normalized")
    patterns: dict[int, Tensor] = {}
    scales: dict[str, Tensor] = {}
    with (
        model.attention_patterns(record=patterns),
        model.record_norm_scales(scales),
        only_blocks(model, range(top + 1)) if upto_layer is not None else contextlib.nullcontext(),
    ):
        cache = model.run_with_cache(ids[None].to(model.device), sites, logits=upto_layer is None)
    embed = cache["hook_embed"][0].float()
    zero = embed.new_zeros(embed.shape)
    mlp_in = torch.stack([cache[f"blocks.{l}.hook_mlp_in"][0].float() if l <= top else zero for l in range(L)])
    mlp_out = torch.stack([cache[f"blocks.{l}.hook_mlp_out"][0].float() if l <= top else zero for l in range(L)])
    acts = torch.stack(
        [_encode(ts, l, mlp_in[l]) if l <= top else embed.new_zeros(embed.shape[0], ts.d_transcoder) for l in range(L)]
    )
    acts[:, 0] = 0
    recon = reconstruct(ts, acts)
    skip = torch.stack([ts.layer_skip(l, mlp_in[l]).float() for l in range(L)])
    error = mlp_out - recon - skip
    recon[top + 1 :], error[top + 1 :] = 0, 0  # layers that did not run: nothing (not −b_dec)
    logits = cache["logits"][0].float() if upto_layer is None else zero[:, :0]
    # Attribution reads logits before the final soft-cap (the linear readout W_U · final), as circuit-tracer
    # does: circuit_tracer/attribution/attribute_transformerlens.py injects its logit vectors at ln_final's output
    # (`_resid_activations[-1] = model.ln_final(residual)`) and takes probabilities from the model's (capped) logits.
    raw = logits
    if model.final_softcap and upto_layer is None:
        raw = cache["ln_final.hook_normalized"][0].float() @ model.W_U.float().T
    return PromptState(
        logits_raw=raw,
        ids=ids,
        tokens=tokens,
        logits=logits,
        embed=embed,
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        acts=acts,
        recon=recon,
        error=error,
        patterns=patterns,
        scales=scales,
    )


def _encode(ts: Source, l: int, x: Tensor) -> Tensor:
    """Layer l's feature activations [n, F], float32. A memory-mapped set encodes only positions 1.. (position 0's
    features are zeroed anyway), a layer at a time; an in-memory set encodes every position, as it always has."""
    if not getattr(ts, "mapped", False):
        return ts.layer_encode(l, x).float()
    out = x.new_zeros(x.shape[0], ts.d_transcoder, dtype=torch.float32)
    if x.shape[0] > 1:
        out[1:] = ts.layer_encode(l, x[1:]).float()
    return out


@dataclass
class FrozenRun:
    """A batched forward pass of the frozen replacement model, kept alive for many backward passes."""

    emb: Tensor  # [B, n, d] leaf
    src: list[Tensor]  # L x [B, n, d] leaves
    mlp_in: list[Tensor]  # L x [B, n, d] (depend on leaves)
    resid: list[Tensor]  # L x [B, n, d] residual stream after each block: every path from below it passes there
    final: Tensor  # [B, n, d] final-normed residual
    logits: Tensor | None  # [B, n, vocab] only when asked
    # with capture_heads, per layer that ran: each head's output before the output projection [B, heads, n, hd]
    # and the values [B, kv_heads, n, hd]
    attn_out: dict[int, Tensor] | None = None
    values: dict[int, Tensor] | None = None


def frozen_forward(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    batch: int = 1,
    src_values: list[Tensor] | None = None,
    emb_value: Tensor | None = None,
    want_logits: bool = False,
    upto_pos: int | None = None,
    grad: bool = True,
    capture_heads: bool = False,
    blocks: range | None = None,
) -> FrozenRun:
    """Run the local replacement model with attention and norms frozen.

    `src_values` / `emb_value` ([B, n, d] or [n, d]) replace the default leaves, which lets tests perturb a
    single node. `upto_pos` truncates the prompt: positions after a target carry nothing to it (causality).
    `grad=False` builds no autograd graph (forward-only uses with a large batch: head loadings' sources).
    `capture_heads` keeps every head's output and value (`FrozenRun.attn_out`, `.values`, with their graph).
    `blocks` runs only those decoder blocks, the others pass the residual through: valid above the blocks when
    nothing there is read (QK attribution of a layer), below them when every leaf there is zero (the frozen model
    is affine: they would add nothing but constants).
    """
    L = model.n_layers
    n = st.ids.shape[0] if upto_pos is None else upto_pos + 1
    ids = st.ids[:n][None].expand(batch, n).to(model.device)

    def leaf(v: Tensor) -> Tensor:
        v = v[..., :n, :] if v.dim() == 3 else v[:n]
        v = v.expand(batch, n, v.shape[-1]) if v.dim() == 2 else v
        return v.detach().clone().requires_grad_(grad)

    emb = leaf(st.embed if emb_value is None else emb_value)
    src = [leaf(st.recon[l] + st.error[l] if src_values is None else src_values[l]) for l in range(L)]
    mlp_in: list[Tensor] = [None] * L  # type: ignore[list-item]
    resid: list[Tensor] = [None] * L  # type: ignore[list-item]
    final: list[Tensor] = []
    patterns = {l: p[..., :n, :n] for l, p in st.patterns.items()}

    hooks = _site_hooks(ts, L, emb, src, mlp_in, resid, final)
    cap: dict = {}
    with (
        torch.set_grad_enabled(grad),
        model.frozen(scales=st.scales),
        model.attention_patterns(override=patterns),
        model.hooks(hooks),
        no_mlp(model),
        model.capture_qk(cap) if capture_heads else contextlib.nullcontext(),
        only_blocks(model, blocks) if blocks is not None else contextlib.nullcontext(),
    ):
        h = model.forward(ids, logits=False)
        logits = model.logits_from_resid(final[-1]) if want_logits else None
    return FrozenRun(
        emb=emb,
        src=src,
        mlp_in=mlp_in,
        resid=resid,
        final=final[-1] if final else h,
        logits=logits,
        attn_out={l: c.out for l, c in cap.items()} if capture_heads else None,
        values={l: c.value for l, c in cap.items()} if capture_heads else None,
    )


def _site_hooks(
    ts: Source, L: int, emb: Tensor, src: list[Tensor], mlp_in: list[Tensor], resid: list[Tensor], final: list[Tensor]
) -> dict:
    """The frozen run's hooks: embeddings and MLP outputs replaced by the leaves (plus the skip term, recomputed
    from the frozen residual); MLP inputs, block outputs and the final residual recorded into the lists."""

    def put(store: list[Tensor], l: int):
        def fn(x: Tensor) -> None:
            store[l] = x

        return fn

    def out(l: int):
        def fn(y: Tensor) -> Tensor:
            return src[l] + ts.layer_skip(l, mlp_in[l])

        return fn

    hooks = {"hook_embed": lambda x: emb, "ln_final.hook_normalized": final.append}
    for l in range(L):
        hooks[f"blocks.{l}.hook_mlp_in"] = put(mlp_in, l)
        hooks[f"blocks.{l}.hook_mlp_out"] = out(l)
        hooks[f"blocks.{l}.hook_resid_post"] = put(resid, l)
    return hooks


def window(st: PromptState, a: int, b: int) -> PromptState:
    """The prompt state of positions a..b alone, for frozen runs whose leaves are zero before a: patterns and norm
    scales sliced (the ones a window needs), ids too. In the frozen model only queries and keys depend on a
    position's index (rotary), and they reach nothing, so such a run equals the full one at positions a..b
    (up to constants: GPT-2's learned positions, which a zero-input run of the same window removes)."""
    sl = slice(a, b + 1)
    return dataclasses.replace(
        st,
        ids=st.ids[sl],
        embed=st.embed[sl],
        patterns={l: p[..., sl, sl] for l, p in st.patterns.items()},
        scales={k: v[..., sl, :] for k, v in st.scales.items()},
    )


def _pass_through(hidden_states: Tensor, *args, **kwargs) -> Tensor:
    return hidden_states


@contextlib.contextmanager
def only_blocks(model: ModelAdapter, blocks: range) -> Iterator[None]:
    """Decoder blocks outside `blocks` return their input: for runs that read nothing above the blocks, and whose
    inputs below them are zero or unread (see `frozen_forward`).

    >>> with only_blocks(m, range(4)):            # doctest: +SKIP
    ...     m.forward(ids, logits=False)          # blocks 4.. pass the residual through
    """
    saved = [(blk, blk.forward) for l, blk in enumerate(model.layers) if l not in blocks]
    for blk, _ in saved:
        blk.forward = _pass_through
    try:
        yield
    finally:
        for blk, fwd in saved:
            blk.forward = fwd


class no_mlp:
    """Skip the MLPs' own computation in the frozen run: their output is replaced anyway."""

    def __init__(self, model: ModelAdapter) -> None:
        self.model = model
        self.saved: list = []

    def __enter__(self):
        for l in range(self.model.n_layers):
            mlp = self.model.mlp(l)
            self.saved.append((mlp, mlp.forward))
            mlp.forward = lambda x, *a, **k: torch.zeros_like(x)
        return self

    def __exit__(self, *exc):
        for mlp, fwd in self.saved:
            mlp.forward = fwd
        return False
