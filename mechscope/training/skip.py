"""The trainable skip term of a transcoder, in normalised units, and the limits that keep it from carrying lookups.

A full d×d skip learns the best linear map of the MLP. On a model whose MLPs look entities up, that map carries the
lookup itself (the residual's "Dallas" direction goes straight to "Texas"), so the features never have to. The
forms here take that capacity away:

* ``full``: the d×d matrix (what every shipped set has);
* ``lowrank``: W = U·V with rank r, the directions shared by most tokens (norm-like rescalings) and nothing
  entity-specific;
* ``diagonal``: one gain per residual dimension;

and two schedules, on any form: ``anneal`` multiplies the term by a factor that falls linearly from 1 to 0 over a
share of the steps (the saved set then has no skip at all), ``decay`` shrinks it every step so only what the loss
keeps pulling back survives.

>>> import torch
>>> s = SkipTerm(8, "lowrank", rank=2)
>>> s.load_matrix(torch.eye(8))
>>> s.matrix().shape, torch.linalg.matrix_rank(s.matrix()).item()
(torch.Size([8, 8]), 2)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mechscope.training.skip_forms import SKIP_FORMS, SkipForm  # noqa: F401 (re-exported)


class SkipTerm(nn.Module):
    """y_skip = scale · x @ W^T with W full, low-rank (U [d, r] · V [r, d]) or diagonal; `scale` is the anneal factor."""

    def __init__(self, d: int, form: SkipForm = "full", rank: int = 32) -> None:
        super().__init__()
        self.form = form
        if form == "full":
            self.W = nn.Parameter(torch.zeros(d, d))
        elif form == "lowrank":
            # U small and random, V zero: the product starts at 0 and both factors still get gradients
            self.U = nn.Parameter(torch.randn(d, rank) * 1e-3)
            self.V = nn.Parameter(torch.zeros(rank, d))
        else:
            self.g = nn.Parameter(torch.zeros(d))
        self.register_buffer("scale", torch.ones(()))

    def forward(self, xn: Tensor) -> Tensor:
        # xn: [n, d] -> [n, d]; the low-rank form never builds the d×d product
        if self.form == "full":
            out = xn @ self.W.T
        elif self.form == "lowrank":
            out = (xn @ self.V.T) @ self.U.T
        else:
            out = xn * self.g
        return out * self.scale

    def matrix(self) -> Tensor:
        """The effective d×d map, anneal factor included: what the saved set stores as W_skip."""
        if self.form == "full":
            w = self.W
        elif self.form == "lowrank":
            w = self.U @ self.V
        else:
            w = torch.diag(self.g)
        return w * self.scale

    @torch.no_grad()
    def load_matrix(self, w: Tensor) -> None:
        """Start from a d×d map (least squares, or a saved set's W_skip): its best approximation in this form
        (truncated SVD for low rank, the diagonal for diagonal)."""
        self.scale.fill_(1.0)
        if self.form == "full":
            self.W.copy_(w)
        elif self.form == "lowrank":
            u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
            r = self.U.shape[1]
            root = s[:r].sqrt()
            self.U.copy_((u[:, :r] * root).float())
            self.V.copy_((root[:, None] * vh[:r]).float())
        else:
            self.g.copy_(w.diagonal())

    @torch.no_grad()
    def decay(self, factor: float) -> None:
        """Shrink the parameters by `factor` (< 1); the low-rank form shrinks both factors by its square root."""
        for p in self.parameters():
            p.mul_(factor**0.5 if self.form == "lowrank" else factor)


def anneal_factor(step: int, total_steps: int, anneal_frac: float) -> float:
    """1 → 0 linearly over the first `anneal_frac` of the steps, then 0; always 1 without annealing.

    >>> [anneal_factor(s, 10, 0.5) for s in (0, 2, 5, 9)]
    [1.0, 0.6, 0.0, 0.0]
    """
    if anneal_frac <= 0:
        return 1.0
    return max(0.0, 1.0 - step / max(1.0, anneal_frac * total_steps))
