"""Short documents of templated WordNet facts, each starting with the thing it is about (`--corpus facts`).

One group per synset: for a named entity ("Dallas": instance of "city", part of "Texas") up to three English
documents and one or two in French, Spanish, German or Chinese, each led by a different fact and filled with
the entity's other facts up to `MAX_CHARS` (≈ 16–48 tokens):

    Dallas is a city in Texas. Dallas is a large commercial and industrial city in northeastern Texas …
    Dallas liegt in Texas. Dallas ist eine Stadt in Texas.

Facts come from WordNet's relations: instance hypernym (category), part holonym (location; "capital of" for
capitals), part meronyms (what a place contains), member holonyms and meronyms, other names, the languages
WordNet ties to a country, nationality nouns, antonyms, and the gloss. Common words (nouns, verbs, adjectives)
get English documents from their hypernyms, hyponyms, parts, synonyms, antonyms and glosses. Every sentence
passes the lens suite filter (`SuiteFilter`) first. Groups come in a seeded order, named entities and common
words interleaved by characters (`ENTITY_SHARE`); a group is held out when SHA-1 of its entity name ≡ 0 mod 20,
the rule the sampled corpus uses for its seed entities. Made once per seed (≈ 30 s) into
`$MECHSCOPE_CACHE/corpus/facts-v1/` (`cached_fact_groups`), named after the suite file's hash.

>>> g = next(fact_groups(seed=0))                    # doctest: +SKIP
>>> g.docs[0].text.startswith(g.entity)              # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_text, cache_dir
from mechscope.corpus.fact_templates import AND, CAPITALS, CATEGORIES, LANGS, SETTLEMENTS, SPORTS, TEMPLATES
from mechscope.corpus.offline_text import is_heldout
from mechscope.corpus.suite_filter import SuiteFilter
from mechscope.corpus.wordnet_db import LEX_GROUP, LEX_LOCATION, LEX_PERSON, Synset, WordNetDB

FACTS_VERSION = "facts-v1"
MIN_CHARS, MAX_CHARS = 40, 190  # a document's length: ≈ 10–48 tokens of English
MAX_DEFINITION = 150  # longer glosses would not fit a short document beside another fact
ENTITY_SHARE = 0.6  # characters from named entities; the rest from common words
OTHER_LANGS = {"fr": 0.3, "es": 0.3, "de": 0.3, "zh": 0.1}  # an entity's non-English documents

Facts = dict[str, dict[str, tuple[str, list[str]]]]  # kind → language → (entity, wordings)


@dataclass(frozen=True)
class FactDoc:
    """One short document: about `entity`, in `lang`, led by a fact of `kind`."""

    entity: str
    lang: str
    kind: str
    text: str


@dataclass(frozen=True)
class FactGroup:
    """The documents about one synset (`key` "pos:offset"); the corpus text joins them with blank lines."""

    key: str
    entity: str
    docs: tuple[FactDoc, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(d.text for d in self.docs)


def _article(word: str) -> str:
    w = word.lower()
    vowel = w[:1] in "aeiou" and not w.startswith(("uni", "use", "eu", "one"))
    return "an" if vowel or w.startswith(("hour", "honest")) else "a"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str], lang: str) -> str:
    if len(items) == 1:
        return items[0]
    sep = "、" if lang == "zh" else ", "
    return sep.join(items[:-1]) + f" {AND[lang]} " + items[-1] if lang != "zh" else sep.join(items)


class _Filler:
    """Formats a kind's wordings in one language, keeping only sentences that pass the suite filter."""

    def __init__(self, suite: SuiteFilter) -> None:
        self.suite = suite

    def __call__(self, out: Facts, kind: str, lang: str, e: str, **fields: str) -> None:
        wordings = TEMPLATES[kind].get(lang)
        if not wordings or not e:
            return
        f = dict(fields, e=e, E=_cap(e), a_e=f"{_article(e)} {e}", A_e=_cap(f"{_article(e)} {e}"))
        if "definition" in f:
            f["Definition"] = _cap(f["definition"])
        if "in_loc" in f:
            f["In_loc"] = _cap(f["in_loc"])
        sents = [w.format(**f) for w in wordings]
        # a question and its answer are two lines: judged as one
        sents = [s for s in sents if self.suite.line_ok(s.replace("\n", " "))]
        if sents:
            out.setdefault(kind, {})[lang] = (e, sents)


def _category(cat: str, lang: str) -> str | None:
    if lang == "en":
        return f"{_article(cat)} {cat}" if cat else None
    row = CATEGORIES.get(cat)
    return row[("fr", "es", "de", "zh").index(lang)] if row else None


class FactMaker:
    """Builds each synset's facts (`entity_facts`, `word_facts`) and documents (`group`)."""

    def __init__(self, wn: WordNetDB, suite: SuiteFilter) -> None:
        self.wn, self.fill = wn, _Filler(suite)
        self.languages: dict[str, list[str]] = {}  # country key → language names ("France": ["French"])
        self.spoken_in: dict[str, str] = {}  # language key → country name
        for s in wn.synsets.values():
            if s.pos == "n" and not wn.is_instance(s):
                region = wn.first(s, ";r")
                if region is not None and region.lexfile == LEX_LOCATION and wn.is_a(s, "language"):
                    self.languages.setdefault(region.key, []).append(wn.name(s))
                    self.spoken_in[s.key] = wn.name(region)

    def _country(self, s: Synset, depth: int = 4) -> Synset | None:
        """The first synset up the part-holonym chain of `s` that is a country."""
        frontier = self.wn.related(s, "#p")
        for _ in range(depth):
            for h in frontier:
                if "country" in self.wn.name(self.wn.first(h, "@i")) or self.wn.is_a(h, "country"):
                    return h
            frontier = [g for h in frontier for g in self.wn.related(h, "#p")]
        return None

    def _names(self, syns: list[Synset], rng: random.Random, k: int = 4) -> list[str]:
        names = list(dict.fromkeys(n for n in (self.wn.name(x) for x in syns) if n))
        return rng.sample(names, k) if len(names) > k else names

    def entity_facts(self, s: Synset, rng: random.Random) -> Facts:
        """The facts of a named entity (an instance synset), in every language that can word them."""
        wn, out = self.wn, {}
        e = wn.name(s)
        hyper = wn.first(s, "@i")
        cat = wn.name(hyper)
        holo = wn.first(s, "#p")
        loc = wn.name(holo)
        if cat == "national capital":  # WordNet puts Ottawa in Ontario: a national capital is its country's
            country = self._country(s)
            loc = wn.name(country) if country is not None else ""
            cat = cat if country is not None else "city"
        settlement = holo is not None and any(w in wn.name(wn.first(holo, "@i")) for w in SETTLEMENTS)
        past = s.lexfile == LEX_PERSON
        aliases = [w for w in s.words if w.lower() != e.lower() and len(w.split()) <= 4 and len(w) > 2]
        alias = rng.choice(aliases) if aliases else ""
        parts = self._names(wn.related(s, "%p"), rng) if s.lexfile == LEX_LOCATION else []
        orgs = self._names(wn.related(s, "#m"), rng, 1)
        # a group's members ("Beatles": "John Lennon"); a place's member meronyms are its people ("Parisian")
        members = self._names(wn.related(s, "%m"), rng) if s.lexfile == LEX_GROUP else []
        for lang in LANGS:
            catl = _category(cat, lang)
            if loc and cat in CAPITALS:
                self.fill(out, "capital", lang, e, loc=loc)
            elif loc and catl:
                self.fill(out, "isa_loc", lang, e, cat=catl, loc=loc)
            if loc:
                self.fill(out, "loc", lang, e, loc=loc, in_loc=f"{'à' if settlement else 'en'} {loc}")
            if catl and not loc:
                self.fill(out, "isa_past" if past else "isa", lang, e, cat=catl, bare=cat)
            if alias:
                self.fill(out, "alias", lang, e, alias=alias)
            if parts:
                self.fill(out, "contains", lang, e, others=_join(parts, lang))
            if orgs:
                self.fill(out, "member_of", lang, e, org=orgs[0])
            if members:
                self.fill(out, "has_members", lang, e, others=_join(members, lang))
            if s.key in self.languages:
                self.fill(out, "language", lang, e, language=_join(self.languages[s.key][:2], lang))
        if cat in SPORTS:
            self.fill(out, "sport", "en", e, sport=SPORTS[cat])
        d = s.definition.split(";")[0].strip()  # "the largest city in Texas; located in …": the first clause
        if 0 < len(d) <= MAX_DEFINITION:
            self.fill(out, "gloss", "en", e, definition=d)
        return out

    def word_facts(self, s: Synset, rng: random.Random) -> Facts:
        """The facts of a common word (English; its antonyms in every language)."""
        wn, out = self.wn, {}
        w = s.words[0].split("(")[0].strip()
        d = s.definition if len(s.definition) <= MAX_DEFINITION else ""
        if s.pos == "n":
            loc = next((h for h in wn.related(s, "#m") if h.lexfile == LEX_LOCATION), None)
            if s.lexfile == LEX_PERSON and loc is not None and w[:1].isupper():
                self.fill(out, "nationality", "en", w, loc=wn.name(loc))
            if s.key in self.spoken_in:
                self.fill(out, "spoken_in", "en", w, loc=self.spoken_in[s.key])
            h = wn.first(s, "@")
            if h is not None:
                self.fill(out, "kind_of", "en", w, h=wn.name(h))
            kinds = self._names(wn.related(s, "~"), rng)
            if kinds:
                self.fill(out, "kinds", "en", w, others=_join(kinds, "en"))
            parts = self._names(wn.related(s, "%p"), rng)
            if parts:
                self.fill(out, "parts", "en", w, others=_join(parts, "en"))
            if d:
                self.fill(out, "word_gloss", "en", w, definition=d)
        elif s.pos == "v":
            h = wn.first(s, "@")
            if h is not None:
                self.fill(out, "verb_kind", "en", w, h=wn.name(h))
            if d:
                self.fill(out, "verb_gloss", "en", w, definition=d)
        else:
            sim = wn.first(s, "&")
            if sim is not None:
                self.fill(out, "similar", "en", w, alias=wn.name(sim))
            if d:
                self.fill(out, "adj_gloss", "en", w, definition=d)
        others = [x for x in s.words[1:] if x.lower() != w.lower()]
        if others and s.pos == "n":
            self.fill(out, "synonym", "en", w, alias=rng.choice(others))
        for a, b in wn.antonyms(s)[:1]:
            for lang in LANGS:
                self.fill(out, "antonym", lang, a, b=b)
        return out

    def group(self, key: str, seed: int) -> FactGroup | None:
        """A synset's documents (None when it has too few facts for one), worded by a generator seeded with
        (seed, key), so a group does not depend on the order groups are made in."""
        s = self.wn.get(key)
        rng = random.Random(f"{FACTS_VERSION}-{seed}-{key}")
        entity = self.wn.is_instance(s)
        facts = self.entity_facts(s, rng) if entity else self.word_facts(s, rng)
        plan = [("en", 3 if entity else 2)]
        others = [lang for lang in OTHER_LANGS if any(lang in by_lang for by_lang in facts.values())]
        if others:
            first = rng.choices(others, [OTHER_LANGS[x] for x in others])[0]
            plan.append((first, 1))
            rest = [x for x in others if x != first]
            if entity and rest and rng.random() < 0.3:
                plan.append((rng.choice(rest), 1))
        docs = _assemble(facts, plan, rng)
        if not docs:
            return None
        return FactGroup(key, self.wn.name(s) if entity else s.words[0], tuple(docs))


def _assemble(facts: Facts, plan: list[tuple[str, int]], rng: random.Random) -> list[FactDoc]:
    """Documents per (language, count) of `plan`: each led by a different kind, then the language's other facts
    in a random order while the document stays within MAX_CHARS."""
    docs: list[FactDoc] = []
    for lang, n in plan:
        kinds = [k for k in facts if lang in facts[k]]
        for lead in rng.sample(kinds, min(n, len(kinds))):
            entity, wordings = facts[lead][lang]
            parts = [rng.choice(wordings)]
            rest = [k for k in kinds if k != lead]
            rng.shuffle(rest)
            for k in rest:
                sent = rng.choice(facts[k][lang][1])
                if len(" ".join(parts)) + 1 + len(sent) <= MAX_CHARS:
                    parts.append(sent)
            if len(" ".join(parts)) < MIN_CHARS:  # one short fact: add another wording of it
                more = [w for w in wordings if w not in parts]
                if more:
                    parts.append(rng.choice(more))
            text = " ".join(parts)
            if len(text) >= MIN_CHARS // 2 and all(text != d.text for d in docs):
                docs.append(FactDoc(entity, lang, lead, text))
    return docs


def fact_groups(seed: int = 0, wn: WordNetDB | None = None, suite: SuiteFilter | None = None) -> Iterator[FactGroup]:
    """Every fact group in a seeded order: named entities and common words interleaved by characters
    (ENTITY_SHARE), ending with the last entity group. Made from scratch (≈ 30 s); `cached_fact_groups` reads
    them from the cache."""
    wn = wn or WordNetDB.load()
    maker = FactMaker(wn, suite or SuiteFilter.default())
    ents = [k for k, s in wn.synsets.items() if wn.is_instance(s)]
    words = [k for k, s in wn.synsets.items() if not wn.is_instance(s)]
    rng = random.Random(f"{FACTS_VERSION}-order-{seed}")
    rng.shuffle(ents)
    rng.shuffle(words)
    chars = {"e": 0, "w": 0}
    wi = 0
    for key in ents:
        while wi < len(words) and chars["w"] < chars["e"] * (1 - ENTITY_SHARE) / ENTITY_SHARE:
            g = maker.group(words[wi], seed)
            wi += 1
            if g is not None:
                chars["w"] += len(g.text)
                yield g
        g = maker.group(key, seed)
        if g is not None:
            chars["e"] += len(g.text)
            yield g


def facts_cache(seed: int) -> Path:
    """Where `cached_fact_groups` keeps the groups of `seed`: named after the version, the seed and the suite
    file's hash (a changed suite filters other sentences)."""
    from mechscope.corpus.sampling import SUITE_FILE

    suite = hashlib.sha1(SUITE_FILE.read_bytes()).hexdigest()[:10]
    return cache_dir() / "corpus" / FACTS_VERSION / f"groups-s{seed}-{suite}.jsonl"


def cached_fact_groups(seed: int = 0, split: str = "all") -> Iterator[FactGroup]:
    """`fact_groups(seed)` of `split` ('train', 'heldout', 'all'), built once into the cache (`facts_cache`).

    A group is held out when SHA-1 of its entity name ≡ 0 mod 20 (the sampled corpus's rule for seed entities).
    """
    from mechscope.progress import step

    path = facts_cache(seed)
    if not path.exists():
        with step("assembling WordNet facts (once)"):
            lines = [
                json.dumps({"key": g.key, "entity": g.entity, "docs": [asdict(d) for d in g.docs]}, ensure_ascii=False)
                for g in fact_groups(seed)
            ]
            atomic_write_text(path, "\n".join(lines) + "\n")
    with path.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if split != "all" and (split == "heldout") != is_heldout(r["entity"]):
                continue
            yield FactGroup(r["key"], r["entity"], tuple(FactDoc(**d) for d in r["docs"]))


def iter_facts(split: str) -> Iterator[str]:
    """The documents of `--corpus facts`: one text per group, its short documents separated by blank lines."""
    n = 0
    for g in cached_fact_groups(0, split):
        n += 1
        yield g.text
    if n == 0:
        raise MechscopeError(f"the facts corpus has no text in its '{split}' split")
