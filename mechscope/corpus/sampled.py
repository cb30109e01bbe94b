"""An offline corpus that looks like what people trace: text sampled from the bundled model itself.

Seed prompts (`seed_prompts`) name entities (WordNet's instance synsets when `wordnet-base` is installed,
else a small built-in list), everyday topics, numbers and arithmetic, in English, French, German, Spanish
and Chinese. The model continues each one (batched, KV cache, temperature + nucleus sampling, one seeded
torch.Generator); continuations are kept when they are not degenerate (`is_degenerate`), not duplicates,
and every line containing one of the lens suite's exact prompts is removed (`strip_suite_prompts`), so the
benchmark's prompts never appear in training or index text. Entities are split between train and held-out
by the same SHA-1 rule as the other corpora, so held-out text is about entities training never saw.

Corpus names (accepted wherever `--corpus` is):
  sampled:MODEL   the sampled text alone, from `$MECHSCOPE_CACHE/corpus/sampled-v1/MODEL/{train,heldout}.jsonl`
                  (built with `mechscope sample-text`), else its seeded train shards; its held-out
                  split falls back to the shipped file. `sampled:MODEL@N` / `lens:MODEL@N`: only the first N train
                  shards, so runs made while the corpus grows read the same text.
  lens:MODEL      the training mix: sampled text, WordNet glosses and the documentation corpus by the
                  character shares in MIX (secondary sources repeat when they run out; the mix ends with the
                  sampled text).
  shipped:MODEL   the held-out split shipped in the package (`artifacts/corpus/heldout-MODEL.jsonl.xz`): works on
                  a fresh machine without apt packages, for eval-transcoders, index-features and the lens.
"""

from __future__ import annotations

import json
import logging
import lzma
import re
from collections.abc import Iterator
from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_bytes, cache_dir
from mechscope.corpus.sources import WORDNET_NOUNS, is_heldout

# the sampler and its prompts live in their own modules; re-exported here, the corpus's one entry point
from mechscope.corpus.sample_prompts import (  # noqa: F401
    ENTITIES,
    LANG_WEIGHTS,
    SAMPLED_VERSION,
    TEMPLATES,
    TOPIC_TEMPLATES,
    TOPICS,
    entity_names,
    seed_prompts,
)
from mechscope.corpus.sampling import (  # noqa: F401
    NUCLEUS_K,
    SUITE_FILE,
    SampleConfig,
    build_sampled,
    generate_documents,
    is_degenerate,
    sample_batch,
    strip_suite_prompts,
    suite_prompts,
)

log = logging.getLogger(__name__)
SHIPPED_CORPUS = Path(__file__).resolve().parent.parent / "artifacts" / "corpus"
REPO_CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"  # in a source checkout only
# character shares of the `lens:` mix
MIX = {"sampled": 0.60, "wordnet": 0.10, "wordnet-glosses": 0.20, "builtin": 0.10}


# ---- corpus sources: wordnet-glosses, sampled:MODEL, lens:MODEL, shipped:MODEL ---
def wordnet_glosses(split: str) -> Iterator[str]:
    """Every WordNet synset's gloss as "word: gloss." (nouns, verbs, adjectives, adverbs), 30 to a piece, in file
    order; a piece is held out when SHA-1 of its first synset id ≡ 0 mod 20 (as every corpus)."""
    files = [WORDNET_NOUNS.with_name(f"data.{pos}") for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.exists() for f in files):
        raise MechscopeError(
            "the wordnet-glosses corpus needs WordNet's data files; install them with: apt-get install wordnet-base"
        )
    n = 0
    for f in files:
        buf: list[str] = []
        first = ""
        for line in f.open(encoding="utf-8", errors="replace"):
            if line.startswith(" ") or "|" not in line:
                continue
            head, _, gloss = line.partition("|")
            h = head.split()
            word = h[4].replace("_", " ")
            word = re.sub(r"\(.*?\)", "", word).strip()
            first = first or f"{f.suffix}#{h[0]}"
            buf.append(f"{word}: {gloss.strip().rstrip(';').strip()}.")
            if len(buf) == 30:
                if split == "all" or (split == "heldout") == is_heldout(first):
                    n += 1
                    yield "\n".join(buf)
                buf, first = [], ""
    if n == 0:
        raise MechscopeError(f"the wordnet-glosses corpus has no text in its '{split}' split")


def _safe(model: str) -> str:
    return model.strip("/").replace("/", "__")


def sampled_dir(model: str) -> Path:
    return cache_dir() / "corpus" / SAMPLED_VERSION / _safe(model)


def train_shards(model: str) -> list[Path]:
    """The train split in seeded shards (`train-sN.jsonl.xz`, N = the sampling seed), in seed order: from the
    cache, else from the source checkout's data/corpus (committed there; made by data/corpus/make_train_shards.sh)."""
    for d in (sampled_dir(model), REPO_CORPUS / SAMPLED_VERSION / _safe(model)):
        shards = [p for p in d.glob("train-s*.jsonl*") if re.fullmatch(r"train-s\d+\.jsonl(\.xz)?", p.name)]
        if shards:
            return sorted(shards, key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    return []


def shipped_path(model: str) -> Path:
    return SHIPPED_CORPUS / f"heldout-{_safe(model)}.jsonl.xz"


def read_jsonl(path: Path) -> Iterator[str]:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)["text"]


def mix_documents(
    weights: dict[str, float], split: str, cycle: bool | None = None, counts: dict[str, int] | None = None
) -> Iterator[str]:
    """Interleave corpus sources by character shares (`weights`, e.g. {"sampled:gemma3-270m": .7, "wordnet": .2}).

    The next document always comes from the source furthest below its share. The mix ends when the first
    source ends; a later source that runs out repeats from its start when `cycle` (default: for 'train',
    as `SOURCE*N` upsampling does) and is otherwise dropped (held-out text is never repeated).
    `counts`, if given, receives the characters taken from each source.
    """
    from mechscope.corpus.sources import iter_documents

    if not weights or any(w <= 0 for w in weights.values()):
        raise MechscopeError("a corpus mix needs positive shares")
    cycle = split == "train" if cycle is None else cycle
    names = list(weights)
    its = {n: iter_documents(n, split) for n in names}
    chars = counts if counts is not None else {}
    chars.update(dict.fromkeys(names, 0))
    live = list(names)
    while live:
        name = min(live, key=lambda n: chars[n] / weights[n])
        try:
            doc = next(its[name])
        except StopIteration:
            if name == names[0]:
                return
            if cycle and chars[name] > 0:
                its[name] = iter_documents(name, split)
                continue
            live.remove(name)
            continue
        chars[name] += len(doc)
        yield doc


def iter_sampled_source(source: str, split: str) -> Iterator[str]:
    """Documents of `sampled:MODEL`, `lens:MODEL` or `shipped:MODEL` (see the module docstring)."""
    kind, _, model = source.partition(":")
    if kind == "wordnet-glosses":
        yield from wordnet_glosses(split)
        return
    if not model:
        raise MechscopeError(f"corpus {source!r}: name a model, e.g. {kind}:gemma3-270m")
    # MODEL@N: only the first N train shards (in seed order), so runs made while the corpus grows stay matched
    model, at, n_shards = model.partition("@")
    if at and not (n_shards.isdigit() and int(n_shards) >= 1):
        raise MechscopeError(f"corpus {source!r}: after '@' give a number of train shards ≥ 1, e.g. {kind}:{model}@8")
    if kind == "lens":
        banned = suite_prompts()
        n = 0
        own = f"sampled:{model}{at}{n_shards}"
        for doc in mix_documents({(own if k == "sampled" else k): w for k, w in MIX.items()}, split):
            doc = strip_suite_prompts(doc, banned)
            if doc.strip():
                n += 1
                yield doc
        if n == 0:
            raise MechscopeError(f"corpus {source} yielded no text in its '{split}' split")
        return
    files: list[Path] = []
    if kind == "shipped":
        if split == "train":
            raise MechscopeError(f"corpus {source} is a held-out split only; train on lens:{model} or sampled:{model}")
        files = [shipped_path(model)]
    elif kind == "sampled":
        d = sampled_dir(model)
        for s in ["train", "heldout"] if split == "all" else [split]:
            cands = [d / f"{s}.jsonl", d / f"{s}.jsonl.xz"] + ([shipped_path(model)] if s == "heldout" else [])
            found = next((c for c in cands if c.exists()), None)
            if (found is None or at) and s == "train" and train_shards(model):
                shards = train_shards(model)
                if at and len(shards) < int(n_shards):
                    raise MechscopeError(f"corpus {source!r}: only {len(shards)} train shards exist, not {n_shards}")
                files += shards[: int(n_shards)] if at else shards
                continue
            if at and s == "train":
                raise MechscopeError(f"corpus {source!r}: '@N' counts train shards, and there are none")
            if found is None:
                raise MechscopeError(
                    f"corpus {source} has no '{s}' split yet; make it with: python -m "
                    f"mechscope.corpus.sampled --model {model} --split {s}"
                )
            files.append(found)
    else:
        raise MechscopeError(f"unknown corpus kind {kind!r} in {source!r}")
    n = 0
    for f in files:
        if not f.exists():
            raise MechscopeError(f"corpus {source}: {f.name} is not shipped with this package")
        for doc in read_jsonl(f):
            n += 1
            yield doc
    if n == 0:
        raise MechscopeError(f"corpus {source} yielded no text in its '{split}' split")


def ship_heldout(model: str, weights: dict[str, float], out: Path | None = None) -> dict:
    """Write the held-out mix of `weights` (sources as corpus names) to the shipped file; return its stats."""
    banned = suite_prompts()
    docs: list[str] = []
    counts: dict[str, int] = {}
    for doc in mix_documents(weights, "heldout", cycle=False, counts=counts):
        doc = strip_suite_prompts(doc, banned)
        if doc.strip():
            docs.append(doc)
    if not docs:
        raise MechscopeError("the held-out mix is empty")
    out = out or shipped_path(model)
    lines = [json.dumps({"id": f"heldout#{i}", "text": t}, ensure_ascii=False) for i, t in enumerate(docs)]
    atomic_write_bytes(out, lzma.compress(("\n".join(lines) + "\n").encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    total = sum(counts.values()) or 1
    return {
        "documents": len(docs),
        "chars": sum(map(len, docs)),
        "target_shares": weights,
        "actual_shares": {k: round(v / total, 3) for k, v in counts.items()},
        "path": out.name,
    }
