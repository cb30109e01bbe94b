"""Studies: data-file specs, every experiment kind on a tiny model, computed verdicts, reports."""

import json
import zlib

import pytest
import yaml

from mechscope.errors import MechscopeError
from mechscope.studies.runner import Context, check_study, list_studies, load_study, run_study, write_index
from mechscope.studies.verdicts import Outcome, verdict, wilson


@pytest.fixture(scope="module")
def ctx(tiny, tiny_tc):
    return Context(tiny, tiny_tc, None, max_feature_nodes=32)


def test_shipped_studies_are_valid():
    names = list_studies()
    assert {"entity-attribute", "multilingual", "known-entity", "addition", "planning", "hint-following"} <= set(names)
    for n in names:
        spec = load_study(n)
        assert spec["experiments"] and spec["hypothesis"]
    with pytest.raises(MechscopeError, match="unknown study"):
        load_study("nope")


def test_verdict_rests_on_evidence():
    pre, ev = "precondition", "evidence"
    o = lambda i, role, p, nr=False: Outcome(i, role, p, nr)
    assert verdict([o(1, pre, True), o(2, ev, True), o(3, ev, None)])[:2] == ("supported", [2])
    assert verdict([o(1, pre, True), o(2, ev, False), o(3, ev, False)])[:2] == ("not supported", [2, 3])
    # passing preconditions alone never make a claim supported (the old rule said "partly supported" here)
    assert verdict([o(1, pre, True), o(2, ev, False)])[0] == "not supported"
    assert verdict([o(1, pre, True), o(2, ev, None, True)])[0] == "inconclusive"  # no evidence could run
    # a failed precondition: the model cannot do the task, so nothing is concluded, even from passing evidence
    assert verdict([o(1, pre, False), o(2, ev, True)])[:2] == ("inconclusive", [1])
    # a mix is partial support only where the study states it
    mix = [o(1, ev, True), o(2, ev, False)]
    assert verdict(mix)[0] == "inconclusive"
    assert verdict(mix, partly=[1])[0] == "partly supported"
    assert verdict(mix, partly=[2])[0] == "inconclusive"


def test_wilson_interval():
    assert wilson(6, 8) == (0.409, 0.929)  # the textbook value for 6/8
    assert wilson(0, 8)[0] == 0 and wilson(8, 8)[1] == 1 and wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)


def test_user_study_file_runs_every_kind(ctx, tmp_path):
    spec = {
        "name": "tiny",
        "title": "Tiny",
        "hypothesis": "h",
        "experiments": [
            {"kind": "trace", "prompt": "Dallas is in the state of", "expect_labels": ["nothing-like-this"]},
            {
                "kind": "swap",
                "prompt": "Dallas is in the state of",
                "donor": "Oakland is in the state of",
                "expect_top": " Texas",
                "factors": [1],
                "variants": [
                    {},
                    {"prompt": "Michael Jordan is in the state of"},
                    {"donor": "Paris is in the state of"},
                ],
            },
            {
                "kind": "swap",
                "prompt": "Dallas is in the state of",
                "donor": "Oakland is in the state of",
                "expect_top": " Texas",
                "span": "rest",
                "with_skip": True,
            },
            {
                "kind": "locate",
                "prompt": "Dallas is in the state of",
                "donor": "Oakland is in the state of",
                "watch": [" is", " of"],
            },
            {
                "kind": "steer",
                "prompt": "Dallas is in",
                "source": "Oakland is in",
                "against": "Dallas is in",
                "factor": 1.0,
            },
            {"kind": "compare", "prompts": ["Dallas is", "Dallas is in the state"], "token": " of"},
            {"kind": "overlap", "groups": [["The cat", "Le chat"]], "baseline": ["The cat", "One two"]},
            {"kind": "operand_grid", "template": "{a}+{b}=", "range": [0, 9], "step": 3},
        ],
    }
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump(spec))
    res = run_study(load_study(str(f)), ctx, tmp_path / "out")
    failed = [(e["kind"], e["summary"]) for e in res["experiments"] if e["summary"].startswith("could not run")]
    assert not failed, failed  # every kind ran (a refusal is reported, not passed)
    assert [e["kind"] for e in res["experiments"]] == [e["kind"] for e in spec["experiments"]]
    assert res["experiments"][0]["passed"] is False  # the expected label cannot be there
    outcomes = [Outcome(i + 1, e["role"], e["passed"], e["not_run"]) for i, e in enumerate(res["experiments"])]
    assert res["verdict"] == verdict(outcomes)[0] and res["decided_by"] == verdict(outcomes)[1]
    assert [e["role"] for e in res["experiments"]][:2] == ["precondition", "evidence"]  # defaults per kind
    sw = res["experiments"][1]["numbers"]
    assert sw["n_variants"] == 3 and len(sw["variants"]) == 3 and len(sw["ci95"]) == 2
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Verdict" in md and res["verdict"] in md and "Hypothesis" in md and "decided by" in md
    assert (tmp_path / "out" / "report.html").read_text().count("<svg") >= 2
    assert list((tmp_path / "out").glob("operands-*.png"))
    # the trace experiment opens with its flowchart of supernodes, drawn and tabled, with stable file names
    fc = res["experiments"][0]["numbers"]["flowchart"]
    assert any(b["kind"] == "output" for b in fc["boxes"])
    figs = sorted(p.name for p in (tmp_path / "out").glob("flowchart-*.svg"))
    assert figs == [f"flowchart-{zlib.crc32(spec['experiments'][0]['prompt'].encode()):08x}.svg"]
    assert "**Supernodes**" in md and md.index(f"![{figs[0]}]") < md.index("![graph-")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["name"] == "tiny"
    write_index([res], tmp_path / "out")
    assert "tiny" in (tmp_path / "out" / "index.md").read_text()


def test_missing_experiment_key_is_a_clear_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "name": "b",
                "title": "B",
                "hypothesis": "h",
                "experiments": [{"kind": "locate", "prompt": "a b", "donor": "a c"}],
            }
        )
    )
    with pytest.raises(MechscopeError, match="experiment 1 .locate. lacks watch"):
        load_study(str(f))


def test_bad_kind(ctx, tmp_path):
    with pytest.raises(MechscopeError, match="experiment 1: unknown experiment kind 'magic'"):
        run_study({"name": "b", "title": "b", "hypothesis": "h", "experiments": [{"kind": "magic"}]}, ctx, tmp_path)


def _study(*exps, **extra):
    return {"name": "b", "title": "B", "hypothesis": "h", "experiments": list(exps), **extra}


def _load(tmp_path, spec):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return load_study(str(f))


SWAP = {"kind": "swap", "prompt": "Dallas is in the state of", "donor": "Oakland is in the state of"}


def test_bad_study_files_name_the_experiment(tmp_path):
    compare = {"kind": "compare", "prompts": ["a", "b"], "token": " of"}
    # a variant that lacks a field (the experiment has none to inherit)
    bad = {**SWAP, "variants": [{"expect_top": " Texas"}, {"prompt": "Miami is"}]}
    with pytest.raises(MechscopeError, match=r"experiment 2 variant 2 \(swap\) lacks expect_top"):
        _load(tmp_path, _study(compare, bad))
    with pytest.raises(MechscopeError, match="experiment 1 .* role must be"):
        _load(tmp_path, _study({**compare, "role": "proof"}))
    with pytest.raises(MechscopeError, match="min_success"):
        _load(tmp_path, _study({**compare, "min_success": 2}))
    with pytest.raises(MechscopeError, match="partly_supported_when must list evidence"):
        _load(tmp_path, _study(compare, {**SWAP, "expect_top": "x"}, partly_supported_when=[1]))
    assert _load(tmp_path, _study(compare, {**SWAP, "expect_top": "x"}, partly_supported_when=[2]))


def test_study_checks_answers_and_swap_pairs_before_running(tiny, tmp_path):
    ok = {**SWAP, "expect_top": " Texas"}
    spec = _study(ok, {**ok, "variants": [{}, {"expect_top": " Texas Texas Texas"}]})
    with pytest.raises(MechscopeError, match=r"experiment 2 variant 2 \(swap\): expected answer .* not a single token"):
        check_study(_load(tmp_path, spec), tiny)
    spec = _study(ok, {**ok, "variants": [{"donor": "One two three four"}]})
    with pytest.raises(MechscopeError, match=r"experiment 2 \(swap\): .* share no context"):
        check_study(_load(tmp_path, spec), tiny)
    assert len(check_study(_load(tmp_path, _study(ok)), tiny)) == 1


def test_an_experiment_that_cannot_run_is_reported(ctx, tmp_path):
    spec = _study(
        {"kind": "compare", "prompts": ["Dallas is", "Dallas is in"], "token": " in"},
        {
            "kind": "trace",
            "role": "evidence",
            "prompt": "Dallas is in",
            "expect_labels": ["x"],
            "requires": [{"token": " in", "top_k": 10_000}],  # any rank: the precondition holds
            "max_feature_nodes": -1,
        },
    )
    res = run_study(_load(tmp_path, spec), ctx, tmp_path / "out")
    e = res["experiments"][1]
    assert e["not_run"] and e["passed"] is None and e["summary"].startswith("could not run")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Not run" in md and "could not run" in md
    # with its only evidence not run the claim is not decided by the precondition that passed or failed
    assert res["verdict"] == "inconclusive"


def test_shipped_studies_test_many_prompts_apart_from_the_lens_suite():
    """Swaps and steering run on ≥ 8 variants, and no study prompt is a lens suite prompt (kept apart)."""
    from mechscope.lens.suite import load_suite
    from mechscope.studies.runner import experiments

    lens = {p.prompt for p in load_suite().prompts}
    for n in list_studies():
        spec = load_study(n)
        for exp in experiments(spec):
            if exp.kind in ("swap", "steer"):
                assert len(exp.runs) >= 8, (n, exp.title)
            for o in exp.runs:
                texts = [getattr(o, k, None) for k in ("prompt", "donor", "source", "against")]
                texts += list(getattr(o, "prompts", []))
                assert not {t for t in texts if t} & lens, (n, exp.title)
        assert any(e.role == "evidence" for e in experiments(spec)), n


def test_cli_study_bad_answer_is_one_line(tiny_dir, tiny_tc_dir, tmp_path):
    import subprocess
    import sys

    f = tmp_path / "s.yaml"
    f.write_text(
        yaml.safe_dump(_study({**SWAP, "variants": [{"expect_top": " Texas"}, {"expect_top": "Texas Texas Texas"}]}))
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechscope",
            "study",
            str(f),
            "--model",
            str(tiny_dir),
            "--transcoders",
            str(tiny_tc_dir),
        ]
        + ["--out", str(tmp_path / "o"), "-q"],  # -q: progress lines off, the error alone on stderr
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "experiment 1 variant 2 (swap): expected answer" in r.stderr and not (tmp_path / "o" / "b").exists()


def test_a_variant_can_skip_a_model(ctx, tmp_path):
    """Like the lens suite: a variant whose answer is not one token of some model lists it under skip."""
    bad = {
        **SWAP,
        "expect_top": " Texas",
        "variants": [{}, {"expect_top": "Texas Texas Texas", "skip": [ctx.model.name]}],
    }
    spec = _load(tmp_path, _study(bad))
    assert len(check_study(spec, ctx.model)) == 1  # the skipped variant is not checked here
    res = run_study(spec, ctx, tmp_path / "out")
    v = res["experiments"][0]["numbers"]["variants"]
    assert v[1]["passed"] is None and v[1]["summary"].startswith("skipped on")


def test_steer_needs_its_stated_effect(ctx):
    from mechscope.studies.kinds.common import entropy
    from mechscope.studies.kinds.steer import SteerOptions, exp_steer

    o = dict(kind="steer", prompt="Dallas is in", source="Oakland is in", against="Dallas is in", factor=5.0)
    # the precondition: the model itself moves that way from the prompt to the source (it is steered toward)
    up = entropy(ctx.probs(o["source"])) > entropy(ctx.probs(o["prompt"]))
    expect = "increase" if up else "decrease"
    any_move = exp_steer(ctx, SteerOptions(**o, expect=expect))
    n = any_move.numbers
    moved = n["after"] > n["before"] if up else n["after"] < n["before"]
    beats = n["effects"]["steer"] > max(n["effects"]["random"], n["effects"]["self"])
    assert any_move.passed == (moved and beats)
    assert "random" in any_move.control and "self" in any_move.control
    big = exp_steer(ctx, SteerOptions(**o, expect=expect, margin=1e6))
    assert big.passed is False and "by more than 1e+06 beyond both controls" in SteerOptions(**o, margin=1e6).rule()
    # the other direction: the model does not show it, so the variant is not applicable, never a failure
    wrong = exp_steer(ctx, SteerOptions(**o, expect="decrease" if up else "increase"))
    assert wrong.passed is None and wrong.status == "not applicable" and "not applicable" in wrong.summary
    with pytest.raises(MechscopeError, match="min_change"):
        SteerOptions(**o, min_change=-1)
