"""Training text: local files, a Hugging Face dataset (online), or the built-in offline corpora.

The built-in corpus (`--corpus builtin`) is real text that Debian installs with apt, so it works on
machines with no internet:

    apt-get install python3.11-doc debian-reference-en fortunes fortunes-de fortunes-es \
        manpages-fr manpages-de manpages-es manpages-zh manpages-ja

It is assembled deterministically (sorted file lists; HTML stripped with html.parser; troff man pages
reduced to text; long files cut into ≤ 4,000-character pieces at paragraph breaks) into
`$MECHSCOPE_CACHE/corpus/builtin-v1/{train,heldout}.jsonl`. A piece goes to the held-out split when
the SHA-1 of its id is ≡ 0 mod 20 (5%). The same split rule applies to local files.

Documentation and man pages hold almost no named entities (cities, states, people), so transcoders trained
on them alone leave "Dallas → Texas" to the skip and error terms. `--corpus wordnet` (apt-get install
wordnet-base) adds one sentence per WordNet instance synset ("Dallas is a large commercial and industrial
city in northeastern Texas ..."; 7.7k entities). Sources mix with commas and repeat with `*N`:
`--corpus builtin,wordnet*4,samples.jsonl`.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import html.parser
import json
import logging
import random
import re
from pathlib import Path
from typing import Iterable, Iterator

import torch

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_text, cache_dir

log = logging.getLogger(__name__)
BUILTIN_VERSION = "builtin-v1"
WORDNET_VERSION = "wordnet-v1"
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
# One file (or glob) per package that only that package installs: other packages ship translated man pages
# too (dpkg-dev, passwd, apt), so "some page in /usr/share/man/de" would not show that manpages-de is there.
BUILTIN_REQUIRES = {
    "python3.11-doc": "/usr/share/doc/python3.11/html/index.html",
    "debian-reference-en": "/usr/share/doc/debian-reference-en/**/*.html",
    "fortunes": "/usr/share/games/fortunes/computers",
    "fortunes-de": "/usr/share/games/fortunes/de/*",
    "fortunes-es": "/usr/share/games/fortunes/es/*",
    **{f"manpages-{lang[:2]}": f"/usr/share/man/{lang}/man7/hier.7.gz" for lang in ("fr", "de", "es", "zh_CN", "ja")},
}
APT_PACKAGES = " ".join(BUILTIN_REQUIRES)
PIECE_CHARS = 4000

#: what every `--corpus` option accepts (one text for the trainer, eval, sinks and the feature index)
CORPUS_HELP = (
    "'builtin' (documentation, man pages; Debian packages), 'sampled:MODEL' (text sampled from the model), "
    "'lens:MODEL' (sampled + WordNet + docs, mixed), 'shipped:MODEL' (the held-out split shipped in the "
    "package), 'wordnet-glosses', a .txt/.jsonl/.parquet file or folder, or hf:DATASET; mix with commas"
)


def is_heldout(doc_id: str) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % 20 == 0


def _pieces(text: str, limit: int = PIECE_CHARS) -> Iterator[str]:
    buf = ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if buf and len(buf) + len(para) > limit:
            yield buf
            buf = ""
        buf = f"{buf}\n\n{para}" if buf else para[: limit * 2]
    if buf:
        yield buf


class _HTMLText(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("p", "div", "br", "li", "h1", "h2", "h3", "pre", "tr", "dt", "dd"):
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(raw: str) -> str:
    p = _HTMLText()
    p.feed(raw)
    text = "".join(p.parts)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_TROFF_ESC = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\s[+-]?\d+|\\[&|^%]|\\\*(\(..|.)")


def troff_to_text(raw: str) -> str:
    out: list[str] = []
    for line in raw.splitlines():
        if line.startswith(('.\\"', "'\\\"", ".\\}", ".de", ".if", ".ie", ".el", ".ds", ".nr", ".so")):
            continue
        if line.startswith((".SH", ".SS")):
            out.append("\n" + line[3:].strip().strip('"') + "\n")
            continue
        if line.startswith((".PP", ".LP", ".P", ".TP", ".IP", ".sp", ".br")) and len(line.split()[0]) <= 3:
            out.append("")
            rest = line.split(None, 1)
            if len(rest) > 1 and line.startswith(".IP"):
                out.append(rest[1].strip('"'))
            continue
        if line.startswith("."):
            parts = line.split(None, 1)
            line = parts[1] if len(parts) > 1 else ""
            line = line.replace('"', "")
        line = (
            _TROFF_ESC.sub("", line).replace("\\-", "-").replace("\\(em", "—").replace("\\e", "\\").replace("\\ ", " ")
        )
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _builtin_sources() -> Iterator[tuple[str, str]]:
    """(id, text) for every installed document, in a fixed order."""

    def files(pattern: str) -> list[str]:
        return sorted(glob.glob(pattern, recursive=True))

    for f in files("/usr/share/doc/python3.11/html/**/*.html") + files("/usr/share/doc/debian-reference-en/**/*.html"):
        try:
            yield f, html_to_text(Path(f).read_text(errors="replace"))
        except OSError:
            continue
    for lang in ("fr", "de", "es", "zh_CN", "zh_TW", "ja"):
        for f in files(f"/usr/share/man/{lang}/man*/*.gz"):
            try:
                yield f, troff_to_text(gzip.open(f, "rt", errors="replace").read())
            except (OSError, EOFError):
                continue
    for f in files("/usr/share/games/fortunes/**/*") + files("/usr/share/games/fortunes-*/**/*"):
        p = Path(f)
        if p.is_file() and not p.suffix == ".dat" and not p.is_symlink():
            try:
                yield f, p.read_text(errors="replace").replace("\n%\n", "\n\n")
            except (OSError, UnicodeDecodeError):
                continue


def missing_builtin_packages() -> list[str]:
    """The Debian packages of the built-in corpus whose files are not on this machine."""
    return [pkg for pkg, pattern in BUILTIN_REQUIRES.items() if not glob.glob(pattern, recursive=True)]


def build_builtin(force: bool = False) -> Path:
    """Assemble the built-in corpus once; returns its directory.

    Refuses when a source package is missing: a corpus silently built from the rest (a few M characters
    instead of ~53 M) would be cached and reused as if it were the real one.
    """
    out = cache_dir() / "corpus" / BUILTIN_VERSION
    if (out / "train.jsonl").exists() and (out / "heldout.jsonl").exists() and not force:
        return out
    missing = missing_builtin_packages()
    if missing:
        raise MechscopeError(
            f"the built-in corpus needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed; install with: apt-get install {' '.join(missing)}"
        )
    train: list[str] = []
    held: list[str] = []
    n_chars = 0
    for src, text in _builtin_sources():
        for i, piece in enumerate(_pieces(text)):
            if len(piece) < 200:
                continue
            doc_id = f"{src}#{i}"
            line = json.dumps({"id": doc_id, "text": piece}, ensure_ascii=False)
            (held if is_heldout(doc_id) else train).append(line)
            n_chars += len(piece)
    if not train:
        raise MechscopeError(
            f"the built-in corpus needs Debian documentation; install it with: apt-get install {APT_PACKAGES}"
        )
    atomic_write_text(out / "heldout.jsonl", "\n".join(held) + "\n")
    atomic_write_text(out / "train.jsonl", "\n".join(train) + "\n")
    (out / "stats.json").write_text(
        json.dumps({"pieces_train": len(train), "pieces_heldout": len(held), "chars": n_chars})
    )
    log.info("built-in corpus: %d train / %d held-out pieces, %.1f M chars", len(train), len(held), n_chars / 1e6)
    return out


def _wordnet_sentences() -> Iterator[tuple[str, str]]:
    """(synset offset, "Name is gloss.") for every instance synset (pointer '@i') of WordNet's nouns."""
    for line in WORDNET_NOUNS.open(encoding="utf-8", errors="replace"):
        if line.startswith(" ") or " @i " not in line:
            continue
        head, _, gloss = line.partition("|")
        f = head.split()
        n_words = int(f[3], 16)
        names = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        # the fullest everyday name: "Michael Jordan" rather than "Jordan"
        name = max(
            (n for n in names if len(n.split()) <= 4), key=lambda n: (len(n.split()), -names.index(n)), default=names[0]
        )
        name = re.sub(r"\(.*?\)", "", name).strip()
        gloss = gloss.strip().rstrip(";").strip()
        definition, _, examples = gloss.partition('; "')
        text = f"{name} is {definition.strip()}."
        if examples:
            text += " " + examples.replace('"', "").replace(";", ".").strip()
        yield f[0], text


def build_wordnet(force: bool = False) -> Path:
    """Assemble the WordNet entity corpus once (pieces of ~30 sentences in WordNet order); returns its directory."""
    out = cache_dir() / "corpus" / WORDNET_VERSION
    if (out / "train.jsonl").exists() and (out / "heldout.jsonl").exists() and not force:
        return out
    if not WORDNET_NOUNS.exists():
        raise MechscopeError(
            "the wordnet corpus needs WordNet's data files; install them with: apt-get install wordnet-base"
        )
    train: list[str] = []
    held: list[str] = []
    sents = list(_wordnet_sentences())
    for i in range(0, len(sents), 30):
        chunk = sents[i : i + 30]
        doc_id = f"wordnet#{chunk[0][0]}"
        line = json.dumps({"id": doc_id, "text": "\n".join(t for _, t in chunk)}, ensure_ascii=False)
        (held if is_heldout(doc_id) else train).append(line)
    atomic_write_text(out / "heldout.jsonl", "\n".join(held) + "\n")
    atomic_write_text(out / "train.jsonl", "\n".join(train) + "\n")
    log.info("wordnet corpus: %d entities in %d train / %d held-out pieces", len(sents), len(train), len(held))
    return out


def _check_text_file(p: Path) -> None:
    head = p.open("rb").read(4096)
    if b"\x00" in head:
        raise MechscopeError(f"corpus file {p} looks binary (NUL bytes); give .txt, .jsonl or .parquet text")


def _read_local(p: Path) -> Iterator[tuple[str, str]]:
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional: the "corpora" extra
        except ImportError:
            raise MechscopeError(f"reading {p.name} needs pyarrow: pip install 'mechscope[corpora]'") from None
        table = pq.read_table(p)
        col = "text" if "text" in table.column_names else table.column_names[0]
        for i, t in enumerate(table.column(col).to_pylist()):
            if t:
                yield f"{p.name}#{i}", str(t)
        return
    _check_text_file(p)
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MechscopeError(f"corpus file {p} is not UTF-8 text") from None
    if p.suffix == ".jsonl":
        for i, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise MechscopeError(f"{p}:{i + 1} is not valid JSON") from None
            t = obj.get("text") if isinstance(obj, dict) else obj
            if t:
                yield obj.get("id", f"{p.name}#{i}") if isinstance(obj, dict) else f"{p.name}#{i}", str(t)
    else:
        for i, piece in enumerate(_pieces(raw)):
            yield f"{p.name}#{i}", piece


def iter_documents(source: str, split: str = "train") -> Iterator[str]:
    """Texts of a corpus split ('train', 'heldout' or 'all'), in a fixed order.

    `source` may list several sources separated by commas, each optionally repeated with `*N`
    (upsampling a small source): "builtin,wordnet*4".

    >>> next(iter_documents("notes.txt", split="all"))   # doctest: +SKIP
    """
    parts = [p.strip() for p in source.split(",")] if "," in source or "*" in source else [source]
    if len(parts) > 1 or parts[0] != source:
        for part in parts:
            name, star, times = part.rpartition("*") if "*" in part else (part, "", "1")
            if not times.isdigit() or int(times) < 1 or not name:
                raise MechscopeError(f"corpus source {part!r}: expected SOURCE or SOURCE*N with N ≥ 1")
            for _ in range(int(times)):
                yield from iter_documents(name, split)
        return
    if source in ("builtin", "wordnet"):
        d = build_builtin() if source == "builtin" else build_wordnet()
        names = ["train.jsonl", "heldout.jsonl"] if split == "all" else [f"{split}.jsonl"]
        for n in names:
            for line in (d / n).open(encoding="utf-8"):
                if line.strip():
                    yield json.loads(line)["text"]
        return
    if source.partition(":")[0] in ("sampled", "lens", "shipped", "wordnet-glosses"):
        from mechscope.transcoders.sampled import iter_sampled_source  # text sampled from a model, and its mixes

        yield from iter_sampled_source(source, split)
        return
    p = Path(source)
    if p.exists():
        paths = (
            sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in (".txt", ".jsonl", ".parquet", ".md"))
            if p.is_dir()
            else [p]
        )
        if not paths:
            raise MechscopeError(f"corpus folder {p} has no .txt, .jsonl or .parquet files")
        n = 0
        for q in paths:
            for doc_id, text in _read_local(q):
                if split == "all" or (split == "heldout") == is_heldout(doc_id):
                    n += 1
                    yield text
        if n == 0:
            raise MechscopeError(f"corpus {p} has no text in its '{split}' split")
        return
    if source.startswith("hf:"):
        try:
            from datasets import load_dataset
        except ImportError:
            raise MechscopeError(
                "Hugging Face datasets need `pip install 'mechscope[corpora]'` and a network connection"
            ) from None
        ds = load_dataset(source[3:], split="train", streaming=True)
        for i, row in enumerate(ds):
            if split == "all" or (split == "heldout") == is_heldout(str(i)):
                yield row.get("text", "")
        return
    raise MechscopeError(
        f"corpus '{source}' not found: give a file or folder, 'builtin', 'wordnet', 'wordnet-glosses', "
        "sampled:MODEL, lens:MODEL, shipped:MODEL, or hf:DATASET"
    )


def validate_corpus(source: str, split: str = "train") -> None:
    """Fail before any training if the corpus is missing, empty or binary."""
    for text in iter_documents(source, split):
        if text.strip():
            return
    raise MechscopeError(f"corpus {source} is empty")


def shuffled(docs: Iterable, seed: int, buffer: int = 200_000) -> Iterator:
    """Deterministic buffered shuffle, so languages and sources mix within a batch.

    The default buffer holds the whole built-in corpus (~17k pieces): a small buffer over a stream in file
    order would feed training mostly from the first sources (a bias measured here: the first default set saw
    mostly Python docs and reached held-out FVU 0.37 against 0.11 on its own stream).
    """
    rng = random.Random(seed)
    buf: list[str] = []
    for d in docs:
        buf.append(d)
        if len(buf) >= buffer:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


#: Chunks of one document are consecutive; training shuffles them again in a buffer this large so a batch
#: mixes documents.
CHUNK_SHUFFLE_BUFFER = 512


def chunk_stream(
    tokenizer, corpus: str, split: str, seq_len: int, seed: int, chunk_buffer: int = CHUNK_SHUFFLE_BUFFER
) -> Iterator[torch.Tensor]:
    """THE token stream of every reader of a corpus (training, evaluation, sink fitting, feature index):
    documents of `split` shuffled with `seed`, packed into [seq_len] chunks, then shuffled again at chunk level
    with `seed + 1` (`chunk_buffer` = 0 turns the second shuffle off).

    Evaluation, sink fitting and the feature index pass chunk_buffer=0: their shipped numbers and indexes were
    made without the chunk shuffle and must reproduce; training keeps it (it fixed a bias toward the first
    sources in a batch).

    >>> ids = next(chunk_stream(tok, "builtin", "heldout", seq_len=64, seed=0, chunk_buffer=0))   # doctest: +SKIP
    """
    docs = shuffled(iter_documents(corpus, split), seed)
    chunks = token_chunks(tokenizer, docs, seq_len)
    return shuffled(chunks, seed + 1, buffer=chunk_buffer) if chunk_buffer else chunks


def token_chunks(tokenizer, docs: Iterable[str], seq_len: int) -> Iterator[torch.Tensor]:
    """Pack documents into [seq_len] token chunks; each starts with BOS when the model uses one."""
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) or _adds_bos(tokenizer) else None
    body = seq_len - (1 if bos is not None else 0)
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    buf: list[int] = []
    for d in docs:
        buf.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        buf.extend(sep)
        while len(buf) >= body:
            chunk, buf = buf[:body], buf[body:]
            yield torch.tensor(([bos] if bos is not None else []) + chunk, dtype=torch.long)


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
