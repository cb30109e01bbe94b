"""Corpus building (`mechscope build-corpus`), short documents (`facts`, `prompts:MODEL`) and the short-document
chunk mode: resume, dedup, the lens suite kept out, entities first, sequences that start at BOS.

Fast: small in-memory sources and a word tokenizer; the real WordNet and Gemma tokenizer where installed (no
model forward)."""

from __future__ import annotations

import json
import lzma
import random

import pytest
from extras import require_path

from mechscope.cli import main as cli_main
from mechscope.corpus import build as B
from mechscope.corpus.build_config import CorpusBuildConfig
from mechscope.corpus.build_sources import Doc, Source
from mechscope.corpus.short_docs import cut_short, is_short_corpus
from mechscope.corpus.sources import chunk_stream, iter_documents, pad_chunks
from mechscope.corpus.suite_filter import SuiteFilter, suite_items
from mechscope.corpus.wordnet_db import WORDNET_DIR
from mechscope.errors import MechscopeError

SUITE = SuiteFilter(["Dallas is in the state of", "Oakland is in the state of"], [("Dallas", "Texas", "")])


def _words(text: str) -> int:
    return len(text.split())


def _sources(n: int = 600, crash_after: int | None = None) -> dict[str, Source]:
    """Three deterministic sources; 'a' repeats some documents (dedup) and carries suite text."""

    def a(model: str, seed: int):
        for i in range(n):
            if crash_after is not None and i == crash_after:
                raise KeyboardInterrupt  # a kill in the middle of a part
            j = i if i % 7 else i // 2  # every 7th document repeats an earlier one, every 14th in capitals
            rng = random.Random(f"a{seed}-{j}")
            text = f"alpha document {j} " + "  ".join(rng.choice(["x", "y", "z"]) for _ in range(20))
            text = text.upper() if i % 14 == 0 else text
            if j % 13 == 5:
                text += "\nDallas is in the state of Texas, a line that must go."
            yield Doc(text, "en")

    def b(model: str, seed: int):
        for i in range(n):
            yield Doc(f"beta Dokument {i} " + "wort " * (5 + i % 9), "de")

    def c(model: str, seed: int):
        for i in range(30):  # runs out: its share goes to the others
            yield Doc(f"gamma {i} " + "mot " * 12, "fr")

    return {name: Source(name, (), lambda m: [], fn) for name, fn in (("a", a), ("b", b), ("c", c))}


@pytest.fixture
def recipe(monkeypatch):
    from mechscope.corpus import build_config

    monkeypatch.setitem(build_config.RECIPES, "test", {"a": 0.5, "b": 0.3, "c": 0.2})


def _cfg(tmp_path, name: str, **kw) -> CorpusBuildConfig:
    return CorpusBuildConfig(
        "test", model="gemma3-270m", tokens=12_000, out=str(tmp_path / name), part_tokens=900, **kw
    )


def _records(path) -> list[dict]:
    return [json.loads(x) for x in lzma.open(path, "rt", encoding="utf-8") if x.strip()]


def _build(cfg, **kw) -> dict:
    return B.build_corpus(
        cfg, sources=kw.pop("sources", None) or _sources(), count_tokens=_words, suite=SUITE, progress=False, **kw
    )


def test_resume_after_an_interruption_gives_the_same_documents(tmp_path, recipe):
    full = _build(_cfg(tmp_path, "full.jsonl.xz"))
    assert full["tokens"] >= 12_000 and full["parts"] > 4 and "c" in full["exhausted_sources"]
    # stopped after two parts, then killed in the middle of a later part, then resumed
    stopped = _build(_cfg(tmp_path, "cut.jsonl.xz", stop_after_parts=2))
    assert stopped["interrupted_after_parts"] == 2
    with pytest.raises(MechscopeError, match="--resume"):  # a partial build is never silently restarted
        _build(_cfg(tmp_path, "cut.jsonl.xz"))
    with pytest.raises(KeyboardInterrupt):
        _build(_cfg(tmp_path, "cut.jsonl.xz", resume=True), sources=_sources(crash_after=300))
    with pytest.raises(MechscopeError, match="other seed"):  # settings must match the partial build
        _build(
            CorpusBuildConfig(
                "test", tokens=12_000, seed=1, out=str(tmp_path / "cut.jsonl.xz"), part_tokens=900, resume=True
            )
        )
    resumed = _build(_cfg(tmp_path, "cut.jsonl.xz", resume=True))
    assert _records(tmp_path / "cut.jsonl.xz") == _records(tmp_path / "full.jsonl.xz")
    for key in ("tokens", "documents", "tokens_per_source", "duplicates_per_source", "tokens_per_language"):
        assert resumed[key] == full[key], key
    assert not (tmp_path / "cut.jsonl.xz.parts").exists()  # parts are removed once joined
    # a finished build: --resume reports it, no flag refuses, --force rebuilds the same file
    assert _build(_cfg(tmp_path, "cut.jsonl.xz", resume=True))["tokens"] == full["tokens"]
    with pytest.raises(MechscopeError, match="exists"):
        _build(_cfg(tmp_path, "cut.jsonl.xz"))
    _build(_cfg(tmp_path, "cut.jsonl.xz", force=True))
    assert _records(tmp_path / "cut.jsonl.xz") == _records(tmp_path / "full.jsonl.xz")


def test_dedup_shares_and_suite_lines(tmp_path, recipe):
    stats = _build(_cfg(tmp_path, "c.jsonl.xz"))
    recs = _records(tmp_path / "c.jsonl.xz")
    keys = [B.text_key(r["text"]) for r in recs]
    assert len(keys) == len(set(keys))  # exact and case / whitespace variants removed
    assert stats["duplicates_per_source"]["a"] > 0
    assert not any("state of" in r["text"] for r in recs) and stats["suite_trimmed_documents"] > 0
    assert sum(r["tokens"] for r in recs) == stats["tokens"] == sum(stats["tokens_per_source"].values())
    # c ran out at its 30 documents; a and b keep their 5:3 ratio
    assert stats["documents_per_source"]["c"] == 30
    assert stats["tokens_per_source"]["a"] / stats["tokens_per_source"]["b"] == pytest.approx(5 / 3, rel=0.05)
    assert stats["tokens_per_language"].keys() == {"en", "de", "fr"}
    # the built file is the held-out split of its corpus name, and no training text
    name = stats["corpus_name"]
    assert name == f"test:{tmp_path / 'c.jsonl.xz'}"
    assert list(B.iter_built_source(name, "heldout")) == [r["text"] for r in recs]
    with pytest.raises(MechscopeError, match="index-features"):
        list(B.iter_built_source(name, "train"))


def test_index_corpus_name_reads_a_built_file(tmp_path):
    out = tmp_path / "i.jsonl.xz"
    out.write_bytes(lzma.compress(b'{"id": "x-0", "text": "one"}\n') + lzma.compress(b'{"id": "x-1", "text": "two"}\n'))
    assert list(iter_documents(f"index:{out}", "heldout")) == ["one", "two"]  # concatenated parts read as one
    with pytest.raises(MechscopeError, match="build-corpus index"):
        list(iter_documents(f"index:{tmp_path / 'missing.jsonl.xz'}", "heldout"))


def _errors(capsys) -> list[str]:
    # the CLI may say "starting (loading libraries)…" on a slow machine; errors are the lines that count
    return [x for x in capsys.readouterr().err.splitlines() if "error" in x]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.jsonl.xz"
    for argv, match in (
        (["build-corpus", "novel"], "unknown recipe 'novel'"),
        (["build-corpus", "index", "--tokens", "5"], "--tokens must lie between"),
        (["build-corpus", "index", "--out", str(tmp_path / "x.txt")], ".jsonl.xz"),
    ):
        assert cli_main(argv) == 2
        err = _errors(capsys)
        assert len(err) == 1 and match in err[0], err
    monkeypatch.setattr(B, "missing_packages", lambda srcs: ["fortunes-es", "manpages-ja"])
    assert cli_main(["build-corpus", "index", "--out", str(out), "--tokens", "20000"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "apt-get install fortunes-es manpages-ja" in err[0]
    out.write_text("something")
    assert cli_main(["build-corpus", "index", "--out", str(out), "--tokens", "20000"]) == 2
    assert "--force" in _errors(capsys)[0] and out.read_text() == "something"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl.xz"]  # nothing half-written


def test_suite_filter_drops_prompts_and_fact_sentences():
    prompts, facts = suite_items()
    assert "Dallas is in the state of" in prompts and ("Dallas", "Texas", "") in facts
    assert ("Michael Jordan", "basketball", "") in facts and any(f[0] == "hot" and f[2] for f in facts)
    f = SuiteFilter.default()
    for bad in (
        "Dallas is in the state of Texas.",
        "dallas  IS in the state\tof",
        "Dallas is a city in Texas.",
        "Dallas是位于Texas的城市。",
        "Michael Jordan played basketball for Chicago.",
        'The opposite of "hot" is "cold".',
        "2+2=4",
    ):
        assert not f.line_ok(bad), bad
    for ok in ("Houston is a city in Texas.", "os.rename(old, new)", "Dallas has a zoo.", "12+2=14"):
        assert f.line_ok(ok), ok
    assert (
        f.clean("Q: Where is Dallas?\nIt is big.\nDallas is in the state of\nTexas")
        == "Q: Where is Dallas?\nIt is big."
    )


def test_facts_start_with_their_entity_and_keep_the_suite_out():
    from mechscope.corpus.facts import FactMaker
    from mechscope.corpus.wordnet_db import WordNetDB

    require_path(WORDNET_DIR / "data.noun", "apt-get install wordnet-base")
    wn = WordNetDB.load()
    maker = FactMaker(wn, SuiteFilter.default())
    keys = sorted(wn.synsets)
    keys = random.Random(0).sample(keys, 400) + [
        s.key for w in ("Dallas", "Paris", "Michael Jordan", "Mozart", "Tokyo", "Texas", "hot") for s in wn.find(w)
    ]
    groups = [g for g in (maker.group(k, 0) for k in keys) if g is not None]
    assert len(groups) > 250
    assert {d.lang for g in groups for d in g.docs} >= {"en", "fr", "es", "de"}
    assert maker.group(keys[0], 0) == maker.group(keys[0], 0)  # seeded per group
    suite = SuiteFilter.default()
    prompts = [p.lower() for p in suite.prompts]
    tok = _gemma_tokenizer()
    lengths, late = [], []
    for g in groups:
        for d in g.docs:
            assert suite.line_ok(d.text.replace("\n", " ")), d.text
            assert not any(p in " ".join(d.text.lower().split()) for p in prompts)
            enc = tok(d.text, add_special_tokens=False, return_offsets_mapping=True)
            lengths.append(len(enc["input_ids"]))
            start = d.text.lower().find(d.entity.lower())
            assert start >= 0, (d.entity, d.text)
            first = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start)
            if first > 5:  # the entity's first token is among the document's first 6
                late.append(d.text)
    assert not late, late[:3]
    lengths.sort()
    assert 16 <= lengths[len(lengths) // 2] <= 48 and lengths[int(0.95 * len(lengths))] <= 64


def _gemma_tokenizer():
    from mechscope.models.loading import ensure_converted
    from mechscope.models.tokenizer import load_tokenizer

    return load_tokenizer(ensure_converted("gemma3-270m"), fast=True)  # the bundled model, converted once


class _WordTok:
    """A whitespace tokenizer with BOS (id 1) and "\\n\\n" as one token (id 2)."""

    bos_token_id = 1
    add_bos_token = True

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"<bos>": 1, "\n\n": 2}
        self.inv = {1: "<bos>", 2: "\n\n"}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [1] if add_special_tokens else []
        for part in text.split("\n\n"):
            if ids and ids[-1] != 1 and part:
                ids.append(2)
            for w in part.split():
                if w not in self.vocab:
                    self.vocab[w] = len(self.vocab) + 1
                    self.inv[self.vocab[w]] = w
                ids.append(self.vocab[w])
        return {"input_ids": ids}


def test_short_mode_sequences_start_at_bos_and_a_document(tmp_path):
    groups = []
    for g in range(60):
        pieces = [f"E{g} fact {i} " + "w " * random.Random(g * 10 + i).randint(3, 18) for i in range(5)]
        groups.append(pieces)
    path = tmp_path / "groups.jsonl"
    path.write_text("".join(json.dumps({"id": f"g{g}", "text": "\n\n".join(p)}) + "\n" for g, p in enumerate(groups)))
    tok = _WordTok()
    starts = {p.split()[0] + " " + p.split()[1] + " " + p.split()[2] for ps in groups for p in ps}
    seqs = list(chunk_stream(tok, str(path), "all", 24, seed=0, doc_starts=True))
    packed = list(chunk_stream(tok, str(path), "all", 24, seed=0))
    assert {len(s) for s in packed} == {24} and len({len(s) for s in seqs}) > 3
    for s in seqs:
        words = [tok.inv[int(i)] for i in s]
        assert words[0] == "<bos>" and len(s) <= 24
        assert " ".join(words[1:4]) in starts  # a short document's first words follow BOS
        entities = {w for w in words if w.startswith("E")}
        assert len(entities) == 1, words  # one group per sequence: never another entity's text
    # every piece is read whole, once: the tokens after BOS are the pieces' tokens and the blank lines between
    body = sum(len(s) - 1 - int((s == 2).sum()) for s in seqs)
    assert body == sum(len(tok(p, add_special_tokens=False)["input_ids"]) for ps in groups for p in ps)
    ids, mask = pad_chunks(seqs[:5])
    assert ids.shape == (5, max(len(s) for s in seqs[:5])) and int(mask.sum()) == sum(len(s) for s in seqs[:5])
    assert (ids[:, 0] == 1).all()


def test_short_corpus_names_and_cutting():
    assert is_short_corpus("facts") and is_short_corpus("lens:gemma3-270m,prompts:gemma3-270m@4*2")
    assert not is_short_corpus("builtin,wordnet*4") and not is_short_corpus("shipped:gemma3-270m")
    text = "Dallas is a big city. " * 3 + "It has " + "very " * 60 + "long streets. Short. End here now, friends."
    pieces = cut_short(text)
    assert all(len(p) <= 190 for p in pieces) and pieces[0].startswith("Dallas")
    assert " ".join(pieces).split() == text.split()  # nothing lost, nothing added


def test_prompts_corpus_mixes_facts_and_cut_sampled_text(tmp_path, monkeypatch):
    import mechscope.corpus.facts as F
    import mechscope.corpus.sampled as S

    monkeypatch.setattr(S, "sampled_dir", lambda model: tmp_path)
    sampled = [
        "Here is a short encyclopedia entry.\n\nLyon is a city. " + "It has many old streets and bridges. " * 8,
        "Dallas is in the state of Texas. Dallas has a zoo.\nIts people like football a lot.",
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sampled))
    facts = [
        f"Entity{i} is a town in Nowhere. Entity{i} lies in Nowhere.\n\nEntity{i} ist eine Stadt." for i in range(40)
    ]
    monkeypatch.setattr(F, "iter_facts", lambda split: iter(facts))
    docs = list(iter_documents("prompts:m", "train"))
    assert [d for d in docs if d in facts] == facts  # the mix ends with the facts, in order
    cut = [d for d in docs if d not in facts]
    assert cut and all(len(p) <= 190 for d in cut for p in d.split("\n\n"))
    assert any(d.startswith("Lyon is a city.") for d in cut)  # the prompt's preamble is gone
    assert not any("Dallas" in d and "Texas" in d for d in cut)  # the suite fact's line is gone
    share = sum(map(len, cut)) / sum(map(len, docs))
    assert 0.2 < share < 0.4  # 30% sampled text, repeated in the train split


def test_cli_builds_a_corpus_that_index_features_can_read(tmp_path, capsys, monkeypatch):
    """The command end to end on small stand-in sources, counted with the real tokenizer; the result reads as
    `index:FILE` through chunk_stream exactly as index-features reads its corpus (held-out split, no shuffle)."""
    tok = _gemma_tokenizer()
    shard = tmp_path / "shard.jsonl"
    shard.write_text("{}\n")
    small = _sources(n=900)
    stand_in = {
        n: Source(n, (), (lambda m: [shard]), small[k].docs) for n, k in zip(B.SOURCES, ["a", "b", "a", "b", "c", "b"])
    }
    monkeypatch.setattr(B, "SOURCES", stand_in)
    out = tmp_path / "idx.jsonl.xz"
    rc = cli_main(["build-corpus", "index", "--out", str(out), "--tokens", "10000", "--json", "--quiet"])
    stats = json.loads(capsys.readouterr().out)
    assert rc == 0 and stats["tokens"] >= 10_000 and out.exists() and stats["corpus_name"] == f"index:{out}"
    assert json.loads(out.with_name("idx.stats.json").read_text())["documents"] == stats["documents"]
    chunks = list(chunk_stream(tok, stats["corpus_name"], "heldout", 64, seed=0, chunk_buffer=0))
    assert len(chunks) > 100 and {len(c) for c in chunks} == {64}
