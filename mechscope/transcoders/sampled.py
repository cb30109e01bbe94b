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
                  (built with `python -m mechscope.transcoders.sampled`); its held-out split falls back to the
                  shipped file.
  lens:MODEL      the training mix: sampled text, WordNet glosses and the documentation corpus by the
                  character shares in MIX (secondary sources repeat when they run out; the mix ends with the
                  sampled text).
  shipped:MODEL   the held-out split shipped in the package (`artifacts/corpus/heldout-MODEL.jsonl.xz`): works on
                  a fresh machine without apt packages, for eval-transcoders, index-features and the lens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_bytes, cache_dir
from mechscope.transcoders.corpus import WORDNET_NOUNS, is_heldout

log = logging.getLogger(__name__)
SAMPLED_VERSION = "sampled-v1"
# top-k before the nucleus (see _top_p_sample); the shipped held-out split predates it (full sort, same
# nucleus, other random draws), so it reproduces with the commit that made it (docs/lens.md)
NUCLEUS_K = 1024
SHIPPED_CORPUS = Path(__file__).resolve().parent.parent / "artifacts" / "corpus"
REPO_CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"  # in a source checkout only
SUITE_FILE = Path(__file__).resolve().parent.parent / "lens" / "suite.yaml"  # the lens suite's prompts
# character shares of the `lens:` mix
MIX = {"sampled": 0.60, "wordnet": 0.10, "wordnet-glosses": 0.20, "builtin": 0.10}

# Used when WordNet is not installed (the shipped held-out split was made with WordNet; see docs/lens.md).
ENTITIES = [
    "Texas",
    "California",
    "Florida",
    "Ohio",
    "Nevada",
    "Alaska",
    "Hawaii",
    "Chicago",
    "Houston",
    "Seattle",
    "Denver",
    "Boston",
    "Atlanta",
    "Miami",
    "Phoenix",
    "Detroit",
    "London",
    "Manchester",
    "Edinburgh",
    "Dublin",
    "Lisbon",
    "Barcelona",
    "Vienna",
    "Prague",
    "Warsaw",
    "Budapest",
    "Athens",
    "Istanbul",
    "Cairo",
    "Nairobi",
    "Lagos",
    "Johannesburg",
    "Mumbai",
    "Delhi",
    "Bangkok",
    "Singapore",
    "Seoul",
    "Shanghai",
    "Beijing",
    "Osaka",
    "Sydney",
    "Melbourne",
    "Toronto",
    "Vancouver",
    "Montreal",
    "Mexico",
    "Brazil",
    "Argentina",
    "Chile",
    "Peru",
    "Canada",
    "Norway",
    "Sweden",
    "Finland",
    "Poland",
    "Greece",
    "Turkey",
    "Egypt",
    "Kenya",
    "Nigeria",
    "India",
    "China",
    "Japan",
    "Korea",
    "Vietnam",
    "Indonesia",
    "Australia",
    "Shakespeare",
    "Newton",
    "Darwin",
    "Galileo",
    "Aristotle",
    "Plato",
    "Napoleon",
    "Cleopatra",
    "Gandhi",
    "Lincoln",
    "Mandela",
    "Picasso",
    "Rembrandt",
    "Bach",
    "Chopin",
    "Tolstoy",
    "Dante",
    "Cervantes",
    "Goethe",
    "Confucius",
    "Amazon",
    "Nile",
    "Danube",
    "Everest",
    "Sahara",
    "Mississippi",
    "Himalayas",
    "Andes",
    "Alps",
    "Pacific",
    "Atlantic",
]
TOPICS = [
    "the weather",
    "cooking rice",
    "football",
    "the ocean",
    "the history of trains",
    "gardening",
    "chess",
    "the moon",
    "volcanoes",
    "bees",
    "coffee",
    "learning a language",
    "the human heart",
    "electric cars",
    "ancient Rome",
    "photosynthesis",
    "the Olympic Games",
    "jazz music",
    "mountains",
    "the internet",
    "birds",
    "a birthday party",
    "rivers",
    "the solar system",
    "bread",
    "a small village",
    "winter",
    "dinosaurs",
    "the stock market",
    "painting",
    "a job interview",
    "basketball",
    "tea",
    "elections",
]
TEMPLATES = {
    "en": [
        "{e} is",
        "{e} was",
        "Here is a short encyclopedia entry.\n\n{e}",
        "Q: What is {e} known for?\nA:",
        "Facts about {e}:\n1.",
        "Where is {e}? It is",
        "{e} is famous for",
    ],
    "fr": ["{e} est", "Voici un court article.\n\n{e}", "Question : que savez-vous de {e} ?\nRéponse :"],
    "de": ["{e} ist", "Ein kurzer Lexikonartikel.\n\n{e}", "Frage: Was ist {e}?\nAntwort:"],
    "es": ["{e} es", "Un breve artículo de enciclopedia.\n\n{e}", "Pregunta: ¿qué es {e}?\nRespuesta:"],
    "zh": ["{e}是", "关于{e}的简短介绍：\n\n", "问：{e}有什么特点？\n答："],
}
TOPIC_TEMPLATES = [
    "A short article about {t}.\n\n",
    "Let me tell you about {t}.",
    "Some facts about {t}:\n-",
    "Un article sur {t} :\n\n",
    "Ein Text über {t}:\n\n",
    "Un texto sobre {t}:\n\n",
]
LANG_WEIGHTS = {"en": 0.55, "fr": 0.12, "de": 0.11, "es": 0.11, "zh": 0.11}


@dataclass
class SampleConfig:
    """Knobs of `build_sampled`.

    split: which entities seed the prompts ('heldout': those with SHA-1(name) ≡ 0 mod 20, as every corpus).
    chars: stop once this many characters of text are kept.
    max_new_tokens / temperature / top_p: sampling (nucleus sampling at temperature T).
    batch_size: prompts sampled together (grouped by token length, so no padding is needed).
    seed: seeds the prompt list and the sampler (same seed, model and thread count → same text).
    budget_s: stop after this many seconds (0: no limit). The stream is deterministic, so a run cut short
        reproduces exactly with chars = the characters it kept (recorded in its stats).

    >>> cfg = SampleConfig(split="heldout", chars=300_000)
    """

    split: Literal["train", "heldout"] = "heldout"
    chars: int = 300_000
    max_new_tokens: int = 96
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 32
    seed: int = 0
    budget_s: float = 0.0

    def __post_init__(self) -> None:
        if self.budget_s < 0:
            raise MechscopeError("sampled corpus: budget_s must be ≥ 0")
        if self.split not in ("train", "heldout"):
            raise MechscopeError(f"sampled corpus split must be 'train' or 'heldout', not {self.split!r}")
        if self.chars < 1 or self.max_new_tokens < 8 or self.batch_size < 1:
            raise MechscopeError("sampled corpus: chars ≥ 1, max_new_tokens ≥ 8 and batch_size ≥ 1 are required")
        if not (0 < self.temperature <= 5 and 0 < self.top_p <= 1):
            raise MechscopeError("sampled corpus: temperature must lie in (0, 5] and top_p in (0, 1]")


def entity_names() -> tuple[list[str], str]:
    """(names, source): WordNet's instance-synset names when installed (sorted, deduplicated), else ENTITIES."""
    if WORDNET_NOUNS.exists():
        from mechscope.transcoders.corpus import _wordnet_sentences

        names = sorted({t.split(" is ", 1)[0] for _, t in _wordnet_sentences()})
        names = [n for n in names if 2 < len(n) <= 40]
        if names:
            return names, "wordnet"
    return list(ENTITIES), "builtin-list"


def seed_prompts(split: str, seed: int, names: list[str]) -> Iterator[str]:
    """An endless, seeded stream of prompts: ~60% entities (in five languages), ~20% topics, ~20% numbers."""
    rng = random.Random(f"{SAMPLED_VERSION}-{split}-{seed}")
    mine = [n for n in names if is_heldout(n) == (split == "heldout")] or names
    langs, weights = zip(*LANG_WEIGHTS.items())
    while True:
        r = rng.random()
        if r < 0.6:
            lang = rng.choices(langs, weights)[0]
            yield rng.choice(TEMPLATES[lang]).format(e=rng.choice(mine))
        elif r < 0.8:
            yield rng.choice(TOPIC_TEMPLATES).format(t=rng.choice(TOPICS))
        else:
            a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(1100, 2024)
            yield rng.choice(
                [
                    f"{a} + {b} = ",
                    f"Question: What is {a} plus {b}?\nAnswer:",
                    f"{a % 13} × {b % 13} =",
                    f"Compute {a} - {b % a}. Step by step:",
                    f"In {c},",
                    f"The year {c} was",
                    f"Calculez {a} + {b} :",
                    f"Rechne: {a} mal {b % 10} ist",
                    f"{a}加{b}等于",
                ]
            )


def is_degenerate(text: str, min_chars: int = 40) -> bool:
    """Too short, or repetitive: fewer than 60% of its character 8-grams distinct, or a line repeated 3 times.

    >>> is_degenerate("the cat " * 20), is_degenerate("Dallas is a city in Texas, known for its skyline and its food.")
    (True, False)
    """
    t = text.strip()
    if len(t) < min_chars:
        return True
    grams = [t[i : i + 8] for i in range(len(t) - 7)]
    if len(set(grams)) < 0.6 * len(grams):
        return True
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    return any(lines.count(ln) >= 3 for ln in set(lines))


def suite_prompts() -> list[str]:
    """The lens suite's exact prompts (the text that must stay out of the corpus)."""
    import yaml

    # read as data (transcoders must not import the lens package, which sits downstream of them)
    data = yaml.safe_load(SUITE_FILE.read_text(encoding="utf-8"))
    return sorted({p["prompt"].strip() for p in data["prompts"]})


def strip_suite_prompts(text: str, prompts: list[str]) -> str:
    """`text` without every line that contains one of `prompts` (compared with whitespace collapsed).

    >>> strip_suite_prompts("Dallas is in the state of Texas.\\nIt is big.", ["Dallas is in the state of"])
    'It is big.'
    """
    norm = [re.sub(r"\s+", " ", p) for p in prompts]
    keep = []
    for line in text.split("\n"):
        flat = re.sub(r"\s+", " ", line)
        if not any(p in flat for p in norm):
            keep.append(line)
    # a prompt may also span a line break: check the joined text once more
    out = "\n".join(keep)
    flat = re.sub(r"\s+", " ", out)
    if any(p in flat for p in norm):
        return ""
    return out


def _top_p_sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """One token per row of logits [b, vocab] by nucleus sampling.

    The nucleus is looked for among each row's NUCLEUS_K most probable tokens first (a top-k is ~20× cheaper
    than sorting 262k logits, which took most of the sampling time); a row whose nucleus is wider than that
    is sorted in full, so the nucleus is always the exact smallest prefix whose mass reaches top_p.
    """
    probs = torch.softmax(logits.float() / temperature, -1)  # [b, vocab]
    k = min(NUCLEUS_K, probs.shape[-1])
    sp, si = probs.topk(k, -1)  # [b, k], descending
    wide = sp.sum(-1) < top_p
    if bool(wide.any()):  # rare: a flat distribution; sort those rows in full
        full_p, full_i = probs[wide].sort(-1, descending=True)
        out = torch.empty(probs.shape[0], dtype=torch.long)
        out[~wide] = _nucleus_pick(sp[~wide], si[~wide], top_p, gen)
        out[wide] = _nucleus_pick(full_p, full_i, top_p, gen)
        return out
    return _nucleus_pick(sp, si, top_p, gen)


def _nucleus_pick(sp: torch.Tensor, si: torch.Tensor, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """Draw from sorted probabilities sp [b, n] (token ids si) restricted to the top_p nucleus."""
    sp = sp.clone()
    cum = sp.cumsum(-1)
    sp[(cum - sp) > top_p] = 0  # keep the smallest prefix whose mass reaches top_p
    pick = torch.multinomial(sp / sp.sum(-1, keepdim=True), 1, generator=gen)
    return si.gather(-1, pick).squeeze(-1)


@torch.no_grad()
def sample_batch(model, ids: torch.Tensor, cfg: SampleConfig, gen: torch.Generator) -> list[list[int]]:
    """Continue equally long prompts ids [b, n] with the KV cache; returns each row's new tokens (EOS cut)."""
    hf = model.model
    eos = model.tokenizer.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    out = hf(input_ids=ids.to(model.device), use_cache=True, logits_to_keep=1)
    cache, logits = out.cache, out.logits[:, -1]
    b = ids.shape[0]
    rows: list[list[int]] = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool)
    for _ in range(cfg.max_new_tokens):
        nxt = _top_p_sample(logits.cpu(), cfg.temperature, cfg.top_p, gen)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                if t in eos:
                    done[i] = True
                else:
                    rows[i].append(t)
        if bool(done.all()):
            break
        out = hf(input_ids=nxt[:, None].to(model.device), cache=cache, use_cache=True, logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1]
    return rows


def generate_documents(model, cfg: SampleConfig, progress: bool = False) -> Iterator[str]:
    """Sampled documents (prompt + continuation), filtered and deduplicated, until cfg.chars are reached."""
    import time

    from tqdm.auto import tqdm

    t0 = time.time()
    names, _ = entity_names()
    prompts = seed_prompts(cfg.split, cfg.seed, names)
    banned = suite_prompts()
    gen = torch.Generator().manual_seed(cfg.seed)
    seen: set[str] = set()
    total = 0
    bar = tqdm(total=cfg.chars, unit="char", disable=not progress, desc="sampling")
    while total < cfg.chars and not (cfg.budget_s and time.time() - t0 > cfg.budget_s):
        # a window of prompts, grouped by token length so a batch needs no padding
        window = [next(prompts) for _ in range(cfg.batch_size * 4)]
        groups: dict[int, list[list[int]]] = {}
        for p in window:
            ids = model.tokenizer(p, add_special_tokens=True)["input_ids"]
            groups.setdefault(len(ids), []).append(ids)
        for n in sorted(groups):
            for s in range(0, len(groups[n]), cfg.batch_size):
                batch = torch.tensor(groups[n][s : s + cfg.batch_size])
                for ids, new in zip(batch.tolist(), sample_batch(model, batch, cfg, gen)):
                    text = model.tokenizer.decode(ids + new, skip_special_tokens=True).strip()
                    text = strip_suite_prompts(text, banned).strip()
                    key = hashlib.sha1(re.sub(r"\s+", " ", text.lower()).encode()).hexdigest()
                    if is_degenerate(text) or key in seen:
                        continue
                    seen.add(key)
                    total += len(text)
                    bar.update(len(text))
                    yield text
                if total >= cfg.chars:
                    break
            if total >= cfg.chars:
                break
    bar.close()


def build_sampled(model, cfg: SampleConfig, out: str | Path, progress: bool = False) -> dict:
    """Write sampled documents as JSON lines to `out` (`.xz` compresses; temp file + rename); return stats.

    >>> build_sampled(m, SampleConfig(split="heldout", chars=300_000), "heldout-gemma3-270m.jsonl.xz")  # doctest: +SKIP
    """
    out = Path(out)
    names, name_source = entity_names()
    lines = [
        json.dumps({"id": f"sampled#{cfg.split}#{i}", "text": t}, ensure_ascii=False)
        for i, t in enumerate(generate_documents(model, cfg, progress))
    ]
    if not lines:
        raise MechscopeError("sampling produced no text (every continuation was filtered out)")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if out.suffix == ".xz":
        data = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    atomic_write_bytes(out, data)
    stats = {
        "version": SAMPLED_VERSION,
        "sampler": f"nucleus within top-{NUCLEUS_K}, full sort when wider",
        "model": model.name,
        "config": asdict(cfg),
        "documents": len(lines),
        "chars": sum(len(json.loads(x)["text"]) for x in lines),
        "entity_names": name_source,
        "n_entity_names": len(names),
    }
    atomic_write_bytes(out.with_name(out.name.split(".")[0] + ".stats.json"), json.dumps(stats, indent=1).encode())
    return stats


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


def _read_jsonl(path: Path) -> Iterator[str]:
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
    from mechscope.transcoders.corpus import iter_documents

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
    if kind == "lens":
        banned = suite_prompts()
        n = 0
        for doc in mix_documents({(f"sampled:{model}" if k == "sampled" else k): w for k, w in MIX.items()}, split):
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
            if found is None and s == "train" and train_shards(model):
                files += train_shards(model)
                continue
            if found is None:
                raise MechscopeError(
                    f"corpus {source} has no '{s}' split yet; make it with: python -m "
                    f"mechscope.transcoders.sampled --model {model} --split {s}"
                )
            files.append(found)
    else:
        raise MechscopeError(f"unknown corpus kind {kind!r} in {source!r}")
    n = 0
    for f in files:
        if not f.exists():
            raise MechscopeError(f"corpus {source}: {f.name} is not shipped with this package")
        for doc in _read_jsonl(f):
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


def main(argv: list[str] | None = None) -> int:
    """`python -m mechscope.transcoders.sampled`: sample a split into the cache, optionally ship the held-out mix."""
    import argparse
    import sys

    d = SampleConfig()
    p = argparse.ArgumentParser(prog="python -m mechscope.transcoders.sampled", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--split", choices=["train", "heldout"], default=d.split)
    p.add_argument("--chars", type=int, default=d.chars)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--budget-s", type=float, default=0.0, help="stop sampling after this many seconds")
    p.add_argument("--out", default=None, help="output .jsonl[.xz] (default: the cache, where sampled:MODEL reads)")
    p.add_argument(
        "--ship",
        default=None,
        metavar="MIX",
        help="instead of sampling, write the shipped held-out file from a mix, e.g. 'sampled=0.78,wordnet=0.22'",
    )
    args = p.parse_args(argv)
    try:
        if args.ship:
            weights = {}
            for part in args.ship.split(","):
                name, _, w = part.partition("=")
                try:
                    weights[f"sampled:{args.model}" if name == "sampled" else name] = float(w)
                except ValueError:
                    raise MechscopeError(f"--ship {part!r}: expected SOURCE=SHARE") from None
            print(json.dumps(ship_heldout(args.model, weights)))
            return 0
        cfg = SampleConfig(
            split=args.split,
            chars=args.chars,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            batch_size=args.batch_size,
            seed=args.seed,
            budget_s=args.budget_s,
        )
        from mechscope.models import load_model

        model = load_model(args.model)
        out = Path(args.out) if args.out else sampled_dir(args.model) / f"{args.split}.jsonl"
        print(json.dumps(build_sampled(model, cfg, out, progress=True)))
    except MechscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
