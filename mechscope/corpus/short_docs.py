"""Text shaped like the prompts people trace: short documents with the entity first (`--corpus prompts:MODEL`).

`prompts:MODEL` interleaves, by characters, templated WordNet facts (`facts`, `FACTS_SHARE`) and the model's own
sampled text (`sampled:MODEL`) cut into short pieces at sentence ends (`cut_short`; a sampled document's
template preamble such as "Here is a short encyclopedia entry." is dropped, so it starts with its entity).
Each corpus document is one group: the short documents about one entity, or the pieces of one sampled text,
separated by blank lines. Both parts pass the lens suite filter (`SuiteFilter`). The mix ends with the facts;
in the train split sampled text repeats when it runs out, in the held-out split it never does (and where a
model has no held-out sampled text the held-out split is the facts' alone).

Training reads these corpora in short-document mode (`chunk_stream(..., doc_starts=None)` picks it for corpus
names in `SHORT_CORPORA`): every sequence starts at BOS with the start of one short document and holds only
whole documents of the same group (`doc_chunks`).

>>> cut_short("Dallas is big. It has a zoo and a very long main street. " * 3, max_chars=60)   # doctest: +SKIP
['Dallas is big. It has a zoo and a very long main street.', ...]
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator

from mechscope.errors import MechscopeError

log = logging.getLogger(__name__)
FACTS_SHARE = 0.7  # characters of `prompts:MODEL` from the facts; the rest is the model's sampled text
MIN_PIECE, MAX_PIECE = 40, 190  # characters of a sampled piece (≈ 10–48 tokens of English)
SHORT_CORPORA = ("facts", "prompts:")  # corpus names whose documents are groups of short documents
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def is_short_corpus(corpus: str) -> bool:
    """Whether a corpus name (or any part of a mix) is a short-document corpus.

    >>> is_short_corpus("builtin,prompts:gemma3-270m*2"), is_short_corpus("lens:gemma3-270m")
    (True, False)
    """
    parts = [p.strip().rpartition("*")[0] if re.search(r"\*\d+$", p.strip()) else p.strip() for p in corpus.split(",")]
    return any(p == "facts" or p.startswith("prompts:") for p in parts)


def _preambles() -> list[str]:
    """The sampled corpus's prompt preambles that stand before the entity ("Here is a short encyclopedia entry.")."""
    from mechscope.corpus.sample_prompts import TEMPLATES

    return [t.split("{e}")[0] for ts in TEMPLATES.values() for t in ts if "\n\n{e}" in t]


def cut_short(text: str, min_chars: int = MIN_PIECE, max_chars: int = MAX_PIECE) -> list[str]:
    """Cut `text` into pieces of whole sentences of at most `max_chars` (a longer sentence is wrapped at a
    space); pieces under `min_chars` join the piece before them when they fit, and under half of it are dropped.

    >>> cut_short("One two three. Four five six seven. Eight.", min_chars=14, max_chars=20)
    ['One two three.', 'Four five six seven.']
    """
    pieces: list[str] = []
    cur = ""
    for sent in _SENTENCE_END.split(text):
        sent = " ".join(sent.split())
        while len(sent) > max_chars:  # wrap a long sentence at the last space that fits
            cut = sent.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if cur:
                pieces.append(cur)
                cur = ""
            pieces.append(sent[:cut])
            sent = sent[cut:].strip()
        if not sent:
            continue
        if cur and len(cur) + 1 + len(sent) > max_chars:
            pieces.append(cur)
            cur = ""
        cur = f"{cur} {sent}" if cur else sent
    if cur:
        if len(cur) < min_chars and pieces and len(pieces[-1]) + 1 + len(cur) <= max_chars:
            pieces[-1] += " " + cur
        else:
            pieces.append(cur)
    return [p for p in pieces if len(p) >= min_chars // 2]


def sampled_groups(model_spec: str, split: str, suite=None) -> Iterator[str]:
    """The sampled text of `model_spec` ("gemma3-270m" or "gemma3-270m@8"), each document as its short pieces
    separated by blank lines, preamble dropped and suite lines removed."""
    from mechscope.corpus.sampled import iter_sampled_source
    from mechscope.corpus.suite_filter import SuiteFilter

    suite = suite or SuiteFilter.default()
    pre = _preambles()
    for doc in iter_sampled_source(f"sampled:{model_spec}", split):
        for p in pre:
            if doc.startswith(p):
                doc = doc[len(p) :]
                break
        pieces = cut_short(suite.clean(doc))
        if pieces:
            yield "\n\n".join(pieces)


def _interleave(
    lead: Iterator[str], other: Callable[[], Iterator[str]], other_share: float, cycle: bool
) -> Iterator[str]:
    """`lead` with documents of `other()` mixed in at `other_share` of the characters; ends with `lead`. `other`
    restarts when it runs out if `cycle` (never when it yielded nothing)."""
    chars = [0, 0]
    it: Iterator[str] | None = other()
    got_any = False
    for doc in lead:
        while it is not None and chars[1] < (chars[0] + len(doc)) * other_share / (1 - other_share):
            try:
                d = next(it)
            except StopIteration:
                it = other() if cycle and got_any else None
                continue
            got_any = True
            chars[1] += len(d)
            yield d
        chars[0] += len(doc)
        yield doc


def iter_prompts_source(source: str, split: str) -> Iterator[str]:
    """Documents of `prompts:MODEL[@N]` (see the module docstring)."""
    from mechscope.corpus.facts import iter_facts
    from mechscope.progress import warn

    model = source.partition(":")[2]
    if not model:
        raise MechscopeError(f"corpus {source!r}: name a model, e.g. prompts:gemma3-270m")

    def other() -> Iterator[str]:
        return sampled_groups(model, split)

    try:  # a model without held-out sampled text: say so once and use the facts alone
        first = next(other(), None)
    except MechscopeError as e:
        if split == "train":
            raise
        warn(f"corpus {source}: no held-out sampled text ({e}); its held-out split is the facts alone")
        first = None
    if first is None:
        yield from iter_facts(split)
        return
    yield from _interleave(iter_facts(split), other, 1 - FACTS_SHARE, cycle=split == "train")


def doc_chunks(tokenizer, docs: Iterator[str], seq_len: int, bos: int | None) -> Iterator[list[int]]:
    """Short-document mode: token lists of at most `seq_len`, each starting with `bos` (when not None) and the
    start of a short document (a document's blank-line separated pieces), filled with the following pieces of
    the same document while they fit whole, never with another document's text, never padded.

    A piece longer than a sequence is cut, and its continuation starts mid-piece (short corpora have none);
    sequences of fewer than 2 tokens after BOS are dropped.
    """
    body = seq_len - (1 if bos is not None else 0)
    head = [bos] if bos is not None else []
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    for doc in docs:
        cur: list[int] = []
        for piece in doc.split("\n\n"):
            piece = piece.strip()
            if not piece:
                continue
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            if cur and len(cur) + len(sep) + len(ids) > body:
                yield head + cur
                cur = []
            cur = cur + sep + ids if cur else list(ids)
            while len(cur) > body:
                yield head + cur[:body]
                cur = cur[body:]
        if len(cur) >= 2:
            yield head + cur
