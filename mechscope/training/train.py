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
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mechscope.errors import MechscopeError
from mechscope.models.loading import resolve_device
from mechscope.corpus.sources import chunk_stream, pad_chunks, validate_corpus
from mechscope.transcoders.sinks import massive

from mechscope.training.config import ACTIVATIONS, Activation, Device, SaveDtype, TrainConfig
from mechscope.training.trainer import LayerTrainer, LinearStats, StackTrainer, resample_dead
from mechscope.training.checkpoints import CODE_VERSION, load_checkpoint, run_summary, save_checkpoint, save_set

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

log = logging.getLogger(__name__)
# re-exported: the config and the trainable modules used to live here
__all__ = [
    "ACTIVATIONS",
    "Activation",
    "CODE_VERSION",
    "Device",
    "LayerTrainer",
    "LinearStats",
    "SaveDtype",
    "StackTrainer",
    "TrainConfig",
    "activation_batches",
    "resample_dead",
    "train_transcoders",
]


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def activation_batches(
    model: ModelAdapter, cfg: TrainConfig, rank: int = 0, world: int = 1, skip_chunks: int = 0, split: str = "train"
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """Yield (x [L, N, d], y [L, N, d], chunks consumed) from one forward per batch; position 0 dropped.

    Position 0 (BOS in Gemma, or a chunk's first token) is an attention sink with outsized activations;
    circuit-tracer likewise excludes it.

    Short-document corpora (`facts`, `prompts:MODEL`) give chunks of at most seq_len tokens that start at a
    document's start: a batch then takes chunks until it holds batch_size × (seq_len − 1) tokens, runs them
    right-padded, and drops the padding's positions (causal attention: padding changes no real token).
    """
    # with the chunk-level shuffle; doc_starts=None: short-document chunks where the corpus asks for them
    chunks = chunk_stream(model.tokenizer, cfg.corpus, split, cfg.seq_len, cfg.seed, doc_starts=None)
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
        if sum(len(c) - 1 for c in batch) < cfg.batch_size * (cfg.seq_len - 1):  # == batch_size full chunks
            continue
        ids, real = pad_chunks(batch)
        ids = ids.to(model.device)
        batch = []
        with torch.no_grad():
            cache = model.run_with_cache(ids, sites_in + sites_out, logits=False)
        xs = torch.stack([cache[s][:, 1:].reshape(-1, model.d_model) for s in sites_in])
        ys = torch.stack([cache[s][:, 1:].reshape(-1, model.d_model) for s in sites_out])
        if real is not None:  # short documents: keep real tokens only
            keep_real = real[:, 1:].reshape(-1).to(xs.device)
            xs, ys = xs[:, keep_real], ys[:, keep_real]
        if cfg.outlier_factor > 0:
            norms = ys.norm(dim=-1)  # [L, N]
            keep = ~massive(norms, cfg.outlier_factor, dim=1).any(0)  # a sink at any layer
            xs, ys = xs[:, keep], ys[:, keep]
        yield xs, ys, consumed


def _init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group under torchrun."""
    rank, world = _dist_info()
    device = resolve_device(cfg.device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return rank, world, device


def _lr_schedule(cfg: TrainConfig, lr: float, total_steps: int, decay_start: int):
    """Linear warm-up over cfg.warmup_steps, constant, then linear decay to 0 from decay_start."""

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        decay = 1.0 if step < decay_start else max(0.0, (total_steps - step) / max(1, total_steps - decay_start))
        return lr * warm * decay

    return lr_at


def _initialise(trainer: StackTrainer, batches: Iterator, cfg: TrainConfig, L: int, d: int) -> None:
    """Scales, biases and W_skip from the first batches' statistics (streamed, not stored), or a previous set."""
    stats = [LinearStats(d) for _ in range(L)]
    for xs, ys, _consumed in batches:
        for l in range(L):
            stats[l].add(xs[l], ys[l])
        if stats[0].n >= cfg.skip_init_tokens:
            break
    if stats[0].n == 0:
        raise MechscopeError(f"corpus {cfg.corpus} yields less than one batch of {cfg.batch_size}x{cfg.seq_len} tokens")
    if cfg.init_from:
        from mechscope.transcoders.storage import load_transcoders

        prev = load_transcoders(cfg.init_from, n_layers=L, d_model=d)
        if prev.kind == "clt":
            raise MechscopeError(
                "--init-from takes a per-layer set (a CLT can start from one); not a cross-layer one yet"
            )
        if prev.d_transcoder != cfg.features:
            raise MechscopeError(f"--init-from set has {prev.d_transcoder} features, not {cfg.features}")
        for l, layer in enumerate(trainer.layers):
            layer.init_from_transcoder(prev[l], stats[l])
    else:
        for l, layer in enumerate(trainer.layers):
            layer.init_from_stats(stats[l], skip_ls=cfg.skip_init == "ls")


def _resample(
    trainer: StackTrainer,
    opt: torch.optim.Optimizer,
    xs: Tensor,
    ys: Tensor,
    cfg: TrainConfig,
    step: int,
    tokens_seen: int,
    last_fired: Tensor,
    last_drawn: Tensor,
    world: int,
) -> int:
    """Re-draw the latents dead for a full window (and not re-drawn within one); returns how many were re-drawn.

    Runs before the checkpoint is written, so a resume continues from the re-drawn state. A re-drawn latent stays
    "dead" until it fires, so AuxK keeps training it (its pre-activation starts positive but below the TopK cut,
    where only AuxK gives it a gradient); it is re-drawn again only if still silent a full dead_after_tokens later.
    """
    dead_now = ((tokens_seen - last_fired) > cfg.dead_after_tokens) & (
        (tokens_seen - last_drawn) > cfg.dead_after_tokens
    )
    if not bool(dead_now.any()):
        return 0
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # no state to checkpoint
    ids = resample_dead(trainer, opt, xs, ys, dead_now, gen, world, cfg.resample_scale)
    for l, i in enumerate(ids):
        last_drawn[l, i] = tokens_seen
    counts = [len(i) for i in ids]
    log.info("step %d: re-drew %d dead latents (per layer %s)", step, sum(counts), counts)
    return sum(counts)


def _make_trainer(L: int, d: int, cfg: TrainConfig) -> StackTrainer:
    if cfg.kind == "clt":
        from mechscope.training.clt_trainer import CLTStackTrainer

        return CLTStackTrainer(L, d, cfg)  # type: ignore[return-value]
    return StackTrainer(L, d, cfg)


def train_transcoders(
    cfg: TrainConfig, model: ModelAdapter | None = None, resume: bool = False, progress: bool = True
) -> dict:
    """Train a full transcoder set and save it to cfg.out; returns a summary with throughput and metrics.

    >>> summary = train_transcoders(TrainConfig(model="smollm2-135m", tokens=200_000, out="tc-smol"))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from mechscope.models import load_model

    if not cfg.out:
        raise MechscopeError("no output directory given (--out)")
    rank, world, device = _init_distributed(cfg)
    validate_corpus(cfg.corpus, "train")
    torch.manual_seed(cfg.seed)
    model = model or load_model(cfg.model, device=str(device))
    out = Path(cfg.out)
    ckpt = out.parent / f".{out.name}.checkpoint"
    L, d = model.n_layers, model.d_model
    trainer = _make_trainer(L, d, cfg).to(device)
    tokens_per_step = cfg.batch_size * (cfg.seq_len - 1) * world
    total_steps = max(1, cfg.tokens // tokens_per_step)
    lr = cfg.resolved_lr()
    opt = torch.optim.Adam(trainer.parameters(), lr=lr, betas=(0.9, 0.999))

    decay_start = int(total_steps * (1 - cfg.decay_frac))
    lr_at = _lr_schedule(cfg, lr, total_steps, decay_start)

    step, skip_chunks, resampled = 0, 0, 0
    last_fired = torch.zeros(L, cfg.features, dtype=torch.long, device=device)  # tokens seen when last fired
    last_drawn = torch.zeros(L, cfg.features, dtype=torch.long, device=device)  # tokens seen when last re-drawn
    state: dict = {}
    if resume and (ckpt / "state.json").exists():
        was = json.loads((ckpt / "state.json").read_text()).get("config", {})  # checked before any weights load
        if (
            was.get("features") != cfg.features
            or was.get("model") != cfg.model
            or was.get("kind", "plt") != cfg.kind
            or was.get("clt_write_layers", 0) != cfg.clt_write_layers
            or was.get("skip", True) != cfg.skip
            or was.get("skip_form", "full") != cfg.skip_form
            or (cfg.skip_form == "lowrank" and was.get("skip_rank", 32) != cfg.skip_rank)
        ):
            raise MechscopeError(
                f"checkpoint {ckpt} was made with another model, --features, --kind, --clt-write-layers or skip "
                "term; remove it or drop --resume"
            )
        state, last_fired, last_drawn = load_checkpoint(ckpt, trainer, opt)
        last_fired, last_drawn = last_fired.to(device), last_drawn.to(device)
        step, skip_chunks, resampled = state["step"], state["chunks"], state.get("resampled_latents", 0)
        log.info("resuming at step %d", step)
    elif resume:
        log.warning("no checkpoint at %s; starting from scratch", ckpt)

    batches = activation_batches(model, cfg, rank, world, skip_chunks)
    if step == 0:
        _initialise(trainer, batches, cfg, L, d)
        trainer.to(device)

    ddp = trainer
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(trainer)  # broadcasts rank 0's initial weights

    t0 = time.time()
    tokens_seen = start_tokens = step * tokens_per_step
    ema: dict[str, Tensor] = {}
    kth_sum = torch.zeros(L, device=device)
    kth_n = 0
    bar = tqdm(
        total=total_steps * tokens_per_step,
        initial=tokens_seen,
        unit="tok",
        unit_scale=True,
        disable=not progress or rank != 0,
        desc="train-transcoders",
        smoothing=0.1,
    )
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
                raise MechscopeError(
                    f"non-finite loss at step {step}, layer {e}; the last good checkpoint is {ckpt}"
                ) from None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            trainer.remove_parallel_grad()
            opt.step()
            trainer.normalize_decoder()
            fired = torch.stack([i["fired"] for i in infos])
            if world > 1:
                fired_i = fired.long()
                dist.all_reduce(fired_i)
                fired = fired_i > 0
            tokens_seen += tokens_per_step
            last_fired[fired] = tokens_seen
            step += 1
            trainer.update_skip(step, total_steps, cfg, lr_at(step - 1) / lr)
            fvu = torch.stack([i["fvu"] for i in infos])
            l0 = torch.stack([i["l0"] for i in infos])
            for key, v in (("fvu", fvu), ("l0", l0)):
                ema[key] = v if key not in ema else 0.95 * ema[key] + 0.05 * v
            if step > total_steps * 0.8:
                kth_sum += torch.stack([i["kth"] for i in infos])
                kth_n += 1
            last_info = infos
            bar.update(tokens_per_step)
            bar.set_postfix(
                fvu=f"{float(ema['fvu'].mean()):.3f}",
                max_fvu=f"{float(ema['fvu'].max()):.3f}",
                l0=f"{float(ema['l0'].mean()):.1f}",
                dead=f"{float(dead.float().mean()):.3f}",
            )
            if cfg.resample_dead and step % cfg.checkpoint_every == 0 and step < decay_start:
                resampled += _resample(trainer, opt, xs, ys, cfg, step, tokens_seen, last_fired, last_drawn, world)
            interrupted = bool(cfg.stop_after_steps) and step >= cfg.stop_after_steps
            if (
                rank == 0
                and step < total_steps
                and (interrupted or cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
            ):
                state = {"step": step, "chunks": consumed, "config": asdict(cfg), "resampled_latents": resampled}
                save_checkpoint(ckpt, trainer, opt, state, last_fired, last_drawn)
            if interrupted:
                bar.close()
                return {"interrupted_at_step": step, "checkpoint": str(ckpt)}
    finally:
        bar.close()
    elapsed = time.time() - t0
    if not last_info:
        raise MechscopeError("training ran no step: the corpus is too small for one batch")
    summary = run_summary(
        cfg, step, tokens_seen, start_tokens, elapsed, ema, last_fired, last_drawn, resampled, world, device
    )
    if rank == 0:
        thresholds = (kth_sum / max(1, kth_n)).tolist() if kth_n else [0.0] * L
        save_set(cfg, model, trainer, thresholds, summary, out, ckpt)
    if world > 1:
        dist.barrier()
    return summary
