"""The knobs of `attribute` and the named presets front ends use, importable without torch (the CLI builds its
options from them before any heavy import)."""

from __future__ import annotations

from dataclasses import dataclass

from mechscope.configs import param, require
from mechscope.guards import default_max_memory_gb


@dataclass
class AttributionConfig:
    """Knobs of `attribute`. Defaults follow circuit-tracer (0.95 / 10 logits, 0.8 / 0.98 pruning).

    Front ends that truly differ use a named preset (`PRESETS`): "interactive" traces fewer feature nodes
    so the web page and case studies answer in seconds.

    >>> AttributionConfig(node_threshold=1.5)
    Traceback (most recent call last):
    mechscope.errors.MechscopeError: --node-threshold must lie in (0, 1], got 1.5
    """

    max_feature_nodes: int = param(2048, help="most feature nodes that get attribution rows (most influential first)")
    logit_prob: float = param(0.95, help="explain the top logits up to this cumulative probability")
    max_logits: int = param(10, help="explain at most this many logits")
    targets: list[str] = param(
        default_factory=list,
        flag="--target",
        metavar="TOKEN",
        help="logit token to explain instead of the top logits (repeatable)",
    )
    logit_diff: tuple[str, str] | None = param(None, metavar=("TOKEN_A", "TOKEN_B"), help="explain logit(A) − logit(B)")
    batch_size: int = param(64, help="attribution rows per backward pass")
    node_threshold: float = param(0.8, help="pruning: keep the nodes that carry this share of the influence")
    edge_threshold: float = param(0.98, help="pruning: keep the edges that carry this share of the influence")
    max_memory_gb: float = param(
        default_factory=default_max_memory_gb,
        help="refuse prompts whose graph would need more memory than this (GB; default 8 or $MECHSCOPE_MAX_MEMORY_GB)",
    )
    prefix_cache_gb: float = param(1.0, help="keep all prefix forwards alive up to this size (GB)")
    heads: bool = param(
        False,
        help="split every cross-position link of the pruned graph into the attention heads of its last hop "
        "(links[].heads = [[layer, head, weight], ...], summing to the link; docs/attention.md)",
    )

    def __post_init__(self) -> None:
        require(self.max_feature_nodes >= 0, "--max-feature-nodes must be ≥ 0")
        require(self.batch_size >= 1, "--batch-size must be at least 1")
        require(
            0 < self.logit_prob <= 1 and self.max_logits >= 1, "--logit-prob must lie in (0, 1] and --max-logits be ≥ 1"
        )
        for name in ("node_threshold", "edge_threshold"):
            v = getattr(self, name)
            require(0 < v <= 1, f"--{name.replace('_', '-')} must lie in (0, 1], got {v}")
        require(self.max_memory_gb > 0 and self.prefix_cache_gb >= 0, "--max-memory-gb must be positive")
        if self.logit_diff is not None:
            require(
                len(self.logit_diff) == 2 and self.logit_diff[0] != self.logit_diff[1],
                f"--logit-diff needs two different tokens, got {self.logit_diff[0]!r} twice",
            )


#: Named presets where front ends really differ: the CLI's `trace` uses "full"; the web page and the case
#: studies use "interactive" (fewer rows, answers in seconds on a CPU).
PRESETS: dict[str, AttributionConfig] = {
    "full": AttributionConfig(),
    "interactive": AttributionConfig(max_feature_nodes=512),
}
