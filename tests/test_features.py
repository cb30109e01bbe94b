"""Feature index: build/read round trip, labels (deterministic, held-out scored), search, CLI."""

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from mechscope.errors import MechscopeError
from mechscope.features import FeatureIndex, HeuristicLabeller, IndexConfig, build_index
from mechscope.features.labels import FeatureInfo, guess_language, label_keywords


@pytest.fixture(scope="module")
def built(tiny, tiny_dir, tiny_tc, tmp_path_factory):
    path = tmp_path_factory.mktemp("idx") / "tiny.sqlite"
    cfg = IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=1024, seq_len=32, batch_size=4)
    meta = build_index(tiny, tiny_tc, path, cfg, progress=False)
    return path, meta, cfg


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
    l, f, tops, logits = con.execute(
        "SELECT layer, feature, top_tokens, top_logits FROM features WHERE density > 0 LIMIT 1"
    ).fetchone()
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
    shutil.copy(built[0], path)
    con = sqlite3.connect(path)
    con.execute(
        "UPDATE features SET top_tokens = ? WHERE layer = 0 AND feature = 1", ('[[" Zorbland", 5], [" Austin", 1]]',)
    )
    con.execute(
        "UPDATE features SET top_tokens = ? WHERE layer = 0 AND feature = 2", ('[[" the", 5], [" Zorbland", 1]]',)
    )
    con.execute("UPDATE features SET top_tokens = ? WHERE layer = 0 AND feature = 3", ('[[" Zorblandish", 3]]',))
    con.commit()
    con.close()
    idx = FeatureIndex(path, tiny.tokenizer)
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
    assert r.returncode == 2 and "not in the index" in r.stderr


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
