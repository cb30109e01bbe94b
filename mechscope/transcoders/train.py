"""Train every layer's transcoder at once from activations streamed out of the model.

One forward pass of the (frozen) model gives all layers' MLP inputs and outputs for a batch; each layer's
TopK transcoder takes one Adam step on them. Nothing is cached on disk but periodic checkpoints.
Latents silent for `--dead-after-tokens` get the AuxK loss; `--resample-dead` also re-draws them at
checkpoint steps from the worst-reconstructed tokens of the batch.

    mechscope train-transcoders --model gemma3-270m --tokens 2000000 --features 2048 --k 32

Under `torchrun --nproc-per-node N` the same command trains with DDP (NCCL on GPUs, gloo on CPU):
each process reads every N-th chunk of the corpus and gradients are averaged.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mechscope.configs import param, require
from mechscope.errors import MechscopeError
from mechscope.models.adapter import ModelAdapter
from mechscope.models.loading import resolve_device
from mechscope.models.registry import DEFAULT_MODEL, MODEL_HELP
from mechscope.paths import atomic_dir
from mechscope.transcoders.corpus import chunk_stream, validate_corpus
from mechscope.transcoders.registry import SHIPPED_DTYPE
from mechscope.transcoders.sinks import massive
from mechscope.transcoders.module import (JumpReLUFn, StepFn, TopKEncode, Transcoder, TranscoderConfig, TranscoderSet,
                                          batch_topk, sparse_decode)
from mechscope.transcoders.storage import save_transcoders

log = logging.getLogger(__name__)
CODE_VERSION = "train-v2"
ACTIVATIONS = ("topk", "batchtopk", "jumprelu")   # == get_args(Activation)


Activation = Literal["topk", "batchtopk", "jumprelu"]
Device = Literal["auto", "cpu", "cuda"]
SaveDtype = Literal["float32", "float16", "bfloat16", "int8"]


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved into the set's config.json); validated on creation.

    >>> TrainConfig(k=64, features=32)
    Traceback (most recent call last):
    mechscope.errors.MechscopeError: --k cannot exceed --features
    """

    model: str = param(DEFAULT_MODEL, help=MODEL_HELP)
    corpus: str = param("builtin", help="'builtin', a .txt/.jsonl/.parquet file or folder, or hf:DATASET")
    tokens: int = param(1_000_000, help="training tokens (all processes together)")
    features: int = param(2048, help="latents per layer")
    k: int = param(32, help="active features per token (TopK, BatchTopK) or target mean L0 (JumpReLU)")
    activation: Activation = param("topk", help="sparsity: per-token TopK, batch-wide BatchTopK, or JumpReLU with "
                                                "learned thresholds (saved sets: topk, or jumprelu + thresholds)")
    jumprelu_bandwidth: float = param(0.05, help="ε of the JumpReLU threshold's straight-through estimate (normalised units)")
    seq_len: int = param(128, help="tokens per training sequence")
    batch_size: int = param(8, help="sequences per step and process")
    lr: float = param(0.0, help="learning rate (0: 2e-4 / sqrt(F / 2^14) × --lr-scale, sparsify's rule)")
    lr_scale: float = param(2.0, help="multiplier of the default learning rate (short CPU runs profit from a larger step)")
    warmup_steps: int = param(50, help="linear learning-rate warm-up steps")
    decay_frac: float = param(0.2, help="linear decay to 0 over this last share of the steps")
    skip: bool = param(True, negate="--no-skip", help="train without the linear skip term")
    skip_init_tokens: int = param(65536, help="least-squares init of W_skip (and biases) from this many tokens")
    auxk_alpha: float = param(1 / 32, help="weight of the AuxK loss that revives dead latents")
    dead_after_tokens: int = param(250_000, help="a feature silent this many tokens counts as dead and gets the AuxK "
                                                 "revival loss")
    resample_dead: bool = param(False, help="also re-draw dead features at checkpoint steps (not in the final LR decay) "
                                            "from badly reconstructed tokens (topk/batchtopk)")
    resample_scale: float = param(0.5, help="a re-drawn feature's pre-activation on the token it is drawn from, in units "
                                            "of that token's TopK cut (below 1: waits for AuxK; above 1: fires at once)")
    outlier_factor: float = param(0.0, help="drop tokens whose MLP output norm is over X times the batch median at some "
                                            "layer (0: keep all); fit-sinks then gives the set latents for those "
                                            "attention-sink outputs (SmolLM2's massive activations wreck the LS skip init)")
    checkpoint_every: int = param(50, help="steps between checkpoints (0: none)")
    seed: int = param(0, help="random seed (initialisation and data order)")
    device: Device = param("auto", help="where training runs")
    out: str = param("", help="output directory (default: the user data dir for this model)")
    save_dtype: SaveDtype = param(SHIPPED_DTYPE, help="storage of the saved set (int8: per-row int8 matrices with fp16 "
                                                      "scales, as the shipped sets; float32 for exactness tests)")
    stop_after_steps: int = param(0, cli=False, help="simulate an interruption (tests): checkpoint and return early")
    init_from: str = param("", help="continue from an existing set (fresh optimizer and schedule)")

    def __post_init__(self) -> None:
        for name in ("tokens", "features", "k", "seq_len", "batch_size", "dead_after_tokens"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be positive")
        require(self.resample_scale > 0, "--resample-scale must be positive")
        require(self.k <= self.features, "--k cannot exceed --features")
        require(self.activation in ACTIVATIONS,
                f"unknown --activation {self.activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        require(self.lr >= 0 and self.checkpoint_every >= 0 and self.outlier_factor >= 0,
                "--lr, --checkpoint-every and --outlier-factor must not be negative")
        require(not (self.resample_dead and self.activation == "jumprelu"),
                "--resample-dead supports --activation topk and batchtopk, not jumprelu (its thresholds are learned)")
        require(not (self.resample_dead and self.checkpoint_every < 1),
                "--resample-dead re-draws dead latents at checkpoint steps: give --checkpoint-every > 0")

    def resolved_lr(self) -> float:
        return self.lr or 2e-4 / math.sqrt(self.features / 2**14) * self.lr_scale


class LayerTrainer(nn.Module):
    """One layer's trainable transcoder in normalised units (x/sx, y/sy), with a pre-encoder bias."""

    def __init__(self, d: int, f: int, k: int, skip: bool, gen: torch.Generator, activation: str = "topk",
                 bandwidth: float = 0.05) -> None:
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
        self.W_skip = nn.Parameter(torch.zeros(d, d)) if skip else None
        # JumpReLU: learned per-feature thresholds (log scale keeps them positive) and an L0 penalty whose
        # weight is steered each step toward the target L0 = k, so users set a sparsity, not a coefficient.
        self.log_theta = nn.Parameter(torch.zeros(f)) if activation == "jumprelu" else None
        self.register_buffer("theta_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("l0_coef", torch.full((), 0.01))
        self.register_buffer("sx", torch.ones(()))
        self.register_buffer("sy", torch.ones(()))

    def forward(self, x: Tensor, y: Tensor, dead: Tensor | None, auxk_alpha: float) -> tuple[Tensor, dict]:
        # x, y: [n, d] raw activations of this layer
        xn, yn = x / self.sx, y / self.sy
        l0_pen = None
        use_aux = dead is not None and auxk_alpha > 0 and bool(dead.any())
        k_aux = min(int(dead.sum()), x.shape[1] // 2) if use_aux else 0
        if self.activation == "topk":
            # AuxK's picks among the dead latents come from the same encoder product as the main TopK
            aux_mask = torch.where(dead, 0.0, float("-inf")).to(xn.dtype) if use_aux else None
            vals, idx, v2, i2 = TopKEncode.apply(xn - self.b_pre, self.W_enc, self.b_enc, self.k, None, k_aux, aux_mask)
            y_hat = sparse_decode(vals, idx, self.W_dec) + self.b_dec
            active = vals > 0
            fired_idx = idx[active]
            l0 = active.sum(-1).float().mean()
            kth = vals.min(-1).values.mean()     # running estimate for the exported JumpReLU threshold
        else:
            pre = torch.addmm(self.b_enc, xn - self.b_pre, self.W_enc.T)      # [n, f], dense
            if self.activation == "batchtopk":
                acts = batch_topk(pre, self.k)
                kth = acts[acts > 0].min() if bool((acts > 0).any()) else torch.zeros(())
            else:
                if not bool(self.theta_ready):
                    # start where TopK would cut: the mean k-th largest pre-activation
                    self.log_theta.data.fill_(float(pre.detach().topk(self.k, -1).values[:, -1].clamp_min(1e-3).mean().log()))
                    self.theta_ready.fill_(True)
                theta = self.log_theta.exp()
                acts = JumpReLUFn.apply(pre, theta, self.bandwidth)
                l0_pen = StepFn.apply(pre, theta, self.bandwidth).sum(-1).mean()
                kth = theta.mean().detach()
            y_hat = acts @ self.W_dec + self.b_dec
            active = acts > 0
            fired_idx = active.any(0).nonzero().squeeze(-1)
            l0 = active.sum(-1).float().mean()
        if self.W_skip is not None:
            y_hat = y_hat + xn @ self.W_skip.T
        err = yn - y_hat
        total_var = (yn - yn.mean(0)).pow(2).sum()
        fvu = err.pow(2).sum() / total_var
        loss = fvu
        if l0_pen is not None:
            loss = loss + float(self.l0_coef) * l0_pen / self.k
            if self.training:   # multiplicative controller: too dense -> stronger penalty, too sparse -> weaker
                self.l0_coef.mul_(math.exp(0.05 * max(-1.0, min(1.0, float(l0) / self.k - 1.0))))
        aux = torch.zeros(())
        if use_aux:
            if self.activation != "topk":     # the dense pre-activations are at hand: AuxK picks from them
                v2, i2 = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
                v2 = v2.clamp_min(0)
            e_hat = sparse_decode(v2, i2, self.W_dec)
            aux = (e_hat - err.detach()).pow(2).sum() / total_var
            loss = loss + auxk_alpha * aux
        fired = torch.zeros(self.W_enc.shape[0], dtype=torch.bool, device=x.device)
        fired[fired_idx] = True
        return loss, {"fvu": fvu.detach(), "aux": aux.detach(), "l0": l0.detach(), "fired": fired, "kth": kth.detach(),
                      "err": err.detach()}

    @torch.no_grad()
    def draw_dead(self, x: Tensor, y: Tensor, dead: Tensor, gen: torch.Generator,
                  scale: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
        err = self(x, y, None, 0.0)[1]["err"]                                # [n, d] normalised units
        u = x / self.sx - self.b_pre                                         # [n, d] as the encoder sees it
        pre = torch.addmm(self.b_enc, u, self.W_enc.T).masked_fill(dead, float("-inf"))   # [n, f] live latents
        if self.activation == "topk":
            cut = pre.topk(self.k, dim=-1).values[:, -1]                     # [n]
        else:
            n_keep = min(pre.numel(), pre.shape[0] * self.k)
            cut = pre.flatten().topk(n_keep, sorted=False).values.min().expand(pre.shape[0])
        weight = err.pow(2).sum(-1) * (cut > 0)                              # [n]
        ids = dead.nonzero().squeeze(-1)
        n_ok = int((weight > 0).sum())
        if n_ok == 0 or len(ids) == 0:
            empty = x.new_zeros(0, x.shape[1])
            return ids[:0], empty, empty, ids[:0]
        # sampled on the CPU with an explicit generator: the same draw on every device and after a resume
        tok = torch.multinomial(weight.double().cpu(), len(ids), replacement=len(ids) > n_ok, generator=gen).to(x.device)
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
    def init_from_stats(self, st: "LinearStats") -> None:
        """Scales, biases and (for skip transcoders) a ridge least-squares W_skip from streamed statistics."""
        d = st.xtx.shape[0]
        n = st.n
        mx, my = st.sx / n, st.sy / n                                  # means, raw units
        self.sx.fill_(float((st.xx / n / d).sqrt().clamp_min(1e-6)))
        self.sy.fill_(float((st.yy / n / d).sqrt().clamp_min(1e-6)))
        sx, sy = float(self.sx), float(self.sy)
        self.b_pre.copy_((mx / sx).float())
        if self.W_skip is not None:
            cxx = (st.xtx / n - torch.outer(mx, mx)) / sx**2              # covariances, normalised units
            cxy = (st.xty / n - torch.outer(mx, my)) / (sx * sy)
            lam = 1e-2 * cxx.diagonal().mean()
            w = torch.linalg.solve(cxx + lam * torch.eye(d, dtype=cxx.dtype), cxy)   # [d_in, d_out]
            self.W_skip.copy_(w.T.float())
            self.b_dec.copy_((my / sy - (mx / sx) @ w).float())
        else:
            self.b_dec.copy_((my / sy).float())

    @torch.no_grad()
    def init_from_transcoder(self, tc: Transcoder, st: "LinearStats") -> None:
        """Invert `export`: decoder rows of a saved set all have norm sy; any sx is exact for the encoder."""
        d = st.xtx.shape[0]
        sx = float((st.xx / st.n / d).sqrt().clamp_min(1e-6))
        sy = float(tc.W_dec.float().norm(dim=1).mean())
        self.sx.fill_(sx)
        self.sy.fill_(sy)
        self.W_enc.copy_(tc.W_enc.float() * sx)
        self.b_enc.copy_(tc.b_enc.float())
        self.b_pre.zero_()
        self.W_dec.copy_(tc.W_dec.float() / sy)
        self.normalize_decoder()
        self.b_dec.copy_(tc.b_dec.float() / sy)
        if self.W_skip is not None and tc.W_skip is not None:
            self.W_skip.copy_(tc.W_skip.float() * (sx / sy))
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
        tc = Transcoder(TranscoderConfig(d_model=d, d_transcoder=f, activation=act, k=self.k, skip=self.W_skip is not None))
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
            if self.W_skip is not None:
                tc.W_skip.copy_(self.W_skip * (sy / sx))
        return tc


@dataclass
class LinearStats:
    """Streaming first and second moments of one layer's (x, y), in float64."""

    d: int
    n: int = 0
    xtx: Tensor = None  # type: ignore[assignment]
    xty: Tensor = None  # type: ignore[assignment]
    sx: Tensor = None   # type: ignore[assignment]
    sy: Tensor = None   # type: ignore[assignment]
    xx: Tensor = None   # type: ignore[assignment]
    yy: Tensor = None   # type: ignore[assignment]

    def __post_init__(self) -> None:
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)
        self.xtx, self.xty, self.sx, self.sy, self.xx, self.yy = z(self.d, self.d), z(self.d, self.d), z(self.d), z(self.d), z(()), z(())

    def add(self, x: Tensor, y: Tensor) -> None:
        x, y = x.double().cpu(), y.double().cpu()
        self.n += x.shape[0]
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.pow(2).sum()
        self.yy += y.pow(2).sum()


class StackTrainer(nn.Module):
    def __init__(self, n_layers: int, d: int, cfg: TrainConfig) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.layers = nn.ModuleList(LayerTrainer(d, cfg.features, cfg.k, cfg.skip, gen, cfg.activation, cfg.jumprelu_bandwidth)
                                    for _ in range(n_layers))

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
def resample_dead(trainer: StackTrainer, opt: torch.optim.Optimizer, xs: Tensor, ys: Tensor, dead: Tensor,
                  gen: torch.Generator, world: int = 1, scale: float = 0.5) -> list[Tensor]:
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
            rows = torch.stack([enc, dec])                                   # [2, m, d]
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


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def activation_batches(model: ModelAdapter, cfg: TrainConfig, rank: int = 0, world: int = 1,
                       skip_chunks: int = 0, split: str = "train") -> Iterator[tuple[Tensor, Tensor, int]]:
    """Yield (x [L, N, d], y [L, N, d], chunks consumed) from one forward per batch; position 0 dropped.

    Position 0 (BOS in Gemma, or a chunk's first token) is an attention sink with outsized activations;
    circuit-tracer likewise excludes it.
    """
    chunks = chunk_stream(model.tokenizer, cfg.corpus, split, cfg.seq_len, cfg.seed)   # with the chunk-level shuffle
    sites_in = [f"blocks.{l}.hook_mlp_in" for l in range(model.n_layers)]
    sites_out = [f"blocks.{l}.hook_mlp_out" for l in range(model.n_layers)]
    consumed = 0
    batch: list[Tensor] = []
    for i, chunk in enumerate(chunks):
        if i < skip_chunks:
            consumed = i + 1
            continue
        consumed = i + 1
        if i % world != rank:
            continue
        batch.append(chunk)
        if len(batch) < cfg.batch_size:
            continue
        ids = torch.stack(batch).to(model.device)
        batch = []
        with torch.no_grad():
            cache = model.run_with_cache(ids, sites_in + sites_out, logits=False)
        xs = torch.stack([cache[s][:, 1:].reshape(-1, model.d_model) for s in sites_in])
        ys = torch.stack([cache[s][:, 1:].reshape(-1, model.d_model) for s in sites_out])
        if cfg.outlier_factor > 0:
            norms = ys.norm(dim=-1)                                            # [L, N]
            keep = ~massive(norms, cfg.outlier_factor, dim=1).any(0)             # a sink at any layer
            xs, ys = xs[:, keep], ys[:, keep]
        yield xs, ys, consumed


def _save_checkpoint(path: Path, trainer: StackTrainer, opt: torch.optim.Optimizer, state: dict, last_fired: Tensor,
                     last_drawn: Tensor) -> None:
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in trainer.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{i}.{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
    tensors["last_fired"] = last_fired.cpu()
    tensors["last_drawn"] = last_drawn.cpu()
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state))


def _load_checkpoint(path: Path, trainer: StackTrainer, opt: torch.optim.Optimizer) -> tuple[dict, Tensor, Tensor]:
    tensors = load_file(str(path / "state.safetensors"))
    state = json.loads((path / "state.json").read_text())
    # checkpoints from train-v1 lack the JumpReLU buffers (theta_ready, l0_coef); their defaults are right
    missing, unexpected = trainer.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("param.")}, strict=False)
    missing = [k for k in missing if not k.endswith((".theta_ready", ".l0_coef"))]
    if missing or unexpected:
        raise MechscopeError(f"checkpoint {path} does not match this training run (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                             "remove it or drop --resume")
    sd = opt.state_dict()
    for i in range(len(sd["param_groups"][0]["params"])):
        keys = [k for k in tensors if k.startswith(f"opt.{i}.")]
        if keys:
            sd["state"][i] = {k.split(".", 2)[2]: tensors[k] for k in keys}
    opt.load_state_dict(sd)
    # checkpoints from before --resample-dead have no last_drawn: nothing was re-drawn yet
    return state, tensors["last_fired"], tensors.get("last_drawn", torch.zeros_like(tensors["last_fired"]))


def _lineage(init_from: str) -> list[dict]:
    """The training records of the set a run continued from, oldest first: a set's config tells its whole history."""
    from mechscope.transcoders.storage import read_config

    prev = dict(read_config(init_from).get("training", {}))
    return [*prev.pop("previous_stages", []), prev]


def train_transcoders(cfg: TrainConfig, model: ModelAdapter | None = None, resume: bool = False,
                      progress: bool = True) -> dict:
    """Train a full transcoder set and save it to cfg.out; returns a summary with throughput and metrics.

    >>> summary = train_transcoders(TrainConfig(model="smollm2-135m", tokens=200_000, out="tc-smol"))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from mechscope.models import load_model

    if not cfg.out:
        raise MechscopeError("no output directory given (--out)")
    rank, world = _dist_info()
    device = resolve_device(cfg.device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    validate_corpus(cfg.corpus, "train")
    torch.manual_seed(cfg.seed)
    model = model or load_model(cfg.model, device=str(device))
    out = Path(cfg.out)
    ckpt = out.parent / f".{out.name}.checkpoint"
    L, d = model.n_layers, model.d_model
    trainer = StackTrainer(L, d, cfg).to(device)
    tokens_per_step = cfg.batch_size * (cfg.seq_len - 1) * world
    total_steps = max(1, cfg.tokens // tokens_per_step)
    lr = cfg.resolved_lr()
    opt = torch.optim.Adam(trainer.parameters(), lr=lr, betas=(0.9, 0.999))

    decay_start = int(total_steps * (1 - cfg.decay_frac))

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        decay = 1.0 if step < decay_start else max(0.0, (total_steps - step) / max(1, total_steps - decay_start))
        return lr * warm * decay

    step, skip_chunks, resampled = 0, 0, 0
    last_fired = torch.zeros(L, cfg.features, dtype=torch.long, device=device)   # tokens seen when last fired
    last_drawn = torch.zeros(L, cfg.features, dtype=torch.long, device=device)   # tokens seen when last re-drawn
    state: dict = {}
    if resume and (ckpt / "state.json").exists():
        state, last_fired, last_drawn = _load_checkpoint(ckpt, trainer, opt)
        last_fired, last_drawn = last_fired.to(device), last_drawn.to(device)
        step, skip_chunks, resampled = state["step"], state["chunks"], state.get("resampled_latents", 0)
        if state.get("config", {}).get("features") != cfg.features or state["config"].get("model") != cfg.model:
            raise MechscopeError(f"checkpoint {ckpt} was made with another model or --features; remove it or drop --resume")
        log.info("resuming at step %d", step)
    elif resume:
        log.warning("no checkpoint at %s; starting from scratch", ckpt)

    batches = activation_batches(model, cfg, rank, world, skip_chunks)
    if step == 0:
        # Initialise scales, biases and W_skip from the first batches' statistics (streamed, not stored).
        stats = [LinearStats(d) for _ in range(L)]
        for xs, ys, consumed in batches:
            for l in range(L):
                stats[l].add(xs[l], ys[l])
            if stats[0].n >= cfg.skip_init_tokens:
                break
        if stats[0].n == 0:
            raise MechscopeError(f"corpus {cfg.corpus} yields less than one batch of {cfg.batch_size}x{cfg.seq_len} tokens")
        if cfg.init_from:
            from mechscope.transcoders.storage import load_transcoders
            prev = load_transcoders(cfg.init_from, n_layers=L, d_model=d)
            if prev.d_transcoder != cfg.features:
                raise MechscopeError(f"--init-from set has {prev.d_transcoder} features, not {cfg.features}")
            for l, layer in enumerate(trainer.layers):
                layer.init_from_transcoder(prev[l], stats[l])
        else:
            for l, layer in enumerate(trainer.layers):
                layer.init_from_stats(stats[l])
        trainer.to(device)
        del stats

    ddp = trainer
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(trainer)   # broadcasts rank 0's initial weights

    t0 = time.time()
    tokens_seen = start_tokens = step * tokens_per_step
    ema: dict[str, Tensor] = {}
    kth_sum = torch.zeros(L, device=device)
    kth_n = 0
    bar = tqdm(total=total_steps * tokens_per_step, initial=tokens_seen, unit="tok", unit_scale=True,
               disable=not progress or rank != 0, desc="train-transcoders", smoothing=0.1)
    last_info: list[dict] = []
    try:
        for xs, ys, consumed in batches:
            if step >= total_steps:
                break
            dead = (tokens_seen - last_fired) > cfg.dead_after_tokens
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            try:
                loss, infos = ddp(xs, ys, dead, cfg.auxk_alpha)
            except FloatingPointError as e:
                raise MechscopeError(f"non-finite loss at step {step}, layer {e}; the last good checkpoint is {ckpt}") from None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for layer in trainer.layers:
                layer.remove_parallel_grad()
            opt.step()
            for layer in trainer.layers:
                layer.normalize_decoder()
            fired = torch.stack([i["fired"] for i in infos])
            if world > 1:
                fired_i = fired.long()
                dist.all_reduce(fired_i)
                fired = fired_i > 0
            tokens_seen += tokens_per_step
            last_fired[fired] = tokens_seen
            step += 1
            fvu = torch.stack([i["fvu"] for i in infos])
            l0 = torch.stack([i["l0"] for i in infos])
            for key, v in (("fvu", fvu), ("l0", l0)):
                ema[key] = v if key not in ema else 0.95 * ema[key] + 0.05 * v
            if step > total_steps * 0.8:
                kth_sum += torch.stack([i["kth"] for i in infos])
                kth_n += 1
            last_info = infos
            bar.update(tokens_per_step)
            bar.set_postfix(fvu=f"{float(ema['fvu'].mean()):.3f}", max_fvu=f"{float(ema['fvu'].max()):.3f}",
                            l0=f"{float(ema['l0'].mean()):.1f}", dead=f"{float(dead.float().mean()):.3f}")
            if cfg.resample_dead and step % cfg.checkpoint_every == 0 and step < decay_start:
                # before the checkpoint is written, so a resume continues from the re-drawn state
                # a re-drawn latent stays "dead" until it fires, so AuxK keeps training it (its pre-activation
                # starts positive but below the TopK cut, where only AuxK gives it a gradient); it is re-drawn
                # again only if it is still silent a full dead_after_tokens later
                dead_now = ((tokens_seen - last_fired) > cfg.dead_after_tokens) & ((tokens_seen - last_drawn) > cfg.dead_after_tokens)
                if bool(dead_now.any()):
                    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)   # no state to checkpoint
                    ids = resample_dead(trainer, opt, xs, ys, dead_now, gen, world, cfg.resample_scale)
                    for l, i in enumerate(ids):
                        last_drawn[l, i] = tokens_seen
                    counts = [len(i) for i in ids]
                    resampled += sum(counts)
                    log.info("step %d: re-drew %d dead latents (per layer %s)", step, sum(counts), counts)
            interrupted = bool(cfg.stop_after_steps) and step >= cfg.stop_after_steps
            if rank == 0 and step < total_steps and (interrupted or cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                state = {"step": step, "chunks": consumed, "config": asdict(cfg), "resampled_latents": resampled}
                _save_checkpoint(ckpt, trainer, opt, state, last_fired, last_drawn)
            if interrupted:
                bar.close()
                return {"interrupted_at_step": step, "checkpoint": str(ckpt)}
    finally:
        bar.close()
    elapsed = time.time() - t0
    if not last_info:
        raise MechscopeError("training ran no step: the corpus is too small for one batch")
    dead_frac = float(((tokens_seen - last_fired) > min(cfg.dead_after_tokens, tokens_seen)).float().mean())
    thresholds = (kth_sum / max(1, kth_n)).tolist() if kth_n else [0.0] * L
    summary = {
        "steps": step, "tokens_trained": tokens_seen, "elapsed_s": round(elapsed, 1),
        "tokens_per_s": round((tokens_seen - start_tokens) / max(elapsed, 1e-9), 1),
        "train_fvu_per_layer": [round(float(v), 4) for v in ema["fvu"]],
        "train_l0_per_layer": [round(float(v), 2) for v in ema["l0"]],
        "train_dead_fraction": round(dead_frac, 4), "resampled_latents": resampled,
        # re-drawn latents that fired at least once after their last draw
        "revived_latents": int(((last_drawn > 0) & (last_fired > last_drawn)).sum()), "world_size": world, "device": str(device),
    }
    if rank == 0:
        layers = [lt.export(t) for lt, t in zip(trainer.layers, thresholds)]
        meta = {"model": cfg.model, "family": model.family.name, "training": {**asdict(cfg), "lr_used": cfg.resolved_lr(),
                "code_version": CODE_VERSION, "corpus": cfg.corpus, **summary}}
        if cfg.init_from:
            meta["training"]["previous_stages"] = _lineage(cfg.init_from)
        save_transcoders(TranscoderSet(layers, meta), out, dtype=cfg.save_dtype)
        if ckpt.exists():
            import shutil
            shutil.rmtree(ckpt, ignore_errors=True)
    if world > 1:
        dist.barrier()
    return summary
