"""Options of trace-many and aggregate: documented, self-validating dataclasses (the CLI is generated from them).

The diff's options live with the diff, in `mechscope.compare.config`.

>>> ManyConfig(workers=0)
Traceback (most recent call last):
mechscope.errors.MechscopeError: --workers must be at least 1, got 0
"""

from __future__ import annotations

from dataclasses import dataclass

from mechscope.configs import param, require

#: AttributionConfig fields that change a graph: a store is traced with one setting of each
SHAPING = ("max_feature_nodes", "logit_prob", "max_logits", "targets", "logit_diff", "node_threshold", "edge_threshold")


@dataclass(kw_only=True)
class ManyConfig:
    """How a trace-many run is spread out. `threads` (the command's --threads) is the total, split between workers."""

    workers: int = param(
        1, help="worker processes, each loading the model once; the --threads total is split between them"
    )
    ray: str | None = param(
        None,
        metavar="ADDRESS",
        const="local",
        help="run the workers on a Ray cluster at ADDRESS (host:port, ray://host:port or auto); "
        "--ray alone starts a private one on 127.0.0.1 (needs: pip install 'mechscope[many]')",
    )
    retry_errors: bool = param(False, help="trace again the prompts that failed in an earlier run")
    adjacency: bool = param(False, help="also keep each full adjacency (graphs/<id>.adjacency.safetensors, MBs each)")
    limit: int = param(0, help="trace at most this many prompts in this run (0: all that are left)")
    # the CLI's global --quiet silences progress (mechscope.progress); this is the same for library callers
    quiet: bool = param(False, help="no progress lines", cli=False)

    def __post_init__(self) -> None:
        require(self.workers >= 1, f"--workers must be at least 1, got {self.workers}")
        require(self.limit >= 0, f"--limit must be ≥ 0 (0: all), got {self.limit}")
        require(self.ray is None or bool(self.ray.strip()), "--ray needs an address, or nothing for a local cluster")


@dataclass(kw_only=True)
class AggregateConfig:
    """Which graphs of a store are summed, and what counts as recurring."""

    group: str | None = param(
        None,
        help="only the graphs of this group: a name or glob of the input's group column, id:GLOB for prompt ids, "
        "answer:right / answer:wrong for the top logit against the input's expect column",
    )
    contrast: tuple[str, str] | None = param(None, metavar=("G1", "G2"), help="compare two groups (as --group)")
    positions: bool = param(False, help="count a feature per position (from the prompt's end), not per id alone")
    min_frequency: float = param(0.5, help="a feature or edge recurs when it is in at least this share of graphs")
    top: int = param(20, help="rows shown per section (text output)")
    max_keys: int = param(
        200_000, help="most distinct edges kept while streaming (rare ones are dropped first: memory stays flat)"
    )
    flowchart: str | None = param(None, metavar="FILE.svg", help="also write the consensus flowchart as SVG")
    jobs: int = param(0, help="processes reading graphs (0: up to 4, one per core; a small store uses one)")

    def __post_init__(self) -> None:
        require(0 < self.min_frequency <= 1, f"--min-frequency must lie in (0, 1], got {self.min_frequency}")
        require(self.top >= 1, f"--top must be at least 1, got {self.top}")
        require(self.jobs >= 0, f"--jobs must be ≥ 0 (0: automatic), got {self.jobs}")
        require(self.max_keys >= 1000, f"--max-keys must be at least 1000, got {self.max_keys}")
        require(self.group is None or self.contrast is None, "give --group or --contrast, not both")
        require(
            self.contrast is None or self.contrast[0] != self.contrast[1],
            f"--contrast needs two different groups, got {self.contrast and self.contrast[0]!r} twice",
        )
        require(
            not self.flowchart or self.flowchart.lower().endswith(".svg"),
            f"--flowchart must name an .svg file, got {self.flowchart!r}",
        )
