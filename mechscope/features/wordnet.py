"""Word categories from WordNet's noun hierarchy, offline: what "Texas", "Ohio" and "Nevada" have in common.

A label generalises a feature's firing tokens to the most specific WordNet noun category (hypernym or
instance hypernym, e.g. "American state") that covers most of them; held-out scoring then predicts the feature
fires on *every* member of that category, seen in the evidence or not. Read from Debian's wordnet-base
(/usr/share/wordnet, as `mechscope.corpus.offline_text` reads it); without it categories are simply off.

>>> wn = WordNet.load()                                              # doctest: +SKIP
>>> wn.best_category({"texas": 5, "ohio": 3, "nevada": 2}).name      # doctest: +SKIP
'American state'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
SENSES = 2  # a word's most frequent senses only: "set" has 45 noun senses, almost all noise for a label
MIN_DEPTH = 5  # categories nearer the root ("object", "abstraction", "person") say too little
MIN_COVER = 0.5  # share of the evidence a category must cover
# categories too vague to name a feature by, however deep WordNet puts them
VAGUE = frozenset(
    "organism|living thing|person|individual|causal agent|whole|object|physical entity|abstraction|group|"
    "social group|people|act|event|attribute|state|relation|matter|measure|psychological feature|communication|"
    "artifact|instrumentality|location|region|thing|unit|part|substance".split("|")
)
_WORD = re.compile(r"^[a-z][a-z'-]*[a-z]$")


@dataclass(frozen=True)
class Category:
    """A WordNet category that covers a share of a feature's evidence tokens."""

    synset: str
    name: str
    depth: int
    cover: float
    members: tuple[str, ...]  # the evidence keys it covers, most frequent first


class WordNet:
    """Noun synsets: each word's first senses and each synset's hypernyms, names and depth from the root."""

    def __init__(self, words: dict[str, list[str]], hypers: dict[str, list[str]], names: dict[str, str]) -> None:
        self.words, self.hypers, self.names = words, hypers, names
        self._depth: dict[str, int] = {}
        self._anc: dict[str, frozenset[str]] = {}

    @staticmethod
    @lru_cache(maxsize=1)
    def load(directory: str = str(WORDNET_DIR)) -> "WordNet | None":
        """The noun hierarchy (a few seconds, once per process), or None when WordNet is not installed."""
        d = Path(directory)
        if not (d / "data.noun").exists() or not (d / "index.noun").exists():
            return None
        hypers: dict[str, list[str]] = {}
        names: dict[str, str] = {}
        with open(d / "data.noun", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # the licence header
                    continue
                head = line.split(" | ")[0].split()
                off, n_words = head[0], int(head[3], 16)
                names[off] = head[4].replace("_", " ")
                p = 4 + 2 * n_words
                n_ptr = int(head[p])
                ptrs = head[p + 1 : p + 1 + 4 * n_ptr]
                hypers[off] = [ptrs[i + 1] for i in range(0, len(ptrs), 4) if ptrs[i] in ("@", "@i")]
        other = _tagged(d, ("adj", "verb", "adv"))  # how often a word was tagged as another part of speech
        words: dict[str, list[str]] = {}
        for lemma, (tagged, offsets) in _index(d / "index.noun").items():
            # "southwestern" is a dialect as a noun, but an adjective in text: mostly-other words get no category
            if other.get(lemma, 0) <= tagged:
                words[lemma] = offsets[:SENSES]
        return WordNet(words, hypers, names)

    def depth(self, s: str) -> int:
        """Shortest distance from the root ("entity" is 0)."""
        if s not in self._depth:
            self._depth[s] = 0  # guards against a cycle while recursing
            hs = self.hypers.get(s, [])
            self._depth[s] = 1 + min(self.depth(h) for h in hs) if hs else 0
        return self._depth[s]

    def ancestors(self, s: str) -> frozenset[str]:
        if s not in self._anc:
            self._anc[s] = frozenset()
            out = {s}
            for h in self.hypers.get(s, []):
                out |= self.ancestors(h)
            self._anc[s] = frozenset(out)
        return self._anc[s]

    def senses(self, key: str) -> list[str]:
        """The first noun senses of a normalised token ("texas", "states" → its singular), [] for non-words."""
        if not _WORD.match(key) or len(key) < 3:
            return []
        for form in (key, key[:-1] if key.endswith("s") else "", key[:-3] + "y" if key.endswith("ies") else ""):
            if form and form in self.words:
                return self.words[form]
        return []

    def categories(self, key: str) -> frozenset[str]:
        """Every category (hypernym closure of the first senses) of a normalised token."""
        out: set[str] = set()
        for s in self.senses(key):
            out |= self.ancestors(s)
        return frozenset(out)

    def best_category(self, counts: dict[str, int], min_cover: float = MIN_COVER) -> Category | None:
        """The deepest category covering ≥ `min_cover` of the evidence (and ≥ 80% of what the widest covers) with
        at least two distinct words; None when none does."""
        total = sum(counts.values()) or 1
        cover: dict[str, list[str]] = {}
        for k in sorted(counts, key=lambda k: -counts[k]):
            for s in self.categories(k):
                cover.setdefault(s, []).append(k)
        found = []
        for s, ks in cover.items():
            share = sum(counts[k] for k in ks) / total
            if len(ks) >= 2 and share >= min_cover and self.depth(s) >= MIN_DEPTH and self.names.get(s) not in VAGUE:
                found.append((share, self.depth(s), s, ks))
        if not found:
            return None
        # the deepest of those covering nearly as much as the widest: "weekday" would drop Sunday, "day of the
        # week" keeps it; "outdoor game" would drop tennis, "sport" keeps it
        top = max(f[0] for f in found)
        share, depth, s, ks = max((f for f in found if f[0] >= 0.8 * top), key=lambda f: (f[1], f[0], f[2]))
        return Category(s, self.names.get(s, s), depth, round(share, 3), tuple(ks))

    def members(self, synset: str, keys: list[str]) -> set[str]:
        """Which of `keys` (normalised tokens) belong to the category `synset`."""
        return {k for k in keys if synset in self.categories(k)}


def _index(path: Path) -> dict[str, tuple[int, list[str]]]:
    """lemma → (tagged-sense count, synset offsets in sense order) of one WordNet index file."""
    out: dict[str, tuple[int, list[str]]] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):
                continue
            parts = line.split()
            n_syn, n_ptr = int(parts[2]), int(parts[3])
            out[parts[0]] = (int(parts[5 + n_ptr]), parts[len(parts) - n_syn :])
    return out


def _tagged(d: Path, poses: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pos in poses:
        for lemma, (tagged, _) in _index(d / f"index.{pos}").items():
            out[lemma] = max(out.get(lemma, 0), tagged)
    return out


def plural(name: str) -> str:
    """ "American state" → "American states" (labels name a class of words)."""
    if name.endswith(("s", "x", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and len(name) > 1 and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"
