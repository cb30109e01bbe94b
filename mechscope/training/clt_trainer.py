"""The trainable cross-layer transcoder: one module for all layers, used by the same training loop (train.py) as
the per-layer `StackTrainer` — progress, checkpoints and resume, determinism and DDP come with it.

Per read layer l a `CLTLayerTrainer` (a `LayerTrainer` in normalised units: x/sx_l, y/sy_l, with b_pre, the
least-squares skip init and the JumpReLU threshold controller) encodes; its `W_dec` is the decoder into layer l
itself and `W_dec_x[j]` the one into layer l+1+j. The loss sums every layer's FVU, each layer reconstructed from
the features read at and below it:

    ŷ_w = Σ_{l ≤ w, w < l + n_write(l)} W_dec[l→w]^T a_l + b_dec[w] (+ W_skip[w] x_w)

A feature's decoders into all its write layers together keep unit norm (the scale lives in the encoder, as for
the per-layer TopK recipe). Cross-layer decoders start at zero, so training starts from a per-layer transcoder — a trained one with
`--init-from` (each read layer's `LayerTrainer.init_from_transcoder`), so a CLT can continue the shipped set.
AuxK revives a dead latent through its same-layer decoder (it predicts that layer's residual error).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mechscope.transcoders.clt import CLTConfig, CrossLayerTranscoder
from mechscope.transcoders.module import JumpReLUFn, StepFn, TopKEncode, batch_topk, sparse_decode
from mechscope.training.config import TrainConfig
from mechscope.training.trainer import LayerStack, LayerTrainer


class CLTLayerTrainer(LayerTrainer):
    """The features read at one layer: a LayerTrainer plus decoders into the next n_write − 1 layers."""

    def __init__(self, n_write: int, *args, **kw) -> None:
        super().__init__(*args, **kw)
        f, d = self.W_dec.shape
        self.W_dec_x = nn.ParameterList([nn.Parameter(torch.zeros(f, d)) for _ in range(n_write - 1)])

    def slots(self) -> list[Tensor]:
        """Decoders [F, d] into layers l, l+1, …, l+n_write−1 (normalised units of each target layer)."""
        return [self.W_dec, *self.W_dec_x]

    def encode(self, x: Tensor, dead: Tensor | None, auxk_alpha: float) -> dict:
        """Activations of this layer's features: sparse (vals, idx) for TopK, dense `acts` otherwise."""
        xn = x / self.sx
        use_aux = dead is not None and auxk_alpha > 0 and bool(dead.any())
        k_aux = min(int(dead.sum()), x.shape[1] // 2) if use_aux else 0
        out: dict = {"l0_pen": None, "aux": None}
        if self.activation == "topk":
            aux_mask = torch.where(dead, 0.0, float("-inf")).to(xn.dtype) if use_aux else None
            vals, idx, v2, i2 = TopKEncode.apply(xn, self.W_enc, self.folded_b_enc(), self.k, None, k_aux, aux_mask)
            active = vals > 0
            out.update(vals=vals, idx=idx, fired_idx=idx[active], l0=active.sum(-1).float().mean())
            out["kth"] = vals.min(-1).values.mean()
            if use_aux:
                out["aux"] = (v2, i2)
            return out
        pre = torch.addmm(self.folded_b_enc(), xn, self.W_enc.T)
        if self.activation == "batchtopk":
            acts = batch_topk(pre, self.k)
            out["kth"] = acts[acts > 0].min() if bool((acts > 0).any()) else torch.zeros(())
        else:
            if not bool(self.theta_ready):
                self.log_theta.data.fill_(
                    float(pre.detach().topk(self.k, -1).values[:, -1].clamp_min(1e-3).mean().log())
                )
                self.theta_ready.fill_(True)
            theta = self.log_theta.exp()
            acts = JumpReLUFn.apply(pre, theta, self.bandwidth)
            out["l0_pen"] = StepFn.apply(pre, theta, self.bandwidth).sum(-1).mean()
            out["kth"] = theta.mean().detach()
        active = acts > 0
        out.update(acts=acts, fired_idx=active.any(0).nonzero().squeeze(-1), l0=active.sum(-1).float().mean())
        if use_aux:
            v2, i2 = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
            out["aux"] = (v2.clamp_min(0), i2)
        return out

    @staticmethod
    def decode(enc: dict, W: Tensor) -> Tensor:
        if "vals" in enc:
            return sparse_decode(enc["vals"], enc["idx"], W)
        return enc["acts"] @ W

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        norm = torch.sqrt(sum(W.data.pow(2).sum(-1) for W in self.slots())).clamp_min(1e-8)  # [F]
        for W in self.slots():
            W.data /= norm[:, None]

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Keep each feature's joint decoder on the unit sphere: drop the gradient along it."""
        slots = [W for W in self.slots() if W.grad is not None]
        if not slots:
            return
        par = sum((W.grad * W.data).sum(-1) for W in slots)  # [F]
        for W in slots:
            W.grad -= par[:, None] * W.data


class CLTStackTrainer(LayerStack):
    """All read layers of a cross-layer transcoder in one module (DDP averages every gradient at once)."""

    def __init__(self, n_layers: int, d: int, cfg: TrainConfig) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.clt_cfg = CLTConfig(
            n_layers=n_layers,
            d_model=d,
            d_transcoder=cfg.features,
            activation="topk" if cfg.activation == "topk" else "jumprelu",
            k=cfg.k,
            skip=cfg.skip,
            max_write_layers=cfg.clt_write_layers,
        )
        self.layers = nn.ModuleList(
            CLTLayerTrainer(
                self.clt_cfg.n_write(l), d, cfg.features, cfg.k, cfg.skip, gen, cfg.activation, cfg.jumprelu_bandwidth
            )
            for l in range(n_layers)
        )

    def forward(self, xs: Tensor, ys: Tensor, dead: Tensor, auxk_alpha: float) -> tuple[Tensor, list[dict]]:
        L = len(self.layers)
        encs = [layer.encode(xs[l], dead[l], auxk_alpha) for l, layer in enumerate(self.layers)]
        total = torch.zeros((), device=xs.device)
        infos = []
        errs = []
        for w, lw in enumerate(self.layers):
            yn = ys[w] / lw.sy
            y_hat = lw.b_dec.expand_as(yn)
            for l in range(w + 1):
                j = w - l
                if j < len(self.layers[l].slots()):
                    y_hat = y_hat + CLTLayerTrainer.decode(encs[l], self.layers[l].slots()[j])
            if lw.W_skip is not None:
                y_hat = y_hat + (xs[w] / lw.sx) @ lw.W_skip.T
            err = yn - y_hat
            total_var = (yn - yn.mean(0)).pow(2).sum()
            fvu = err.pow(2).sum() / total_var
            errs.append((err, total_var))
            total = total + fvu
            infos.append({"fvu": fvu.detach()})
        for l, (layer, enc) in enumerate(zip(self.layers, encs)):
            aux = torch.zeros((), device=xs.device)
            if enc["l0_pen"] is not None:
                total = total + float(layer.l0_coef) * enc["l0_pen"] / layer.k
                if self.training:  # the LayerTrainer's controller: steer the penalty toward L0 = k
                    layer.l0_coef.mul_(math.exp(0.05 * max(-1.0, min(1.0, float(enc["l0"]) / layer.k - 1.0))))
            if enc["aux"] is not None:
                err, total_var = errs[l]
                e_hat = sparse_decode(enc["aux"][0], enc["aux"][1], layer.W_dec)
                aux = (e_hat - err.detach()).pow(2).sum() / total_var
                total = total + auxk_alpha * aux
            fired = torch.zeros(layer.W_enc.shape[0], dtype=torch.bool, device=xs.device)
            fired[enc["fired_idx"]] = True
            infos[l].update(aux=aux.detach(), l0=enc["l0"].detach(), fired=fired, kth=enc["kth"].detach())
            infos[l]["err"] = errs[l][0].detach()
        if not torch.isfinite(total):
            raise FloatingPointError(str(L - 1))
        return total, infos

    @torch.no_grad()
    def export(self, thresholds: list[float], meta: dict) -> CrossLayerTranscoder:
        """Fold normalisation and b_pre into a CrossLayerTranscoder on raw activations (see LayerTrainer.export)."""
        clt = CrossLayerTranscoder(self.clt_cfg, meta)
        for l, lt in enumerate(self.layers):
            sx, sy = float(lt.sx), float(lt.sy)
            clt.W_enc.data[l] = lt.W_enc / sx
            clt.b_enc.data[l] = lt.b_enc - lt.W_enc @ lt.b_pre
            clt.b_dec.data[l] = lt.b_dec * sy
            clt.threshold.data[l] = lt.log_theta.exp() if lt.log_theta is not None else thresholds[l]
            if lt.W_skip is not None:
                clt.W_skip.data[l] = lt.W_skip * (sy / sx)
            for j, W in enumerate(lt.slots()):
                clt.W_dec[l].data[:, j] = W * float(self.layers[l + j].sy)  # into layer l+j: its output scale
        return clt
