"""Feature index: build/read round trip, labels (deterministic, held-out scored), search, CLI."""

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from mechscope.errors import MechscopeError
from mechscope.features import FeatureIndex, HeuristicLabeller, IndexConfig, Label, build_index
from mechscope.features.labels import FeatureInfo, guess_language, label_keywords


@pytest.fixture(scope="module")
def built(tiny, tiny_dir, tiny_tc, tmp_path_factory):
    path = tmp_path_factory.mktemp("idx") / "tiny.sqlite"
    cfg = IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=1024, seq_len=32, batch_size=4)
    meta = build_index(tiny, tiny_tc, path, cfg, progress=False)
    return path, meta, cfg


def test_densities_in_bulk_match_the_dashboards(built, tiny, tiny_tc, monkeypatch):
    path, _, _ = built
    idx = FeatureIndex(path, tiny.tokenizer)
    monkeypatch.setattr(FeatureIndex, "query_chunk", 7)  # each layer's features take several queries
    n_f = tiny_tc.d_transcoder
    keys = [(layer, f) for layer in range(len(tiny_tc)) for f in range(n_f)]
    got = idx.densities(keys + [(0, n_f + 5)])  # a feature the index lacks is left out
    assert len(got) == len(keys) and got == idx.densities()
    for layer, f in keys[:: max(1, len(keys) // 7)]:
        assert got[(layer, f)] == pytest.approx(idx.feature(layer, f)["density"])


def test_index_round_trip(built, tiny, tiny_tc):
    path, meta, _ = built
    assert meta["tokens"] >= 512
    assert meta["label_f1_mean"] is None or 0 <= meta["label_f1_mean"] <= 1
    idx = FeatureIndex(path, tiny.tokenizer)
    labels = idx.labels()
    assert len(labels) == len(tiny_tc) * tiny_tc.d_transcoder
    con = sqlite3.connect(path)
    l, f = con.execute("SELECT layer, feature FROM features WHERE density > 0 ORDER BY max_act DESC LIMIT 1").fetchone()
    d = idx.feature(l, f)
    assert d["density"] > 0 and d["max_act"] > 0 and d["label"]
    top = [e for e in d["examples"] if e["kind"] == "top"]
    assert top and top[0]["activation"] == pytest.approx(d["max_act"], rel=1e-2)
    assert max(top[0]["acts"]) == pytest.approx(1.0) and top[0]["acts"][top[0]["max_pos"]] == pytest.approx(1.0)
    assert [e["activation"] for e in top] == sorted((e["activation"] for e in top), reverse=True)
    assert len(d["top_logits"]) == 10 and d["top_logits"][0][1] >= d["top_logits"][-1][1]
    assert sum(d["hist"]["counts"]) > 0
    with pytest.raises(MechscopeError):
        idx.feature(99, 0)


def test_index_build_is_deterministic(built, tiny, tiny_tc, tmp_path):
    path, _, cfg = built
    build_index(tiny, tiny_tc, tmp_path / "again.sqlite", cfg, progress=False)
    a, b = FeatureIndex(path).labels(), FeatureIndex(tmp_path / "again.sqlite").labels()
    assert a and a == b
    # the whole index, not only its labels: every stored row of every table is the same
    con_a, con_b = sqlite3.connect(path), sqlite3.connect(tmp_path / "again.sqlite")
    tables = [r[0] for r in con_a.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    assert "features" in tables
    for t in tables:
        if t == "meta":
            continue  # build time and output path differ by design
        rows_a, rows_b = (sorted(c.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for c in (con_a, con_b))
        assert rows_a and rows_a == rows_b, t


def _rows(path):
    con = sqlite3.connect(path)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name != 'meta'")]
    return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def test_interrupted_build_resumes_to_the_same_index(built, tiny, tiny_tc, tmp_path, monkeypatch):
    """An interrupted build keeps its whole parts; a rerun collects only the rest and writes the same index."""
    import mechscope.features.collect as collect_mod

    path, _, cfg = built
    monkeypatch.setattr(collect_mod, "PART_TOKENS", 256)  # several parts from 1024 tokens
    out = tmp_path / "resumed.sqlite"
    forwards = []
    real = type(tiny).run_with_cache

    def dies_after_two_parts(self, *a, **kw):
        forwards.append(1)
        if len(forwards) > 4:  # batches of 4 chunks x 32 tokens: two parts of 256 tokens are whole
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(type(tiny), "run_with_cache", dies_after_two_parts)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny, tiny_tc, out, cfg, progress=False)
    work = collect_mod.work_dir(out)
    assert not out.exists() and len(list(work.glob("part-*.safetensors"))) == 2
    forwards.clear()
    monkeypatch.setattr(type(tiny), "run_with_cache", lambda self, *a, **kw: forwards.append(1) or real(self, *a, **kw))
    build_index(tiny, tiny_tc, out, cfg, progress=False)
    assert len(forwards) == 4  # only the 512 tokens not collected before
    assert _rows(out) == _rows(path) and not work.exists()
    # a partial build made with other settings is refused by name, not mixed in
    monkeypatch.setattr(type(tiny), "run_with_cache", dies_after_two_parts)
    forwards.clear()
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny, tiny_tc, out, cfg, progress=False)
    other = IndexConfig(**{**cfg.__dict__, "seed": cfg.seed + 1})
    with pytest.raises(MechscopeError, match=r"partial index build with other settings \(seed\)"):
        build_index(tiny, tiny_tc, out, other, progress=False)


def test_labeller_rules():
    lab = HeuristicLabeller()
    label, conf = lab.label(
        FeatureInfo(
            1,
            2,
            [(" Texas", 20), (" Austin", 4)],
            [(" Austin", 5.0), (" Houston", 2.0), ("x", 1), ("y", 1), ("z", 0.5)],
        )
    )
    assert label.startswith('"Texas"') and 'say "Austin"' in label and conf > 0.8
    assert label_keywords(label) == {"texas"}
    label, _ = lab.label(
        FeatureInfo(
            1,
            3,
            [(" la", 3), (" est", 2), (" de", 2), (" le", 1), (" une", 1)],
            [],
            ["La capitale de la France est Paris", "Il est dans la maison", "le chat est noir et une souris"],
        )
    )
    assert label == "French text"
    assert (
        guess_language("これは日本語です") == "Japanese"
        and guess_language("Der Hund ist groß und die Katze") == "German"
    )


def test_search_by_label_token_logit(built, tiny):
    path, _, _ = built
    idx = FeatureIndex(path, tiny.tokenizer)
    con = sqlite3.connect(path)
    one = lambda t: len(tiny.tokenizer.encode(t, add_special_tokens=False)) == 1  # noqa: E731
    l, f, tops, logits = next(
        r
        for r in con.execute(
            "SELECT layer, feature, top_tokens, top_logits FROM features WHERE density > 0 AND density <= 0.1"
        )
        if one(json.loads(r[2])[0][0]) and one(json.loads(r[3])[0][0])
    )
    tok = json.loads(tops)[0][0]
    assert any((r["layer"], r["feature"]) == (l, f) for r in idx.search(tok, by="token", limit=1000))
    out_tok = json.loads(logits)[0][0]
    assert any((r["layer"], r["feature"]) == (l, f) for r in idx.search(out_tok, by="logit", limit=1000))
    lab = idx.feature(l, f)["label"]
    assert any((r["layer"], r["feature"]) == (l, f) for r in idx.search(lab[:6], by="label", limit=1000))
    with pytest.raises(MechscopeError):
        idx.search("  ")


def test_search_by_token_finds_space_led_tokens(built, tiny, tmp_path):
    """Most word tokens are stored with their leading space (" Zorbland"); "Zorbland", " Zorbland" and
    "zorbland" find them, the feature that fires on the word first, and a mere substring ("Zorb") finds nothing."""
    path = tmp_path / "i.sqlite"
    _old_format(built[0], path)  # schema 2: search by token reads the top examples' peaks
    con = sqlite3.connect(path)
    con.execute("UPDATE features SET density = 0.01 WHERE layer = 0 AND feature IN (1, 2, 3)")  # live, not dense
    con.execute(
        "UPDATE features SET top_tokens = ? WHERE layer = 0 AND feature = 1", ('[[" Zorbland", 5], [" Austin", 1]]',)
    )
    con.execute(
        "UPDATE features SET top_tokens = ? WHERE layer = 0 AND feature = 2", ('[[" the", 5], [" Zorbland", 1]]',)
    )
    con.execute("UPDATE features SET top_tokens = ? WHERE layer = 0 AND feature = 3", ('[[" Zorblandish", 3]]',))
    con.commit()
    con.close()
    idx = FeatureIndex(path)  # no tokenizer: the made-up word is not checked against it
    for q in ("Zorbland", " Zorbland", "zorbland"):
        assert [(h["layer"], h["feature"]) for h in idx.search(q, by="token")] == [(0, 1), (0, 2)], q
    assert idx.search("Zorb", by="token") == []


def test_cli_feature_and_search(built, tiny_dir):
    path, _, _ = built
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "feature", "0/1", "--model", str(tiny_dir), "--index", str(path), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"] == "0/1"
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "feature", "0/1", "--model", str(tiny_dir), "--index", str(path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "feature 0/1" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "feature", "0/99999", "--model", str(tiny_dir), "--index", str(path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "0/99999 is out of range" in r.stderr and "Traceback" not in r.stderr


def test_probe_ranks_by_activation_relative_to_the_index(built, tiny, tiny_tc):
    from mechscope.features.probe import probe_features
    from mechscope.interventions import active_features

    path, _, _ = built
    idx = FeatureIndex(path, tiny.tokenizer)
    text = "the cat sat on the mat because the cat was tired"
    pos, toks, hits = probe_features(tiny, tiny_tc, text, token="he", index=idx, limit=10_000)
    assert pos == max(i for i, t in enumerate(toks) if t == "he")  # the last occurrence
    truth = {(l, f): a for l, f, a in active_features(tiny, tiny_tc, tiny.tokenize(text).ids, pos)}
    assert {(h.layer, h.feature) for h in hits} == set(truth) and truth
    for h in hits:
        d = idx.feature(h.layer, h.feature)
        assert h.activation == pytest.approx(truth[(h.layer, h.feature)], rel=1e-3)
        assert h.label == d["label"]
        if d["max_act"] > 0:
            assert h.relative == pytest.approx(h.activation / d["max_act"], rel=1e-3)
            n = d["density"] * idx.meta["tokens"]
            assert h.score == pytest.approx(min(h.relative, 1) * n / (n + 5), abs=1e-3)
    score = [h.score or 0.0 for h in hits]
    assert score == sorted(score, reverse=True)
    # without an index: raw activation order, no labels
    _, _, raw = probe_features(tiny, tiny_tc, text, pos=-1, limit=5)
    assert [h.activation for h in raw] == sorted((h.activation for h in raw), reverse=True) and all(
        h.relative is None for h in raw
    )
    with pytest.raises(MechscopeError, match="not in the text"):
        probe_features(tiny, tiny_tc, text, token="zebra")
    with pytest.raises(MechscopeError, match="out of range"):
        probe_features(tiny, tiny_tc, text, pos=999)


def test_cli_search_by_prompt(built, tiny_dir, tiny_tc_dir):
    path, _, _ = built
    base = [
        sys.executable,
        "-m",
        "mechscope",
        "search-features",
        "the cat sat",
        "--model",
        str(tiny_dir),
        "--index",
        str(path),
        "--transcoders",
        str(tiny_tc_dir),
    ]
    r = subprocess.run(base + ["--by", "prompt", "--token", "he", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["token"] == "he" and out["features"] and all("id" in f and "relative" in f for f in out["features"])
    r = subprocess.run(base + ["--by", "prompt", "--token", "zebra"], capture_output=True, text=True)
    assert r.returncode == 2 and "not in the text" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base + ["--by", "label", "--token", " cat"], capture_output=True, text=True)
    assert r.returncode == 2 and "--by prompt" in r.stderr


def test_shipped_index_unpacks_xz_before_gz(built, tmp_path, monkeypatch):
    """Shipped indexes are committed compressed (xz preferred, gzip for older ones) and unpacked once into the cache."""
    import gzip
    import lzma

    from mechscope.features import shipped as index_mod

    path, _, _ = built
    raw = path.read_bytes()
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(index_mod, "SHIPPED", shipped)
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    (shipped / "m.sqlite.gz").write_bytes(gzip.compress(raw))
    p = index_mod.index_path("m")
    assert p.read_bytes() == raw and p.parent == tmp_path / "cache" / "features"
    (shipped / "m.sqlite.xz").write_bytes(lzma.compress(raw))
    q = index_mod.index_path("m")
    assert q != p and q.read_bytes() == raw
    assert str((shipped / "m.sqlite.xz").stat().st_size) in q.name
    assert FeatureIndex(q).meta == FeatureIndex(path).meta
    assert not list(q.parent.glob(".tmp-*"))


def test_probe_specificity_distrusts_thin_evidence():
    """A feature the index saw fire twice, far above its tiny maximum, ranks below one seen 300 times at 90% of its
    maximum (the shipped index had put such a feature, at 188% of its maximum, first)."""
    from mechscope.features.probe import specificity

    assert specificity(1.88, 2 / 32768, 32768) < specificity(0.9, 300 / 32768, 32768)
    assert specificity(0.5, 0.01, 32768) < specificity(0.9, 0.01, 32768) <= 0.9
    assert specificity(0.9, None, 32768) == 0.0


# ---- issue #31: dashboards, two-sided labels, search, integrity ------------------------------------------------


def _live(path, n=1):
    con = sqlite3.connect(path)
    return con.execute(
        "SELECT layer, feature FROM features WHERE density > 0 AND density <= 0.1 ORDER BY density DESC LIMIT ?", (n,)
    ).fetchall()


def _searchable_token(path, tiny) -> str:
    """A token some live feature fires on that is one token for the tokenizer (byte pieces decode to "�")."""
    con = sqlite3.connect(path)
    for (tok,) in con.execute(
        "SELECT t.token FROM token_features t JOIN features f USING (layer, feature) "
        "WHERE f.density > 0 AND f.density <= 0.1 ORDER BY t.n DESC"
    ):
        if len(tiny.tokenizer.encode(tok, add_special_tokens=False)) == 1:
            return tok
    raise AssertionError("no searchable token")


def test_dashboard_quantiles_random_fires_on(built, tiny):
    """Examples of each quantile band lie in its activation range, bands rise, random and top examples are there,
    `fires_on` counts agree with the stored token table, and the label's two sides are given."""
    path, meta, cfg = built
    idx = FeatureIndex(path, tiny.tokenizer)
    (l, f), *_ = _live(path)
    d = idx.feature(l, f)
    assert d["logits_relative"] and not d["dense"] and not d["dead"]
    assert d["top_examples"] and d["random_examples"] and d["quantiles"]
    bands = d["quantiles"]
    assert [b["band"] for b in bands] == sorted((b["band"] for b in bands), reverse=True)
    for b in bands:
        assert b["lo"] <= b["hi"] and len(b["examples"]) <= cfg.n_per_quantile
        for e in b["examples"]:
            assert b["lo"] - 1e-3 <= e["activation"] <= b["hi"] + 1e-3
            assert e["acts"][e["max_pos"]] > 0
    his = [b["hi"] for b in bands]
    assert his == sorted(his, reverse=True)
    con = sqlite3.connect(path)
    stored = {
        k: (n, p)
        for k, n, p in con.execute("SELECT token, n, precision FROM token_features WHERE layer=? AND feature=?", (l, f))
    }
    shown = {t: (n, p) for t, n, p, _ in d["fires_on"] if t.strip()}  # whitespace tokens are shown, not searched
    assert stored and set(shown) == set(stored)
    for t, (n, p) in shown.items():
        assert n == stored[t][0] and p == pytest.approx(stored[t][1], rel=1e-3)
    n_fire = round(d["density"] * meta["tokens"] * (31 / 32))  # position 0 of each 32-token chunk never counts
    assert sum(n for _, n, _, _ in d["fires_on"]) <= n_fire + 1
    assert all(0 < p <= 1 and 0 < r <= 1 for _, _, p, r in d["fires_on"])
    assert "label_input" in d and "label_output" in d and d["label_kind"]


def test_layer_stats_on_known_activations():
    """layer_stats on hand-made activations: counts, bands, one example per chunk, the tokens it fires on."""
    import torch

    from mechscope.features.layer_stats import by_feature, layer_stats

    T, n_chunks, F = 4, 4, 3
    N = T * n_chunks
    vals = torch.zeros(N, 2)
    idxs = torch.zeros(N, 2, dtype=torch.long)
    # feature 1 fires at positions 1..3 of every chunk with activation = chunk + pos / 10; feature 2 never
    for c in range(n_chunks):
        for p in range(1, T):
            vals[c * T + p, 0] = c + p / 10
            idxs[c * T + p, 0] = 1
            idxs[c * T + p, 1] = 2
    tok_key = torch.tensor([p % 2 for p in range(N)])  # key 1 at odd positions
    cfg = IndexConfig(tokens=64, n_top=2, n_random=3, n_quantiles=2, n_per_quantile=2, n_fire_tokens=2)
    st = layer_stats(vals, idxs, n_chunks, T, tok_key, cfg, F, torch.Generator().manual_seed(0))
    assert st.count.tolist() == [0, 12, 0] and st.density[1] == pytest.approx(1.0)
    top = [(int(st.top.chunk[i]), int(st.top.pos[i])) for i in by_feature(st.top, F)[1]]
    assert top == [(3, 3), (2, 3)]  # the strongest, one per chunk
    ev = [int(st.evidence.chunk[i]) for i in by_feature(st.evidence, F)[1]]
    assert ev == [2, 0]  # evidence only from even chunks
    rnd = [int(st.random.chunk[i]) for i in by_feature(st.random, F)[1]]
    assert len(rnd) == 3 and len(set(rnd)) == 3
    q = by_feature(st.quantile, F)[1]
    for i in q:  # band 0 holds the weaker half (chunks 0, 1), band 1 the stronger (chunks 2, 3)
        assert (int(st.quantile.chunk[i]) >= 2) == (int(st.quantile.band[i]) == 1)
    assert st.band_range[1].flatten().tolist() == pytest.approx([0.1, 1.3, 2.1, 3.3])
    assert st.fires[1].tolist() == [[1, 8], [0, 4]] and st.fires[0, 0, 0] == -1


def test_relative_logits_remove_the_mean_unembedding_direction(tiny):
    import torch

    from mechscope.features.logits import relative_logits

    gain = tiny.family.norm_gain(tiny.final_norm).float()
    W_U = tiny.W_U.float()
    u = W_U.mean(0) / W_U.mean(0).norm()
    if tiny.family.norm_kind == "layer":
        pytest.skip("LayerNorm centres the decoder first")
    decs = torch.stack([u / gain, torch.randn(W_U.shape[1], generator=torch.Generator().manual_seed(0))])
    tops, bots = relative_logits(tiny, decs, 5, lambda i: f"<{i}>")
    # the mean direction itself promotes nothing relative to it
    assert max(abs(v) for _, v in tops[0] + bots[0]) < 1e-3
    d = decs[1] * gain
    eff = (d - (d @ u) * u) @ W_U.T
    want = [f"<{i}>" for i in eff.topk(5).indices.tolist()]
    assert [t for t, _ in tops[1]] == want and tops[1][0][1] == pytest.approx(float(eff.max()), rel=1e-3)


def test_merge_variants():
    from mechscope.features.logits import merge_variants

    merged = merge_variants([(" Texas", 3.0), ("Texas", 2.0), (" texas", 1.5), (" Ohio", 1.0), ("\n", 0.5)], 10)
    assert merged == [(" Texas", 3.0), (" Ohio", 1.0), ("\n", 0.5)]


def test_two_sided_labels_with_wordnet_categories():
    from mechscope.features.labels import DENSE_DENSITY, dense_label
    from mechscope.features.wordnet import WordNet
    from mechscope.lens.metrics import is_specific_label

    if WordNet.load() is None:
        pytest.fail("WordNet is missing: apt-get install wordnet-base")
    lab = HeuristicLabeller()
    tops = [(" Austin", 5.0), (" Houston", 2.0), ("x", 1), ("y", 1), ("z", 0.5)]
    got = lab.label(FeatureInfo(7, 331, [(" Texas", 6), (" Ohio", 4), (" Nevada", 3), (" the", 1)], tops))
    assert got.kind == "category" and got.input.startswith("American states:") and '"Texas"' in got.input
    assert got.output == 'say "Austin"' and got.text == f"{got.input} → {got.output}"
    assert {"texas", "ohio", "nevada"} <= set(got.keys) and got.category and 0.9 < got.confidence <= 1
    assert is_specific_label(got.text)
    # word pieces are no category ("ar": argon, "ca": calcium)
    got = lab.label(FeatureInfo(1, 1, [("ar", 5), ("ca", 4), ("ing", 3)], []))
    assert got.kind != "category"
    # output side alone: promoted tokens sharing a category
    out = lab.output_side(
        FeatureInfo(1, 1, [], [(" Paris", 3), (" London", 2.9), (" Tokyo", 2.8), (" Rome", 2.7), (" Oslo", 2.6)])
    )
    assert out.startswith("say national capitals")
    d = dense_label(0.23)
    assert d.kind == "dense" and "23%" in d.text and not is_specific_label(d.text) and DENSE_DENSITY == 0.10


def test_llm_labeller_plugs_in_and_dense_dead_stay_marked(tiny, tiny_dir, tiny_tc, tmp_path):
    """A fake LLM labels every live feature it is asked about; dense and dead ones are never sent to it."""
    from mechscope.features.llm_labeller import LLMLabeller, parse_answer

    asked = []

    def fake(prompt: str) -> str:
        asked.append(prompt)
        return 'input: the word "Texas"\noutput: say "Austin"\nlabel: "Texas" → say "Austin"\nconfidence: 0.7'

    assert parse_answer("**Label**: x\nconfidence: 2")["label"] == "x"
    cfg = IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=512, seq_len=32, batch_size=4)
    path = tmp_path / "llm.sqlite"
    build_index(tiny, tiny_tc, path, cfg, labeller=LLMLabeller(fake, name="fake-llm"), progress=False)
    con = sqlite3.connect(path)
    rows = con.execute("SELECT density, label, label_method, label_score FROM features").fetchall()
    live = [r for r in rows if 0 < r[0] <= 0.1]
    assert live and len(asked) == len(live) and "Tokens it makes more likely" in asked[0]
    assert all(r[1] == '"Texas" → say "Austin"' and r[2] == "fake-llm" for r in live)
    assert all(r[1].startswith("dense") for r in rows if r[0] > 0.1)
    assert all(r[1].startswith("dead") for r in rows if r[0] == 0)
    # a flaky answer falls back to the heuristic label
    lab = LLMLabeller(lambda p: "I cannot help")
    assert lab.label(FeatureInfo(1, 1, [(" Texas", 9)], [])).text == '"Texas"'


def test_heldout_scorer_predicts_category_members():
    import torch

    from mechscope.features.labels import Label
    from mechscope.features.scoring import HeldOutScorer

    keys = ["x", "texas", "ohio", "nevada", "paris"]
    T, n_chunks = 4, 2
    # chunk 1 (odd, scored): positions 1..3 hold ohio, nevada, paris
    tok_key = torch.tensor([0, 1, 0, 0, 0, 2, 3, 4])
    s = HeldOutScorer(tok_key, keys, n_chunks, T, ["", ""])
    s.begin_layer(torch.tensor([0, 0, 0]), torch.tensor([1, 5, 6]))  # active on texas (even), ohio, nevada
    from mechscope.features.wordnet import WordNet

    wn = WordNet.load()
    syn = wn.best_category({"texas": 2, "ohio": 1}).synset
    assert s.score(0, Label("", 1, kind="category", keys=("texas", "ohio"), category=syn)) == pytest.approx(1.0)
    assert s.score(0, Label("", 1, kind="token", keys=("ohio",))) == pytest.approx(2 / 3)
    assert s.score(0, Label("", 1, kind="mixed", keys=("ohio",))) is None and s.kinds["other"] == 1


def test_search_results_are_live_sorted_and_explained(built, tiny):
    path, _, _ = built
    idx = FeatureIndex(path, tiny.tokenizer)
    con = sqlite3.connect(path)
    dense = {(l, f) for l, f in con.execute("SELECT layer, feature FROM features WHERE density > 0.1 OR density = 0")}
    assert dense
    tok_counts: dict = {}
    for k, n in con.execute("SELECT key, SUM(n) FROM token_features GROUP BY key"):
        tok_counts[k] = n
    queries = sorted(tok_counts, key=lambda k: -tok_counts[k])[:5]
    seen = 0
    for q in queries:
        for by in ("token", "logit", "label"):
            try:
                rows = idx.search(q, by=by, limit=50)
            except MechscopeError as e:
                assert "tokens for this model" in str(e)
                continue
            seen += len(rows)
            assert all((r["layer"], r["feature"]) not in dense for r in rows)
            assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
            assert all(r["why"] and r["id"] == f"{r['layer']}/{r['feature']}" for r in rows)
    assert seen
    with pytest.raises(MechscopeError, match="tokens for this model"):
        idx.search("zqxjkvbwzqxjkv", by="token")
    with pytest.raises(MechscopeError, match="empty"):
        idx.search(" ", by="logit")


def _old_format(src, dst):
    """A copy of an index as schema 2 wrote it (the shipped indexes until their rebuild)."""
    shutil.copy(src, dst)
    con = sqlite3.connect(dst)
    con.execute("DROP TABLE dashboards")
    con.execute("DROP TABLE token_features")
    con.execute("DELETE FROM examples WHERE kind LIKE 'q%'")
    con.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    con.execute("DELETE FROM meta WHERE key='n_features'")
    con.commit()
    con.close()


def test_old_format_index_still_serves(built, tiny, tmp_path):
    path, _, _ = built
    old = tmp_path / "old.sqlite"
    _old_format(path, old)
    idx = FeatureIndex(old, tiny.tokenizer)
    (l, f), *_ = _live(path)
    d = idx.feature(l, f)
    assert d["quantiles"] == [] and d["top_examples"] and not d["logits_relative"]
    assert [t for t, *_ in d["fires_on"]] == [t for t, _ in d["top_tokens"]]
    tok = d["top_tokens"][0][0]
    assert any(r["id"] == f"{l}/{f}" for r in idx.search(tok, by="token", limit=1000))


def test_incomplete_and_foreign_indexes_are_refused(built, tiny, tiny_dir, tiny_tc_dir, tmp_path):
    path, _, _ = built
    part = tmp_path / "part.sqlite"
    shutil.copy(path, part)
    con = sqlite3.connect(part)
    con.execute("DELETE FROM features WHERE layer = 1")
    con.commit()
    con.close()
    with pytest.raises(MechscopeError, match="incomplete"):
        FeatureIndex(part)
    con = sqlite3.connect(part)
    con.execute("DELETE FROM meta WHERE key = 'built'")
    con.commit()
    con.close()
    with pytest.raises(MechscopeError, match="did not finish"):
        FeatureIndex(part)
    other = tmp_path / "other.sqlite"
    shutil.copy(path, other)
    con = sqlite3.connect(other)
    con.execute("UPDATE meta SET value = ? WHERE key = 'transcoder_fingerprint'", (json.dumps("0123456789abcdef"),))
    con.commit()
    con.close()
    base = [sys.executable, "-m", "mechscope", "search-features", "x", "--model", str(tiny_dir)]
    r = subprocess.run(
        base + ["--index", str(other), "--transcoders", str(tiny_tc_dir)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = [x for x in r.stderr.splitlines() if "built for" in x]
    assert len(err) == 1 and "0123456789abcdef" in err[0] and str(tiny_tc_dir) in err[0]


def test_cli_search_prints_columns_and_hints(built, tiny_dir, tiny):
    path, _, _ = built
    base = [sys.executable, "-m", "mechscope", "search-features", "--model", str(tiny_dir), "--index", str(path)]
    (l, f), *_ = _live(path)
    tok = _searchable_token(path, tiny)
    r = subprocess.run(base + [tok, "--by", "token"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.splitlines()
    assert head.split()[:3] == ["feature", "specificity", "density"] and "why" in head and rows
    scores = [float(x.split()[1]) for x in rows]
    assert scores == sorted(scores, reverse=True)
    r = subprocess.run(base + ["no such label at all", "--by", "label"], capture_output=True, text=True)
    assert r.returncode == 0 and "try --by token" in r.stdout
    r = subprocess.run(base + ["", "--by", "token"], capture_output=True, text=True)
    errors = [x for x in r.stderr.splitlines() if "error" in x]
    assert r.returncode == 2 and len(errors) == 1 and "empty" in errors[0] and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "feature", f"{l}/{f}", "--model", str(tiny_dir), "--index", str(path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "quantile" in r.stdout and "reads:" in r.stdout and "random active" in r.stdout


def test_label_judge():
    from mechscope.lens.metrics import VERIFIED_F1, judge_label

    assert judge_label('American states: "Texas" / "Ohio"', VERIFIED_F1) == {
        "specific": True,
        "f1": VERIFIED_F1,
        "verified": True,
    }
    assert judge_label('"Texas"', VERIFIED_F1 / 2)["verified"] is False  # looks specific, does not predict
    assert judge_label("dense (active on 23% of tokens)", 0.9) == {"specific": False, "f1": 0.9, "verified": False}
    assert judge_label('mixed: "a" / "b"', None)["f1"] == 0.0


def test_output_led_labels_are_scored_on_the_next_token():
    """A feature that reads nothing nameable ("of") but says "Austin" is labelled by what it says, and scored on
    whether the token after its firings is what it says."""
    import torch

    from mechscope.features.scoring import HeldOutScorer

    lab = HeuristicLabeller().label(
        FeatureInfo(1, 2, [(" of", 5)], [(" Austin", 5.0), (" Houston", 2.0), ("x", 1), ("y", 1), ("z", 0.5)])
    )
    assert lab.text == 'say "Austin" (reads "of")' and lab.side == "output" and lab.keys == ("austin",)
    keys = ["x", "of", "austin"]
    # chunk 1 (scored): "x of austin x" — active on "of" (position 5), right before "austin"
    s = HeldOutScorer(torch.tensor([0, 1, 2, 0, 0, 1, 2, 0]), keys, 2, 4, ["", ""])
    s.begin_layer(torch.tensor([0]), torch.tensor([5]))
    assert s.score(0, lab) == pytest.approx(1.0) and s.kinds == {"output token": 1}
    # a token label for the same firing would be wrong about it
    assert s.score(0, Label("", 1, kind="token", keys=("austin",))) == pytest.approx(0.0)


def test_labeller_switch_command_openai_and_refusals(tiny_dir, tiny_tc_dir, tmp_path):
    """index-features --labeller: a shell command or an OpenAI-compatible server writes the labels; a labeller
    that cannot answer is refused before any work, in one line, exit 2, with no index left behind."""
    import http.server
    import threading

    from mechscope.features.llm_labeller import labeller_from_spec

    answer = "input: US state names\noutput: say Texas\nlabel: US states\nconfidence: 0.7"
    script = tmp_path / "fake_llm.py"
    script.write_text(f"import sys\nsys.stdin.read()\nprint({answer!r})\n")
    lab = labeller_from_spec(f"command:{sys.executable} {script}")
    assert lab.name.startswith("llm-command:")

    asked = []

    class Fake(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append((self.path, body.get("model")))
            out = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/v1"
        out = tmp_path / "llm.sqlite"
        cmd = [sys.executable, "-m", "mechscope", "index-features", "--model", str(tiny_dir)]
        cmd += ["--transcoders", str(tiny_tc_dir), "--corpus", str(tiny_dir / "corpus.txt"), "--tokens", "256"]
        cmd += ["--seq-len", "32", "--batch-size", "4", "--out", str(out), "--labeller", f"openai:{url}#tiny-llm", "-q"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert asked and asked[0] == ("/v1/chat/completions", "tiny-llm")
        idx = FeatureIndex(out)
        assert idx.meta["labeller"] == "llm-openai:tiny-llm"
        assert "US states" in set(idx.labels().values())  # live, sparse features carry the LLM's label
    finally:
        srv.shutdown()
    for spec, says in [
        ("gpt", "use heuristic, command:CMD or openai:URL"),
        (f"command:{sys.executable} -c 'import sys; sys.exit(3)'", "did not answer a test prompt"),
        ("command:echo nothing useful", "without a 'label:' line"),
        ("openai:http://127.0.0.1:9/v1", "did not answer a test prompt"),
    ]:
        bad = tmp_path / "bad.sqlite"
        r = subprocess.run(cmd[:-5] + ["--out", str(bad), "--labeller", spec, "-q"], capture_output=True, text=True)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not bad.exists()
