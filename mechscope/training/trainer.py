"""The trainable transcoders: one layer's (LayerTrainer, in normalised units), the stack of all layers
(StackTrainer, one module so DDP averages every layer's gradients at once), the streamed least-squares statistics
that initialise them (LinearStats), and the re-drawing of dead latents (resample_dead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mechscope.transcoders.module import (
    JumpReLUFn,
    StepFn,
    TopKEncode,
    Transcoder,
    TranscoderConfig,
    batch_topk,
    sparse_decode,
)
from mechscope.training.config import TrainConfig
from mechscope.training.skip import SkipForm, SkipTerm, anneal_factor


class LayerTrainer(nn.Module):
    """One layer's trainable transcoder in normalised units (x/sx, y/sy), with a pre-encoder bias."""

    def __init__(
        self,
        d: int,
        f: int,
        k: int,
        skip: bool,
        gen: torch.Generator,
        activation: str = "topk",
        bandwidth: float = 0.05,
        skip_form: SkipForm = "full",
        skip_rank: int = 32,
    ) -> None:
        super().__init__()
        self.k = k
        self.activation = activation
        self.bandwidth = bandwidth
        w = torch.randn(f, d, generator=gen) / math.sqrt(d)
        # A small encoder keeps the random sparse part from drowning the least-squares skip at the start.
        self.W_enc = nn.Parameter(0.1 * w)
        self.b_enc = nn.Parameter(torch.zeros(f))
        self.W_dec = nn.Parameter(w / w.norm(dim=1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.skip_term = SkipTerm(d, skip_form, skip_rank) if skip else None
        # JumpReLU: learned per-feature thresholds (log scale keeps them positive) and an L0 penalty whose
        # weight is steered each step toward the target L0 = k, so users set a sparsity, not a coefficient.
        self.log_theta = nn.Parameter(torch.zeros(f)) if activation == "jumprelu" else None
        self.register_buffer("theta_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("l0_coef", torch.full((), 0.01))
        self.register_buffer("sx", torch.ones(()))
        self.register_buffer("sy", torch.ones(()))

    def folded_b_enc(self) -> Tensor:
        """b_enc − W_enc·b_pre: W_enc(x − b_pre) + b_enc with the pre-encoder bias folded in, so the input x is data
        and no [n, d] gradient of it is computed (b_pre still gets its exact gradient through this product)."""
        return self.b_enc - self.W_enc @ self.b_pre

    def forward(self, x: Tensor, y: Tensor, dead: Tensor | None, auxk_alpha: float) -> tuple[Tensor, dict]:
        # x, y: [n, d] raw activations of this layer
        xn, yn = x / self.sx, y / self.sy
        l0_pen = None
        use_aux = dead is not None and auxk_alpha > 0 and bool(dead.any())
        k_aux = min(int(dead.sum()), x.shape[1] // 2) if use_aux else 0
        if self.activation == "topk":
            # AuxK's picks among the dead latents come from the same encoder product as the main TopK
            aux_mask = torch.where(dead, 0.0, float("-inf")).to(xn.dtype) if use_aux else None
            vals, idx, v2, i2 = TopKEncode.apply(xn, self.W_enc, self.folded_b_enc(), self.k, None, k_aux, aux_mask)
            y_hat = sparse_decode(vals, idx, self.W_dec) + self.b_dec
            active = vals > 0
            fired_idx = idx[active]
            l0 = active.sum(-1).float().mean()
            kth = vals.min(-1).values.mean()  # running estimate for the exported JumpReLU threshold
        else:
            pre = torch.addmm(self.folded_b_enc(), xn, self.W_enc.T)  # [n, f], dense
            if self.activation == "batchtopk":
                acts = batch_topk(pre, self.k)
                kth = acts[acts > 0].min() if bool((acts > 0).any()) else torch.zeros(())
            else:
                if not bool(self.theta_ready):
                    # start where TopK would cut: the mean k-th largest pre-activation
                    self.log_theta.data.fill_(
                        float(pre.detach().topk(self.k, -1).values[:, -1].clamp_min(1e-3).mean().log())
                    )
                    self.theta_ready.fill_(True)
                theta = self.log_theta.exp()
                acts = JumpReLUFn.apply(pre, theta, self.bandwidth)
                l0_pen = StepFn.apply(pre, theta, self.bandwidth).sum(-1).mean()
                kth = theta.mean().detach()
            y_hat = acts @ self.W_dec + self.b_dec
            active = acts > 0
            fired_idx = active.any(0).nonzero().squeeze(-1)
            l0 = active.sum(-1).float().mean()
        if self.skip_term is not None and float(self.skip_term.scale) > 0:
            y_hat = y_hat + self.skip_term(xn)
        err = yn - y_hat
        total_var = (yn - yn.mean(0)).pow(2).sum()
        fvu = err.pow(2).sum() / total_var
        loss = fvu
        if l0_pen is not None:
            loss = loss + float(self.l0_coef) * l0_pen / self.k
            if self.training:  # multiplicative controller: too dense -> stronger penalty, too sparse -> weaker
                self.l0_coef.mul_(math.exp(0.05 * max(-1.0, min(1.0, float(l0) / self.k - 1.0))))
        aux = torch.zeros(())
        if use_aux:
            if self.activation != "topk":  # the dense pre-activations are at hand: AuxK picks from them
                v2, i2 = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
                v2 = v2.clamp_min(0)
            e_hat = sparse_decode(v2, i2, self.W_dec)
            aux = (e_hat - err.detach()).pow(2).sum() / total_var
            loss = loss + auxk_alpha * aux
        f = self.W_enc.shape[0]
        fired = torch.zeros(f, dtype=torch.bool, device=x.device)
        fired[fired_idx] = True
        # per latent, the tokens it fired on (TopK picks a latent at most once per token): the density cap's count
        n_fired = torch.bincount(fired_idx, minlength=f) if self.activation == "topk" else active.sum(0)
        return loss, {
            "n_fired": n_fired,
            "fvu": fvu.detach(),
            "aux": aux.detach(),
            "l0": l0.detach(),
            "fired": fired,
            "kth": kth.detach(),
            "err": err.detach(),
        }

    @property
    def W_skip(self) -> Tensor | None:
        """The skip term's effective d×d map in normalised units (None without a skip term)."""
        return self.skip_term.matrix() if self.skip_term is not None else None

    @torch.no_grad()
    def draw_dead(
        self, x: Tensor, y: Tensor, dead: Tensor, gen: torch.Generator, scale: float = 0.5
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """New encoder and decoder rows for the dead latents, drawn from the tokens of one batch.

        Tokens are drawn with probability ∝ ‖y − ŷ‖². The drawn token's error direction becomes the decoder row
        (unit norm, as all rows are kept), its centred input x − b_pre the encoder row, with b_enc = 0 and a scale
        that puts the latent's pre-activation on that token at `scale` × the activation cut there. At 0.5 it is
        positive, so AuxK can train it, and below the cut, so the current outputs do not change; above 1 it fires
        at once on that token and on those like it, where the main loss trains it. The cut is the token's k-th
        largest pre-activation of the live latents (TopK) or the batch-wide cut (BatchTopK); tokens whose cut is
        not positive are never drawn. x, y: [n, d] raw activations; dead: [f] bool.

        Returns (latent ids [m], W_enc rows [m, d], W_dec rows [m, d], drawn token ids [m]); m = 0 when no
        latent is dead or no token qualifies.
        """
        err = self(x, y, None, 0.0)[1]["err"]  # [n, d] normalised units
        u = x / self.sx - self.b_pre  # [n, d] as the encoder sees it
        pre = torch.addmm(self.b_enc, u, self.W_enc.T).masked_fill(dead, float("-inf"))  # [n, f] live latents
        if self.activation == "topk":
            cut = pre.topk(self.k, dim=-1).values[:, -1]  # [n]
        else:
            n_keep = min(pre.numel(), pre.shape[0] * self.k)
            cut = pre.flatten().topk(n_keep, sorted=False).values.min().expand(pre.shape[0])
        weight = err.pow(2).sum(-1) * (cut > 0)  # [n]
        ids = dead.nonzero().squeeze(-1)
        n_ok = int((weight > 0).sum())
        if n_ok == 0 or len(ids) == 0:
            empty = x.new_zeros(0, x.shape[1])
            return ids[:0], empty, empty, ids[:0]
        # sampled on the CPU with an explicit generator: the same draw on every device and after a resume
        tok = torch.multinomial(weight.double().cpu(), len(ids), replacement=len(ids) > n_ok, generator=gen).to(
            x.device
        )
        dec = err[tok] / err[tok].norm(dim=-1, keepdim=True)
        ut = u[tok]
        enc = ut * (scale * cut[tok] / ut.pow(2).sum(-1).clamp_min(1e-12)).unsqueeze(-1)
        return ids, enc, dec, tok

    @torch.no_grad()
    def set_rows(self, ids: Tensor, enc: Tensor, dec: Tensor) -> None:
        """Replace latents `ids`: encoder rows enc [m, d], decoder rows dec [m, d], encoder bias 0."""
        self.W_enc.data[ids] = enc
        self.b_enc.data[ids] = 0.0
        self.W_dec.data[ids] = dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Keep decoder rows on the unit sphere: drop the gradient component along each row."""
        if self.W_dec.grad is not None:
            par = (self.W_dec.grad * self.W_dec.data).sum(-1, keepdim=True)
            self.W_dec.grad -= par * self.W_dec.data

    @torch.no_grad()
    def init_from_stats(self, st: "LinearStats", skip_ls: bool = True) -> None:
        """Scales, biases and (for skip transcoders, unless skip_ls is False: then W_skip stays 0) a ridge
        least-squares W_skip from streamed statistics."""
        d = st.xtx.shape[0]
        n = st.n
        mx, my = st.sx / n, st.sy / n  # means, raw units
        self.sx.fill_(float((st.xx / n / d).sqrt().clamp_min(1e-6)))
        self.sy.fill_(float((st.yy / n / d).sqrt().clamp_min(1e-6)))
        sx, sy = float(self.sx), float(self.sy)
        self.b_pre.copy_((mx / sx).float())
        if self.skip_term is not None and skip_ls:
            cxx = (st.xtx / n - torch.outer(mx, mx)) / sx**2  # covariances, normalised units
            cxy = (st.xty / n - torch.outer(mx, my)) / (sx * sy)
            lam = 1e-2 * cxx.diagonal().mean()
            w = torch.linalg.solve(cxx + lam * torch.eye(d, dtype=cxx.dtype), cxy)  # [d_in, d_out]
            self.skip_term.load_matrix(w.T.float())
            self.b_dec.copy_((my / sy - (mx / sx) @ w).float())
        else:
            self.b_dec.copy_((my / sy).float())

    @torch.no_grad()
    def init_from_transcoder(self, tc: Transcoder, st: "LinearStats | None" = None, sx: float | None = None) -> None:
        """Invert `export`: decoder rows of a saved set all have norm sy; any sx is exact for the encoder (the
        input scale from `st`'s statistics, or `sx` as recorded by the run that saved the set)."""
        if sx is None:
            assert st is not None, "init_from_transcoder needs statistics or a recorded input scale"
            sx = float((st.xx / st.n / st.xtx.shape[0]).sqrt().clamp_min(1e-6))
        sy = float(tc.W_dec.float().norm(dim=1).mean())
        self.sx.fill_(sx)
        self.sy.fill_(sy)
        self.W_enc.copy_(tc.W_enc.float() * sx)
        self.b_enc.copy_(tc.b_enc.float())
        self.b_pre.zero_()
        self.W_dec.copy_(tc.W_dec.float() / sy)
        self.normalize_decoder()
        self.b_dec.copy_(tc.b_dec.float() / sy)
        if self.skip_term is not None and tc.W_skip is not None:
            self.skip_term.load_matrix(tc.W_skip.float() * (sx / sy))
        if self.log_theta is not None and tc.cfg.activation == "jumprelu" and bool((tc.threshold > 0).all()):
            self.log_theta.copy_(tc.threshold.float().log())
            self.theta_ready.fill_(True)

    def export(self, threshold: float) -> Transcoder:
        """Fold normalisation and b_pre into plain weights on raw activations.

        Pre-activations are unchanged by the folding, so thresholds carry over as they are: TopK sets keep a
        calibrated threshold for circuit-tracer export, BatchTopK sets run as JumpReLU with that one
        threshold, JumpReLU sets keep their learned per-feature thresholds.
        """
        f, d = self.W_enc.shape
        act = "topk" if self.activation == "topk" else "jumprelu"
        # a skip annealed all the way to 0 is no skip: the saved set says so, and graphs get no skip edges
        w_skip = self.W_skip if self.skip_term is not None and float(self.skip_term.scale) > 0 else None
        tc = Transcoder(TranscoderConfig(d_model=d, d_transcoder=f, activation=act, k=self.k, skip=w_skip is not None))
        sx, sy = float(self.sx), float(self.sy)
        with torch.no_grad():
            tc.W_enc.copy_(self.W_enc / sx)
            tc.b_enc.copy_(self.b_enc - self.W_enc @ self.b_pre)
            tc.W_dec.copy_(self.W_dec * sy)
            tc.b_dec.copy_(self.b_dec * sy)
            if self.log_theta is not None:
                tc.threshold.copy_(self.log_theta.exp())
            else:
                tc.threshold.fill_(threshold)
            if w_skip is not None:
                tc.W_skip.copy_(w_skip * (sy / sx))
        return tc


@dataclass
class LinearStats:
    """Streaming first and second moments of one layer's (x, y), in float64."""

    d: int
    n: int = 0
    xtx: Tensor = None  # type: ignore[assignment]
    xty: Tensor = None  # type: ignore[assignment]
    sx: Tensor = None  # type: ignore[assignment]
    sy: Tensor = None  # type: ignore[assignment]
    xx: Tensor = None  # type: ignore[assignment]
    yy: Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)
        self.xtx, self.xty, self.sx, self.sy, self.xx, self.yy = (
            z(self.d, self.d),
            z(self.d, self.d),
            z(self.d),
            z(self.d),
            z(()),
            z(()),
        )

    def add(self, x: Tensor, y: Tensor) -> None:
        x, y = x.double().cpu(), y.double().cpu()
        self.n += x.shape[0]
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.pow(2).sum()
        self.yy += y.pow(2).sum()


class LayerStack(nn.Module):
    """Per-read-layer trainers in `self.layers`; the steps around each optimizer step apply to every one of them
    (per-layer sets: StackTrainer; cross-layer: clt_trainer.CLTStackTrainer)."""

    layers: nn.ModuleList

    def remove_parallel_grad(self) -> None:
        for layer in self.layers:
            layer.remove_parallel_grad()

    def normalize_decoder(self) -> None:
        for layer in self.layers:
            layer.normalize_decoder()

    @torch.no_grad()
    def update_skip(self, step: int, total_steps: int, cfg: TrainConfig, lr_ratio: float) -> None:
        """After optimizer step `step` (1-based): the anneal factor for the next step, and the decay shrink
        (cfg.skip_decay at the peak learning rate, scaled with the schedule: lr_ratio = lr_now / lr_peak)."""
        for layer in self.layers:
            term = layer.skip_term
            if term is None:
                continue
            term.scale.fill_(anneal_factor(step, total_steps, cfg.skip_anneal))
            if cfg.skip_decay > 0:
                term.decay(1.0 - cfg.skip_decay * lr_ratio)


class StackTrainer(LayerStack):
    def __init__(self, n_layers: int, d: int, cfg: TrainConfig) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.layers = nn.ModuleList(
            LayerTrainer(
                d,
                cfg.features,
                cfg.k,
                cfg.skip,
                gen,
                cfg.activation,
                cfg.jumprelu_bandwidth,
                skip_form=cfg.skip_form,
                skip_rank=cfg.skip_rank,
            )
            for _ in range(n_layers)
        )

    def forward(self, xs: Tensor, ys: Tensor, dead: Tensor, auxk_alpha: float) -> tuple[Tensor, list[dict]]:
        total = torch.zeros((), device=xs.device)
        infos = []
        for l, layer in enumerate(self.layers):
            loss, info = layer(xs[l], ys[l], dead[l], auxk_alpha)
            if not torch.isfinite(loss):
                raise FloatingPointError(str(l))
            total = total + loss
            infos.append(info)
        return total, infos


@torch.no_grad()
def resample_dead(
    trainer: StackTrainer,
    opt: torch.optim.Optimizer,
    xs: Tensor,
    ys: Tensor,
    dead: Tensor,
    gen: torch.Generator,
    world: int = 1,
    scale: float = 0.5,
) -> list[Tensor]:
    """Re-draw every layer's dead latents (dead: [L, f]) from one batch (xs, ys: [L, n, d]); see `LayerTrainer.draw_dead`.

    Rank 0 draws and broadcasts the rows, so DDP replicas stay identical. The Adam moments of the touched rows
    restart at zero: the old ones belong to the discarded latent. Returns the re-drawn latent ids per layer.
    """
    rank0 = world == 1 or dist.get_rank() == 0
    redrawn = []
    for l, layer in enumerate(trainer.layers):
        if rank0:
            ids, enc, dec, _ = layer.draw_dead(xs[l], ys[l], dead[l], gen, scale)
        if world > 1:
            m = torch.tensor([len(ids) if rank0 else 0], device=xs.device)
            dist.broadcast(m, 0)
            if not rank0:
                ids = torch.empty(int(m), dtype=torch.long, device=xs.device)
                enc = dec = torch.empty(int(m), xs.shape[-1], dtype=layer.W_enc.dtype, device=xs.device)
            rows = torch.stack([enc, dec])  # [2, m, d]
            dist.broadcast(ids, 0)
            dist.broadcast(rows, 0)
            enc, dec = rows[0], rows[1]
        layer.set_rows(ids, enc, dec)
        for p in (layer.W_enc, layer.b_enc, layer.W_dec):
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    st[key][ids] = 0
        redrawn.append(ids)
    return redrawn
