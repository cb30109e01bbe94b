"""Model families: what differs between architectures, as data the adapter reads (no forward code of ours).

A `Family` names the modules the adapter hooks (decoder stack, layers, embedding, final norm, MLP), the
residual-stream norms it freezes (by attribute name, never by class: Qwen3's and Gemma's q/k norms share the
class of the residual norms, and Qwen3 applies them before the heads are transposed, so a class-wide freeze
would slice the heads axis as if it were positions), and how those norms compute:

    rms:    y = x / sqrt(mean(x²) + eps) · gain                 (Llama, Qwen3; Gemma with gain = 1 + weight)
    layer:  y = (x − mean(x)) / sqrt(var(x) + eps) · w + b      (GPT-2: mean-centring stays live, bias is constant)

Frozen, only the 1/sqrt(...) factor is fixed; everything else stays linear in x.

Supported families (see the README's "Supported model families"):
    llama   Llama 2/3 (incl. Llama 3 RoPE scaling, handled inside transformers' rotary embedding), SmolLM2
    gemma2  Gemma 2: attention logit soft-capping inside the attention function, final-logit soft-capping
            (attribution reads logits *before* it, probabilities after, as circuit-tracer does), alternating
            sliding-window/global layers (transformers builds the masks), pre/post-MLP norms with gain 1 + w
    gemma3  Gemma 3 (text), like Gemma 2 with q/k norms and no soft-capping by default
    qwen3   Qwen3 (dense): q/k RMS norms inside attention, left unfrozen by attribution (patterns are frozen
            anyway); QK attribution freezes them (`qk_norms`, `ModelAdapter.qk_norm_scales`)
    gpt2    GPT-2: LayerNorm (mean-centring + bias), fused QKV Conv1D, learned positions, biases everywhere;
            the token node is the token embedding (wte), position embeddings are constants like other biases
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.errors import MechscopeError


@dataclass(frozen=True)
class Family:
    """What differs between architectures, and nothing more."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values of Hugging Face models of this family
    pre_mlp_norm: str  # attribute of a decoder layer: the norm whose output is the MLP input
    post_mlp_norm: str | None  # applied to the MLP output before the residual add (Gemma)
    residual_norms: tuple[str, ...]  # every per-layer norm on the residual stream (frozen with the final norm)
    base: str = "model"  # attribute of the causal LM holding the decoder stack
    layers: str = "layers"  # attribute of the stack: the list of decoder layers
    embed: str = "embed_tokens"  # module whose output is the token embedding the model adds (hook_embed)
    final_norm: str = "norm"
    mlp: str = "mlp"
    norm_kind: str = "rms"  # rms | layer
    gain_offset: float = 0.0  # Gemma stores gain − 1
    affine_biases: bool = False  # other biases than the transcoders' (GPT-2): constants need a zero-input run
    d_mlp_keys: tuple[str, ...] = field(default=("intermediate_size",))
    # q/k norms inside attention (paths within a decoder layer): RMS over the head dim, any layout
    qk_norms: tuple[str, ...] = ()
    description: str = ""

    def norm_eps(self, m: nn.Module) -> float:
        for attr in ("variance_epsilon", "eps"):
            if hasattr(m, attr):
                return float(getattr(m, attr))
        raise MechscopeError(f"norm {type(m).__name__} has no eps")

    def norm_gain(self, m: nn.Module) -> Tensor:
        """Effective elementwise gain of a norm, [d] (float32)."""
        return m.weight.float() + self.gain_offset

    def norm_scale(self, x: Tensor, eps: float) -> Tensor:
        """The factor a frozen norm fixes: 1/rms(x) or 1/std(x) per position, float32.  x: [..., d] -> [..., 1]"""
        x = x.float()
        if self.norm_kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def frozen_norm(self, m: nn.Module, x: Tensor, scale: Tensor) -> Tensor:
        """The norm with its scale fixed: linear in x (plus a constant bias for LayerNorm)."""
        xf = x.float()
        if self.norm_kind == "layer":
            xf = xf - xf.mean(-1, keepdim=True)
        y = xf * scale.detach() * self.norm_gain(m)
        if self.norm_kind == "layer" and getattr(m, "bias", None) is not None:
            y = y + m.bias.float()
        return y.type_as(x)

    def d_mlp(self, cfg: Any) -> int:
        for key in self.d_mlp_keys:
            v = getattr(cfg, key, None)
            if v:
                return int(v)
        return 4 * int(cfg.hidden_size)  # GPT-2: n_inner = None means 4 × d_model


_GEMMA_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)

LLAMA = Family(
    name="llama",
    model_types=("llama",),
    pre_mlp_norm="post_attention_layernorm",
    post_mlp_norm=None,
    residual_norms=("input_layernorm", "post_attention_layernorm"),
    description="Llama 2/3 (RoPE scaling included), SmolLM2: RMSNorm, gated MLP",
)
GEMMA2 = Family(
    name="gemma2",
    model_types=("gemma2",),
    pre_mlp_norm="pre_feedforward_layernorm",
    post_mlp_norm="post_feedforward_layernorm",
    residual_norms=_GEMMA_NORMS,
    gain_offset=1.0,
    description="Gemma 2: soft-capped attention and final logits, alternating local/global attention",
)
GEMMA3 = Family(
    name="gemma3",
    model_types=("gemma3_text", "gemma3"),
    pre_mlp_norm="pre_feedforward_layernorm",
    post_mlp_norm="post_feedforward_layernorm",
    residual_norms=_GEMMA_NORMS,
    gain_offset=1.0,
    qk_norms=("self_attn.q_norm", "self_attn.k_norm"),
    description="Gemma 3 (text): q/k norms, alternating local/global attention",
)
QWEN3 = Family(
    name="qwen3",
    model_types=("qwen3",),
    pre_mlp_norm="post_attention_layernorm",
    post_mlp_norm=None,
    residual_norms=("input_layernorm", "post_attention_layernorm"),
    qk_norms=("self_attn.q_norm", "self_attn.k_norm"),
    description="Qwen3 (dense): q/k norms before the heads are transposed",
)
GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    pre_mlp_norm="ln_2",
    post_mlp_norm=None,
    residual_norms=("ln_1", "ln_2"),
    base="transformer",
    layers="h",
    embed="wte",
    final_norm="ln_f",
    norm_kind="layer",
    affine_biases=True,
    d_mlp_keys=("n_inner",),
    description="GPT-2: LayerNorm with bias, fused QKV Conv1D, learned positions",
)
FAMILIES = (LLAMA, GEMMA2, GEMMA3, QWEN3, GPT2)


def family_for(model_type: str) -> Family:
    """The family of a Hugging Face `config.model_type`; a one-line error naming it otherwise.

    >>> family_for("qwen3").name
    'qwen3'
    """
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise MechscopeError(
        f"unsupported model family '{model_type}'; supported: "
        + ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)
    )
