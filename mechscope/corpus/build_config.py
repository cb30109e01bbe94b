"""What `mechscope build-corpus` builds: a recipe (sources and their token shares), a model, a size and a seed.

>>> CorpusBuildConfig(recipe="index", tokens=2_000_000).shares["facts"]
0.35
>>> CorpusBuildConfig("novel")
Traceback (most recent call last):
mechscope.errors.MechscopeError: unknown recipe 'novel': choose one of index
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mechscope.configs import param, require
from mechscope.models.registry import DEFAULT_MODEL
from mechscope.paths import cache_dir

BUILD_VERSION = "built-v1"
# recipe → source → share of the tokens. A source that runs out (the sampled text, usually) leaves its share to
# the others in their proportions.
RECIPES: dict[str, dict[str, float]] = {
    "index": {"sampled": 0.15, "facts": 0.35, "glosses": 0.10, "docs": 0.15, "man": 0.15, "fortunes": 0.10},
}
MIN_TOKENS, MAX_TOKENS = 10_000, 50_000_000


@dataclass
class CorpusBuildConfig:
    """Everything that determines a built corpus (recorded in its stats and in a partial build's manifest)."""

    recipe: str = param(positional=True, help="what to build: 'index' (text for index-features)")
    model: str = param(
        DEFAULT_MODEL,
        help="the model whose tokenizer counts the tokens and whose sampled text goes in (gemma3-270m, "
        "smollm2-135m, or a local Hugging Face model directory)",
    )
    tokens: int = param(2_000_000, help=f"tokens to collect ({MIN_TOKENS:,} to {MAX_TOKENS:,})")
    seed: int = param(0, help="seeds the order of every source and the wording of the facts")
    out: str = param("", help="output .jsonl.xz (default: the cache, where --corpus index:MODEL reads it)")
    resume: bool = param(False, help="continue an interrupted build (or report a finished one)")
    force: bool = param(False, help="start over, replacing an existing output or partial build")
    part_tokens: int = param(100_000, cli=False, help="tokens per part written (the unit a resumed build keeps)")
    stop_after_parts: int = param(0, cli=False, help="simulate an interruption (tests): stop after N parts")

    def __post_init__(self) -> None:
        require(self.recipe in RECIPES, f"unknown recipe {self.recipe!r}: choose one of {', '.join(sorted(RECIPES))}")
        require(
            MIN_TOKENS <= self.tokens <= MAX_TOKENS,
            f"--tokens must lie between {MIN_TOKENS:,} and {MAX_TOKENS:,}, got {self.tokens:,}",
        )
        require(self.seed >= 0, "--seed must be ≥ 0")
        require(not (self.resume and self.force), "give --resume or --force, not both")
        require(self.part_tokens >= 1 and self.stop_after_parts >= 0, "part_tokens ≥ 1 and stop_after_parts ≥ 0")
        from mechscope.models.registry import resolve_model_name

        self.model = resolve_model_name(self.model)
        if self.out:
            require(
                self.out.endswith(".jsonl.xz"),
                f"--out must name a .jsonl.xz file (xz-compressed JSON lines), not {self.out}",
            )

    @property
    def shares(self) -> dict[str, float]:
        return RECIPES[self.recipe]

    def out_path(self) -> Path:
        """The corpus file: --out, else `$MECHSCOPE_CACHE/corpus/built-v1/RECIPE-MODEL.jsonl.xz`."""
        if self.out:
            return Path(self.out).expanduser()
        return default_path(self.recipe, self.model)

    def corpus_name(self) -> str:
        """The `--corpus` name that reads the result."""
        return f"{self.recipe}:{self.model}" if not self.out else f"{self.recipe}:{self.out_path()}"


def default_path(recipe: str, model: str) -> Path:
    safe = model.strip("/").replace("/", "__")
    return cache_dir() / "corpus" / BUILD_VERSION / f"{recipe}-{safe}.jsonl.xz"
