"""The inputs of `mechscope build-corpus`: one seeded, restartable stream of documents per source.

Each source names the Debian packages it reads (checked before a build starts), lists its input files (hashed
into the build's recipe) and yields `Doc`s in an order fixed by the seed, so a build that stops can skip what
it already took and continue identically.

| source     | text                                                                 | packages                 |
|------------|----------------------------------------------------------------------|--------------------------|
| `sampled`  | the model's own sampled text, train split (not the shipped eval text) | (data/corpus or cache)   |
| `facts`    | templated WordNet facts, one record per entity group and language     | wordnet-base             |
| `glosses`  | every WordNet gloss, 30 to a record                                  | wordnet-base             |
| `docs`     | Python's HTML documentation and the Debian reference, ≤ 1,500 chars of prose (`is_prose`) | python3.11-doc, debian-reference-en |
| `man`      | man pages in French, German, Spanish, Chinese, Japanese and others   | manpages-fr/de/es/zh/ja  |
| `fortunes` | fortune cookies in English, German and Spanish, one per record        | fortunes, fortunes-de/es |

>>> next(iter(SOURCES["glosses"].docs("gemma3-270m", 0))).lang      # doctest: +SKIP
'en'
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mechscope.corpus.offline_text import BUILTIN_REQUIRES, WORDNET_NOUNS, text_pieces, html_to_text, troff_to_text

DOC_PIECE = 1500  # characters of a documentation or man page piece: many files' worth in a 2M-token budget
MIN_DOC = 200  # shorter documentation pieces are navigation and headers
WORDNET_FILES = [WORDNET_NOUNS.with_name(f"data.{p}") for p in ("noun", "verb", "adj", "adv")]
MAN_LANGS = ("fr", "de", "es", "zh_CN", "zh_TW", "ja", "it", "ru", "pl", "nl", "pt_BR", "sv", "cs", "hu", "uk")


@dataclass(frozen=True)
class Doc:
    """One candidate document of a source."""

    text: str
    lang: str


@dataclass(frozen=True)
class Source:
    """A build input: `packages` it needs, its input `files(model)`, `docs(model, seed)`, and `prepare(seed)`,
    slow one-time work done before the build's progress starts (None: nothing)."""

    name: str
    packages: tuple[str, ...]
    files: Callable[[str], list[Path]]
    docs: Callable[[str, int], Iterator[Doc]]
    prepare: Callable[[int], None] | None = None


# ---- language of a text without a library: script first, then the commonest function words ------------------
_STOP = {
    "en": {"the", "and", "of", "is", "to", "in", "that", "it", "was", "for"},
    "fr": {"le", "la", "les", "et", "est", "des", "une", "dans", "du", "que"},
    "de": {"der", "die", "und", "ist", "das", "ein", "eine", "nicht", "mit", "den"},
    "es": {"el", "la", "los", "las", "y", "es", "una", "del", "que", "en"},
}


def guess_language(text: str) -> str:
    """'ja' (kana), 'zh' (Han), else en / fr / de / es by function words ('en' when nothing decides).

    >>> guess_language("Der Hund ist groß und das Haus ist alt."), guess_language("东京是日本的首都。")
    ('de', 'zh')
    """
    if re.search(r"[\u3040-\u30ff]", text):
        return "ja"
    if len(re.findall(r"[\u4e00-\u9fff]", text)) > 0.1 * len(text.strip()):
        return "zh"
    words = re.findall(r"[a-zà-ÿß]+", text.lower())[:400]
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOP.items()}
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] > 0 else "en"


def is_prose(piece: str, min_width: int = 40, share: float = 0.5) -> bool:
    """Whether most of a piece's characters stand in lines at least `min_width` wide (CJK characters count
    double): tables of contents, option lists and troff leftovers ("[", "-v", "]" on lines of their own) are not.

    >>> is_prose("split()\\njoin()\\nquote()"), is_prose("Split the string s using shell-like syntax, as a shell would.")
    (False, True)
    """

    def width(line: str) -> int:
        return len(line) + len(re.findall(r"[\u3040-\u30ff\u3400-\u9fff]", line))

    lines = piece.splitlines()
    total = sum(len(x) for x in lines) or 1
    return sum(len(x) for x in lines if width(x) >= min_width) >= share * total


def _shuffled(items: list, seed: int, name: str) -> list:
    items = list(items)
    random.Random(f"build-corpus-{name}-{seed}").shuffle(items)
    return items


def _files(patterns: list[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        out += [Path(p) for p in sorted(glob.glob(pat, recursive=True)) if Path(p).is_file()]
    return out


# ---- sampled ---------------------------------------------------------------------------------------------------
def _sampled_files(model: str) -> list[Path]:
    from mechscope.corpus.sampled import sampled_dir, train_shards

    cache = [p for p in (sampled_dir(model) / "train.jsonl", sampled_dir(model) / "train.jsonl.xz") if p.exists()]
    return cache[:1] or train_shards(model)


def _sampled_docs(model: str, seed: int) -> Iterator[Doc]:
    from mechscope.corpus.sampled import read_jsonl

    docs = [t for f in _sampled_files(model) for t in read_jsonl(f)]
    for t in _shuffled(docs, seed, "sampled"):
        yield Doc(t, guess_language(t))


# ---- WordNet ---------------------------------------------------------------------------------------------------
def _facts_docs(model: str, seed: int) -> Iterator[Doc]:
    from mechscope.corpus.facts import cached_fact_groups

    for g in cached_fact_groups(seed, "all"):  # already in a seeded order
        by_lang: dict[str, list[str]] = {}
        for d in g.docs:
            by_lang.setdefault(d.lang, []).append(d.text)
        for lang, texts in by_lang.items():
            yield Doc("\n\n".join(texts), lang)


def _facts_prepare(seed: int) -> None:
    from mechscope.corpus.facts import cached_fact_groups

    next(cached_fact_groups(seed, "all"), None)  # assembles the cache file once (≈ 30 s)


def _gloss_docs(model: str, seed: int) -> Iterator[Doc]:
    from mechscope.corpus.sampled import wordnet_glosses

    for t in _shuffled(list(wordnet_glosses("all")), seed, "glosses"):
        yield Doc(t, "en")


# ---- documentation, man pages, fortunes --------------------------------------------------------------------------
DOC_PATTERNS = ["/usr/share/doc/python3.11/html/**/*.html", "/usr/share/doc/debian-reference-en/**/*.html"]


def _doc_docs(model: str, seed: int) -> Iterator[Doc]:
    seen: set[str] = set()  # boilerplate paragraphs ("© Copyright … Python Software Foundation") once only
    for f in _shuffled(_files(DOC_PATTERNS), seed, "docs"):
        try:
            text = html_to_text(f.read_text(errors="replace"))
        except OSError:
            continue
        paras = []
        for para in re.split(r"\n\s*\n", text):
            key = " ".join(para.split())
            if not key or key in seen:
                continue
            if len(key) < 300:  # long paragraphs are content, however often a page repeats them
                seen.add(key)
            paras.append(para.strip())
        for piece in text_pieces("\n\n".join(paras), DOC_PIECE):
            if len(piece) >= MIN_DOC and is_prose(piece):
                yield Doc(piece, "en")


def _man_files(model: str = "") -> list[Path]:
    return _files([f"/usr/share/man/{lang}/man*/*.gz" for lang in MAN_LANGS])


def _man_docs(model: str, seed: int) -> Iterator[Doc]:
    for f in _shuffled(_man_files(), seed, "man"):
        lang = f.parts[4].split("_")[0]  # /usr/share/man/zh_CN/man1/x.1.gz → zh
        try:
            text = troff_to_text(gzip.open(f, "rt", errors="replace").read())
        except (OSError, EOFError):
            continue
        for piece in text_pieces(text, DOC_PIECE):
            if len(piece) >= MIN_DOC and is_prose(piece):
                yield Doc(piece, lang)


def _fortune_files(model: str = "") -> list[Path]:
    files = [p for p in _files(["/usr/share/games/fortunes/**/*"]) if p.suffix != ".dat" and not p.is_symlink()]
    names = {str(p) for p in files}
    return [p for p in files if p.suffix == ".u8" or f"{p}.u8" not in names]  # the UTF-8 copy where there is one


def _fortune_docs(model: str, seed: int) -> Iterator[Doc]:
    items: list[Doc] = []
    for f in _fortune_files():
        rel = f.relative_to("/usr/share/games/fortunes").parts
        lang = rel[0] if len(rel) > 1 and len(rel[0]) == 2 else "en"
        try:
            raw = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        raw = re.sub(r".\x08", "", raw)  # overstrike (bold, underline) in the old ASCII files
        items += [Doc(t.strip(), lang) for t in re.split(r"\n%\n", raw) if len(t.strip()) >= 40]
    yield from _shuffled(items, seed, "fortunes")


SOURCES: dict[str, Source] = {
    "sampled": Source("sampled", (), _sampled_files, _sampled_docs),
    "facts": Source("facts", ("wordnet-base",), lambda m: WORDNET_FILES, _facts_docs, _facts_prepare),
    "glosses": Source("glosses", ("wordnet-base",), lambda m: WORDNET_FILES, _gloss_docs),
    "docs": Source("docs", ("python3.11-doc", "debian-reference-en"), lambda m: _files(DOC_PATTERNS), _doc_docs),
    "man": Source("man", tuple(p for p in BUILTIN_REQUIRES if p.startswith("manpages-")), _man_files, _man_docs),
    "fortunes": Source("fortunes", ("fortunes", "fortunes-de", "fortunes-es"), _fortune_files, _fortune_docs),
}


def missing_packages(sources: list[Source]) -> list[str]:
    """The Debian packages `sources` read that are not installed (checked by one file each package installs)."""
    checks = dict(BUILTIN_REQUIRES, **{"wordnet-base": str(WORDNET_NOUNS)})
    need = dict.fromkeys(p for s in sources for p in s.packages)
    return [p for p in need if not glob.glob(checks[p], recursive=True)]


def inputs_hash(files: list[Path]) -> str:
    """SHA-256 over the files' paths and contents, in sorted order (what a build read, to compare builds)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
