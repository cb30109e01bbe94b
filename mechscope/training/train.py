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

import logging
import os
import time
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
from mechscope.training.checkpoints import CODE_VERSION, run_summary, save_checkpoint, save_set
from mechscope.training.cache import Position, block_batches, check_cache_fits, passthrough, replay
from mechscope.training.continuation import Candidate, lineage_record, load_candidate, position_record, read_candidate
from mechscope.training.redraw import DensityTracker, redraw_at_checkpoint
from mechscope.training.state import RunState, restore

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


def _initialise(trainer: StackTrainer, batches: Iterator, cfg: TrainConfig, L: int, d: int) -> int:
    """Scales, biases and W_skip from the first batches' statistics (streamed, not stored), or a previous set;
    returns the corpus chunks read for them."""
    stats = [LinearStats(d) for _ in range(L)]
    consumed = 0
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
    return consumed


def _make_trainer(L: int, d: int, cfg: TrainConfig) -> StackTrainer:
    if cfg.kind == "clt":
        from mechscope.training.clt_trainer import CLTStackTrainer

        return CLTStackTrainer(L, d, cfg)  # type: ignore[return-value]
    return StackTrainer(L, d, cfg)


def _data(model, cfg: TrainConfig, trainer: StackTrainer, st: RunState, cand: Candidate | None, world: int, rank: int):
    """The batches to train on (fresh from the model, or replayed from the cache), after the trainer's start:
    least-squares statistics at step 0, or the candidate's weights when continuing one."""
    L, d = model.n_layers, model.d_model
    raw = activation_batches(model, cfg, rank, world, st.chunks)
    if st.step == 0:
        st.chunks = _initialise(trainer, raw, cfg, L, d)
    elif cand is not None and not st.resumed:
        load_candidate(trainer, cand, cfg, L, d)
    if cfg.cache_gb <= 0:
        return passthrough(raw)
    # a short-document batch may run up to one sequence over batch_size × (seq_len − 1) tokens
    most = cfg.batch_size * (cfg.seq_len - 1) + cfg.seq_len
    blocks = block_batches(cfg.cache_gb, L, most, d, 4)  # activations are float32
    log.info("activation cache: blocks of %d batches, %d passes each", blocks, cfg.cache_epochs)
    return replay(raw, blocks, most, cfg.cache_epochs, cfg.seed, st.chunks, st.cache_skip)


def _over_time(cfg: TrainConfig, t_start: float, pos: Position, world: int, device: torch.device) -> bool:
    """--time-limit reached, at a block boundary (every step without a cache); all processes agree."""
    if cfg.time_limit_s <= 0 or pos.in_block:
        return False
    over = torch.tensor([int(time.time() - t_start > cfg.time_limit_s)], device=device)  # NCCL reduces GPU tensors
    if world > 1:
        dist.all_reduce(over, op=dist.ReduceOp.MAX)
    return bool(over)


def _count_density(tracker: DensityTracker, infos: list[dict], n_tokens: int, world: int) -> None:
    counts = torch.stack([i["n_fired"] for i in infos])
    tokens = torch.tensor([n_tokens], device=counts.device)
    if world > 1:
        dist.all_reduce(counts)
        dist.all_reduce(tokens)
    tracker.add(counts, int(tokens))


def train_transcoders(
    cfg: TrainConfig, model: ModelAdapter | None = None, resume: bool = False, progress: bool = True
) -> dict:
    """Train a full transcoder set and save it to cfg.out; returns a summary with throughput and metrics.

    >>> summary = train_transcoders(TrainConfig(model="smollm2-135m", tokens=200_000, out="tc-smol"))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from mechscope.models import load_model

    t_start = time.time()
    if not cfg.out:
        raise MechscopeError("no output directory given (--out)")
    rank, world, device = _init_distributed(cfg)
    validate_corpus(cfg.corpus, "train")
    check_cache_fits(cfg.cache_gb, device)
    tokens_per_step = cfg.batch_size * (cfg.seq_len - 1) * world
    total_steps = max(1, cfg.tokens // tokens_per_step)
    cand = read_candidate(cfg, total_steps, world) if cfg.continue_from else None  # before the model loads
    torch.manual_seed(cfg.seed)
    model = model or load_model(cfg.model, device=str(device))
    out = Path(cfg.out)
    ckpt = out.parent / f".{out.name}.checkpoint"
    L, d = model.n_layers, model.d_model
    trainer = _make_trainer(L, d, cfg).to(device)
    lr = cfg.resolved_lr()
    opt = torch.optim.Adam(trainer.parameters(), lr=lr, betas=(0.9, 0.999))

    decay_start = int(total_steps * (1 - cfg.decay_frac))
    lr_at = _lr_schedule(cfg, lr, total_steps, decay_start)

    st = restore(cfg, resume, ckpt, trainer, opt, cand, device)
    batches = _data(model, cfg, trainer, st, cand, world, rank)
    trainer.to(device)
    tracker = DensityTracker(L, cfg.features, cfg.density_cap, device) if cfg.density_cap > 0 else None

    ddp = trainer
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(trainer)  # broadcasts rank 0's initial weights

    t0 = time.time()
    step = st.step
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
    stopped = False
    try:
        for xs, ys, pos in batches:
            if step >= total_steps:
                break
            dead = (tokens_seen - st.last_fired) > cfg.dead_after_tokens
            rewarm = 1.0 if st.rewarm_from < 0 else min(1.0, (step - st.rewarm_from + 1) / max(1, cfg.warmup_steps))
            for g in opt.param_groups:
                g["lr"] = lr_at(step) * rewarm
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
            st.last_fired[fired] = tokens_seen
            if tracker is not None:
                _count_density(tracker, infos, xs.shape[1], world)
            st.distinct += xs.shape[1] * world if pos.fresh else 0
            step += 1
            st.step, st.chunks, st.cache_skip = step, pos.chunks, pos.in_block
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
            redraw = cfg.resample_dead or tracker is not None
            if redraw and step % cfg.checkpoint_every == 0 and step < decay_start:
                n_dead, n_dense = redraw_at_checkpoint(
                    trainer, opt, xs, ys, cfg, step, tokens_seen, st.last_fired, st.last_drawn, world, tracker
                )
                st.resampled += n_dead + n_dense
                st.dense_resampled += n_dense
            interrupted = bool(cfg.stop_after_steps) and step >= cfg.stop_after_steps
            stopped = step < total_steps and _over_time(cfg, t_start, pos, world, device)
            every = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0
            if rank == 0 and step < total_steps and (interrupted or every or stopped and cfg.checkpoint_every):
                save_checkpoint(ckpt, trainer, opt, st.checkpoint(cfg), st.last_fired, st.last_drawn)
            if interrupted:
                bar.close()
                return {"interrupted_at_step": step, "checkpoint": str(ckpt)}
            if stopped:
                log.info("--time-limit reached at step %d of %d: saving a candidate to continue", step, total_steps)
                break
    finally:
        bar.close()
    elapsed = time.time() - t0
    if not last_info:
        raise MechscopeError("training ran no step: the corpus is too small for one batch")
    summary = run_summary(
        cfg, step, tokens_seen, start_tokens, elapsed, ema, st.last_fired, st.last_drawn, st.resampled, world, device
    )
    summary["dense_resampled_latents"] = st.dense_resampled
    summary["distinct_tokens"] = st.distinct
    summary["position"] = position_record(trainer, step, total_steps, st.chunks, st.cache_skip, st.distinct)
    if rank == 0:
        thresholds = (kth_sum / max(1, kth_n)).tolist() if kth_n else [0.0] * L
        extra = lineage_record(cand) if cand is not None else None
        save_set(cfg, model, trainer, thresholds, summary, out, ckpt, extra, keep_checkpoint=stopped)
    if world > 1:
        dist.barrier()
    return summary
