"""Verdicts that tell the model from the microscope: three kinds of no, per-variant preconditions, controls of
the same size, the rule and the control in every report row, and refusals before any work."""

import json
import logging

import pytest
import torch
import yaml

from mechscope.errors import MechscopeError
from mechscope.studies.registry import Experiment, Result
from mechscope.studies.runner import Context, load_study, run_study
from mechscope.studies.verdicts import NOT_VISIBLE, Outcome, combine, verdict


@pytest.fixture(scope="module")
def ctx(tiny, tiny_tc):
    return Context(tiny, tiny_tc, None, max_feature_nodes=32)


def _load(tmp_path, *exps):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "v", "title": "V", "hypothesis": "h", "experiments": list(exps)}))
    return load_study(str(f))


PRE, EV = "precondition", "evidence"


def test_three_kinds_of_no():
    o = Outcome
    # the model does not do the task: a precondition experiment failed, or every evidence variant was not applicable
    assert verdict([o(1, PRE, False), o(2, EV, False)])[:2] == ("inconclusive", [1])
    assert verdict([o(1, PRE, False)]).no == "model"
    na = verdict([o(1, PRE, True), o(2, EV, None, status="not applicable")])
    assert (na.verdict, na.decided_by, na.no) == ("inconclusive", [2], "model")
    # the instrument cannot see it: every failure is located outside the features
    unseen = verdict([o(1, EV, False, status="not visible"), o(2, EV, False, status="not visible")])
    assert (unseen.verdict, unseen.decided_by, unseen.no) == (NOT_VISIBLE, [1, 2], "instrument")
    # the mechanism is absent: features carry it and the intervention fails; a not-visible one never decides it
    absent = verdict([o(1, EV, False), o(2, EV, False, status="not visible")])
    assert (absent.verdict, absent.decided_by, absent.no) == ("not supported", [1], "mechanism")
    assert "[2]" in absent.why and "not visible" in absent.why
    assert verdict([o(1, EV, True), o(2, EV, None, status="not applicable")])[:2] == ("supported", [1])
    # a mix stays a mix, whatever kind of failure
    assert verdict([o(1, EV, True), o(2, EV, False, status="not visible")]).verdict == "inconclusive"
    assert verdict([o(1, EV, True), o(2, EV, False, status="not visible")], partly=[1]).verdict == "partly supported"


def _r(status: str) -> Result:
    passed = {"passed": True, "failed": False, "not visible": False}.get(status)
    return Result("swap", status, passed, status, status=status, rule="a rule", control="a control")


def test_variants_failing_their_precondition_never_count():
    exp = Experiment("swap", "t", EV, 0.5, [], "w")
    # 1 pass, 1 fail out of 2 judged: passes at 0.5, however many were not applicable
    r = combine(exp, [_r("passed"), _r("failed")] + [_r("not applicable")] * 5)
    assert r.passed is True and r.numbers["n_judged"] == 2 and r.numbers["n_not_applicable"] == 5
    assert "5 of them not applicable" in r.summary
    # failing variants mostly outside the features: the experiment is "not visible", not "failed"
    r = combine(exp, [_r("failed"), _r("not visible"), _r("not visible"), _r("not applicable")])
    assert (r.passed, r.status, r.numbers["n_judged"], r.numbers["n_not_visible"]) == (False, "not visible", 3, 2)
    r = combine(exp, [_r("failed"), _r("failed"), _r("not visible")])
    assert (r.passed, r.status) == (False, "failed")
    # nothing judged because every variant failed its precondition: not applicable, not failed
    r = combine(exp, [_r("not applicable")] * 3)
    assert (r.passed, r.status) == (None, "not applicable")
    assert r.rule == "a rule" and [v["control"] for v in r.numbers["variants"]] == ["a control"] * 3


def test_located_failures(ctx, monkeypatch):
    """A failed intervention is 'failed' where the features alone move the measure, 'not visible' otherwise."""
    import mechscope.interventions as iv
    from mechscope.studies.kinds.where import where_it_lives

    def fake(moving: set):
        def dists(model, ts, prompt, donor, span="rest", layers=None):
            comps = ("none", "mlp_out", "features", "skip", "error", "embedding")
            return {"dists": {c: torch.tensor([1.0 if c in moving else 0.0]) for c in comps}}

        return dists

    measure, moved = (lambda p: float(p[0])), (lambda b, a: a > b)
    monkeypatch.setattr(iv, "locate_distributions", fake({"mlp_out", "skip", "embedding"}))
    status, numbers, text = where_it_lives(ctx, "a", "b", measure, moved, "m")
    assert status == "not visible" and numbers["carriers"] == ["mlp_out", "skip", "embedding"]
    assert "not visible with this dictionary" in text
    monkeypatch.setattr(iv, "locate_distributions", fake({"mlp_out", "features"}))
    assert where_it_lives(ctx, "a", "b", measure, moved, "m")[0] == "failed"
    # nothing carries it alone (e.g. an inserted hint that attention still reads): nothing puts it outside
    monkeypatch.setattr(iv, "locate_distributions", fake(set()))
    status, numbers, text = where_it_lives(ctx, "a", "b", measure, moved, "m")
    assert status == "failed" and numbers["carriers"] == [] and "no single component" in text


def test_random_control_has_the_same_size(tiny, tiny_tc):
    from mechscope.interventions import Edit, FeatureRef, random_like

    inject = [Edit(FeatureRef(1, f, 2), "set", 1.5 + f) for f in (0, 5, 9)] + [Edit(FeatureRef(2, 4, 3), "set", 2.0)]
    ctl = random_like(inject, tiny_tc, {}, seed=0)
    assert sorted((e.ref.layer, e.ref.pos, e.mode, e.value) for e in ctl) == sorted(
        (e.ref.layer, e.ref.pos, e.mode, e.value) for e in inject
    )
    assert not {(e.ref.layer, e.ref.pos, e.ref.feature) for e in ctl} & {
        (e.ref.layer, e.ref.pos, e.ref.feature) for e in inject
    }
    assert random_like(inject, tiny_tc, {}, seed=0) == ctl and random_like(inject, tiny_tc, {}, seed=1) != ctl
    # edits that remove activation draw from the other active features there, and cut them alike
    active = {(0, 1): {3: 2.0, 7: 1.0, 8: 4.0, 11: 0.5}}
    cut = [Edit(FeatureRef(0, 3, 1), "set", 0.0), Edit(FeatureRef(0, 8, 1), "ablate")]
    ctl = random_like(cut, tiny_tc, active, seed=0)
    assert {e.ref.feature for e in ctl} <= {7, 11} and len(ctl) == 2
    assert [e.value for e in ctl if e.mode == "set"] == [0.0]
    with pytest.raises(MechscopeError, match="needs 3 features"):
        random_like(cut + [Edit(FeatureRef(0, 7, 1), "ablate")], tiny_tc, active, seed=0)


def test_swap_controls(tiny, tiny_tc):
    from mechscope.interventions import plan_swap, random_swap, run_plan, self_swap

    a, b = "Dallas is in the state of", "Michael Jordan is in the state of"
    plan = plan_swap(tiny, tiny_tc, a, b, factor=2.0)
    rnd = random_swap(plan, tiny_tc, seed=0)
    assert rnd.ablate == plan.ablate and len(rnd.inject) == len(plan.inject) and rnd.inject != plan.inject
    slf = self_swap(tiny, tiny_tc, plan)
    assert slf.prompt == slf.donor == a and {r for r, _ in slf.pairs} == {r for r, _ in plan.pairs}
    # at factor 1 the donor-is-recipient control is the unedited model
    one = run_plan(tiny, tiny_tc, self_swap(tiny, tiny_tc, plan_swap(tiny, tiny_tc, a, b, factor=1.0)), top_k=3)
    assert [t["token"] for t in one["after"]] == [t["token"] for t in one["before"]]
    assert one["after"][0]["prob"] == pytest.approx(one["before"][0]["prob"], abs=1e-4)


def _answers(ctx, prompts):
    """Each prompt's top token, or None where it is no whole token (the tiny model's byte pieces)."""

    def whole(t):
        try:
            return t if ctx.model.token_id(t) is not None else None
        except MechscopeError:
            return None

    return [whole(ctx.top(ctx.probs(p), 1)[0][0]) for p in prompts]


def test_swap_rows_show_rule_control_and_where(ctx, tmp_path):
    """On the tiny model: an applicable swap variant runs beside both controls (and is located if it fails); a
    variant whose recipient answer is not the stated one is not applicable; the report shows rule and control."""
    cands = ["Dallas is in the state of", "Oakland is in the state of", "Michael Jordan is in the state of"]
    cands += ["The cat is in the state of", "Paris is in the state of", "One two is in the state of"]
    tops = _answers(ctx, cands)
    pairs = [
        (r, d)
        for r in range(len(cands))
        for d in range(len(cands))
        if tops[r] is not None and tops[d] is not None and tops[r] != tops[d]
    ]
    if not pairs:
        pytest.skip("the tiny model answers every candidate alike")
    r, d = pairs[0]
    swap = {"kind": "swap", "prompt": cands[r], "donor": cands[d], "expect_top": tops[d], "factors": [1, 3]}
    wrong = next(t for t in (" is", " of", " the") if t != tops[r])
    spec = _load(tmp_path, {**swap, "variants": [{"expect_before": tops[r]}, {"expect_before": wrong}]})
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: said.append(rec.getMessage())
    prog = logging.getLogger("mechscope.progress")  # the CLI may have stopped it propagating: listen to it directly
    level = prog.level
    prog.setLevel(logging.INFO)
    prog.addHandler(handler)
    try:
        res = run_study(spec, ctx, tmp_path / "out")
    finally:
        prog.removeHandler(handler)
        prog.setLevel(level)
    assert any("experiment 1/1 (swap), variant 2/2" in m for m in said)  # progress per variant
    e = res["experiments"][0]
    ok, na = e["numbers"]["variants"]
    assert na["status"] == "not applicable" and "recipient" in na["summary"] and na["passed"] is None
    assert ok["status"] in ("passed", "failed", "not visible") and e["numbers"]["n_judged"] == 1
    tries = ok["numbers"]["tries"]
    assert [t["factor"] for t in tries] == [1, 3]
    assert ok["passed"] == any(t["top"] and t["p"] - max(t["p_random"], t["p_self"]) > 0.05 for t in tries)
    assert "random" in ok["control"] and "self" in ok["control"]
    if not ok["passed"]:  # located: "not visible" exactly where another component alone moves the answer
        carriers = ok["numbers"]["carriers"]
        assert (ok["status"] == "not visible") == (bool(carriers) and "features" not in carriers)
    assert "beats both controls" in e["rule"] and "0.05" in e["rule"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "*Rule:*" in md and "| variant | result | measured | control |" in md and "not applicable" in md
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["experiments"][0]["rule"] == e["rule"] and "no" in saved and saved["decisive"]


def test_unmet_requirement_is_not_applicable(ctx, tmp_path):
    cands = ["Dallas is in the state of", "Oakland is in", "The cat", "Michael Jordan plays", "One two three"]
    prompt, top = next(((p, t) for p, t in zip(cands, _answers(ctx, cands)) if t is not None), (None, None))
    if top is None:
        pytest.skip("the tiny model's top tokens are byte pieces")
    other = next(t for t in (" is", " of", " the", " in") if t != top)
    trace = {"kind": "trace", "role": "evidence", "prompt": prompt, "expect_labels": ["x"]}
    spec = _load(
        tmp_path,
        {
            **trace,
            "requires": [{"token": other, "top_k": 1}],
            "variants": [{}, {"requires": [{"token": top, "top_k": 1}]}],
        },
    )
    res = run_study(spec, ctx, tmp_path / "out")
    v = res["experiments"][0]["numbers"]["variants"]
    assert v[0]["status"] == "not applicable" and f"ranks {other!r}" in v[0]["summary"]
    assert v[1]["status"] == "failed"  # runs: the label cannot be there
    assert res["experiments"][0]["numbers"]["n_judged"] == 1
    assert "not applicable" in (tmp_path / "out" / "report.md").read_text()


SWAP = {
    "kind": "swap",
    "prompt": "Dallas is in the state of",
    "donor": "Oakland is in the state of",
    "expect_top": " Texas",
}
STEER = {"kind": "steer", "prompt": "Dallas is in", "source": "Oakland is in", "against": "Dallas is in"}


@pytest.mark.parametrize(
    "exp, match",
    [
        (
            {"kind": "trace", "role": "evidence", "prompt": "a b", "expect_labels": ["x"]},
            r"experiment 2 \(trace\): evidence with no precondition",
        ),
        (
            {"kind": "compare", "role": "evidence", "prompts": ["a", "b"], "token": " of"},
            r"experiment 2 \(compare\): evidence with no precondition",
        ),
        ({**STEER, "prompt": "Houston is in"}, r"experiment 2 \(steer\): evidence with no precondition"),
        (
            {**SWAP, "donor": SWAP["prompt"]},
            r"experiment 2 \(swap\): its control cannot run: the donor is the recipient",
        ),
        ({**STEER, "source": STEER["prompt"]}, r"experiment 2 \(steer\): its control cannot run: source and against"),
        ({**STEER, "top_n": 0}, r"experiment 2 \(steer\): its control cannot run: top_n"),
        ({**SWAP, "variants": [{}, {"margin": -1}]}, r"experiment 2 variant 2 \(swap\): .*margin must be"),
        ({**SWAP, "requires": [{"top_k": 3}]}, r"experiment 2 \(swap\): requires: each entry needs token"),
    ],
)
def test_untestable_experiments_are_refused(tmp_path, exp, match):
    compare = {"kind": "compare", "prompts": ["a", "b"], "token": " of"}
    with pytest.raises(MechscopeError, match=match):
        _load(tmp_path, compare, exp)


def test_evidence_about_representations_needs_no_precondition(tmp_path):
    grid = {"kind": "operand_grid", "template": "{a}+{b}=", "range": [0, 9]}
    overlap = {"kind": "overlap", "groups": [["a", "b"]], "baseline": ["a", "c"]}
    assert _load(tmp_path, grid, overlap)
    # a steer that names where it steers toward states its precondition
    assert _load(tmp_path, {**STEER, "prompt": "Houston is in", "toward": "source"})


def test_cli_refuses_an_untestable_study_in_one_line(capsys, tmp_path, tiny_dir):
    from mechscope.cli import main

    f = tmp_path / "s.yaml"
    f.write_text(
        yaml.safe_dump(
            {"name": "v", "title": "V", "hypothesis": "h", "experiments": [{**SWAP, "donor": SWAP["prompt"]}]}
        )
    )
    assert main(["study", str(f), "--model", str(tiny_dir), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "experiment 1 (swap): its control cannot run" in err[-1] and not (tmp_path / "o" / "v").exists()


def test_results_table_is_written_from_the_json(tmp_path):
    from mechscope.studies.summary import BEGIN, END, main

    exp = {"kind": "swap", "status": "not visible", "passed": False}
    exp["numbers"] = {"n_passed": 1, "n_judged": 10, "n_not_visible": 9, "n_not_applicable": 2}
    for model, v, no in (("m1", "not visible with this dictionary", "instrument"), ("m2", "supported", None)):
        d = tmp_path / "reports" / model / "s"
        d.mkdir(parents=True)
        res = {"name": "s", "title": "S", "model": model, "verdict": v, "no": no, "decided_by": [1]}
        res |= {"experiments": [exp], "validation": [{"spearman": 0.5, "spearman_unfrozen": 0.25}]}
        (d / "results.json").write_text(json.dumps(res))
    doc = tmp_path / "results.md"
    doc.write_text(f"before\n{BEGIN}\nold numbers\n{END}\nafter\n")
    assert main(["--reports", str(tmp_path / "reports"), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old numbers" not in text
    assert "| `m1` | not visible with this dictionary (the dictionary cannot see it) | 1. swap: 1/10 passed" in text
    assert "(9 not visible, 2 n/a) | 0.50 / 0.25 |" in text and "| `m2` | supported |" in text
    doc.write_text("no markers")
    with pytest.raises(SystemExit):
        main(["--reports", str(tmp_path / "reports"), "--doc", str(doc)])
