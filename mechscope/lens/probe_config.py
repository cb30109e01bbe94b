"""The knobs of `run_probes` (the CLI's probe-lens options), importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mechscope.configs import param, require
from mechscope.lens.suite import CATEGORIES

PROBES = ("swaps", "fvu", "locate", "dense")  # in the order they run and print
DENSE_THRESHOLDS = (0.5, 0.1)  # the census counts latents firing on more than these shares of tokens
MAX_DENSE_TOKENS = 10_000_000  # a probe is minutes, not hours


@dataclass
class ProbeConfig:
    """Knobs of `run_probes`: quick checks of a transcoder set, usable between training stages.

    probes: which to run (`PROBES`); given as a tuple, or as comma-separated names ("swaps,fvu").
    subset / categories / factors / swap_span: select the suite's pairs and swap them as `eval-lens` does.
    locate_span: positions patched by the locate probe (the entity's span by default).
    dense_corpus / dense_tokens / dense_seq_len / dense_batch: the text the dense census reads (held-out split).

    >>> ProbeConfig(probes=("swaps,dense",)).probes
    ('swaps', 'dense')
    >>> ProbeConfig(probes=("vibes",))
    Traceback (most recent call last):
    mechscope.errors.MechscopeError: unknown probe 'vibes'; known: swaps, fvu, locate, dense
    """

    probes: tuple[str, ...] = param(
        PROBES, metavar="P", help="probes to run: swaps, fvu, locate, dense (comma-separated or spaced; default: all)"
    )
    subset: Literal["full", "quick"] = param(
        "full", help="suite pairs: full (every pair) or quick (3 prompts per category and the pairs among them)"
    )
    categories: tuple[str, ...] = param((), flag="--category", metavar="C", help="only these categories (default: all)")
    factors: tuple[float, ...] = param(
        (1.0, 2.0), flag="--factor", metavar="X", help="swap factors tried, each in (0, 2] (default: 1 2)"
    )
    swap_span: Literal["diff", "span", "rest"] = param(
        "diff",
        flag="--span",
        help="positions swapped, as eval-lens's --span (diff keeps the numbers comparable with eval-lens)",
    )
    locate_span: Literal["diff", "span", "rest"] = param(
        "span",
        help="positions the locate probe patches: the entity's whole span (span), its last token (diff), or the "
        "span and every later position (rest)",
    )
    locate_batch: int = param(32, help="patched runs per forward in the locate probe")
    dense_corpus: str = param(
        "shipped:gemma3-270m",
        help="held-out text the dense census reads (any --corpus name; plain text serves any model)",
    )
    dense_tokens: int = param(16384, help="tokens the dense census reads (position 0 of each sequence left out)")
    dense_seq_len: int = param(128, help="tokens per sequence in the dense census")
    dense_batch: int = param(8, help="sequences per forward in the dense census")
    progress: bool = param(
        True, negate="--no-progress", help="show a progress bar over the pairs and the census (stderr; see --quiet)"
    )

    def __post_init__(self) -> None:
        names = [n.strip() for item in self.probes for n in str(item).split(",") if n.strip()]
        bad = [n for n in names if n not in PROBES]
        require(not bad, f"unknown probe {bad[0]!r}; known: {', '.join(PROBES)}" if bad else "")
        require(bool(names), f"no probe given; known: {', '.join(PROBES)}")
        self.probes = tuple(p for p in PROBES if p in names)  # canonical order, each once
        self.categories = tuple(self.categories)
        bad = [c for c in self.categories if c not in CATEGORIES]
        require(not bad, f"unknown lens category {bad[0]!r}; known: {', '.join(CATEGORIES)}" if bad else "")
        self.factors = tuple(float(f) for f in self.factors)
        require(
            bool(self.factors) and all(math.isfinite(f) and 0 < f <= 2 for f in self.factors),
            "--factor: swap factors must lie in (0, 2]",
        )
        require(self.subset in ("full", "quick"), f"--subset must be 'full' or 'quick', not {self.subset!r}")
        for name, v in (("--span", self.swap_span), ("--locate-span", self.locate_span)):
            require(v in ("diff", "span", "rest"), f"{name} must be 'diff', 'span' or 'rest', not {v!r}")
        require(self.locate_batch >= 1, f"--locate-batch must be ≥ 1, got {self.locate_batch}")
        require(
            1 <= self.dense_tokens <= MAX_DENSE_TOKENS,
            f"--dense-tokens must lie in 1..{MAX_DENSE_TOKENS:,}, got {self.dense_tokens}",
        )
        require(self.dense_seq_len >= 2, f"--dense-seq-len must be ≥ 2, got {self.dense_seq_len}")
        require(self.dense_batch >= 1, f"--dense-batch must be ≥ 1, got {self.dense_batch}")
        require(bool(self.dense_corpus.strip()), "--dense-corpus must name a corpus")
