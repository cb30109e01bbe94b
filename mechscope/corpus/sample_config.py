"""The knobs of `build_sampled` (the `mechscope sample-text` options), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mechscope.configs import param
from mechscope.errors import MechscopeError


@dataclass
class SampleConfig:
    """Knobs of `build_sampled`.

    split: which entities seed the prompts ('heldout': those with SHA-1(name) ≡ 0 mod 20, as every corpus).
    chars: stop once this many characters of text are kept.
    max_new_tokens / temperature / top_p: sampling (nucleus sampling at temperature T).
    batch_size: prompts sampled together.
    batching: 'pad' (default): consecutive prompts, left-padded and masked, so every batch is full; 'length':
        prompts grouped by token length within a window of 4 batches (no padding, but batches of 8.6 rows on average;
        how the shipped held-out file and train shards 1–5 were made, whose stats predate this field).
    seed: seeds the prompt list and the sampler (same seed, model and thread count → same text).
    budget_s: stop after this many seconds (0: no limit). The stream is deterministic, so a run cut short
        reproduces exactly with chars = the characters it kept (recorded in its stats).

    >>> cfg = SampleConfig(split="heldout", chars=300_000)
    """

    split: Literal["train", "heldout"] = param(
        "heldout", help="which entities seed the prompts: 'train' or 'heldout' (SHA-1(name) = 0 mod 20)"
    )
    chars: int = param(300_000, help="stop once this many characters of text are kept")
    max_new_tokens: int = param(96, help="tokens sampled per prompt (at least 8)")
    temperature: float = param(0.8, help="sampling temperature, in (0, 5]")
    top_p: float = param(0.95, help="nucleus sampling's probability mass, in (0, 1]")
    batch_size: int = param(32, help="prompts sampled together")
    seed: int = param(0, help="seeds the prompt list and the sampler")
    budget_s: float = param(0.0, help="stop sampling after this many seconds (0: no limit)")
    batching: Literal["pad", "length"] = param(
        "pad", help="'pad': full, left-padded batches; 'length': prompts grouped by length (no padding)"
    )

    def __post_init__(self) -> None:
        if self.budget_s < 0:
            raise MechscopeError("sampled corpus: budget_s must be ≥ 0")
        if self.batching not in ("pad", "length"):
            raise MechscopeError(f"sampled corpus batching must be 'pad' or 'length', not {self.batching!r}")
        if self.split not in ("train", "heldout"):
            raise MechscopeError(f"sampled corpus split must be 'train' or 'heldout', not {self.split!r}")
        if self.chars < 1 or self.max_new_tokens < 8 or self.batch_size < 1:
            raise MechscopeError("sampled corpus: chars ≥ 1, max_new_tokens ≥ 8 and batch_size ≥ 1 are required")
        if not (0 < self.temperature <= 5 and 0 < self.top_p <= 1):
            raise MechscopeError("sampled corpus: temperature must lie in (0, 5] and top_p in (0, 1]")
