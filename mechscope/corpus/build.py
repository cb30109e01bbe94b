"""Build a corpus file from a recipe: mixed by token shares, deduplicated, suite-free, resumable.

The next document always comes from the source furthest below its share of the tokens so far (a source that
runs out leaves the rest to the others). Each candidate passes the lens suite filter (`SuiteFilter`: lines
with a suite prompt or a suite fact are removed), then the dedup check (SHA-1 of the text lower-cased with
whitespace collapsed; a duplicate is skipped), then its tokens are counted with the model's tokenizer.

Resumable: documents are written in parts of ~`part_tokens` tokens (`OUT.parts/part-NNNNN.jsonl.xz`, each written
atomically), and after each part `manifest.json` records the build's state — per source, the candidates taken
and the tokens kept, and every counter. A resumed build checks that recipe, settings and input hashes match,
restores the state, rebuilds the dedup set from the parts, fast-forwards every source past what it took
(sources are deterministic for a seed) and goes on; documents taken after the last part are made again, so the
result is the one an uninterrupted build writes. At the end the parts are joined into OUT (xz streams
concatenate), the stats go beside it (`OUT` with `.stats.json`), and the parts are removed.

>>> build_corpus(CorpusBuildConfig("index", model="gemma3-270m"))   # doctest: +SKIP
{'path': '…/built-v1/index-gemma3-270m.jsonl.xz', 'tokens': 2000123, ...}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import lzma
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mechscope.corpus.build_config import BUILD_VERSION, CorpusBuildConfig
from mechscope.corpus.build_sources import SOURCES, Doc, Source, inputs_hash, missing_packages
from mechscope.corpus.suite_filter import SuiteFilter
from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_bytes, atomic_write_text, check_writable

XZ_PRESET = 6  # parts compress at ~3 MB/s; preset 9 is 3x slower for ~5% less


def text_key(text: str) -> str:
    """The dedup key: SHA-1 of the text lower-cased with whitespace collapsed.

    >>> text_key("Dallas  is BIG.") == text_key("dallas is\\nbig.")
    True
    """
    return hashlib.sha1(re.sub(r"\s+", " ", text.strip().lower()).encode("utf-8")).hexdigest()


def model_token_counter(model: str) -> Callable[[str], int]:
    """Token count of a text with the model's tokenizer (no special tokens); loads only the tokenizer."""
    from mechscope.models.loading import ensure_converted
    from mechscope.models.registry import MODELS
    from mechscope.models.tokenizer import load_tokenizer

    tok = load_tokenizer(ensure_converted(model), fast=True) if model in MODELS else load_tokenizer(model)
    backend = getattr(tok, "_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: no Python-side batching and padding logic per call
        return lambda text: len(backend.encode(text, add_special_tokens=False).ids)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def _fresh_state(names: list[str]) -> dict:
    zero = dict.fromkeys(names, 0)
    return {
        "parts": [],
        "taken": dict(zero),  # candidates drawn from each source
        "tokens": dict(zero),  # tokens kept from each source
        "docs": dict(zero),
        "duplicates": dict(zero),
        "suite_dropped": dict(zero),  # candidates emptied by the suite filter
        "suite_lines": 0,  # candidates that lost some lines to it
        "exhausted": [],
        "lang_tokens": {},
    }


def _read_part(path: Path) -> Iterator[dict]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class _Builder:
    """One build: its paths, the state that a manifest saves, and the loop."""

    def __init__(self, cfg: CorpusBuildConfig, sources: dict[str, Source], count: Callable[[str], int], suite) -> None:
        self.cfg, self.sources, self.count, self.suite = cfg, sources, count, suite
        self.out = cfg.out_path()
        self.parts_dir = self.out.with_name(self.out.name + ".parts")
        self.manifest = self.parts_dir / "manifest.json"
        self.stats_path = self.out.with_name(self.out.name[: -len(".jsonl.xz")] + ".stats.json")

    def recipe(self) -> dict:
        """What the result depends on: compared on resume, recorded in the stats."""
        names = list(self.cfg.shares)
        return {
            "version": BUILD_VERSION,
            "recipe": self.cfg.recipe,
            "shares": self.cfg.shares,
            "model": self.cfg.model,
            "tokens": self.cfg.tokens,
            "seed": self.cfg.seed,
            "part_tokens": self.cfg.part_tokens,
            "suite_prompts": len(self.suite.prompts),
            "inputs": {n: inputs_hash(self.sources[n].files(self.cfg.model)) for n in names},
        }

    def _write_part(self, state: dict, records: list[dict]) -> None:
        i = len(state["parts"])
        name = f"part-{i:05d}.jsonl.xz"
        data = ("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n").encode("utf-8")
        atomic_write_bytes(self.parts_dir / name, lzma.compress(data, preset=XZ_PRESET))
        state["parts"].append({"name": name, "docs": len(records), "tokens": sum(r["tokens"] for r in records)})

    def _save(self, recipe: dict, state: dict) -> None:
        atomic_write_text(self.manifest, json.dumps({"recipe": recipe, "state": state}, indent=1))

    def run(self, progress: bool) -> dict:
        from mechscope.progress import counter, step

        cfg = self.cfg
        with step("hashing the inputs"):
            recipe = self.recipe()
        names = list(cfg.shares)
        state = _fresh_state(names)
        seen: set[str] = set()
        if self.manifest.exists():
            saved = json.loads(self.manifest.read_text())
            if saved["recipe"] != recipe:
                diff = sorted(k for k in recipe if saved["recipe"].get(k) != recipe[k])
                raise MechscopeError(
                    f"the partial build in {self.parts_dir} was made with other {', '.join(diff)}; "
                    "add --force to start over"
                )
            state = saved["state"]
            for part in state["parts"]:
                seen.update(text_key(r["text"]) for r in _read_part(self.parts_dir / part["name"]))
        for n in names:
            if self.sources[n].prepare is not None:
                self.sources[n].prepare(cfg.seed)
        its: dict[str, Iterator[Doc]] = {}
        for n in names:  # fast-forward past what the saved parts took: sources are deterministic for a seed
            its[n] = itertools.islice(self.sources[n].docs(cfg.model, cfg.seed), state["taken"][n], None)
        live = [n for n in names if n not in state["exhausted"]]
        total = sum(state["tokens"].values())
        records: list[dict] = []
        buffered = 0
        parts_now = 0
        # the bar counts this run's tokens only: restored ones would make the rate and the time left look better
        what = f"building the {cfg.recipe} corpus" + (f" (resumed at {total:,} tokens)" if total else "")
        bar = counter(what, max(1, cfg.tokens - total), "tokens", enabled=progress)
        with bar:
            while total < cfg.tokens and live:
                name = min(live, key=lambda n: state["tokens"][n] / cfg.shares[n])
                doc = next(its[name], None)
                if doc is None:
                    live.remove(name)
                    state["exhausted"].append(name)
                    continue
                state["taken"][name] += 1
                text = self.suite.clean(doc.text).strip()
                if text != doc.text.strip():
                    state["suite_lines"] += 1
                if not text:
                    state["suite_dropped"][name] += 1
                    continue
                key = text_key(text)
                if key in seen:
                    state["duplicates"][name] += 1
                    continue
                seen.add(key)
                n_tok = self.count(text)
                rec = {"id": f"{name}-{state['taken'][name] - 1}", "source": name, "lang": doc.lang}
                records.append(dict(rec, tokens=n_tok, text=text))
                state["tokens"][name] += n_tok
                state["docs"][name] += 1
                lt = state["lang_tokens"].setdefault(name, {})
                lt[doc.lang] = lt.get(doc.lang, 0) + n_tok
                total += n_tok
                buffered += n_tok
                bar.update(n_tok)
                if buffered >= cfg.part_tokens:
                    self._write_part(state, records)
                    self._save(recipe, state)
                    records, buffered = [], 0
                    parts_now += 1
                    if cfg.stop_after_parts and parts_now >= cfg.stop_after_parts:
                        return {"interrupted_after_parts": len(state["parts"]), "parts": str(self.parts_dir)}
            if records:
                self._write_part(state, records)
                self._save(recipe, state)
        with counter("joining the parts", len(state["parts"]), "parts", enabled=progress) as join:
            self._join(state, join)
        stats = self._stats(recipe, state)
        atomic_write_text(self.stats_path, json.dumps(stats, indent=1, ensure_ascii=False) + "\n")
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return stats

    def _join(self, state: dict, bar) -> None:
        """OUT = the parts' bytes in order (concatenated xz streams read as one), written atomically."""
        chunks = []
        for part in state["parts"]:
            chunks.append((self.parts_dir / part["name"]).read_bytes())
            bar.update()
        atomic_write_bytes(self.out, b"".join(chunks))

    def _stats(self, recipe: dict, state: dict) -> dict:
        total = sum(state["tokens"].values()) or 1
        langs: dict[str, int] = {}
        for by_lang in state["lang_tokens"].values():
            for lang, n in by_lang.items():
                langs[lang] = langs.get(lang, 0) + n
        return {
            "path": str(self.out),
            "corpus_name": self.cfg.corpus_name(),
            "tokens": sum(state["tokens"].values()),
            "documents": sum(state["docs"].values()),
            "bytes": self.out.stat().st_size,
            "recipe": recipe,
            "target_shares": self.cfg.shares,
            "actual_shares": {n: round(v / total, 4) for n, v in state["tokens"].items()},
            "tokens_per_source": state["tokens"],
            "documents_per_source": state["docs"],
            "tokens_per_language": dict(sorted(langs.items(), key=lambda kv: -kv[1])),
            "tokens_per_source_and_language": state["lang_tokens"],
            "candidates_per_source": state["taken"],
            "duplicates_per_source": state["duplicates"],
            "suite_dropped_per_source": state["suite_dropped"],
            "suite_trimmed_documents": state["suite_lines"],
            "exhausted_sources": state["exhausted"],
            "parts": len(state["parts"]),
        }


def check_output(cfg: CorpusBuildConfig) -> str:
    """Refuse what a build must not overwrite; returns 'new', 'resume' or 'done' (a finished build, --resume)."""
    out = cfg.out_path()
    check_writable(out)
    parts = out.with_name(out.name + ".parts")
    if cfg.force:
        return "new"
    if out.exists():
        if cfg.resume:
            return "done"
        raise MechscopeError(f"{out} exists; add --force to rebuild it (or --resume to report it)")
    if parts.exists() and not cfg.resume:
        raise MechscopeError(
            f"an interrupted build is in {parts}; add --resume to continue it or --force to start over"
        )
    return "resume" if parts.exists() else "new"


def build_corpus(
    cfg: CorpusBuildConfig,
    sources: dict[str, Source] | None = None,
    count_tokens: Callable[[str], int] | None = None,
    suite: SuiteFilter | None = None,
    progress: bool = True,
) -> dict:
    """Build (or resume, or report) the corpus of `cfg`; returns its stats (see the module docstring).

    `sources`, `count_tokens` and `suite` replace the recipe's inputs, the model's tokenizer and the lens suite
    filter (tests use small ones).
    """
    mode = check_output(cfg)
    out = cfg.out_path()
    stats_path = out.with_name(out.name[: -len(".jsonl.xz")] + ".stats.json")
    if mode == "done":
        if stats_path.exists():
            return json.loads(stats_path.read_text())
        raise MechscopeError(f"{out} exists but has no stats beside it; add --force to rebuild it")
    srcs = sources or {n: SOURCES[n] for n in cfg.shares}
    unknown = [n for n in cfg.shares if n not in srcs]
    if unknown:
        raise MechscopeError(f"recipe {cfg.recipe!r} names unknown sources: {', '.join(unknown)}")
    missing = missing_packages([srcs[n] for n in cfg.shares])
    if missing:
        raise MechscopeError(
            f"the {cfg.recipe} corpus needs {', '.join(missing)} (not installed); "
            f"install with: apt-get install {' '.join(missing)}"
        )
    if sources is None and "sampled" in cfg.shares and not srcs["sampled"].files(cfg.model):
        raise MechscopeError(
            f"no sampled text of {cfg.model} to build from; sample it with: "
            f"mechscope sample-text --model {cfg.model} --split train"
        )
    parts = out.with_name(out.name + ".parts")
    if mode == "new":
        shutil.rmtree(parts, ignore_errors=True)
    from mechscope.progress import step

    t0 = time.time()
    if count_tokens is None:
        with step(f"loading the tokenizer of {cfg.model}"):
            count_tokens = model_token_counter(cfg.model)
    b = _Builder(cfg, srcs, count_tokens, suite or SuiteFilter.default())
    stats = b.run(progress)
    if "interrupted_after_parts" not in stats:
        stats["seconds_this_run"] = round(time.time() - t0, 1)
    return stats


def iter_built_source(source: str, split: str) -> Iterator[str]:
    """Documents of `RECIPE:MODEL` or `RECIPE:PATH.jsonl.xz` (a built corpus): the whole file is its held-out
    split, the text the feature index reads; asking it for training text is an error."""
    from mechscope.corpus.build_config import default_path

    recipe, _, arg = source.partition(":")
    if not arg:
        raise MechscopeError(f"corpus {source!r}: name a model or a built .jsonl.xz file, e.g. {recipe}:gemma3-270m")
    if split == "train":
        raise MechscopeError(
            f"corpus {source} is text for index-features (its held-out split); train on lens:MODEL or prompts:MODEL"
        )
    path = Path(arg).expanduser() if arg.endswith(".jsonl.xz") else default_path(recipe, arg)
    if not path.exists():
        raise MechscopeError(
            f"corpus {source}: {path} does not exist; build it with: mechscope build-corpus {recipe} --model {arg}"
        )
    n = 0
    for rec in _read_part(path):
        n += 1
        yield rec["text"]
    if n == 0:
        raise MechscopeError(f"corpus {source} is empty")
