"""The lens benchmark: suite validation, score formulas, label specificity, and a run on the tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mechscope.errors import MechscopeError
from mechscope.lens import (
    CATEGORIES,
    LensConfig,
    circuit_tracer_scores,
    evaluate_lens,
    is_specific_label,
    load_suite,
    parse_suite,
    top_logit_split,
)


def _write(tmp_path, text: str):
    p = tmp_path / "suite.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_shipped_suite_is_valid_and_large_enough():
    s = load_suite()
    assert len(s.prompts) >= 80 and len(s.swaps) >= 40
    assert {p.category for p in s.prompts} == set(CATEGORIES)
    by = s.by_id()
    for pair in s.swaps:  # pairs compare like with like
        assert by[pair.recipient].category == by[pair.donor].category
    q = s.quick()
    assert (
        0 < len(q.prompts) < len(s.prompts)
        and q.swaps
        and all(p.id in q.by_id() for x in q.swaps for p in (by[x.recipient], by[x.donor]))
    )


_GOOD = """
version: 1
prompts:
  - {id: a, category: city_state, prompt: "Dallas is in the state of", answer: " Texas"}
  - {id: b, category: city_state, prompt: "Oakland is in the state of", answer: " California"}
  - {id: m, category: made_up, prompt: "Plenford is in the state of", answer: null}
swaps:
  - [a, b]
"""


@pytest.mark.parametrize(
    "bad, needle",
    [
        (
            _GOOD.replace('category: city_state, prompt: "Dallas', 'category: cities, prompt: "Dallas'),
            "'a': unknown category 'cities'",
        ),
        (_GOOD.replace("id: b,", "id: a,"), "'a': duplicate id"),
        (_GOOD.replace("- [a, b]", "- [a, zz]"), "unknown prompt 'zz'"),
        (_GOOD.replace("- [a, b]", "- [a, m]"), "prompt 'm' has no answer"),
        (_GOOD.replace('answer: " Texas"', "answer: null"), "'a': 'answer' is required"),
        (_GOOD.replace('answer: " Texas"}', 'answer: " Texas", colour: red}'), "'a': unknown key 'colour'"),
        (_GOOD.replace("- [a, b]", "- [a, a]"), "same prompt"),
        ("prompts: [", "not valid YAML"),
        ("just text", "expected a mapping"),
    ],
)
def test_malformed_suites_are_refused_in_one_line(tmp_path, bad, needle):
    with pytest.raises(MechscopeError) as e:
        load_suite(_write(tmp_path, bad))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_answers_are_checked_against_the_tokenizer(tiny):
    tok = tiny.tokenizer
    one = tok.decode([tok(" Texas", add_special_tokens=False)["input_ids"][0]])  # surely one token
    many = " Zyxwvq"  # surely several
    assert len(tok(many, add_special_tokens=False)["input_ids"]) > 1
    data = {
        "models": [tiny.name],
        "prompts": [
            {"id": "ok", "category": "city_state", "prompt": "Dallas is in", "answer": one},
            {"id": "long", "category": "city_state", "prompt": "Oakland is in", "answer": many},
        ],
    }
    with pytest.raises(MechscopeError, match="'long': answer ' Zyxwvq' is not one token"):
        parse_suite(data).for_model(tiny.name, tok)
    data["prompts"][1]["skip"] = [tiny.name]  # declared: skipped, not an error
    s = parse_suite(data).for_model(tiny.name, tok)
    assert [p.id for p in s.prompts] == ["ok"] and s.skipped[0][0] == "long"
    del data["prompts"][1]["skip"]
    data["prompts"][1]["answers"] = {tiny.name: one}  # a per-model answer replaces the default
    s = parse_suite(data).for_model(tiny.name, tok)
    assert [p.answer for p in s.prompts] == [one, one]
    data["models"] = []  # a model the suite does not know: skipped
    del data["prompts"][1]["answers"]
    s = parse_suite(data).for_model(tiny.name, tok)
    assert [p.id for p in s.prompts] == ["ok"] and "splits into" in s.skipped[0][1]


def test_lens_config_is_validated():
    for kw in (
        {"factors": (3.0,)},
        {"factors": ()},
        {"subset": "fast"},
        {"swap_span": "all"},
        {"categories": ("x",)},
        {"max_feature_nodes": 0},
        {"dense_top": 1.5},
    ):
        with pytest.raises(MechscopeError):
            LensConfig(**kw)
    assert LensConfig(factors=[1, 2]).factors == (1.0, 2.0)


@pytest.mark.parametrize(
    "label, specific",
    [
        ('"Texas"', True),
        ('"Texas" / "Austin"', True),
        ('"Texas" → say "Austin"', True),
        ('say "Austin"', True),
        ('"小"', True),
        ('mixed: "iterator" / "ダー" / "ウント"', False),
        ("whitespace", False),
        ("punctuation", False),
        ("digits", False),
        ("French text", False),
        ("code", False),
        ("unclear", False),
        ('"the"', False),
        ('"of" / "the"', False),
        ('" "', False),
        ('","', False),
        ('"7"', False),
        ('"a"', False),
        ("dead (never active on held-out text)", False),
        ("", False),
        (None, False),
        ('"the" / "Texas"', True),
        ('digits → say "Austin"', False),
    ],
)
def test_is_specific_label(label, specific):
    assert is_specific_label(label) is specific


def _toy_graph():
    """feature f ← token t; logit ← f and ← error e (equal weights): scores computable by hand."""
    from mechscope.attribution.graph import Graph

    A = torch.zeros(4, 4)  # order: feature, error, token, logit
    A[0, 2] = 2.0
    A[3, 0] = 1.0
    A[3, 1] = -1.0
    nodes = [
        {"node_id": "0_5_0", "layer": "0", "feature": 5, "ctx_idx": 0},
        {"node_id": "err_0_0"},
        {"node_id": "E_1_0"},
        {"node_id": "2_7_0"},
    ]
    return Graph(
        meta={},
        nodes=nodes,
        A=A,
        w=torch.tensor([0, 0, 0, 1.0]),
        const=torch.zeros(4),
        dropped=torch.tensor([0, 0, 0, 0.5]),
        values=torch.zeros(4),
        n_feat=1,
        n_err=1,
        n_tok=1,
        n_logit=1,
    )


def test_circuit_tracer_scores_by_hand():
    g = _toy_graph()
    ct = circuit_tracer_scores(g)
    # influence: f .5, e .5, t .5; out = infl + w = [.5, .5, .5, 1]; non-error share per row: f 1, e 1, t 1, logit .5
    assert ct["replacement_score"] == pytest.approx(0.5)
    assert ct["ct_completeness_score"] == pytest.approx((0.5 + 0.5 + 0.5 + 0.5) / 2.5)
    ours = g.scores()
    assert ours["replacement_score"] == pytest.approx(0.5)
    assert ours["input_completeness_score"] == pytest.approx((0.5 + 0.5) / 1.5)  # only rows with inputs
    assert ours["ct_completeness_score"] == pytest.approx(ct["ct_completeness_score"])  # the graph JSON's copy
    assert "ct_completeness_score" not in g.scores(node_mask=torch.ones(g.N, dtype=torch.bool))  # unpruned only
    split = top_logit_split(g)
    assert split["feature_share"] == pytest.approx(0.5) and split["error_share"] == pytest.approx(0.5)
    assert split["token_share"] == 0 and split["dropped_share"] == pytest.approx(0.5 / 2.5)


def _tiny_suite(tiny, tmp_path):
    """Four prompts whose answers are what the tiny model says (so the swap pairs apply), one made-up."""
    tok = tiny.tokenizer
    cands = [
        "Dallas is in the state of",
        "Oakland is in the state of",
        "The opposite of small is",
        "Michael Jordan plays",
        "The capital of Texas is",
        "Oakland is in",
        "Der Hund ist",
        "La capitale de la France est",
        "One two three",
        "Dallas is in",
        "The opposite of",
        "Michael Jordan plays basketball.",
    ]
    answered = []
    for p in cands:
        with torch.no_grad():
            top = int(tiny.forward(tiny.tokenize(p).ids[None])[0, -1].argmax())
        ans = tok.decode([top])
        if tok(ans, add_special_tokens=False)["input_ids"] == [top]:  # round-trips: one token
            answered.append((p, ans))
    assert len(answered) >= 3, "the tiny model answers too few candidate prompts with a clean token"
    cats = ["city_state", "city_state", "antonym_en"]
    rows = [
        {"id": f"p{i}", "category": c, "prompt": p, "answer": a} for i, (c, (p, a)) in enumerate(zip(cats, answered))
    ]
    rows.append({"id": "p3", "category": "made_up", "prompt": "Michael Batkin plays", "answer": None})
    import yaml

    path = tmp_path / "tiny-suite.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "prompts": rows, "swaps": [["p0", "p1"], ["p1", "p0"]]}))
    return path


@pytest.fixture(scope="module")
def tiny_index(tiny, tiny_dir, tiny_tc, tmp_path_factory):
    from mechscope.features import FeatureIndex, IndexConfig, build_index

    path = tmp_path_factory.mktemp("lens-idx") / "tiny.sqlite"
    build_index(
        tiny,
        tiny_tc,
        path,
        IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=1024, seq_len=32, batch_size=4),
        progress=False,
    )
    return FeatureIndex(path, tiny.tokenizer)


def test_evaluate_lens_on_tiny(tiny, tiny_tc, tiny_index, tmp_path):
    suite = load_suite(_tiny_suite(tiny, tmp_path))
    res = evaluate_lens(tiny, tiny_tc, tiny_index, suite, LensConfig(max_feature_nodes=32, validate_top=5, top_n=5))
    assert res["suite"]["n_prompts"] == 4 and len(res["prompts"]) == 4 and len(res["swaps"]) == 2
    for r in res["prompts"]:
        assert r["feature_share"] + r["token_share"] + r["error_share"] == pytest.approx(1, abs=1e-5)
        assert r["ct_replacement"] == pytest.approx(r["replacement"], abs=1e-6)  # same formula
        assert r["ct_completeness"] >= r["input_completeness"] - 1e-6  # input-less rows count
        assert 0 <= r["top20_specific_share"] <= 1 and len(r["top_labels"]) == len(r["top_features"]) <= 5
        # the label judge: verified labels are specific ones, so never more of them
        assert 0 <= r["top20_verified_share"] <= r["top20_specific_share"] and 0 <= r["top20_label_f1"] <= 1
        assert r["correct"] is (None if r["category"] == "made_up" else True)
        # the published (frozen) Spearman is the main key, the real model's beside it
        assert {"validate_spearman", "validate_spearman_unfrozen"} <= set(r)
    for s in res["swaps"]:
        # a pair that shares no context cannot be aligned: refused, not judged
        assert s["applicable"] is (s["recipient_answer"] != s["donor_answer"] and "refused" not in s)
        if not s["applicable"]:
            continue
        assert set(s) >= {"success_x1", "success_x2", "top1_x1", "top1_x2"}
        assert s["success"] == (s["success_x1"] or s["success_x2"])
        assert s["success_x2"] == (s["top1_x2"] == s["donor_answer"])
    ov = res["overall"]
    assert ov["n_pairs_applicable"] in (0, 2) and ov["swap_success"] in (None, 0.0, 0.5, 1.0)
    assert ov["feature_share"] == pytest.approx(sum(r["feature_share"] for r in res["prompts"]) / 4)
    assert set(res["categories"]) == {"city_state", "antonym_en", "made_up"}
    assert 0 <= res["index"]["dense_share"] <= 1 and res["targets"]["swap_success"]["target"] == 0.6
    json.dumps(res)  # serialisable


def test_evaluate_lens_without_index_and_quick(tiny, tiny_tc, tmp_path):
    suite = load_suite(_tiny_suite(tiny, tmp_path))
    res = evaluate_lens(
        tiny,
        tiny_tc,
        None,
        suite,
        LensConfig(subset="quick", categories=("city_state",), max_feature_nodes=16, validate_top=0),
    )
    assert res["index"] is None and [r["id"] for r in res["prompts"]] == ["p0", "p1"]
    assert "top20_specific_share" not in res["prompts"][0] and res["prompts"][0]["validate_spearman"] is None


def test_cli_refuses_bad_suite_in_one_line(tiny_dir, tmp_path):
    bad = _write(tmp_path, _GOOD.replace("- [a, b]", "- [a, nope]"))
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "eval-lens", "--model", str(tiny_dir), "--suite", str(bad), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown prompt 'nope'" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "eval-lens", "--model", str(tiny_dir), "--factor", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2 and "(0, 2]" in r.stderr and "Traceback" not in r.stderr


def test_cli_runs_and_writes_json(tiny, tiny_dir, tiny_tc_dir, tmp_path, capsys):
    from mechscope.cli import main

    out = tmp_path / "lens.json"
    rc = main(
        [
            "eval-lens",
            "--model",
            str(tiny_dir),
            "--transcoders",
            str(tiny_tc_dir),
            "--suite",
            str(_tiny_suite(tiny, tmp_path)),
            "--max-feature-nodes",
            "16",
            "--validate",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "overall" in text and "city_state" in text
    data = json.loads(out.read_text())
    assert data["suite"]["n_prompts"] == 4 and data["config"]["max_feature_nodes"] == 16


def test_budget_leaves_items_out_and_says_so(tiny, tiny_tc, tmp_path):
    suite = load_suite(_tiny_suite(tiny, tmp_path))
    res = evaluate_lens(tiny, tiny_tc, None, suite, LensConfig(max_feature_nodes=8, validate_top=0, budget_s=1e-9))
    assert res["prompts"] == [] and res["swaps"] == [] and res["overall"]["n_prompts"] == 0
    assert sorted(res["not_run"]) == ["p0", "p1", "p2", "p3", "swap:p0<-p1", "swap:p1<-p0"]
