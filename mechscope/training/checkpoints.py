"""What a training run writes and reads: checkpoints (safetensors + JSON, resumable), the run's summary and
the saved set with its training record (including the records of the set it continued from)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_dir
from mechscope.transcoders.module import TranscoderSet
from mechscope.transcoders.storage import save_transcoders
from mechscope.training.config import TrainConfig
from mechscope.training.trainer import StackTrainer

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

CODE_VERSION = "train-v2"


def save_checkpoint(
    path: Path, trainer: StackTrainer, opt: torch.optim.Optimizer, state: dict, last_fired: Tensor, last_drawn: Tensor
) -> None:
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


def load_checkpoint(path: Path, trainer: StackTrainer, opt: torch.optim.Optimizer) -> tuple[dict, Tensor, Tensor]:
    tensors = load_file(str(path / "state.safetensors"))
    state = json.loads((path / "state.json").read_text())
    # checkpoints from train-v1 lack the JumpReLU buffers (theta_ready, l0_coef); their defaults are right
    missing, unexpected = trainer.load_state_dict(
        {k[6:]: v for k, v in tensors.items() if k.startswith("param.")}, strict=False
    )
    missing = [k for k in missing if not k.endswith((".theta_ready", ".l0_coef"))]
    if missing or unexpected:
        raise MechscopeError(
            f"checkpoint {path} does not match this training run (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "remove it or drop --resume"
        )
    sd = opt.state_dict()
    for i in range(len(sd["param_groups"][0]["params"])):
        keys = [k for k in tensors if k.startswith(f"opt.{i}.")]
        if keys:
            sd["state"][i] = {k.split(".", 2)[2]: tensors[k] for k in keys}
    opt.load_state_dict(sd)
    # checkpoints from before --resample-dead have no last_drawn: nothing was re-drawn yet
    return state, tensors["last_fired"], tensors.get("last_drawn", torch.zeros_like(tensors["last_fired"]))


def lineage(init_from: str) -> list[dict]:
    """The training records of the set a run continued from, oldest first: a set's config tells its whole history."""
    from mechscope.transcoders.storage import read_config

    prev = dict(read_config(init_from).get("training", {}))
    return [*prev.pop("previous_stages", []), prev]


def run_summary(
    cfg: TrainConfig,
    step: int,
    tokens_seen: int,
    start_tokens: int,
    elapsed: float,
    ema: dict,
    last_fired: Tensor,
    last_drawn: Tensor,
    resampled: int,
    world: int,
    device: torch.device,
) -> dict:
    dead_frac = float(((tokens_seen - last_fired) > min(cfg.dead_after_tokens, tokens_seen)).float().mean())
    return {
        "steps": step,
        "tokens_trained": tokens_seen,
        "elapsed_s": round(elapsed, 1),
        "tokens_per_s": round((tokens_seen - start_tokens) / max(elapsed, 1e-9), 1),
        "train_fvu_per_layer": [round(float(v), 4) for v in ema["fvu"]],
        "train_l0_per_layer": [round(float(v), 2) for v in ema["l0"]],
        "train_dead_fraction": round(dead_frac, 4),
        "resampled_latents": resampled,
        # re-drawn latents that fired at least once after their last draw
        "revived_latents": int(((last_drawn > 0) & (last_fired > last_drawn)).sum()),
        "world_size": world,
        "device": str(device),
    }


def save_set(
    cfg: TrainConfig,
    model: ModelAdapter,
    trainer: StackTrainer,
    thresholds: list[float],
    summary: dict,
    out: Path,
    ckpt: Path,
    extra: dict | None = None,
    keep_checkpoint: bool = False,
) -> None:
    """Export every layer, save the set with its training record (plus `extra`, e.g. a continued run's lineage),
    and drop the checkpoint unless `keep_checkpoint` (a candidate saved mid-run: `--resume` still needs it)."""
    meta = {
        "model": cfg.model,
        "family": model.family.name,
        "training": {
            **asdict(cfg),
            "lr_used": cfg.resolved_lr(),
            "code_version": CODE_VERSION,
            "corpus": cfg.corpus,
            **summary,
        },
    }
    if cfg.init_from:
        meta["training"]["previous_stages"] = lineage(cfg.init_from)
    meta["training"].update(extra or {})
    if cfg.kind == "clt":
        save_transcoders(trainer.export(thresholds, meta), out, dtype=cfg.save_dtype)  # type: ignore[operator]
    else:
        layers = [lt.export(t) for lt, t in zip(trainer.layers, thresholds)]
        save_transcoders(TranscoderSet(layers, meta), out, dtype=cfg.save_dtype)
    if ckpt.exists() and not keep_checkpoint:
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)
