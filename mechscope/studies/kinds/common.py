"""Small helpers the experiment kinds share (formatting, labels, entropy)."""

from __future__ import annotations

import torch

from mechscope.studies.registry import Context


def fmt_top(top) -> str:
    return ", ".join(f"{t!r} {p:.3f}" for t, p in top)


def label(ctx: Context, l: int, f: int) -> str:
    return ctx.labels.get(f"{l}/{f}", "")


def entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-30).log()).sum())
