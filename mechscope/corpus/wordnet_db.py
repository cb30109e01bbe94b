"""WordNet 3.0's synsets and relations, read straight from Debian's `wordnet-base` data files (no NLTK).

Only what the fact templates need: each synset's words, lexicographer file (noun.person, noun.location…),
gloss and pointers (hypernym, instance hypernym, part / member holonyms and meronyms, antonyms, domains).

>>> wn = WordNetDB.load()                                         # doctest: +SKIP
>>> dallas = wn.find("Dallas")[0]                                 # doctest: +SKIP
>>> wn.name(wn.first(dallas, "@i")), wn.name(wn.first(dallas, "#p"))   # doctest: +SKIP
('city', 'Texas')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mechscope.errors import MechscopeError

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# lexicographer files that hold people and places (WordNet's lexnames numbering)
LEX_PERSON, LEX_LOCATION, LEX_GROUP = 18, 15, 14
_MARKER = re.compile(r"\((a|p|ip)\)$")  # adjective position markers: "hot(p)"


@dataclass(frozen=True)
class Pointer:
    """One relation: `symbol` (WordNet's, e.g. "@i" instance hypernym, "#p" part holonym, "!" antonym) to the
    synset `target`; `src`/`dst` are word numbers (1-based) for lexical pointers, 0 for the whole synset."""

    symbol: str
    target: str
    src: int
    dst: int


@dataclass(frozen=True)
class Synset:
    """A synset: `key` is "pos:offset" (adjective satellites count as "a")."""

    key: str
    lexfile: int
    words: tuple[str, ...]
    pointers: tuple[Pointer, ...]
    gloss: str

    @property
    def pos(self) -> str:
        return self.key[0]

    @property
    def definition(self) -> str:
        """The gloss without its quoted examples: "a large city in northeastern Texas"."""
        return self.gloss.split('; "')[0].split(' "')[0].strip().rstrip(";").strip()


def _clean_word(w: str) -> str:
    return _MARKER.sub("", w).replace("_", " ")


def parse_line(line: str, pos: str) -> Synset | None:
    """One line of a data.{noun,verb,adj,adv} file, or None for the licence header.

    >>> s = parse_line("09143786 15 n 01 Dallas 0 002 @i 08524735 n 0000 #p 09141526 n 0000 | a city in Texas  ", "n")
    >>> s.words, [p.symbol for p in s.pointers], s.gloss
    (('Dallas',), ['@i', '#p'], 'a city in Texas')
    """
    if line.startswith(" ") or "|" not in line:
        return None
    head, _, gloss = line.partition("|")
    f = head.split()
    n_words = int(f[3], 16)
    words = tuple(_clean_word(f[4 + 2 * i]) for i in range(n_words))
    i = 4 + 2 * n_words
    n_ptr = int(f[i])
    ptrs = []
    for j in range(n_ptr):
        sym, off, ppos, st = f[i + 1 + 4 * j : i + 5 + 4 * j]
        ppos = "a" if ppos == "s" else ppos
        ptrs.append(Pointer(sym, f"{ppos}:{off}", int(st[:2], 16), int(st[2:], 16)))
    return Synset(f"{pos}:{f[0]}", int(f[1]), words, tuple(ptrs), gloss.strip())


class WordNetDB:
    """Every synset of the four data files, by key, plus a lower-cased word → synset keys index."""

    def __init__(self, synsets: dict[str, Synset]) -> None:
        self.synsets = synsets
        self._by_word: dict[str, list[str]] = {}
        for key, s in synsets.items():
            for w in s.words:
                self._by_word.setdefault(w.lower(), []).append(key)

    @staticmethod
    @lru_cache(maxsize=2)
    def load(directory: str = str(WORDNET_DIR)) -> "WordNetDB":
        """All synsets (≈ 5 s, once per process); a one-line error naming the apt package when missing."""
        d = Path(directory)
        files = {pos: d / f"data.{name}" for pos, name in POS_FILES.items()}
        if not all(f.exists() for f in files.values()):
            raise MechscopeError(
                f"WordNet's data files are not in {d}; install them with: apt-get install wordnet-base"
            )
        synsets: dict[str, Synset] = {}
        for pos, f in files.items():
            with f.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    s = parse_line(line, pos)
                    if s is not None:
                        synsets[s.key] = s
        return WordNetDB(synsets)

    def get(self, key: str) -> Synset:
        return self.synsets[key]

    def find(self, word: str, pos: str | None = None) -> list[Synset]:
        """Synsets containing `word` (any case), in file order."""
        keys = self._by_word.get(word.lower(), [])
        return [self.synsets[k] for k in keys if pos is None or k[0] == pos]

    def related(self, s: Synset, symbol: str) -> list[Synset]:
        """Synsets `s` points to with `symbol`, in the file's order."""
        return [self.synsets[p.target] for p in s.pointers if p.symbol == symbol and p.target in self.synsets]

    def first(self, s: Synset, symbol: str) -> Synset | None:
        rel = self.related(s, symbol)
        return rel[0] if rel else None

    def name(self, s: Synset | None) -> str:
        """A synset's everyday name, brackets removed: a person's two-word name if WordNet lists one ("Babe Ruth",
        not "Ruth" or "George Herman Ruth"), else the fullest; for everything else its first word ("Paris", not
        "City of Light")."""
        if s is None:
            return ""
        best = s.words[0]
        if s.pos == "n" and s.lexfile == LEX_PERSON and best[:1].isupper():
            # "Babe Ruth" over "Ruth" and "George Herman Ruth": two words if WordNet has them, else the fullest
            cands = [w for w in s.words if len(w.split()) <= 4] or [best]
            two = [w for w in cands if len(w.split()) == 2]
            best = two[0] if two else max(cands, key=lambda w: (len(w.split()), -s.words.index(w)))
        return re.sub(r"\s*\(.*?\)", "", best).strip()

    def is_instance(self, s: Synset) -> bool:
        return any(p.symbol == "@i" for p in s.pointers)

    def is_a(self, s: Synset, ancestor_word: str, depth: int = 12) -> bool:
        """Whether a hypernym chain of `s` (instance hypernyms included) reaches a synset holding `ancestor_word`."""
        frontier, seen = [s], set()
        for _ in range(depth):
            nxt = []
            for x in frontier:
                for h in self.related(x, "@") + self.related(x, "@i"):
                    if h.key in seen:
                        continue
                    if ancestor_word in h.words:
                        return True
                    seen.add(h.key)
                    nxt.append(h)
            frontier = nxt
        return False

    def antonyms(self, s: Synset) -> list[tuple[str, str]]:
        """(word, its antonym) pairs of the lexical "!" pointers of `s`."""
        out = []
        for p in s.pointers:
            if p.symbol == "!" and p.target in self.synsets and p.src and p.dst:
                t = self.synsets[p.target]
                if p.src <= len(s.words) and p.dst <= len(t.words):
                    out.append((s.words[p.src - 1], t.words[p.dst - 1]))
        return out
