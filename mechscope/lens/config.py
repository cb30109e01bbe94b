"""The knobs of `evaluate_lens` (the CLI's eval-lens options), importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mechscope.configs import param
from mechscope.errors import MechscopeError
from mechscope.lens.suite import CATEGORIES


@dataclass
class LensConfig:
    """Knobs of `evaluate_lens`.

    subset: "full" runs every prompt; "quick" the first 3 prompts per category and the pairs among them;
        "swaps" only the swap pairs of the full suite (features-only swaps at each factor, no graphs).
    categories: restrict to these categories (empty: all).
    max_feature_nodes: feature rows per graph (modest, to keep the benchmark cheap; ties the numbers to it).
    factors: swap factors tried (features only); a pair succeeds if any makes the donor's answer top-1.
        Each must lie in (0, 2] — the issue's "factor ≤ 2".
    swap_span: positions swapped — "diff" (where the prompts differ, the README's example) or "rest"
        (there and every later position).
    validate_top: features ablated per graph by `validate_graph` (0 skips validation).
    top_n: influential features per graph whose labels and densities are judged.
    dense_top: a top feature denser than this (share of tokens) counts as dense.
    dense_index: a feature denser than this counts in the set's dense share.
    batch_size: attribution batch size.
    budget_s: wall-clock budget (0: none). Graphs and swap pairs run alternately, round-robin over the
        categories; items not reached in time are listed under `not_run` and left out of the means.

    >>> cfg = LensConfig(subset="quick")
    >>> LensConfig(subset="swaps").factors
    (1.0, 2.0)
    """

    subset: Literal["full", "quick", "swaps"] = param(
        "full",
        help="full: every prompt; quick: 3 prompts per category and the swap pairs among them; swaps: only the "
        "judged swap pairs at each factor (no graphs: minutes)",
    )
    categories: tuple[str, ...] = param((), flag="--category", metavar="C", help="only these categories (default: all)")
    max_feature_nodes: int = param(256, help="feature rows per graph (modest, to keep the benchmark cheap)")
    factors: tuple[float, ...] = param(
        (1.0, 2.0), flag="--factor", metavar="X", help="swap factors tried, each in (0, 2] (default: 1 2)"
    )
    swap_span: Literal["diff", "span", "rest"] = param(
        "diff",
        flag="--span",
        help="positions swapped: the differing span's last token (diff, kept so lens numbers stay comparable), "
        "the whole span (span), or from there to the end (rest)",
    )
    validate_top: int = param(20, flag="--validate", metavar="N", help="features ablated per graph (0: skip)")
    top_n: int = param(20, help="influential features per graph whose labels and densities are judged")
    dense_top: float = param(0.10, help="a top feature denser than this share of tokens counts as dense")
    dense_index: float = param(0.05, help="a feature denser than this counts in the set's dense share")
    batch_size: int = param(64, help="attribution rows per backward pass")
    budget_s: float = param(
        0.0,
        help="wall-clock budget in s (0: none): graphs and swaps alternate, round-robin over "
        "categories, until it is spent",
    )
    progress: bool = param(
        True, negate="--no-progress", help="show a progress bar over the prompts and pairs (stderr; see --quiet)"
    )

    def __post_init__(self) -> None:
        if self.subset not in ("full", "quick", "swaps"):
            raise MechscopeError(f"lens subset must be 'full', 'quick' or 'swaps', not {self.subset!r}")
        if self.swap_span not in ("diff", "span", "rest"):
            raise MechscopeError(f"lens swap span must be 'diff', 'span' or 'rest', not {self.swap_span!r}")
        self.categories = tuple(self.categories)
        bad = [c for c in self.categories if c not in CATEGORIES]
        if bad:
            raise MechscopeError(f"unknown lens category {bad[0]!r}; known: {', '.join(CATEGORIES)}")
        self.factors = tuple(float(f) for f in self.factors)
        if not self.factors or not all(math.isfinite(f) and 0 < f <= 2 for f in self.factors):
            raise MechscopeError("lens swap factors must lie in (0, 2]")
        if self.max_feature_nodes < 1 or self.batch_size < 1:
            raise MechscopeError("lens max_feature_nodes and batch_size must be ≥ 1")
        if self.validate_top < 0 or self.top_n < 1:
            raise MechscopeError("lens validate_top must be ≥ 0 and top_n ≥ 1")
        if self.budget_s < 0:
            raise MechscopeError("lens budget_s must be ≥ 0")
        if not (0 < self.dense_top < 1 and 0 < self.dense_index < 1):
            raise MechscopeError("lens density thresholds must lie in (0, 1)")
