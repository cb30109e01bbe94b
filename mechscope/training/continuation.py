"""Continuing a saved candidate on another machine: what a set records so that training can go on from it, and
the checks that keep the continuation the same run.

A run stopped by `--time-limit` saves its set so far into `--out` (config.json + layer files, small enough to
commit) with a `position` in its training record: the step, the data position (corpus chunks read, batches of
the cached block trained), the distinct tokens, and each layer's normalisation scales. `--continue-from DIR` with
the same options starts there: the same schedule (learning rate, skip anneal, re-draws), the next unread text,
weights from the saved layers. What is not in a set starts afresh: the optimizer's moments (so the learning rate
is re-warmed over `--warmup-steps`) and the dead-latent clocks (every latent counts as live for one window).
`--resume` (a full-precision checkpoint on the same machine) keeps both.

>>> allowed_to_differ()[:3]
['cache_epochs', 'cache_gb', 'checkpoint_every']
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch

from mechscope.errors import MechscopeError
from mechscope.training.config import TrainConfig
from mechscope.training.skip import anneal_factor
from mechscope.training.trainer import StackTrainer

#: options that may change between a candidate and its continuation: where and how fast it runs, not what it trains
#: (a cache change needs the candidate to have stopped at a block's end, which --time-limit does)
FREE = frozenset(
    {
        "out",
        "device",
        "checkpoint_every",
        "save_dtype",
        "stop_after_steps",
        "time_limit_s",
        "continue_from",
        "init_from",
        "tokens",
        "cache_gb",
        "cache_epochs",
    }
)


def allowed_to_differ() -> list[str]:
    return sorted(FREE)


@dataclass
class Candidate:
    """A saved set to continue: its directory, its training record and the position recorded in it."""

    path: Path
    record: dict
    position: dict

    @property
    def step(self) -> int:
        return int(self.position["step"])


def _flag(name: str) -> str:
    return "--" + ("time-limit" if name == "time_limit_s" else name.replace("_", "-"))


def read_candidate(cfg: TrainConfig, total_steps: int, world: int) -> Candidate:
    """The candidate `cfg.continue_from`, checked against `cfg` before the model loads: one line for a directory
    that is not a set, a set without a position, other options, or a finished schedule."""
    from mechscope.transcoders.storage import read_config

    path = Path(cfg.continue_from)
    meta = read_config(path)
    rec = meta.get("training") or {}
    pos = rec.get("position")
    if not isinstance(pos, dict) or "step" not in pos:
        raise MechscopeError(
            f"{path} records no training position (saved before --continue-from existed, or not by "
            "train-transcoders): start a new stage from it with --init-from"
        )
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    wanted = asdict(cfg)
    diff = [k for k in wanted if k not in FREE and rec.get(k, defaults.get(k)) != wanted[k]]
    if diff:
        shown = "; ".join(f"{_flag(k)} {rec.get(k, defaults.get(k))!r}, not {wanted[k]!r}" for k in diff[:4])
        raise MechscopeError(f"{path} was trained with other options ({shown}): continue it with the same options")
    if rec.get("world_size", 1) != world:
        raise MechscopeError(f"{path} was trained by {rec.get('world_size', 1)} processes: continue it with as many")
    if pos.get("cache_skip", 0) and (rec.get("cache_gb"), rec.get("cache_epochs")) != (cfg.cache_gb, cfg.cache_epochs):
        raise MechscopeError(
            f"{path} stopped inside a cached block: continue it with --cache-gb {rec.get('cache_gb')} "
            f"--cache-epochs {rec.get('cache_epochs')}"
        )
    if int(pos["step"]) >= total_steps:
        raise MechscopeError(
            f"{path} finished its schedule ({pos['step']} steps): give a larger --tokens to go on, or start a new "
            "stage with --init-from"
        )
    return Candidate(path, rec, pos)


@torch.no_grad()
def load_candidate(trainer: StackTrainer, cand: Candidate, cfg: TrainConfig, n_layers: int, d_model: int) -> None:
    """The candidate's weights into `trainer`, at its recorded scales and skip anneal; a candidate whose layers
    do not fit the model is refused in one line (by the loader)."""
    from mechscope.transcoders.storage import load_transcoders

    ts = load_transcoders(cand.path, n_layers=n_layers, d_model=d_model)
    if ts.d_transcoder != cfg.features:
        raise MechscopeError(f"{cand.path} has {ts.d_transcoder} features, not {cfg.features}")
    scales = cand.position.get("scales") or []
    s_anneal = anneal_factor(cand.step, _steps_of(cand), cfg.skip_anneal)
    for l, layer in enumerate(trainer.layers):
        layer.init_from_transcoder(ts[l], sx=float(scales[l][0]) if l < len(scales) else 1.0)
        term = layer.skip_term
        if term is not None and cfg.skip_anneal > 0:
            # the saved W_skip holds the anneal factor already: keep the factor apart, as training does
            if s_anneal > 0 and ts[l].W_skip is not None:
                term.load_matrix(term.matrix() / s_anneal)
            term.scale.fill_(s_anneal)
        l0 = cand.position.get("l0_coef")
        if l0 and l < len(l0):
            layer.l0_coef.fill_(float(l0[l]))


def _steps_of(cand: Candidate) -> int:
    return int(cand.position.get("total_steps", cand.step + 1))


def position_record(
    trainer: StackTrainer, step: int, total_steps: int, chunks: int, cache_skip: int, distinct: int
) -> dict:
    """What a saved set records so that `--continue-from` can go on from it (see the module)."""
    rec = {
        "step": step,
        "total_steps": total_steps,
        "complete": step >= total_steps,
        "chunks": chunks,
        "cache_skip": cache_skip,
        "distinct_tokens": distinct,
        "scales": [[round(float(lt.sx), 8), round(float(lt.sy), 8)] for lt in trainer.layers],
    }
    if trainer.layers[0].log_theta is not None:
        rec["l0_coef"] = [float(lt.l0_coef) for lt in trainer.layers]
    return rec


def lineage_record(cand: Candidate) -> dict:
    """The continued run's history: the stages before the candidate's run and the candidate's own segments."""
    keep = ("steps", "tokens_trained", "elapsed_s", "tokens_per_s", "device", "world_size")
    seg = {k: cand.record[k] for k in keep if k in cand.record}
    return {
        "previous_stages": cand.record.get("previous_stages", []),
        "continued_from": [*cand.record.get("continued_from", []), {"path": str(cand.path), **seg}],
    }
