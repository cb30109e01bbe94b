"""Attention values of the frozen replacement model, for inputs given at the residual stream: a lean forward pass
for head loadings' sources (mechscope/attribution/head_parts.py).

With patterns and norm scales frozen and MLPs replaced (their output is the leaf plus the transcoder's skip term),
a decoder block is affine in the residual, and only values reach a block's output (queries and keys only make the
pattern, which is frozen). So this pass computes per block exactly what carries a signal: the frozen input norm,
the value projection, pattern @ values, the output projection (and Gemma's post-attention norm), the frozen
pre-MLP norm and the skip term. It calls the model's own modules and its family's norm rule, and installs no hook
and patches nothing, so passes can run at once on threads (unlike `frozen_forward`, whose hooks are global).

Block structure, from the family record: the input norm is the first residual norm, the pre-MLP norm is named by
the family, and any other residual norm that is not the post-MLP one follows attention (Gemma's
post_attention_layernorm); the MLP's output (replaced) goes straight into the residual, as `hook_mlp_out` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from mechscope.attribution.replacement import PromptState
from mechscope.errors import MechscopeError
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


def value_run(
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    emb: Tensor,
    src: dict[int, Tensor],
    blocks: range,
    names: dict[nn.Module, str] | None = None,
) -> dict[int, Tensor]:
    """{layer: values [B, kv_heads, n, hd]} of blocks `blocks` for residual `emb` [B, n, d] entering the first one
    and MLP-output leaves `src` ({layer: [B, n, d]}, absent = zero), on the frozen model of `st` (a window is fine:
    patterns and scales are read for its n positions). The last block's values end the pass. names: module ->
    path (`module_names`), to find the recorded norm scales.

    >>> vals = value_run(m, ts, window(st, 3, 9), emb, {}, range(4, 12))      # doctest: +SKIP
    """
    fam = model.family
    names = names or module_names(model)
    out: dict[int, Tensor] = {}
    x = emb
    for l in blocks:
        blk = model.layers[l]
        attn = getattr(blk, "self_attn", None) or blk.attn
        h = _frozen(model, st, names, getattr(blk, fam.residual_norms[0]), x)
        v = _values(attn, h)  # [B, KV, n, hd]
        out[l] = v
        if l == blocks[-1]:
            break
        B, KV, n, hd = v.shape
        A = st.patterns[l][..., :n, :n].to(v)  # [1, H, n, n]
        H = A.shape[1]
        o = (A.reshape(1, KV, H // KV, n, n) @ v[:, :, None]).reshape(B, H, n, hd)  # head h reads kv h // (H/KV)
        a = _project(attn, o.transpose(1, 2).reshape(B, n, H * hd))
        post = _post_attention_norm(fam)
        if post is not None:
            a = _frozen(model, st, names, getattr(blk, post), a)
        x = x + a
        mlp_in = _frozen(model, st, names, model.pre_mlp_norm(l), x)
        x = x + ts.layer_skip(l, mlp_in).to(x)
        if l in src:
            x = x + src[l]
    return out


def _post_attention_norm(fam) -> str | None:
    rest = [n for n in fam.residual_norms[1:] if n not in (fam.pre_mlp_norm, fam.post_mlp_norm)]
    return rest[0] if rest else None


def module_names(model: ModelAdapter) -> dict[nn.Module, str]:
    """Module -> path in the model (the keys of recorded norm scales)."""
    return {m: n for n, m in model.model.named_modules()}


def _frozen(model: ModelAdapter, st: PromptState, names: dict, norm: nn.Module, x: Tensor) -> Tensor:
    """The norm with its scale frozen at the clean run's (as `ModelAdapter.frozen` applies it)."""
    sc = st.scales[names[norm]]
    return model.family.frozen_norm(norm, x, sc[..., : x.shape[-2], :]).to(x)


def _values(attn: nn.Module, h: Tensor) -> Tensor:
    """Values [B, kv_heads, n, hd] of an attention block: its value projection (GPT-2: the third of the fused one)."""
    B, n, _ = h.shape
    hd = int(attn.head_dim)
    if isinstance(getattr(attn, "v_proj", None), nn.Linear):
        w = attn.v_proj.weight
        v = attn.v_proj(h.to(w.dtype))
    elif hasattr(attn, "c_attn"):  # GPT-2's Conv1D: y = x @ W + b, W [d, 3d]: q | k | v
        d = attn.c_attn.weight.shape[1] // 3
        v = h.to(attn.c_attn.weight.dtype) @ attn.c_attn.weight[:, 2 * d :] + attn.c_attn.bias[2 * d :]
    else:
        raise MechscopeError(f"head loadings do not know the value projection of {type(attn).__name__}")
    return v.float().view(B, n, -1, hd).transpose(1, 2)


def _project(attn: nn.Module, o: Tensor) -> Tensor:
    proj = getattr(attn, "o_proj", None) or attn.c_proj
    return proj(o.to(next(proj.parameters()).dtype)).float()
