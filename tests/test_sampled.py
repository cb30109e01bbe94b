"""The sampled offline corpus: filters, reproducible sampling, corpus names, mixes and one-line errors."""

from __future__ import annotations

import json
import lzma

import pytest

from mechscope.errors import MechscopeError
from mechscope.corpus import sampled as S
from mechscope.corpus import sampling
from mechscope.corpus.sources import is_heldout, iter_documents


def test_suite_prompts_are_kept_out():
    banned = S.suite_prompts()
    assert "Dallas is in the state of" in banned and len(banned) >= 80
    text = "Dallas is a big city.\nDallas is in the state of Texas, as everyone knows.\nIt has a zoo."
    assert S.strip_suite_prompts(text, banned) == "Dallas is a big city.\nIt has a zoo."
    # spacing differences and a prompt split over two lines do not slip through
    assert "state of" not in S.strip_suite_prompts("x\nDallas  is in the\tstate of Texas", banned)
    assert S.strip_suite_prompts("Dallas is in the\nstate of Texas", banned) == ""
    assert S.strip_suite_prompts("Dallas is in the state of", []) == "Dallas is in the state of"


def test_degenerate_text_is_detected():
    assert S.is_degenerate("short")
    assert S.is_degenerate("Texas Texas Texas " * 10)
    assert S.is_degenerate("A line that repeats.\n" * 3 + "And one more line that differs from the others.")
    assert not S.is_degenerate("Austin is the capital of Texas; Dallas and Houston are larger cities in the state.")


def test_seed_prompts_are_seeded_and_split_by_entity():
    names = [f"Entity{i}" for i in range(400)]
    take = lambda split, seed: [next(g) for g in [S.seed_prompts(split, seed, names)] for _ in range(200)]
    a, b, c = take("heldout", 0), take("heldout", 0), take("heldout", 1)
    assert a == b and a != c
    held = {n for n in names if is_heldout(n)}
    used = {n for p in take("train", 0) for n in names if n in p.split()}
    assert used and not used & held  # training prompts never name held-out entities
    assert any("+" in p or "×" in p or "加" in p for p in a)  # numbers and arithmetic
    assert any("是" in p or "关于" in p for p in a)  # several languages


def test_sampling_is_reproducible_and_filtered(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(sampling, "suite_prompts", lambda: ["Dallas is in the state of"])
    monkeypatch.setattr(sampling, "is_degenerate", lambda text, min_chars=40: len(text) < 5)  # random tiny model
    cfg = S.SampleConfig(split="heldout", chars=600, max_new_tokens=12, batch_size=3, seed=3)
    s1 = S.build_sampled(tiny, cfg, tmp_path / "a.jsonl.xz")
    s2 = S.build_sampled(tiny, cfg, tmp_path / "b.jsonl.xz")
    a = lzma.decompress((tmp_path / "a.jsonl.xz").read_bytes())
    assert a == lzma.decompress((tmp_path / "b.jsonl.xz").read_bytes()) and s1["chars"] == s2["chars"] >= 600
    docs = [json.loads(x)["text"] for x in a.decode().splitlines()]
    assert len(docs) == len(set(docs)) == s1["documents"]
    other = S.build_sampled(
        tiny, S.SampleConfig(split="heldout", chars=600, max_new_tokens=12, batch_size=3, seed=4), tmp_path / "c.jsonl"
    )
    assert (tmp_path / "c.jsonl").read_text() != a.decode() and other["documents"] > 0


@pytest.mark.parametrize("batching", ["pad", "length"])
def test_padded_batches_sample_each_row_as_if_alone(tiny, batching):
    # top_p → 0 keeps only the most likely token: greedy, so rows can be compared across batch compositions
    cfg = S.SampleConfig(max_new_tokens=10, top_p=1e-6, batching=batching)
    prompts = [tiny.tokenizer(t)["input_ids"] for t in ("The cat sat on", "Hi", "One two three four five six")]
    assert len({len(p) for p in prompts}) == 3  # three lengths: the batch needs padding
    gen = __import__("torch").Generator().manual_seed(0)
    together = S.sample_batch(tiny, prompts, cfg, gen)
    alone = [S.sample_batch(tiny, [p], cfg, gen)[0] for p in prompts]
    assert together == alone and all(len(r) > 0 for r in together)


def test_batching_modes_give_their_own_reproducible_streams(tiny):
    base = dict(split="heldout", chars=300, max_new_tokens=8, batch_size=4, seed=1)
    pad = list(sampling.generate_documents(tiny, S.SampleConfig(**base)))
    assert pad == list(sampling.generate_documents(tiny, S.SampleConfig(**base)))
    length = list(sampling.generate_documents(tiny, S.SampleConfig(**base, batching="length")))
    assert pad and length and pad != length
    with pytest.raises(MechscopeError, match="batching"):
        S.SampleConfig(batching="ragged")


def test_sampling_that_keeps_nothing_is_an_error(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(sampling, "is_degenerate", lambda text, min_chars=40: True)
    cfg = S.SampleConfig(chars=100, max_new_tokens=8, batch_size=2, budget_s=0.01)
    with pytest.raises(MechscopeError, match="no text"):
        S.build_sampled(tiny, cfg, tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_sample_config_is_validated():
    for kw in ({"split": "all"}, {"chars": 0}, {"temperature": 0}, {"top_p": 1.5}, {"budget_s": -1}):
        with pytest.raises(MechscopeError):
            S.SampleConfig(**kw)


def _ship(tmp_path, monkeypatch, docs: list[str]) -> None:
    monkeypatch.setattr(S, "SHIPPED_CORPUS", tmp_path)
    lines = "\n".join(json.dumps({"id": str(i), "text": t}) for i, t in enumerate(docs)) + "\n"
    (tmp_path / "heldout-m.jsonl.xz").write_bytes(lzma.compress(lines.encode()))


def test_shipped_and_sampled_corpus_names(tmp_path, monkeypatch):
    _ship(tmp_path, monkeypatch, ["first document", "second document"])
    assert list(iter_documents("shipped:m", "heldout")) == ["first document", "second document"]
    assert list(iter_documents("sampled:m", "heldout")) == ["first document", "second document"]  # falls back
    with pytest.raises(MechscopeError, match="held-out split only"):
        list(iter_documents("shipped:m", "train"))
    with pytest.raises(MechscopeError, match="no 'train' split yet"):
        list(iter_documents("sampled:m", "train"))
    with pytest.raises(MechscopeError, match="not shipped"):
        list(iter_documents("shipped:other", "heldout"))
    with pytest.raises(MechscopeError, match="name a model"):
        list(iter_documents("shipped:", "heldout"))
    _ship(tmp_path, monkeypatch, [])
    with pytest.raises(MechscopeError, match="yielded no text"):
        list(iter_documents("shipped:m", "heldout"))


def test_mix_follows_the_stated_shares(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps({"id": f"a{i}", "text": "a" * 100}) for i in range(200)))
    b.write_text("\n".join(json.dumps({"id": f"b{i}", "text": "b" * 100}) for i in range(5)))
    counts: dict[str, int] = {}
    docs = list(S.mix_documents({str(a): 0.8, str(b): 0.2}, "all", cycle=True, counts=counts))
    assert len([d for d in docs if d[0] == "a"]) == 200  # the first source sets the length
    assert counts[str(b)] / sum(counts.values()) == pytest.approx(0.2, abs=0.01)  # b repeats to keep its share
    counts = {}
    docs = list(S.mix_documents({str(a): 0.8, str(b): 0.2}, "all", cycle=False, counts=counts))
    assert len([d for d in docs if d[0] == "b"]) == 5  # held-out text is never repeated


def test_lens_mix_filters_suite_prompts(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "sampled_dir", lambda model: tmp_path)
    (tmp_path / "train.jsonl").write_text(
        json.dumps({"text": "Dallas is in the state of Texas.\nIt is big and busy."}) + "\n"
    )
    monkeypatch.setattr(S, "MIX", {"sampled": 1.0, "wordnet": 1e-9, "builtin": 1e-9})
    import mechscope.corpus.sources as C

    real = C.iter_documents
    monkeypatch.setattr(
        C,
        "iter_documents",
        lambda src, split="train": (
            iter(["Plain text about nothing."]) if src in ("wordnet", "builtin") else real(src, split)
        ),
    )
    docs = list(S.iter_sampled_source("lens:m", "train"))
    assert docs[0] == "It is big and busy." and not any("state of" in d for d in docs)


def test_wordnet_glosses_split_and_missing(tmp_path, monkeypatch):
    if S.WORDNET_NOUNS.exists():
        held = list(iter_documents("wordnet-glosses", "heldout"))
        train_head = [d for _, d in zip(range(50), iter_documents("wordnet-glosses", "train"))]
        assert held and train_head and not set(held) & set(train_head)
        assert all(": " in line for line in held[0].splitlines())
    monkeypatch.setattr(S, "WORDNET_NOUNS", tmp_path / "nope" / "data.noun")
    with pytest.raises(MechscopeError, match="apt-get install wordnet-base"):
        list(iter_documents("wordnet-glosses", "heldout"))


def test_shipped_heldout_is_readable_and_free_of_suite_prompts():
    path = S.shipped_path("gemma3-270m")
    assert path.exists() and path.stat().st_size < 5 * 2**20  # a few MB at most
    docs = list(iter_documents("shipped:gemma3-270m", "heldout"))
    assert sum(map(len, docs)) > 200_000
    flat = " ".join(" ".join(d.split()) for d in docs)
    assert not [p for p in S.suite_prompts() if p in flat]


def test_train_shards_are_read_in_seed_order(tmp_path, monkeypatch):
    import lzma

    from mechscope.corpus import sampled

    monkeypatch.setattr(sampled, "REPO_CORPUS", tmp_path / "repo")
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "repo" / sampled.SAMPLED_VERSION / "m"
    d.mkdir(parents=True)
    for seed in (10, 2, 1):
        data = json.dumps({"id": f"s{seed}", "text": f"shard {seed}"}) + "\n"
        (d / f"train-s{seed}.jsonl.xz").write_bytes(lzma.compress(data.encode()))
    (d / "train-s1.stats.json").write_text("{}")  # not a shard
    assert list(iter_documents("sampled:m", "train")) == ["shard 1", "shard 2", "shard 10"]
    assert list(iter_documents("sampled:m@2", "train")) == ["shard 1", "shard 2"]  # the first N, in seed order
    for bad, msg in (("sampled:m@0", "after '@'"), ("sampled:m@x", "after '@'"), ("sampled:m@4", "only 3 train")):
        with pytest.raises(MechscopeError, match=msg):
            list(iter_documents(bad, "train"))
    cache = sampled.sampled_dir("m")  # a shard in the cache wins over the checkout's
    cache.mkdir(parents=True)
    (cache / "train-s3.jsonl").write_text(json.dumps({"text": "cached"}) + "\n")
    assert list(iter_documents("sampled:m", "train")) == ["cached"]
