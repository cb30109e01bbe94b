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

Short documents shaped like traced prompts: `facts` (templated WordNet facts, `mechscope.corpus.facts`) and
`prompts:MODEL` (facts + the model's sampled text cut short, `mechscope.corpus.short_docs`); `chunk_stream`
reads them in short-document mode for training (`doc_starts=None`). A corpus built by `mechscope build-corpus`
(`mechscope.corpus.build`) is read as `index:MODEL` or `index:FILE.jsonl.xz`.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from mechscope.corpus.build_config import RECIPES
from mechscope.errors import MechscopeError

if TYPE_CHECKING:  # torch loads only where token chunks are made: corpus names and help stay cheap to import
    import torch

# the offline sources are assembled in offline_text; re-exported here, where every corpus name is resolved
from mechscope.corpus.offline_text import (  # noqa: F401
    APT_PACKAGES,
    BUILTIN_REQUIRES,
    BUILTIN_VERSION,
    PIECE_CHARS,
    WORDNET_NOUNS,
    WORDNET_VERSION,
    text_pieces,
    wordnet_sentences,
    build_builtin,
    build_wordnet,
    html_to_text,
    is_heldout,
    missing_builtin_packages,
    troff_to_text,
)

log = logging.getLogger(__name__)

#: what every `--corpus` option accepts (one text for the trainer, eval, sinks and the feature index)
CORPUS_HELP = (
    "'builtin' (documentation, man pages; Debian packages), 'sampled:MODEL' (text sampled from the model), "
    "'lens:MODEL' (sampled + WordNet + docs, mixed), 'shipped:MODEL' (the held-out split shipped in the "
    "package), 'wordnet-glosses', 'facts' (short templated WordNet facts, entity first, 5 languages), "
    "'prompts:MODEL' (facts + the model's sampled text in short pieces; trains in short-document mode), "
    "'index:MODEL' or 'index:FILE.jsonl.xz' (built by `mechscope build-corpus`; held-out split only), "
    "a .txt/.jsonl/.parquet file or folder, or hf:DATASET; mix with commas"
)


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
        for i, piece in enumerate(text_pieces(raw)):
            yield f"{p.name}#{i}", piece


def iter_documents(source: str, split: str = "train") -> Iterator[str]:
    """Texts of a corpus split ('train', 'heldout' or 'all'), in a fixed order.

    `source` may list several sources separated by commas, each optionally repeated with `*N`
    (upsampling a small source): "builtin,wordnet*4".

    >>> next(iter_documents("notes.txt", split="all"))   # doctest: +SKIP
    """
    if "," in source or "*" in source:  # a mix, or one source repeated ("lens:gemma3-270m@14*2")
        parts = [p.strip() for p in source.split(",")]
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
    if source == "facts":
        from mechscope.corpus.facts import iter_facts  # short templated facts (WordNet)

        yield from iter_facts(split)
        return
    if source.startswith("prompts:"):
        from mechscope.corpus.short_docs import iter_prompts_source

        yield from iter_prompts_source(source, split)
        return
    if source.partition(":")[0] in RECIPES:
        from mechscope.corpus.build import iter_built_source  # a corpus made by `mechscope build-corpus`

        yield from iter_built_source(source, split)
        return
    if source.partition(":")[0] in ("sampled", "lens", "shipped", "wordnet-glosses"):
        from mechscope.corpus.sampled import iter_sampled_source  # text sampled from a model, and its mixes

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
        f"corpus '{source}' not found: give a file or folder, 'builtin', 'wordnet', 'wordnet-glosses', 'facts', "
        "sampled:MODEL, lens:MODEL, shipped:MODEL, prompts:MODEL, index:MODEL, or hf:DATASET"
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
    tokenizer,
    corpus: str,
    split: str,
    seq_len: int,
    seed: int,
    chunk_buffer: int = CHUNK_SHUFFLE_BUFFER,
    doc_starts: bool | None = False,
) -> Iterator[torch.Tensor]:
    """THE token stream of every reader of a corpus (training, evaluation, sink fitting, feature index):
    documents of `split` shuffled with `seed`, packed into [seq_len] chunks, then shuffled again at chunk level
    with `seed + 1` (`chunk_buffer` = 0 turns the second shuffle off).

    Evaluation, sink fitting and the feature index pass chunk_buffer=0: their shipped numbers and indexes were
    made without the chunk shuffle and must reproduce; training keeps it (it fixed a bias toward the first
    sources in a batch).

    `doc_starts`: True gives short-document chunks instead (`short_docs.doc_chunks`): each starts with BOS and a
    document's start, holds only that document's text and is at most seq_len long, so chunks differ in length
    (readers must pad them, `pad_chunks`, and drop the padding); None: short-document chunks when the corpus is
    a short-document corpus (`facts`, `prompts:MODEL`), packed ones otherwise; False (default): packed.

    >>> ids = next(chunk_stream(tok, "builtin", "heldout", seq_len=64, seed=0, chunk_buffer=0))   # doctest: +SKIP
    """
    from mechscope.corpus.short_docs import is_short_corpus

    docs = shuffled(iter_documents(corpus, split), seed)
    if doc_starts or (doc_starts is None and is_short_corpus(corpus)):
        chunks = doc_start_chunks(tokenizer, docs, seq_len)
    else:
        chunks = token_chunks(tokenizer, docs, seq_len)
    return shuffled(chunks, seed + 1, buffer=chunk_buffer) if chunk_buffer else chunks


def _bos(tokenizer) -> int | None:
    """The BOS id when the model's tokenizer adds one (Gemma), else None (SmolLM2)."""
    return tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) or _adds_bos(tokenizer) else None


def token_chunks(tokenizer, docs: Iterable[str], seq_len: int) -> Iterator[torch.Tensor]:
    """Pack documents into [seq_len] token chunks; each starts with BOS when the model uses one."""
    import torch

    bos = _bos(tokenizer)
    body = seq_len - (1 if bos is not None else 0)
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    buf: list[int] = []
    for d in docs:
        buf.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        buf.extend(sep)
        while len(buf) >= body:
            chunk, buf = buf[:body], buf[body:]
            yield torch.tensor(([bos] if bos is not None else []) + chunk, dtype=torch.long)


def doc_start_chunks(tokenizer, docs: Iterable[str], seq_len: int) -> Iterator[torch.Tensor]:
    """Short-document chunks (≤ seq_len tokens, BOS + a document's start; see `short_docs.doc_chunks`)."""
    import torch

    from mechscope.corpus.short_docs import doc_chunks

    for ids in doc_chunks(tokenizer, iter(docs), seq_len, _bos(tokenizer)):
        yield torch.tensor(ids, dtype=torch.long)


def pad_chunks(chunks: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([B, T] ids right-padded with `pad_id`, [B, T] mask of real tokens), mask None when nothing was padded.

    Right padding leaves every real token's activations as they are alone (attention is causal), so a reader
    runs the padded batch and drops the masked positions.

    >>> import torch
    >>> ids, mask = pad_chunks([torch.tensor([2, 5, 6]), torch.tensor([2, 7])])
    >>> ids.tolist(), mask.tolist()
    ([[2, 5, 6], [2, 7, 0]], [[True, True, True], [True, True, False]])
    """
    import torch

    n = max(len(c) for c in chunks)
    if all(len(c) == n for c in chunks):
        return torch.stack(chunks), None
    ids = torch.full((len(chunks), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(chunks), n, dtype=torch.bool)
    for i, c in enumerate(chunks):
        ids[i, : len(c)] = c
        mask[i, : len(c)] = True
    return ids, mask


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
