"""Where a training run stands (`RunState`): what its checkpoints save and restore (`--resume`), and what a continued
candidate starts from (`--continue-from`).

>>> import torch
>>> st = RunState(0, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
>>> st.step, st.rewarm_from
(0, -1)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.training.checkpoints import load_checkpoint
from mechscope.training.config import TrainConfig
from mechscope.training.continuation import Candidate
from mechscope.training.trainer import StackTrainer

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where a run stands: what a checkpoint saves, and what a continued candidate starts from."""

    step: int
    last_fired: Tensor  # [L, F] tokens seen when each latent last fired
    last_drawn: Tensor  # [L, F] tokens seen when each latent was last re-drawn
    chunks: int = 0
    cache_skip: int = 0
    resampled: int = 0
    dense_resampled: int = 0
    distinct: int = 0
    rewarm_from: int = -1  # a continued run re-warms the learning rate from this step (-1: no re-warm)
    resumed: bool = False  # restored from a full checkpoint

    def checkpoint(self, cfg: TrainConfig) -> dict:
        return {
            "step": self.step,
            "chunks": self.chunks,
            "cache_skip": self.cache_skip,
            "config": asdict(cfg),
            "resampled_latents": self.resampled,
            "dense_resampled_latents": self.dense_resampled,
            "distinct_tokens": self.distinct,
            "rewarm_from": self.rewarm_from,
        }


def check_checkpoint(was: dict, cfg: TrainConfig, ckpt: Path, cache_skip: int) -> None:
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
    if cache_skip and (was.get("cache_gb", 0.0), was.get("cache_epochs", 1)) != (cfg.cache_gb, cfg.cache_epochs):
        raise MechscopeError(
            f"checkpoint {ckpt} stopped inside a cached block: resume with --cache-gb {was.get('cache_gb')} "
            f"--cache-epochs {was.get('cache_epochs')}"
        )


def restore(
    cfg: TrainConfig, resume: bool, ckpt: Path, trainer: StackTrainer, opt, cand: Candidate | None, device
) -> RunState:
    """The run's start: a checkpoint (--resume), a candidate's recorded position (--continue-from), or step 0."""
    L = len(trainer.layers)
    zeros = lambda: torch.zeros(L, cfg.features, dtype=torch.long, device=device)  # noqa: E731
    if resume and (ckpt / "state.json").exists():
        was = json.loads((ckpt / "state.json").read_text())  # checked before any weights load
        check_checkpoint(was.get("config", {}), cfg, ckpt, was.get("cache_skip", 0))
        state, last_fired, last_drawn = load_checkpoint(ckpt, trainer, opt)
        log.info("resuming at step %d", state["step"])
        return RunState(
            state["step"],
            last_fired.to(device),
            last_drawn.to(device),
            state["chunks"],
            state.get("cache_skip", 0),
            state.get("resampled_latents", 0),
            state.get("dense_resampled_latents", 0),
            state.get("distinct_tokens", 0),
            state.get("rewarm_from", -1),
            resumed=True,
        )
    if resume:
        log.warning("no checkpoint at %s; starting from scratch", ckpt)
    if cand is None:
        return RunState(0, zeros(), zeros())
    pos, rec = cand.position, cand.record
    tokens_seen = cand.step * cfg.batch_size * (cfg.seq_len - 1) * rec.get("world_size", 1)
    # the dead-latent clocks are not in a set: every latent starts live (last fired = now)
    st = RunState(cand.step, zeros() + tokens_seen, zeros(), pos["chunks"], pos.get("cache_skip", 0))
    st.resampled, st.dense_resampled = rec.get("resampled_latents", 0), rec.get("dense_resampled_latents", 0)
    st.distinct, st.rewarm_from = pos.get("distinct_tokens", 0), cand.step
    log.info("continuing %s at step %d", cand.path, cand.step)
    return st
