"""The knobs of `build_index` (the CLI's index-features options), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from mechscope.configs import param, require
from mechscope.corpus.sources import CORPUS_HELP


@dataclass
class IndexConfig:
    """Knobs of `build_index` (the CLI's index-features options); validated on creation."""

    corpus: str = param("builtin", help="text to index: " + CORPUS_HELP)
    tokens: int = param(65536, help="tokens to run through the model")
    seq_len: int = param(64, help="tokens per sequence")
    batch_size: int = param(8, help="sequences per forward")
    n_top: int = param(8, help="stored top examples per feature")
    n_evidence: int = param(32, help="top examples used for input-token statistics (labels)")
    n_random: int = param(4, help="random active examples (mostly lower quantiles)")
    n_quantiles: int = param(4, help="activation quantile bands with examples of their own (weakest to strongest)")
    n_per_quantile: int = param(2, help="random examples stored per quantile band")
    n_fire_tokens: int = param(10, help="tokens it fires on most often, stored per feature (search by token)")
    window_before: int = param(10, help="context tokens kept before an example's peak")
    window_after: int = param(3, help="context tokens kept after an example's peak")
    n_logits: int = param(10, help="promoted / suppressed tokens stored per feature")
    seed: int = param(0, help="seed of the document shuffle")

    def __post_init__(self) -> None:
        require(self.tokens >= 64, "--tokens must be at least 64")
        require(
            min(self.seq_len - 1, self.batch_size, self.n_top, self.n_evidence, self.n_logits) >= 1,
            "--seq-len must exceed 1; --batch-size, --n-top, --n-evidence and --n-logits must be positive",
        )
        require(
            min(self.n_random, self.n_per_quantile, self.window_before, self.window_after) >= 0,
            "--n-random, --n-per-quantile and the window sizes must not be negative",
        )
        require(1 <= self.n_quantiles <= 10, "--n-quantiles must lie in 1..10")
        require(self.n_fire_tokens >= 1, "--n-fire-tokens must be positive")
