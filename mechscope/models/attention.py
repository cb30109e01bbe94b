"""Attention as mechscope runs it: an eager implementation registered with transformers under "mechscope".

Its patterns can be recorded, frozen (detached: the local replacement model) or replaced by those of another run;
`ModelAdapter` switches these per thread through `ATTN`. Registering happens on import (transformers looks the
implementation up by name when a model is loaded with `attn_implementation="mechscope"`).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import torch
from torch import Tensor, nn


class _AttnState(threading.local):
    def __init__(self) -> None:
        self.freeze = False
        self.record: dict[int, Tensor] | None = None
        self.override: dict[int, Tensor] | None = None
        self.capture: dict[int, Captured] | None = None  # layer -> what it computed (see Captured)


ATTN = _AttnState()


class Captured(NamedTuple):
    """One layer's attention as the attention function saw it, with its autograd graph (QK attribution and head
    loadings differentiate through it). Pre-softmax score of head h: scaling · query[h] · key[h // n_rep]."""

    query: Tensor  # [b, heads, n, hd] after q/k norms and rotary
    key: Tensor  # [b, kv_heads, n, hd]
    value: Tensor  # [b, kv_heads, n, hd]
    out: Tensor  # [b, heads, n, hd] pattern @ value, before the output projection
    scaling: float
    softcap: float | None
    mask: Tensor | None  # [b, 1, n, n] additive


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _mechscope_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    # query: [b, heads, q, hd]; key/value: [b, kv_heads, k, hd]
    n_rep = query.shape[1] // key.shape[1]
    scaling = module.head_dim**-0.5 if scaling is None else scaling
    softcap = softcap if softcap is not None else getattr(module, "attn_logit_softcapping", None)
    layer = getattr(module, "layer_idx", -1)
    kv = (key, value)  # before the kv heads are repeated: key head = query head // n_rep
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    if ATTN.override is not None and layer in ATTN.override:
        pattern = ATTN.override[layer].to(value.dtype)
        if pattern.shape[0] != value.shape[0]:
            pattern = pattern.expand(value.shape[0], *pattern.shape[1:])
    else:
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, :, : key.shape[-2]]
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if ATTN.freeze:
        pattern = pattern.detach()
    if ATTN.record is not None:
        ATTN.record[layer] = pattern.detach()
    out = torch.matmul(pattern, value)
    if ATTN.capture is not None:
        ATTN.capture[layer] = Captured(query, kv[0], kv[1], out, float(scaling), softcap, attention_mask)
    out = out.transpose(1, 2).contiguous()
    return out, pattern


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register("mechscope", _mechscope_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("mechscope", eager_mask)


_register_attention()
