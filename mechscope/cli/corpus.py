"""CLI: build-corpus (text for the feature index, built offline from what the machine has; docs/corpus.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mechscope.cli._common import JsonOut, ThreadsOpt, command, emit
from mechscope.corpus.build_config import CorpusBuildConfig


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
