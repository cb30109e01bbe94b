"""The knobs of `attribute` and the named presets front ends use, importable without torch (the CLI builds its
options from them before any heavy import)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from mechscope.configs import param, require
from mechscope.guards import default_max_memory_gb


@dataclass(frozen=True)
class Bounds:
    """The range a numeric knob must lie in: [low, high], or (low, high] when `low_open`.

    >>> Bounds(0, 1, low_open=True).describe(), Bounds(0, 1, low_open=True).holds(0)
    ('(0, 1]', False)
    """

    low: float
    high: float | None = None  # None: no upper bound
    low_open: bool = False

    def holds(self, v: float) -> bool:
        return (v > self.low if self.low_open else v >= self.low) and (self.high is None or v <= self.high)

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {'∞)' if self.high is None else f'{self.high:g}]'}"


#: The ranges `__post_init__` enforces; front ends (the page's trace form, the server's request checks) read them
#: from here instead of repeating them.
BOUNDS: dict[str, Bounds] = {
    "max_feature_nodes": Bounds(0),
    "logit_prob": Bounds(0, 1, low_open=True),
    "max_logits": Bounds(1),
    "batch_size": Bounds(1),
    "node_threshold": Bounds(0, 1, low_open=True),
    "edge_threshold": Bounds(0, 1, low_open=True),
}


@dataclass
class AttributionConfig:
    """Knobs of `attribute`. Defaults follow circuit-tracer (0.95 / 10 logits, 0.8 / 0.98 pruning).

    Front ends that truly differ use a named preset (`PRESETS`): "interactive" traces fewer feature nodes
    so the case studies answer in seconds. `BOUNDS` holds the numeric knobs' ranges, `field_help` their help.

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
        for name, b in BOUNDS.items():
            v = getattr(self, name)
            require(b.holds(v), f"--{name.replace('_', '-')} must lie in {b.describe()}, got {v}")
        require(self.max_memory_gb > 0 and self.prefix_cache_gb >= 0, "--max-memory-gb must be positive")
        if self.logit_diff is not None:
            require(
                len(self.logit_diff) == 2 and self.logit_diff[0] != self.logit_diff[1],
                f"--logit-diff needs two different tokens, got {self.logit_diff[0]!r} twice",
            )


#: Named presets where front ends really differ: the CLI's `trace` and the web page's trace form use "full";
#: the case studies use "interactive" (fewer rows, answers in seconds on a CPU).
PRESETS: dict[str, AttributionConfig] = {
    "full": AttributionConfig(),
    "interactive": AttributionConfig(max_feature_nodes=512),
}


def field_help(name: str) -> str:
    """The help text a knob of AttributionConfig declares (what `trace --help` prints for it).

    >>> field_help("node_threshold")
    'pruning: keep the nodes that carry this share of the influence'
    """
    return next(f.metadata["help"] for f in fields(AttributionConfig) if f.name == name)
