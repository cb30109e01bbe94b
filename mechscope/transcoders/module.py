"""Per-layer transcoders (PLTs): sparse, wide replacements of each MLP.

    a = act(W_enc (x - b_pre) + b_enc)          x: MLP input (after the pre-MLP norm)
    ŷ = W_dec^T a + b_dec (+ W_skip x)          ŷ: predicted MLP output (hook_mlp_out)

Shapes follow circuit-tracer so sets move between the tools unchanged: W_enc [d_tc, d_model],
W_dec [d_tc, d_model], W_skip [d_model, d_model] (applied as x @ W_skip.T). `b_pre` exists only during
training and is folded into b_enc when a set is saved. `act` is TopK (k per token), JumpReLU or ReLU.

`TranscoderSet` is one kind of feature *source* (see `source.py`): every feature reads layer l and writes
layer l only. A cross-layer transcoder (`clt.py`) is the other kind; attribution, interventions and the feature
index go through the source interface (`layer_encode`, `write_layers`, `dec_weights`, ...), never `ts[l]`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TranscoderConfig:
    d_model: int
    d_transcoder: int
    activation: str = "topk"  # topk | jumprelu | relu
    k: int = 32
    skip: bool = True
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


class TopKEncode(torch.autograd.Function):
    """Encoder + TopK whose backward only sends gradient to the chosen latents per token.

    Optionally also picks AuxK's `aux_k` latents among those `aux_mask` allows (dead ones) from the same
    pre-activations, so the encoder product is computed once for both and the two gradients share one
    backward product.

    Only the k (plus AuxK's) chosen pre-activations per token get gradient, so the encoder's gradient
    ∂W_enc = Gᵀ x has n·k non-zeros in G. On a CPU it is built from a sparse G (CSR, rows = latents) when the picks
    are at most 1/16 of the latents: measured on one core at n 1016, d 640, 27 ms dense against 5 ms sparse at
    d_tc 2048, k 32, and 166 against 27 ms at d_tc 8192; with AuxK's 320 extra picks (17% of 2048) the dense
    product wins (27 against 55 ms), so it stays. On a GPU the dense product is always used.
    The gradient of x is computed only when x requires it: the trainer folds its pre-encoder bias into b_enc
    (b_enc − W_enc·b_pre), so x is data and that product is skipped.

    Example:
        >>> vals, idx, _, _ = TopKEncode.apply(torch.randn(5, 8), torch.randn(64, 8), torch.zeros(64), 4, None)
        >>> vals.shape, idx.shape
        (torch.Size([5, 4]), torch.Size([5, 4]))
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        k: int,
        bias_mask: Tensor | None,
        aux_k: int = 0,
        aux_mask: Tensor | None = None,
    ):
        # x: [n, d]; W_enc: [f, d]; b_enc: [f]; masks: [f] (0 allowed, -inf excluded) or None
        pre = torch.addmm(b_enc, x, W_enc.T)  # [n, f]
        picks = []
        for kk, mask in ((k, bias_mask), (aux_k, aux_mask)):
            p = pre if mask is None else pre + mask
            vals, idx = p.topk(kk, dim=-1, sorted=False)  # [n, kk]; kk = 0 gives empty picks
            active = vals > 0
            picks += [torch.where(active, vals, torch.zeros_like(vals)), idx, active]
        vals, idx, active, aux_vals, aux_idx, aux_active = picks
        ctx.save_for_backward(x, W_enc, torch.cat([idx, aux_idx], 1), torch.cat([active, aux_active], 1))
        ctx.f = W_enc.shape[0]
        ctx.mark_non_differentiable(idx, aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals: Tensor, _g_idx, g_aux: Tensor, _g_aux_idx):
        x, W_enc, idx, active = ctx.saved_tensors  # idx, active: [n, k + aux_k]
        g = torch.where(active, torch.cat([g_vals, g_aux], 1), torch.zeros_like(active, dtype=g_vals.dtype))
        n, picks = idx.shape
        grad_W = grad_x = None
        if x.is_cuda or picks * 16 > ctx.f:
            # scatter_add: a latent can be in both picks (dead by the window, yet firing in this batch)
            G = torch.zeros(n, ctx.f, dtype=g.dtype, device=g.device).scatter_add_(1, idx, g)  # [n, f]
            grad_b = G.sum(0)
            if ctx.needs_input_grad[1]:
                grad_W = G.T @ x
            if ctx.needs_input_grad[0]:
                grad_x = G @ W_enc
            return grad_x, grad_W, grad_b, None, None, None, None
        flat_idx, flat_g = idx.reshape(-1), g.reshape(-1)
        grad_b = torch.zeros(ctx.f, dtype=g.dtype, device=g.device).index_add_(0, flat_idx, flat_g)
        if ctx.needs_input_grad[1]:
            grad_W = _latent_rows(flat_idx, flat_g, n, picks, ctx.f) @ x  # sparse [f, n] @ [n, d]
        if ctx.needs_input_grad[0]:
            rows = torch.arange(0, n * picks + 1, picks, device=g.device)  # G itself is CSR already: k per token
            grad_x = _csr(rows, flat_idx, flat_g, (n, ctx.f)) @ W_enc
        return grad_x, grad_W, grad_b, None, None, None, None


def _latent_rows(flat_idx: Tensor, flat_g: Tensor, n: int, picks: int, f: int) -> Tensor:
    """Gᵀ as a CSR matrix [f, n] from the picks (latent flat_idx[t·picks + j] of token t, gradient flat_g[...]);
    a latent picked twice by one token (main and AuxK) is two entries, which the product sums."""
    order = torch.argsort(flat_idx, stable=True)
    tokens = torch.arange(n, device=flat_idx.device).repeat_interleave(picks)[order]
    crow = torch.zeros(f + 1, dtype=torch.long, device=flat_idx.device)
    crow[1:] = torch.bincount(flat_idx, minlength=f).cumsum(0)
    return _csr(crow, tokens, flat_g[order], (f, n))


def _csr(crow: Tensor, cols: Tensor, vals: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # torch calls its CSR support beta once per process: not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, size)


def _rect(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """a = pre · H(pre − θ), with the straight-through threshold gradient of Rajamanoharan et al. (2024):
    ∂a/∂θ ≈ −(θ/ε) · rect((pre − θ)/ε), a rectangle-kernel estimate of the jump's effect."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float):
        # pre: [n, f]; theta: [f]
        mask = pre > theta
        ctx.save_for_backward(pre, theta, mask)
        ctx.eps = eps
        return pre * mask

    @staticmethod
    def backward(ctx, g: Tensor):
        pre, theta, mask = ctx.saved_tensors
        g_pre = g * mask
        g_theta = (-(theta / ctx.eps) * _rect((pre - theta) / ctx.eps) * g).sum(0)
        return g_pre, g_theta, None


class StepFn(torch.autograd.Function):
    """H(pre − θ) (the L0 count), with ∂/∂θ ≈ −(1/ε) · rect((pre − θ)/ε) and no gradient to pre."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        pre, theta = ctx.saved_tensors
        g_theta = (-(1.0 / ctx.eps) * _rect((pre - theta) / ctx.eps) * g).sum(0)
        return None, g_theta, None


def batch_topk(pre: Tensor, k: int) -> Tensor:
    """BatchTopK (Bussmann et al. 2024): keep the n·k largest positive pre-activations of the whole batch,
    so tokens share a sparsity budget.  pre: [n, f] -> acts [n, f]"""
    pos = pre.clamp_min(0)
    n_keep = min(pos.numel(), pre.shape[0] * k)
    kth = pos.flatten().topk(n_keep, sorted=False).values.min()
    return pos * (pos >= kth.clamp_min(1e-12))


def sparse_decode(vals: Tensor, idx: Tensor, W_dec: Tensor) -> Tensor:
    """Σ_k vals[n,k] W_dec[idx[n,k]] without materialising [n, d_tc].  -> [n, d]"""
    return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")


class Transcoder(nn.Module):
    """One layer's transcoder.

    Example:
        >>> tc = Transcoder(TranscoderConfig(d_model=64, d_transcoder=256, k=8))
        >>> acts = tc.encode(torch.randn(5, 64))   # [5, 256], 8 non-zeros per row at most
        >>> tc.decode(acts, torch.randn(5, 64)).shape
        torch.Size([5, 64])
    """

    def __init__(self, cfg: TranscoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dt = getattr(torch, cfg.dtype)
        f, d = cfg.d_transcoder, cfg.d_model
        self.W_enc = nn.Parameter(torch.zeros(f, d, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(f, dtype=dt))
        self.W_dec = nn.Parameter(torch.zeros(f, d, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(d, dtype=dt))
        self.threshold = nn.Parameter(torch.zeros(f, dtype=dt), requires_grad=False)
        self.W_skip = nn.Parameter(torch.zeros(d, d, dtype=dt)) if cfg.skip else None

    @property
    def d_transcoder(self) -> int:
        return self.cfg.d_transcoder

    def pre_acts(self, x: Tensor) -> Tensor:
        """x: [..., d_model] -> encoder pre-activations [..., d_tc]"""
        return F.linear(x.to(self.W_enc.dtype), self.W_enc, self.b_enc)

    def activation(self, pre: Tensor) -> Tensor:
        """Apply this transcoder's nonlinearity to pre-activations [..., d_tc]."""
        act = self.cfg.activation
        if act == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.clamp_min(0))
        if act == "jumprelu":  # also how BatchTopK-trained sets run: one calibrated threshold per layer
            return pre * (pre > self.threshold)
        if act == "relu":
            return pre.clamp_min(0)
        raise ValueError(f"unknown activation {act}")

    def encode(self, x: Tensor) -> Tensor:
        """x: [..., d_model] -> feature activations [..., d_tc] (dense, mostly zero)"""
        return self.activation(self.pre_acts(x))

    def skip(self, x: Tensor) -> Tensor:
        if self.W_skip is None:
            return torch.zeros_like(x)
        return x.to(self.W_skip.dtype) @ self.W_skip.T

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """acts: [..., d_tc] (and x for the skip term) -> predicted MLP output [..., d_model]"""
        y = acts @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError("a skip transcoder's decode needs the input x")
            y = y + self.skip(x)
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x), x)


class TranscoderSet(nn.Module):
    """All layers' transcoders of one model, plus what they were trained on.

    Example:
        >>> ts = load_transcoders("gemma3-270m")          # doctest: +SKIP
        >>> acts = ts[3].encode(mlp_in)                  # [n_pos, d_tc]   # doctest: +SKIP
    """

    def __init__(self, layers: list[Transcoder], meta: dict) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.meta = meta

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Transcoder:
        return self.layers[i]  # type: ignore[return-value]

    def __iter__(self):
        return iter(self.layers)

    @property
    def d_transcoder(self) -> int:
        return self[0].d_transcoder

    @property
    def d_model(self) -> int:
        return self[0].cfg.d_model

    # ---- the source interface (source.py): one read layer, one write layer per feature -------------------
    kind = "plt"

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def cfg(self) -> TranscoderConfig:
        """Layer 0's config: activation, k and skip are the same for every layer of a set."""
        return self[0].cfg

    def layer_pre_acts(self, l: int, x: Tensor) -> Tensor:
        """Pre-activations of the features that read layer l: x [..., d] -> [..., F]."""
        return self[l].pre_acts(x)

    def layer_encode(self, l: int, x: Tensor) -> Tensor:
        """Activations of the features that read layer l: x [..., d] -> [..., F]."""
        return self[l].encode(x)

    def layer_activation(self, l: int, pre: Tensor) -> Tensor:
        return self[l].activation(pre)

    def enc_weights(self, l: int) -> tuple[Tensor, Tensor]:
        """(W_enc [F, d], b_enc [F]) of the features that read layer l."""
        return self[l].W_enc, self[l].b_enc

    def write_layers(self, l: int) -> range:
        """The layers whose MLP outputs the features read at l write to: only l itself."""
        return range(l, l + 1)

    def dec_weights(self, l: int, w: int) -> Tensor:
        """Decoder rows [F, d] from the features read at l into layer w's MLP output."""
        if w != l:
            raise IndexError(f"per-layer features of layer {l} write to layer {l} only, not {w}")
        return self[l].W_dec

    def out_bias(self, w: int) -> Tensor:
        """The decoder bias [d] added to layer w's MLP output."""
        return self[w].b_dec

    def layer_skip(self, w: int, x: Tensor) -> Tensor:
        """Layer w's skip term W_skip x (zeros without one)."""
        return self[w].skip(x)

    def skip_weight(self, w: int) -> Tensor | None:
        """Layer w's W_skip [d, d] (applied as x @ W_skip.T), or None."""
        return self[w].W_skip
