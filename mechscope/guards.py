"""Resource guards: estimate memory from the token count and settings *before* any forward pass, and refuse work
that would not fit, with one line that names the knob (`--max-memory-gb`, `AttributionConfig.max_memory_gb`).

Estimates are deliberately simple upper-bound-ish formulas over the tensors each path keeps alive (recorded
attention patterns grow as n², dense feature activations as n·L·F); they only need to be right to a factor of
~2 to stop an 18 GB run that would otherwise end in the kernel's OOM killer.

>>> check_gb(0.5, 8.0, "tracing 12 tokens")
>>> check_gb(20.0, 8.0, "tracing 5001 tokens")   # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
MechscopeError: tracing 5001 tokens needs ~20.0 GB, over the 8 GB limit ...
"""

from __future__ import annotations

import math
import os

from mechscope.errors import MechscopeError

DEFAULT_MAX_MEMORY_GB = 8.0
ENV = "MECHSCOPE_MAX_MEMORY_GB"
_GB = 2**30


def default_max_memory_gb() -> float:
    """The process-wide limit: $MECHSCOPE_MAX_MEMORY_GB (the server's setting) or 8 GB."""
    raw = os.environ.get(ENV)
    if not raw:
        return DEFAULT_MAX_MEMORY_GB
    try:
        v = float(raw)
    except ValueError:
        raise MechscopeError(f"{ENV}={raw!r} is not a number of GB") from None
    return validate_limit(v)


def validate_limit(gb: float) -> float:
    if not math.isfinite(gb) or gb <= 0:
        raise MechscopeError(f"--max-memory-gb must be a positive number, not {gb}")
    return float(gb)


def check_gb(need: float, limit: float, what: str) -> None:
    """Refuse `what` if it needs more than `limit` GB."""
    if need > limit:
        raise MechscopeError(
            f"{what} needs ~{need:.1f} GB, over the {limit:g} GB limit; "
            "shorten the text, lower the settings, or raise --max-memory-gb"
        )


def available_gb() -> float | None:
    """Memory the kernel could give this process now (MemAvailable: free memory plus what it can reclaim), or None
    where /proc/meminfo is not readable (then nothing is refused for want of memory)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / _GB
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits_memory(parts: dict[str, float], what: str, available: float | None = None) -> float:
    """Refuse `what` when the sum of `parts` (GB by name: model weights, transcoders, tracing) exceeds the memory
    left; the message carries the estimate and its parts. Returns the total.

    >>> check_fits_memory({"model weights": 1.0, "tracing": 0.5}, "tracing 9 tokens", available=4.0)
    1.5
    """
    total = sum(parts.values())
    left = available_gb() if available is None else available
    if left is not None and total > left:
        detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        raise MechscopeError(
            f"{what} needs ~{total:.1f} GB ({detail}) but only {left:.1f} GB of memory is available; "
            "close other programs, or use a smaller model, set or prompt"
        )
    return total


def _dims(model) -> tuple[int, int, int, int]:
    """(layers, d_model, heads, vocab) of a ModelAdapter (or anything with the same attributes)."""
    cfg = getattr(model, "cfg", None)
    heads = int(getattr(cfg, "num_attention_heads", 0) or 8)
    vocab = int(getattr(model, "vocab_size", 0) or getattr(cfg, "vocab_size", 0) or 32000)
    return int(model.n_layers), int(model.d_model), heads, vocab


def check_context(model, n_pos: int, generate: int = 0) -> None:
    """The prompt plus the tokens to generate must fit the model's context."""
    ctx = int(getattr(model, "max_context", 0) or 0)
    if ctx and n_pos + generate > ctx:
        extra = f" + {generate} generated" if generate else ""
        raise MechscopeError(
            f"the prompt ({n_pos} tokens){extra} exceeds the context of {getattr(model, 'name', 'the model')} "
            f"({ctx} tokens)"
        )


def forward_gb(model, n_pos: int, batch: int = 1, record_patterns: bool = True, logits: str = "last") -> float:
    """A no-grad forward with recorded attention patterns and per-layer activations kept (trace/probe/intervene)."""
    L, d, H, V = _dims(model)
    acts = batch * n_pos * d * 4 * L * 8  # residual, MLP in/out, hidden MLP (≈4d) per layer
    attn = batch * H * n_pos * n_pos * 4 * (L if record_patterns else 2)  # scores live per layer; kept when recorded
    out = batch * (n_pos if logits == "all" else 1) * V * 4
    return (acts + attn + out) / _GB


def check_forward(model, ts, n_pos: int, limit: float | None = None, generate: int = 0, what: str = "") -> None:
    """Probe / intervene / generate / study runs: no gradients, a few forwards of up to n_pos + generate tokens
    (intervene keeps the clean and the edited run's patterns alive at once, hence ×2), plus dense feature
    activations [L, n, F] of the transcoders that are encoded on the way."""
    check_context(model, n_pos, generate)
    n = n_pos + generate
    L, _, _, _ = _dims(model)
    F = int(getattr(ts, "d_transcoder", 0) or 0) if ts is not None else 0
    need = forward_gb(model, n, logits="all") * 2 + L * n * F * 4 * 3 / _GB + 0.25
    check_gb(need, default_max_memory_gb() if limit is None else limit, what or f"running {n} tokens")
