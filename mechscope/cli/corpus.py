"""CLI: build-corpus (text for the feature index, built offline from what the machine has; docs/corpus.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mechscope.cli._common import JsonOut, ModelOpt, ThreadsOpt, command, emit
from mechscope.configs import param, require
from mechscope.corpus.build_config import CorpusBuildConfig
from mechscope.corpus.sample_config import SampleConfig


@dataclass(kw_only=True)
class BuildCorpusArgs(ThreadsOpt, JsonOut):
    build: CorpusBuildConfig = field(default_factory=lambda: CorpusBuildConfig("index"))  # knobs become options


@command(
    "build-corpus",
    help="build a mixed, deduplicated, suite-free corpus file (resumable; docs/corpus.md)",
    description="Build a corpus from a recipe, e.g. `mechscope build-corpus index --model gemma3-270m`: the model's "
    "sampled text, templated WordNet facts and glosses, documentation, man pages and fortunes, mixed by token "
    "shares with a seed, deduplicated, the lens suite's prompts and facts removed. Interrupted builds continue "
    "with --resume. Read the result with --corpus index:MODEL (e.g. index-features --corpus index:gemma3-270m).",
)
def cmd_build_corpus(a: BuildCorpusArgs) -> int:
    from mechscope.corpus.build import build_corpus

    stats = build_corpus(a.build)
    done = "interrupted_after_parts" not in stats
    text = (
        f"{stats['path']}: {stats['tokens']:,} tokens in {stats['documents']:,} documents "
        f"({stats['bytes'] / 1e6:.1f} MB); read it with --corpus {stats['corpus_name']}"
        if done
        else f"stopped after {stats['interrupted_after_parts']} parts in {stats['parts']}; continue with --resume"
    )
    emit(stats, a.json, text)
    return 0


@dataclass(kw_only=True)
class SampleTextArgs(ModelOpt, JsonOut):
    sample: SampleConfig = field(default_factory=SampleConfig)  # knobs become options
    out: str | None = param(None, help="output .jsonl or .jsonl.xz (default: the cache, where sampled:MODEL reads)")
    ship: str | None = param(
        None,
        metavar="MIX",
        help="instead of sampling, write the shipped held-out file from a mix of sources by share, e.g. "
        "'sampled=0.14,wordnet=0.10,wordnet-glosses=0.76'",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.out is None or self.out.endswith((".jsonl", ".jsonl.xz")), "--out must end in .jsonl or .jsonl.xz")
        self.shares()  # a malformed --ship is refused here, before anything loads

    def shares(self) -> dict[str, float]:
        """--ship as {corpus name: share} (`sampled` is this model's sampled text); {} without --ship."""
        out: dict[str, float] = {}
        for part in self.ship.split(",") if self.ship is not None else []:
            name, eq, w = part.partition("=")
            try:
                ok = bool(name) and bool(eq) and float(w) > 0
            except ValueError:
                ok = False
            require(ok, f"--ship {part!r}: expected SOURCE=SHARE with a positive share")
            out[f"sampled:{self.model}" if name == "sampled" else name] = float(w)
        return out


@command(
    "sample-text",
    help="sample text from the model itself, seeded by entity prompts (the sampled:MODEL corpus; docs/lens.md)",
    description="Sample text from the model, each document seeded by a prompt about a WordNet entity of one split "
    "(train or heldout), nucleus sampling at a temperature, degenerate samples dropped; written where "
    "--corpus sampled:MODEL reads it. With --ship, write the shipped held-out file from a mix of sources instead.",
)
def cmd_sample_text(a: SampleTextArgs) -> int:
    from pathlib import Path

    from mechscope.corpus.sampled import ship_heldout, sampled_dir
    from mechscope.corpus.sampling import build_sampled

    if a.ship:
        stats = ship_heldout(a.model, a.shares())
        emit(stats, a.json, f"wrote the shipped held-out file: {stats}")
        return 0
    from mechscope.models import load_model

    model = load_model(a.model)
    out = Path(a.out) if a.out else sampled_dir(a.model) / f"{a.sample.split}.jsonl"
    stats = build_sampled(model, a.sample, out, progress=not a.json)
    emit(stats, a.json, f"{out}: {stats.get('chars', 0):,} characters in {stats.get('documents', 0):,} documents")
    return 0
