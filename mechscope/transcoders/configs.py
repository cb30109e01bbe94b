"""The knobs of transcoder evaluation and sink fitting, importable without torch (the CLI builds its options from
them before any heavy import). Training's knobs are in `train_config`."""

from __future__ import annotations

from dataclasses import dataclass

from mechscope.configs import param, require
from mechscope.corpus.sources import CORPUS_HELP


# A token is a sink at a layer when its MLP output norm exceeds this × the batch median. SmolLM2's sinks reach
# 65-916x at layers 11 and 28; ordinary tokens stay under ~45x (spaces after CJK text at layer 2).
SINK_FACTOR = 50.0


@dataclass
class EvalConfig:
    """Knobs of `evaluate_transcoders` (the CLI's eval-transcoders options); validated on creation."""

    corpus: str = param("builtin", help="held-out text: " + CORPUS_HELP)
    tokens: int = param(16384, help="held-out tokens for FVU / L0 / dead and the all-layers loss")
    ce_layer_tokens: int = param(
        2048, flag="--layer-tokens", help="tokens for the per-layer spliced loss (one extra forward per layer)"
    )
    dead_tokens: int = param(
        65536,
        help="a feature is dead if it never fires in this many held-out tokens (at least "
        "--tokens; the extra ones run only the model and the encoders)",
    )
    seq_len: int = param(128, help="tokens per held-out sequence")
    batch_size: int = param(2, help="sequences per forward")
    seed: int = param(0, help="seed of the document shuffle")

    def __post_init__(self) -> None:
        require(
            self.tokens >= 1 and self.seq_len >= 2 and self.batch_size >= 1,
            "--tokens, --seq-len and --batch-size must be positive",
        )
        require(
            self.ce_layer_tokens >= 0 and self.dead_tokens >= 0, "--layer-tokens and --dead-tokens must not be negative"
        )


@dataclass
class SinkConfig:
    """Knobs of `fit_sinks` (the CLI's fit-sinks options); validated on creation."""

    factor: float = param(SINK_FACTOR, help="a sink's MLP output norm exceeds X times the batch median")
    tokens: int = param(
        16384, help="training-split tokens to measure the sinks on (every position, position 0 included)"
    )
    min_sinks: int = param(4, help="fewer sinks than this at a layer: nothing to fit")
    normals: int = param(8192, help="ordinary tokens per layer to choose the least used latent and report FVU")
    corpus: str = param("builtin", help="text: " + CORPUS_HELP)
    seq_len: int = param(128, help="tokens per sequence")
    batch_size: int = param(8, help="sequences per forward")
    seed: int = param(0, help="seed of the document shuffle")

    def __post_init__(self) -> None:
        require(self.factor > 1 and self.tokens >= 1, "--factor must exceed 1 and --tokens be positive")
        require(
            self.min_sinks >= 1 and self.normals >= 1 and self.seq_len >= 2 and self.batch_size >= 1,
            "--min-sinks, --normals, --seq-len and --batch-size must be positive",
        )


@dataclass
class FoldConfig:
    """Knobs of `fold_dense` (the CLI's fold-dense options); validated on creation."""

    min_density: float = param(
        1.0,
        help="fold latents firing on at least this share of the measured tokens (1: every token, exact on the "
        "text; below 1 the tokens where a folded latent was silent gain its constant)",
    )
    corpus: str = param("shipped:gemma3-270m", help="held-out text to measure on (the dense census's): " + CORPUS_HELP)
    tokens: int = param(16384, help="held-out tokens to measure on (position 0 of each sequence left out)")
    seq_len: int = param(128, help="tokens per sequence")
    batch_size: int = param(8, help="sequences per forward")
    verify: bool = param(
        True, negate="--no-verify", help="skip the second reading of the text that reports the largest change"
    )

    def __post_init__(self) -> None:
        require(0 < self.min_density <= 1, "--min-density is a share of tokens: give a value in (0, 1]")
        require(
            self.tokens >= 1 and self.seq_len >= 2 and self.batch_size >= 1,
            "--tokens, --seq-len and --batch-size must be positive",
        )
