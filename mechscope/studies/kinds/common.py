"""Small helpers the experiment kinds share (formatting, labels, entropy, ranks) and the keys of the kinds that
run beside controls (`ControlledOptions`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.configs import require
from mechscope.studies.registry import Context, ExperimentOptions

DEFAULT_MARGIN = 0.05  # how much a swap must beat its controls by, in probability of the donor's answer


def fmt_top(top) -> str:
    return ", ".join(f"{t!r} {p:.3f}" for t, p in top)


def label(ctx: Context, l: int, f: int) -> str:
    return ctx.labels.get(f"{l}/{f}", "")


def entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-30).log()).sum())


def rank(p: torch.Tensor, tid: int) -> int:
    """1-based rank of token `tid` in the distribution `p`."""
    return int((p > p[tid]).sum()) + 1


@dataclass(kw_only=True)
class ControlledOptions(ExperimentOptions):
    """Keys of the experiments that run beside two controls of the same size (swap, steer): random features in
    place of the chosen ones, and the recipient as its own donor (`mechscope.interventions.controls`).

    margin: how much the effect must beat the stronger control by, in the experiment's measure (probability of
    the expected token; nats for entropy). Default: 0.05 for swaps; for steering, the experiment's own
    min_change (the bar the effect itself must clear). control_seed: the random control's draw.
    """

    margin: float | None = None
    control_seed: int = 0

    def __post_init__(self) -> None:
        require(
            self.margin is None or (isinstance(self.margin, (int, float)) and 0 <= self.margin < float("inf")),
            f"{self.kind}: margin must be a finite number ≥ 0, not {self.margin!r}",
        )
