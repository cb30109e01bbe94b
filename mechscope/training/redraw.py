"""Re-drawing latents at checkpoint steps: the dead ones (silent for a full `--dead-after-tokens` window) and, with
`--density-cap`, the dense ones (firing on more than that share of the tokens since the last check).

Both are re-drawn the same way (`LayerTrainer.draw_dead`: from the worst-reconstructed tokens of the batch), and a
re-drawn dense latent is then treated as a re-drawn dead one: it counts as dead until it fires, so AuxK trains it.
Always-on latents carry a near-constant output that the decoder bias could carry; they fill the top of attribution
graphs without saying anything about the prompt, which is why the cap exists.

>>> import torch
>>> t = DensityTracker(n_layers=1, n_latents=3, cap=0.5, device=torch.device("cpu"))
>>> t.add(torch.tensor([[10, 2, 0]]), tokens=10)
>>> t.dense().tolist()
[[True, False, False]]
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from mechscope.training.config import TrainConfig
from mechscope.training.trainer import StackTrainer, resample_dead

log = logging.getLogger(__name__)


class DensityTracker:
    """Per-latent firing counts [L, F] and the tokens they were counted over, since the last check."""

    def __init__(self, n_layers: int, n_latents: int, cap: float, device: torch.device) -> None:
        self.cap = cap
        self.counts = torch.zeros(n_layers, n_latents, dtype=torch.long, device=device)
        self.tokens = 0

    def add(self, counts: Tensor, tokens: int) -> None:
        """counts [L, F]: how many of this step's `tokens` tokens each latent fired on (all processes together)."""
        self.counts += counts.to(self.counts.device)
        self.tokens += tokens

    def dense(self) -> Tensor:
        """[L, F] bool: latents over the cap since the last reset (none before any token was counted)."""
        if self.cap <= 0 or self.tokens == 0:
            return torch.zeros_like(self.counts, dtype=torch.bool)
        return self.counts > self.cap * self.tokens

    def reset(self) -> None:
        self.counts.zero_()
        self.tokens = 0


def redraw_at_checkpoint(
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
    density: DensityTracker | None = None,
) -> tuple[int, int]:
    """Re-draw the dead latents (with --resample-dead) and the dense ones (with a DensityTracker); returns
    (re-drawn dead, re-drawn dense). `density` is reset after its check.

    Runs before the checkpoint is written, so a resume continues from the re-drawn state. A re-drawn latent stays
    "dead" until it fires, so AuxK keeps training it (its pre-activation starts positive but below the TopK cut,
    where only AuxK gives it a gradient); it is re-drawn again only if still silent a full dead_after_tokens later.
    """
    window = cfg.dead_after_tokens
    dead = torch.zeros_like(last_fired, dtype=torch.bool)
    if cfg.resample_dead:
        dead = ((tokens_seen - last_fired) > window) & ((tokens_seen - last_drawn) > window)
    dense = torch.zeros_like(dead)
    if density is not None:
        dense = density.dense() & ~dead
        density.reset()
    chosen = dead | dense
    if not bool(chosen.any()):
        return 0, 0
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # no state to checkpoint
    ids = resample_dead(trainer, opt, xs, ys, chosen, gen, world, cfg.resample_scale)
    n_dead = n_dense = 0
    for l, i in enumerate(ids):
        last_drawn[l, i] = tokens_seen
        was_dense = dense[l, i]
        # a re-drawn dense latent is treated as a re-drawn dead one: "dead" until it fires, so AuxK trains it
        last_fired[l, i[was_dense]] = tokens_seen - window - 1
        n_dense += int(was_dense.sum())
        n_dead += int((~was_dense).sum())
    if n_dense:
        log.info("step %d: re-drew %d dead and %d dense latents", step, n_dead, n_dense)
    else:
        log.info("step %d: re-drew %d dead latents (per layer %s)", step, n_dead, [len(i) for i in ids])
    return n_dead, n_dense
