"""TrainConfig: everything that determines a training run (saved into the set's config.json), validated on
creation; `mechscope train-transcoders` takes its options from it.

>>> TrainConfig(tokens=200_000, features=1024, k=16).resolved_lr() > 0
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mechscope.corpus.sources import CORPUS_HELP
from mechscope.configs import param, require
from mechscope.models.registry import DEFAULT_MODEL, MODEL_HELP
from mechscope.transcoders.registry import SHIPPED_DTYPE
from mechscope.training.skip_forms import SKIP_FORMS, SkipForm

ACTIVATIONS = ("topk", "batchtopk", "jumprelu")  # == get_args(Activation)
Activation = Literal["topk", "batchtopk", "jumprelu"]
Device = Literal["auto", "cpu", "cuda"]
Kind = Literal["plt", "clt"]
SaveDtype = Literal["float32", "float16", "bfloat16", "int8"]


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved into the set's config.json); validated on creation.

    >>> TrainConfig(k=64, features=32)
    Traceback (most recent call last):
    mechscope.errors.MechscopeError: --k cannot exceed --features
    """

    model: str = param(DEFAULT_MODEL, help=MODEL_HELP)
    corpus: str = param("builtin", help=CORPUS_HELP)
    tokens: int = param(1_000_000, help="training tokens (all processes together)")
    kind: Kind = param(
        "plt",
        help="plt: one transcoder per layer; clt: a cross-layer transcoder (features read one layer and write "
        "to it and later layers; the loss sums every layer's reconstruction)",
    )
    clt_write_layers: int = param(
        0, help="clt: keep only the decoders into the next N layers, the read layer included (0: every later layer)"
    )
    features: int = param(2048, help="latents per layer")
    k: int = param(32, help="active features per token (TopK, BatchTopK) or target mean L0 (JumpReLU)")
    activation: Activation = param(
        "topk",
        help="sparsity: per-token TopK, batch-wide BatchTopK, or JumpReLU with "
        "learned thresholds (saved sets: topk, or jumprelu + thresholds)",
    )
    jumprelu_bandwidth: float = param(
        0.05, help="ε of the JumpReLU threshold's straight-through estimate (normalised units)"
    )
    seq_len: int = param(128, help="tokens per training sequence")
    batch_size: int = param(8, help="sequences per step and process")
    lr: float = param(0.0, help="learning rate (0: 2e-4 / sqrt(F / 2^14) × --lr-scale, sparsify's rule)")
    lr_scale: float = param(
        2.0, help="multiplier of the default learning rate (short CPU runs profit from a larger step)"
    )
    warmup_steps: int = param(50, help="linear learning-rate warm-up steps")
    decay_frac: float = param(0.2, help="linear decay to 0 over this last share of the steps")
    skip: bool = param(True, negate="--no-skip", help="train without the linear skip term")
    skip_init_tokens: int = param(65536, help="least-squares init of W_skip (and biases) from this many tokens")
    skip_init: Literal["ls", "zero"] = param(
        "ls",
        help="W_skip's start: 'ls', the least-squares best linear map of the MLP (the linear part of the MLP then "
        "never has to enter a feature), or 'zero' (learned alongside the features)",
    )
    skip_form: SkipForm = param(
        "full",
        help="the skip term's shape: 'full' d×d, 'lowrank' (rank --skip-rank: shared directions, no room for "
        "per-entity lookups) or 'diagonal' (one gain per dimension)",
    )
    skip_rank: int = param(32, help="rank of --skip-form lowrank")
    skip_anneal: float = param(
        0.0,
        help="scale the skip term from 1 down to 0 over this share of the steps (0: off); a set annealed to 0 is "
        "saved without a skip, so every lookup has to pass through features",
    )
    skip_decay: float = param(
        0.0,
        help="shrink the skip term by this share per step at the peak learning rate (0: off): only what the "
        "loss keeps pulling back survives; with --skip-init zero the skip is learned from zero under decay",
    )
    auxk_alpha: float = param(1 / 32, help="weight of the AuxK loss that revives dead latents")
    dead_after_tokens: int = param(
        250_000, help="a feature silent this many tokens counts as dead and gets the AuxK revival loss"
    )
    resample_dead: bool = param(
        False,
        help="also re-draw dead features at checkpoint steps (not in the final LR decay) "
        "from badly reconstructed tokens (topk/batchtopk)",
    )
    resample_scale: float = param(
        0.5,
        help="a re-drawn feature's pre-activation on the token it is drawn from, in units "
        "of that token's TopK cut (below 1: waits for AuxK; above 1: fires at once)",
    )
    density_cap: float = param(
        0.0,
        help="also re-draw, at the steps where dead latents are re-drawn, latents that fired on more than this share "
        "of the tokens since the last such step (0: off; e.g. 0.1): always-on latents crowd attribution graphs",
    )
    outlier_factor: float = param(
        0.0,
        help="drop tokens whose MLP output norm is over X times the batch median at some "
        "layer (0: keep all); fit-sinks then gives the set latents for those "
        "attention-sink outputs (SmolLM2's massive activations wreck the LS skip init)",
    )
    checkpoint_every: int = param(50, help="steps between checkpoints (0: none)")
    seed: int = param(0, help="random seed (initialisation and data order)")
    device: Device = param("auto", help="where training runs")
    out: str = param("", help="output directory (default: the user data dir for this model)")
    save_dtype: SaveDtype = param(
        SHIPPED_DTYPE,
        help="storage of the saved set (int8: per-row int8 matrices with fp16 "
        "scales, as the shipped sets; float32 for exactness tests)",
    )
    cache_gb: float = param(
        0.0,
        help="keep a block of this many GiB of activations in memory and train on it --cache-epochs times, shuffled, "
        "before the next block is read (0: off; --tokens counts every pass, the summary also the distinct tokens)",
    )
    cache_epochs: int = param(1, help="passes over each cached block (with --cache-gb; 1: each batch once)")
    time_limit_s: float = param(
        0.0,
        flag="--time-limit",
        metavar="SECONDS",
        help="stop after this many seconds of training (at the next block boundary with --cache-gb) and save the set "
        "so far into --out as a candidate that --continue-from continues on any machine (0: no limit)",
    )
    stop_after_steps: int = param(0, cli=False, help="simulate an interruption (tests): checkpoint and return early")
    init_from: str = param(
        "",
        help="continue from an existing per-layer set (fresh optimizer and schedule); with --kind clt the CLT starts "
        "as that set: its encoders and same-layer decoders, cross-layer decoders zero",
    )
    continue_from: str = param(
        "",
        help="continue a saved set made by an interrupted run (--time-limit; e.g. committed on another machine) at "
        "its recorded step and data position, with the same options; the optimizer restarts, re-warmed over "
        "--warmup-steps",
    )

    def __post_init__(self) -> None:
        for name in ("tokens", "features", "k", "seq_len", "batch_size", "dead_after_tokens"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be positive")
        require(self.resample_scale > 0, "--resample-scale must be positive")
        require(self.skip_init in ("ls", "zero"), f"--skip-init must be 'ls' or 'zero', not {self.skip_init!r}")
        require(self.k <= self.features, "--k cannot exceed --features")
        require(
            self.activation in ACTIVATIONS,
            f"unknown --activation {self.activation!r}: choose one of {', '.join(ACTIVATIONS)}",
        )
        require(
            self.lr >= 0 and self.checkpoint_every >= 0 and self.outlier_factor >= 0,
            "--lr, --checkpoint-every and --outlier-factor must not be negative",
        )
        require(
            not (self.resample_dead and self.activation == "jumprelu"),
            "--resample-dead supports --activation topk and batchtopk, not jumprelu (its thresholds are learned)",
        )
        require(self.kind in ("plt", "clt"), f"unknown --kind {self.kind!r}: choose plt or clt")
        self._check_skip()
        self._check_speed_and_density()
        require(self.clt_write_layers >= 0, "--clt-write-layers must not be negative")
        require(
            self.kind == "plt" or not self.resample_dead,
            "--kind clt does not support --resample-dead yet (AuxK still revives dead latents)",
        )
        require(
            not (self.resample_dead and self.checkpoint_every < 1),
            "--resample-dead re-draws dead latents at checkpoint steps: give --checkpoint-every > 0",
        )

    def _check_speed_and_density(self) -> None:
        require(0 <= self.density_cap < 1, "--density-cap is a share of tokens: give a value in [0, 1) (0: off)")
        if self.density_cap > 0:
            require(self.activation != "jumprelu", "--density-cap supports --activation topk and batchtopk")
            require(self.kind == "plt", "--density-cap supports --kind plt only")
            require(
                self.checkpoint_every >= 1, "--density-cap re-draws at checkpoint steps: give --checkpoint-every > 0"
            )
        require(self.cache_gb >= 0 and self.time_limit_s >= 0, "--cache-gb and --time-limit must not be negative")
        require(self.cache_epochs >= 1, "--cache-epochs must be positive")
        require(
            (self.cache_gb > 0) == (self.cache_epochs > 1),
            "--cache-gb and --cache-epochs go together: a cache is only worth keeping to train on it more than once",
        )
        require(not (self.init_from and self.continue_from), "give --init-from or --continue-from, not both")
        require(not self.continue_from or self.kind == "plt", "--continue-from supports --kind plt only")

    def _check_skip(self) -> None:
        require(
            self.skip_form in SKIP_FORMS,
            f"unknown --skip-form {self.skip_form!r}: choose one of {', '.join(SKIP_FORMS)}",
        )
        require(self.skip_rank >= 1, "--skip-rank must be positive")
        require(0 <= self.skip_anneal <= 1, "--skip-anneal is a share of the steps: give a value in [0, 1]")
        require(0 <= self.skip_decay < 1, "--skip-decay is a per-step shrink: give a value in [0, 1)")
        shaped = self.skip_form != "full" or self.skip_anneal > 0 or self.skip_decay > 0
        require(
            self.skip or not shaped,
            "--skip-form, --skip-anneal and --skip-decay shape the skip term: drop them or drop --no-skip",
        )
        require(
            self.kind == "plt" or not shaped,
            "--skip-form, --skip-anneal and --skip-decay support --kind plt only",
        )

    def resolved_lr(self) -> float:
        return self.lr or 2e-4 / math.sqrt(self.features / 2**14) * self.lr_scale
