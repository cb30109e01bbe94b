"""The lens probes on the tiny models: the swaps-only pass agrees with the full run, FVU by position splits the
overall FVU, locate shares sum to one and match `locate`, the dense census matches a brute-force count, the
swap reports the donor's own answer, and bad input is refused in one line."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import yaml

from mechscope.cli import main
from mechscope.errors import MechscopeError
from mechscope.lens import LensConfig, evaluate_lens, load_suite
from mechscope.lens.probe_config import ProbeConfig

NAMES = ["Dallas", "Oakland", "Texas", "Paris", "Michael", "France", "Austin", "Jordan"]
TEMPLATES = [("city_state", "{} is in the state of"), ("city_country", "{} is in")]


def _answer(tiny, prompt: str) -> str | None:
    """The tiny model's top-1 after `prompt`, when it round-trips as one token (else None)."""
    tok = tiny.tokenizer
    with torch.no_grad():
        top = int(tiny.forward(tiny.tokenize(prompt).ids[None])[0, -1].argmax())
    ans = tok.decode([top])
    return ans if tok(ans, add_special_tokens=False)["input_ids"] == [top] else None


@pytest.fixture(scope="module")
def probe_suite(tiny, tmp_path_factory):
    """Prompts whose suite answers are the tiny model's own, pairs of neighbours within each template (both
    directions), so some pairs are judged and the swap can succeed or fail."""
    rows, swaps = [], []
    for cat, tpl in TEMPLATES:
        ids = []
        for name in NAMES:
            ans = _answer(tiny, tpl.format(name))
            if ans is not None:
                ids.append(f"{cat}_{name.lower()}")
                rows.append({"id": ids[-1], "category": cat, "prompt": tpl.format(name), "answer": ans})
        swaps += [[a, b] for a, b in zip(ids, ids[1:])] + [[b, a] for a, b in zip(ids, ids[1:])]
    rows.append({"id": "made_up_x", "category": "made_up", "prompt": "Plenford is in", "answer": None})
    path = tmp_path_factory.mktemp("probe-suite") / "suite.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "prompts": rows, "swaps": swaps}))
    suite = load_suite(path)
    by = suite.by_id()
    judged = [s for s in suite.swaps if by[s.recipient].answer != by[s.donor].answer]
    assert len(judged) >= 2, "the tiny model gives too few distinct answers for judged pairs"
    return path


def test_swaps_subset_equals_the_full_runs_swaps(tiny, tiny_tc, probe_suite):
    from mechscope.lens.probes import run_probes

    suite = load_suite(probe_suite)
    full = evaluate_lens(tiny, tiny_tc, None, suite, LensConfig(max_feature_nodes=8, validate_top=0, progress=False))
    only = evaluate_lens(tiny, tiny_tc, None, suite, LensConfig(subset="swaps", progress=False))
    keys = ["n_pairs", "n_pairs_applicable", "swap_success", "swap_success_x1", "swap_success_x2"]
    assert only["overall"]["n_pairs_applicable"] >= 2
    assert {k: only["overall"][k] for k in keys} == {k: full["overall"][k] for k in keys}
    assert set(only["overall"]) == set(keys)  # what it did not compute is absent, not zero
    for cat, agg in only["categories"].items():
        assert {k: agg[k] for k in keys} == {k: full["categories"][cat][k] for k in keys}
    assert only["swaps"] == full["swaps"]  # every pair's outcome, field by field
    assert "prompts" not in only and "index" not in only and set(only["targets"]) == {"swap_success"}
    # a pair's outcome at ×2 is `swap` at factor 2 (the pass plans once and scales the injected values)
    from mechscope.interventions import swap

    by = suite.by_id()
    row = next(s for s in only["swaps"] if s["applicable"])
    res = swap(tiny, tiny_tc, by[row["recipient"]].prompt, by[row["donor"]].prompt, factor=2.0, span="diff", top_k=3)
    assert res["after"][0]["token"] == row["top1_x2"]
    assert only["suite"] == full["suite"] and only["config"]["subset"] == "swaps"
    # the probe reports the same numbers
    probe = run_probes(tiny, tiny_tc, suite, ProbeConfig(probes=("swaps",), progress=False))
    assert probe["swaps"]["overall"] == only["overall"]
    assert [p["success"] for p in probe["swaps"]["pairs"]] == [s["success"] for s in only["swaps"]]
    json.dumps(probe)


def test_fvu_by_position_splits_the_overall_fvu(tiny, tiny_tc, probe_suite):
    from mechscope.lens.fvu_position import entity_positions, fvu_by_position

    suite = load_suite(probe_suite).for_model(tiny.name, tiny.tokenizer)
    ents = entity_positions(tiny, suite)
    # the entity is the name: e.g. 'Dallas' is its first tokens, before the shared ' is in ...'
    text, pos = ents["city_state_dallas"] if "city_state_dallas" in ents else next(iter(ents.values()))
    strs = tiny.tokenize(text).strs
    name = text.split(" ")[0]
    assert "".join(strs[p] for p in sorted(pos)).strip() == name
    res = fvu_by_position(tiny, tiny_tc, ents)
    assert res["n_tokens_entity"] > 0 and res["n_tokens_rest"] > 0
    # brute force: the overall FVU over every measured token (positions ≥ 1), one pooled mean
    L = tiny.n_layers
    ys, yh = [[] for _ in range(L)], [[] for _ in range(L)]
    for text, _ in ents.values():
        ids = tiny.tokenize(text).ids[None]
        cache = tiny.run_with_cache(ids, [f"blocks.{l}.hook_mlp_{k}" for l in range(L) for k in ("in", "out")])
        for l in range(L):
            ys[l].append(cache[f"blocks.{l}.hook_mlp_out"][0, 1:].double())
            with torch.no_grad():
                yh[l].append(tiny_tc[l](cache[f"blocks.{l}.hook_mlp_in"][0, 1:]).double())
    for l, row in enumerate(res["per_layer"]):
        y, h = torch.cat(ys[l]), torch.cat(yh[l])
        want = float((y - h).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
        assert row["fvu_all"] == pytest.approx(want, rel=1e-5)
        # the variance-weighted mean of the two groups is the overall FVU
        w = row["weight_entity"]
        assert 0 < w < 1
        assert w * row["fvu_entity"] + (1 - w) * row["fvu_rest"] == pytest.approx(row["fvu_all"], rel=1e-9)
    assert res["mean_fvu_all"] == pytest.approx(sum(r["fvu_all"] for r in res["per_layer"]) / L)


def test_locate_shares_sum_to_one_and_match_locate(tiny, tiny_tc, probe_suite):
    from mechscope.interventions import locate_distributions
    from mechscope.lens.locate_shares import COMPONENTS, locate_shares
    from mechscope.lens.swaps import clean_answers

    suite = load_suite(probe_suite).for_model(tiny.name, tiny.tokenizer)
    clean = clean_answers(tiny, suite)
    res = locate_shares(tiny, tiny_tc, suite, clean, span="span", batch=5)
    assert res["n_pairs_scored"] >= 2 and not res["refused"]
    assert sum(res["shares"].values()) == pytest.approx(1, abs=1e-9)
    per_layer = sum(sum(v) for v in res["shares_per_layer"].values()) + res["shares"]["embedding"]
    assert per_layer == pytest.approx(1, abs=1e-9)
    for row in res["pairs"]:
        assert sum(row["shares"].values()) == pytest.approx(1, abs=1e-9)
    # each per-layer run is `locate`'s run at that layer alone: the same change of the logit difference
    row = res["pairs"][0]
    by = suite.by_id()
    r, d = by[row["recipient"]], by[row["donor"]]
    ir, id_ = tiny.token_id(r.answer), tiny.token_id(d.answer)
    for l in range(tiny.n_layers):
        dists = locate_distributions(tiny, tiny_tc, r.prompt, d.prompt, span="span", layers=[l])["dists"]

        def diff(p):
            return float(torch.log(p[id_]) - torch.log(p[ir]))

        for c in COMPONENTS:
            assert row["delta"][c][l] == pytest.approx(diff(dists[c]) - diff(dists["none"]), abs=1e-4)
        assert row["delta_embedding"] == pytest.approx(diff(dists["embedding"]) - diff(dists["none"]), abs=1e-4)


def test_locate_shares_of_a_blind_set_are_all_error_or_embedding(tiny, tiny_tc, probe_suite):
    from mechscope.lens.locate_shares import locate_shares
    from mechscope.lens.swaps import clean_answers

    blind = copy.deepcopy(tiny_tc)  # zero decoders and skip: the transcoders explain nothing
    for tc in blind:
        tc.W_dec.data.zero_()
        tc.W_skip.data.zero_()
    suite = load_suite(probe_suite).for_model(tiny.name, tiny.tokenizer)
    res = locate_shares(tiny, blind, suite, clean_answers(tiny, suite))
    assert res["shares"]["features"] == pytest.approx(0, abs=1e-6) and res["shares"]["skip"] == pytest.approx(
        0, abs=1e-6
    )
    assert res["shares"]["error"] + res["shares"]["embedding"] == pytest.approx(1, abs=1e-6)


def test_dense_census_matches_a_brute_force_count(tiny, tiny_tc, tiny_dir):
    from mechscope.corpus.sources import chunk_stream
    from mechscope.lens.census import dense_census

    corpus = str(tiny_dir / "corpus.txt")
    res = dense_census(tiny, tiny_tc, corpus, tokens=150, seq_len=16, batch=3)
    assert res["tokens"] == 150 and res["n_latents"] == tiny.n_layers * tiny_tc.d_transcoder
    # brute force: chunk by chunk, token by token, the first 150 tokens after each chunk's position 0
    fired = torch.zeros(tiny.n_layers, tiny_tc.d_transcoder)
    n = 0
    for chunk in chunk_stream(tiny.tokenizer, corpus, "heldout", 16, seed=0, chunk_buffer=0):
        cache = tiny.run_with_cache(chunk[None], [f"blocks.{l}.hook_mlp_in" for l in range(tiny.n_layers)])
        for p in range(1, chunk.shape[0]):
            if n == 150:
                break
            for l in range(tiny.n_layers):
                with torch.no_grad():
                    fired[l] += (tiny_tc[l].encode(cache[f"blocks.{l}.hook_mlp_in"][0, p]) > 0).float()
            n += 1
        if n == 150:
            break
    density = fired / n
    for l, row in enumerate(res["per_layer"]):
        assert row["over_0.5"] == int((density[l] > 0.5).sum())
        assert row["over_0.1"] == int((density[l] > 0.1).sum())
        assert row["dead"] == int((density[l] == 0).sum())
        assert row["densest"][0][1] == pytest.approx(float(density[l].max()), abs=1e-4)
    assert res["totals"]["dead"] == sum(r["dead"] for r in res["per_layer"])


def test_swap_reports_the_donors_own_answer(tiny, tiny_tc, tiny_dir, tiny_tc_dir, capsys):
    from mechscope.interventions import swap

    r, d = "Dallas is in the state of", "Oakland is in the state of"
    res = swap(tiny, tiny_tc, r, d, top_k=3)
    with torch.no_grad():
        p = torch.softmax(tiny.forward(tiny.tokenize(d).ids[None])[0, -1].float(), -1)
    a = res["donor_answer"]
    assert a["id"] == int(p.argmax()) and a["prob"] == pytest.approx(float(p.max()), abs=1e-5)
    ranks = [x["id"] for x in res["after"]]
    assert a["rank_after"] == (ranks.index(a["id"]) + 1 if a["id"] in ranks else None)
    assert (a["rank_after"] == 1) == (res["after"][0]["id"] == a["id"])
    common = ["--model", str(tiny_dir), "--transcoders", str(tiny_tc_dir), "--donor", d]
    assert main(["swap", r, *common, "-q"]) == 0
    out = capsys.readouterr().out
    assert f"donor prompt alone answers {a['token']!r} {a['prob']:.3f}" in out
    assert main(["swap", r, *common, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["donor_answer"]["id"] == a["id"]


def test_probe_lens_cli_writes_one_json(tiny, tiny_dir, tiny_tc_dir, probe_suite, tmp_path, capsys):
    out = tmp_path / "probes.json"
    corpus = str(tiny_dir / "corpus.txt")
    args = ["--model", str(tiny_dir), "--transcoders", str(tiny_tc_dir), "--suite", str(probe_suite), "-q"]
    rc = main(
        [
            "probe-lens",
            *args,
            "--dense-corpus",
            corpus,
            "--dense-tokens",
            "64",
            "--dense-seq-len",
            "16",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "swaps:" in text and "FVU" in text and "locate" in text and "dense census" in text
    data = json.loads(out.read_text())
    assert set(data) >= {"model", "set", "config", "swaps", "fvu", "locate", "dense", "seconds"}
    assert len(data["set"]["config_sha256"]) == 16 and data["dense"]["tokens"] == 64
    assert len(data["fvu"]["per_layer"]) == tiny.n_layers
    # a subset of the probes, comma-separated: only those run
    assert main(["probe-lens", *args, "--probes", "fvu,swaps", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "fvu" in data and "swaps" in data and "locate" not in data and "dense" not in data
    # eval-lens --subset swaps through the CLI: the swap fields only
    assert main(["eval-lens", *args, "--subset", "swaps", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "prompts" not in data and "swap_success_x2" in data["overall"] and "feature_share" not in data["overall"]
    assert main(["eval-lens", *args, "--subset", "swaps"]) == 0
    assert "either" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--probes", "swaps,vibes"], "unknown probe 'vibes'"),
        (["--dense-tokens", "0"], "--dense-tokens must lie in"),
        (["--factor", "3"], "(0, 2]"),
        (["--locate-batch", "0"], "--locate-batch must be ≥ 1"),
        (["--category", "cities"], "unknown lens category 'cities'"),
        (["--dense-corpus", "/nonexistent/text.txt"], "corpus '/nonexistent/text.txt' not found"),
    ],
)
def test_probe_lens_refuses_bad_input_in_one_line(tiny_dir, tiny_tc_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "probes.json"
    rc = main(["probe-lens", "--model", str(tiny_dir), "--transcoders", str(tiny_tc_dir), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temp file


def test_probe_lens_refuses_a_set_that_does_not_fit(tiny_dir, tiny_tc_dir, tmp_path, capsys):
    bad = tmp_path / "set"
    shutil.copytree(tiny_tc_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_layers"] += 2
    (bad / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out" / "probes.json"
    rc = main(["probe-lens", "--model", str(tiny_dir), "--transcoders", str(bad), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "layers but the model has" in err and err.strip().count("\n") == 0, err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_probe_config_is_validated():
    assert ProbeConfig(probes=("dense", "swaps,fvu")).probes == ("swaps", "fvu", "dense")  # canonical order
    for kw in ({"probes": ()}, {"probes": (" , ",)}, {"dense_seq_len": 1}, {"dense_batch": 0}, {"subset": "swaps"}):
        with pytest.raises(MechscopeError):
            ProbeConfig(**kw)
