"""Cross-layer transcoders (CLTs): every feature reads one layer's MLP input and writes to that layer's and
later layers' MLP outputs.

    a_l  = act(W_enc[l] x_l + b_enc[l])                         x_l: layer l's MLP input (after the pre-MLP norm)
    ŷ_w  = Σ_{l ≤ w} W_dec[l][:, w − l]^T a_l + b_dec[w] (+ W_skip[w] x_w)

Shapes follow circuit-tracer's `CrossLayerTranscoder`: W_enc [L, F, d], b_enc [L, F], b_dec [L, d],
W_dec[l] [F, n_write(l), d]. `max_write_layers` (N > 0) keeps only the decoders into layers l..l+N−1, so storage
grows as L·N instead of L²/2; 0 keeps every later layer (circuit-tracer's layout). W_skip [L, d, d] is applied
as x @ W_skip[w].T, like our per-layer transcoders (circuit-tracer's CLT applies x @ W_skip: see clt_ct.py).

Features keep the per-layer id `L/F` (L = the read layer), so graphs, the feature index and interventions name
them as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mechscope.errors import MechscopeError


@dataclass
class CLTConfig:
    n_layers: int
    d_model: int
    d_transcoder: int  # features per read layer
    activation: str = "topk"  # topk | jumprelu | relu
    k: int = 32
    skip: bool = False
    max_write_layers: int = 0  # 0: every later layer; N: layers l..l+N-1
    dtype: str = "float32"

    def n_write(self, l: int) -> int:
        """How many layers the features read at l write to."""
        rest = self.n_layers - l
        return rest if self.max_write_layers <= 0 else min(rest, self.max_write_layers)

    def to_dict(self) -> dict:
        return asdict(self)


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder; a feature *source* like `TranscoderSet` (see `source.py`).

    Example:
        >>> clt = CrossLayerTranscoder(CLTConfig(n_layers=3, d_model=8, d_transcoder=16, k=2))
        >>> list(clt.write_layers(1)), tuple(clt.dec_weights(1, 2).shape)
        ([1, 2], (16, 8))
    """

    kind = "clt"

    def __init__(self, cfg: CLTConfig, meta: dict | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.meta = dict(meta or {})
        dt = getattr(torch, cfg.dtype)
        L, f, d = cfg.n_layers, cfg.d_transcoder, cfg.d_model
        self.W_enc = nn.Parameter(torch.zeros(L, f, d, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(L, f, dtype=dt))
        self.threshold = nn.Parameter(torch.zeros(L, f, dtype=dt), requires_grad=False)
        self.b_dec = nn.Parameter(torch.zeros(L, d, dtype=dt))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(f, cfg.n_write(l), d, dtype=dt)) for l in range(L)])
        self.W_skip = nn.Parameter(torch.zeros(L, d, d, dtype=dt)) if cfg.skip else None

    # ---- shape -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.cfg.n_layers

    def __getitem__(self, i: int):
        raise MechscopeError(
            "this is a cross-layer transcoder: its features write to several layers, so it has no per-layer "
            "transcoder `ts[l]` (this code path supports per-layer transcoder sets only)"
        )

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    @property
    def d_transcoder(self) -> int:
        return self.cfg.d_transcoder

    # ---- the source interface ----------------------------------------------------------------------------
    def layer_pre_acts(self, l: int, x: Tensor) -> Tensor:
        """Pre-activations of the features read at layer l: x [..., d] -> [..., F]."""
        return F.linear(x.to(self.W_enc.dtype), self.W_enc[l], self.b_enc[l])

    def layer_activation(self, l: int, pre: Tensor) -> Tensor:
        act = self.cfg.activation
        if act == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.clamp_min(0))
        if act == "jumprelu":
            return pre * (pre > self.threshold[l])
        if act == "relu":
            return pre.clamp_min(0)
        raise ValueError(f"unknown activation {act}")

    def layer_encode(self, l: int, x: Tensor) -> Tensor:
        return self.layer_activation(l, self.layer_pre_acts(l, x))

    def enc_weights(self, l: int) -> tuple[Tensor, Tensor]:
        return self.W_enc[l], self.b_enc[l]

    def write_layers(self, l: int) -> range:
        return range(l, l + self.cfg.n_write(l))

    def dec_weights(self, l: int, w: int) -> Tensor:
        if w not in self.write_layers(l):
            raise IndexError(f"features read at layer {l} do not write to layer {w}")
        return self.W_dec[l][:, w - l]

    def out_bias(self, w: int) -> Tensor:
        return self.b_dec[w]

    def layer_skip(self, w: int, x: Tensor) -> Tensor:
        if self.W_skip is None:
            return torch.zeros_like(x)
        return x.to(self.W_skip.dtype) @ self.W_skip[w].T

    def skip_weight(self, w: int) -> Tensor | None:
        return None if self.W_skip is None else self.W_skip[w]

    # ---- whole-stack helpers -----------------------------------------------------------------------------
    def decode(self, acts: list[Tensor], xs: list[Tensor] | None = None) -> list[Tensor]:
        """acts: L x [..., F] (features read at each layer) -> L x [..., d] predicted MLP outputs."""
        L = self.n_layers
        out = []
        for w in range(L):
            y = self.b_dec[w].expand(*acts[0].shape[:-1], self.d_model)
            for l in range(w + 1):
                if w in self.write_layers(l):
                    y = y + acts[l] @ self.W_dec[l][:, w - l]
            if self.W_skip is not None:
                if xs is None:
                    raise ValueError("a skip transcoder's decode needs the inputs xs")
                y = y + self.layer_skip(w, xs[w])
            out.append(y)
        return out
