"""Studies: data-file specs, every experiment kind on a tiny model, computed verdicts, reports."""

import json
import zlib

import pytest
import yaml

from mechscope.errors import MechscopeError
from mechscope.studies.runner import Context, Result, list_studies, load_study, run_study, verdict, write_index


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


def test_verdict_is_computed():
    r = lambda p: Result("x", "t", p, "")
    assert verdict([r(True), r(None)]) == "supported"
    assert verdict([r(True), r(False)]) == "partly supported"
    assert verdict([r(False), r(None)]) == "not supported on this model"
    assert verdict([r(None)]) == "not supported on this model"


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
    assert res["verdict"] == verdict([Result(e["kind"], "", e["passed"], "") for e in res["experiments"]])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Verdict" in md and res["verdict"] in md and "Hypothesis" in md
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
    with pytest.raises(MechscopeError, match="unknown experiment kind"):
        run_study({"name": "b", "title": "b", "hypothesis": "h", "experiments": [{"kind": "magic"}]}, ctx, tmp_path)
