"""Interventions: identities, propagation, linear prediction in the frozen model, swap, validation, bad input."""

import subprocess
import sys

import pytest
import torch
from conftest import every_family

from mechscope.attribution import AttributionConfig, attribute
from mechscope.errors import MechscopeError
from mechscope.interventions import (
    Edit,
    FeatureRef,
    Supernodes,
    check_edits,
    intervene,
    parse_edits,
    run_with_edits,
    spearman,
    swap,
    validate_graph,
)

PROMPT = "Dallas is in the state of Texas"


def _active(tiny, ts, pos):
    from mechscope.interventions import active_features

    return active_features(tiny, ts, tiny.tokenize(PROMPT).ids, pos)


@every_family
def test_scale_by_one_is_identity(tiny, tiny_tc):
    ids = tiny.tokenize(PROMPT).ids
    clean = tiny.forward(ids[None])[0]
    l, f, _ = _active(tiny, tiny_tc, 3)[0]
    out = run_with_edits(
        tiny, tiny_tc, ids, [Edit(FeatureRef(l, f, 3), "scale", 1.0), Edit(FeatureRef(l, f), "scale", 1.0)]
    )
    torch.testing.assert_close(out, clean, rtol=1e-5, atol=1e-5)


@every_family
def test_ablating_a_zero_decoder_feature_changes_nothing(tiny, tiny_tc):
    import copy

    ids = tiny.tokenize(PROMPT).ids
    l, f, _ = _active(tiny, tiny_tc, 3)[0]
    ts = copy.deepcopy(tiny_tc)
    with torch.no_grad():
        ts[l].W_dec[f] = 0
    clean = tiny.forward(ids[None])[0]
    torch.testing.assert_close(run_with_edits(tiny, ts, ids, [Edit(FeatureRef(l, f, 3), "ablate")]), clean)
    # while ablating it with its real decoder does change the output
    assert not torch.allclose(run_with_edits(tiny, tiny_tc, ids, [Edit(FeatureRef(l, f, 3), "ablate")]), clean)


@every_family
def test_edit_effect_propagates_only_forward_in_position(tiny, tiny_tc):
    ids = tiny.tokenize(PROMPT).ids
    clean = tiny.forward(ids[None])[0]
    l, f, _ = _active(tiny, tiny_tc, 4)[0]
    out = run_with_edits(tiny, tiny_tc, ids, [Edit(FeatureRef(l, f, 4), "set", 5.0)])
    torch.testing.assert_close(out[:4], clean[:4])  # causal: earlier positions untouched
    assert (out[4:] - clean[4:]).abs().max() > 1e-4


def test_direct_effect_matches_graph_in_frozen_model(tiny, tiny_tc):
    """In the local replacement model, scaling a feature by (1+ε) moves every logit target by ε·edge (linear)."""
    from mechscope.attribution.replacement import frozen_forward, prepare

    g = attribute(tiny, tiny_tc, PROMPT, AttributionConfig(max_feature_nodes=10_000))
    t = tiny.tokenize(PROMPT)
    st = prepare(tiny, tiny_tc, t.ids, t.strs)
    j = int(g.node_influence()[: g.n_feat].argmax())
    nd = g.nodes[j]
    l, p, f = int(nd["layer"]), nd["ctx_idx"], nd["feature"]
    eps = 0.5
    src = [st.recon[k] + st.error[k] for k in range(tiny.n_layers)]
    src[l][p] += eps * st.acts[l, p, f] * tiny_tc[l].W_dec[f].float()
    base = frozen_forward(tiny, tiny_tc, st, want_logits=True).logits[0, -1].detach()
    moved = frozen_forward(tiny, tiny_tc, st, src_values=src, want_logits=True).logits[0, -1].detach()
    for k in range(g.n_logit):
        i = g.N - g.n_logit + k
        tok = g.nodes[i]["feature"]
        delta = float((moved[tok] - moved.mean()) - (base[tok] - base.mean()))
        assert delta == pytest.approx(eps * float(g.A[i, j]), rel=1e-3, abs=1e-5)


@every_family
def test_intervene_reports_before_after_and_generation(tiny, tiny_tc):
    l, f, a = _active(tiny, tiny_tc, 2)[0]
    res = intervene(
        tiny, tiny_tc, PROMPT, [Edit(FeatureRef(l, f, -1), "set", 10 * a)], generate=3, freeze_attention=True
    )
    assert len(res["before"]) == 5 and len(res["after"]) == 5
    assert res["edits"][0]["feature"].endswith(f"@{tiny.tokenize(PROMPT).ids.shape[0] - 1}")
    assert isinstance(res["generation_before"], str) and isinstance(res["generation_after"], str)
    assert res["before"] != res["after"]


def test_supernodes_and_parsing():
    sn = Supernodes()
    sn.add("texas=1/5@3,2/7@3")
    edits = parse_edits(["texas=0"], ["1/2=-1.5"], ["0/1@-1"], sn)
    assert [str(e.ref) for e in edits] == ["1/5@3", "2/7@3", "1/2", "0/1@-1"]
    assert edits[2].mode == "scale" and edits[2].value == -1.5
    with pytest.raises(MechscopeError, match="finite"):
        parse_edits(["1/2=nan"], [], [])
    with pytest.raises(MechscopeError, match="bad feature"):
        parse_edits([], [], ["x/y"])


def test_out_of_range_edits_fail_before_running(tiny, tiny_tc):
    for ref, msg in ((FeatureRef(99, 0), "layer"), (FeatureRef(0, 10**6), "index"), (FeatureRef(0, 0, 50), "position")):
        with pytest.raises(MechscopeError, match=msg):
            check_edits(tiny, tiny_tc, [Edit(ref, "ablate")], n_pos=8)


def test_swap_auto_transplants_features(tiny, tiny_tc):
    res = swap(tiny, tiny_tc, "Dallas is in the state of", "Oakland is in the state of")
    assert res["positions"] and res["removed"] and res["injected"]
    with pytest.raises(MechscopeError, match="do not differ"):
        swap(tiny, tiny_tc, PROMPT, PROMPT)
    with pytest.raises(MechscopeError, match="--pos 40 out of range"):
        swap(tiny, tiny_tc, "Dallas is in the state of", "Oakland is in the state of", pos=[40], donor_pos=[1])
    with pytest.raises(MechscopeError, match="--donor-pos -99 out of range"):
        swap(tiny, tiny_tc, "Dallas is in the state of", "Oakland is in the state of", pos=[1], donor_pos=[-99])


def test_validation_returns_rank_correlation(tiny, tiny_tc):
    g = attribute(tiny, tiny_tc, PROMPT, AttributionConfig(max_feature_nodes=10_000))
    v = validate_graph(tiny, tiny_tc, g, top_n=8)
    assert v["n"] == 8 and -1 <= v["spearman"] <= 1
    # the graph's predictions track the measured ablations (measured: Spearman 0.98 llama / 0.86 gemma3, signs
    # agree on 6/8 and 8/8), so a sign error in `predicted` (or in the ablation) makes both fall below one half
    assert v["spearman"] > 0.5 and v["sign_agreement"] > 0.5, v
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_cli_intervene_bad_feature_one_line(tiny_dir):
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "intervene", PROMPT, "--model", str(tiny_dir), "--ablate", "3/x"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "bad feature" in r.stderr and "Traceback" not in r.stderr


def test_aligned_positions_span_rest():
    from mechscope.interventions import aligned_positions

    a, b = ["<s>", "Dallas", " is", " in"], ["<s>", "Oak", "land", " is", " in"]
    assert aligned_positions(a, b, "diff") == ([1], [2])
    assert aligned_positions(a, b, "rest") == ([1, 2, 3], [2, 3, 4])
    assert aligned_positions(a, ["<s>", "Paris", " is", " in"], "rest") == ([1, 2, 3], [1, 2, 3])
    with pytest.raises(MechscopeError, match="span"):
        aligned_positions(a, b, "everything")


@every_family
def test_self_swap_with_skip_is_identity(tiny, tiny_tc):
    # transplanting a prompt's own features and skip term into itself changes nothing
    res = swap(tiny, tiny_tc, PROMPT, PROMPT, pos=[2, 3], donor_pos=[2, 3], with_skip=True)
    for b, a in zip(res["before"], res["after"]):
        assert a["token"] == b["token"] and a["prob"] == pytest.approx(b["prob"], abs=1e-4)


def test_swap_with_skip_moves_more_than_features_alone(tiny, tiny_tc):
    base = swap(tiny, tiny_tc, "Dallas is in the state of", "Oakland is in the state of", span="rest", top_k=50)
    more = swap(
        tiny, tiny_tc, "Dallas is in the state of", "Oakland is in the state of", span="rest", with_skip=True, top_k=50
    )
    assert more["with_skip"] and more["span"] == "rest" and len(more["positions"]) > 1
    assert [r["prob"] for r in more["after"]] != pytest.approx([r["prob"] for r in base["after"]])


def test_locate_concept_attributes_a_difference_to_its_component(tiny, tiny_tc):
    import copy

    from mechscope.interventions import locate_concept

    watch = [tiny.tokenizer.decode([i]) for i in (5, 7)]
    # with zero decoders and no skip, the transcoders explain nothing: all of the MLP is 'error'
    blind = copy.deepcopy(tiny_tc)
    for tc in blind:
        tc.W_dec.data.zero_()
        tc.W_skip.data.zero_()
        tc.b_dec.data.zero_()
    res = locate_concept(tiny, blind, "Dallas is in the state of", "Oakland is in the state of", watch)["probs"]
    assert res["error"] == pytest.approx(res["mlp_out"], abs=1e-5)
    assert res["features"] == pytest.approx(res["none"], abs=1e-6) and res["skip"] == pytest.approx(
        res["none"], abs=1e-6
    )
    assert res["mlp_out"] != pytest.approx(res["none"], abs=1e-6)


def test_aligned_pairs_cover_the_whole_differing_span():
    from mechscope.interventions import aligned_pairs, aligned_positions

    a = ["<s>", "Tiger", " Woods", " plays", " golf"]
    b = ["<s>", "Ser", "ena", " Williams", " plays", " golf"]
    # every token of both names takes part: end-matched, the donor's extra token folds into the span's start
    assert aligned_pairs(a, b, bos=True) == [(1, 1), (1, 2), (2, 3)]
    assert aligned_pairs(a, b, "rest", bos=True) == [(1, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert aligned_pairs(a, b, "diff", bos=True) == [(2, 3)]  # the old default: the last token only
    assert aligned_positions(a, b, bos=True) == ([1, 2], [2, 3])
    # a longer recipient span: its extra token is suppressed without a partner
    assert aligned_pairs(b, a, bos=True) == [(1, None), (2, 1), (3, 2)]
    with pytest.raises(MechscopeError, match="share no context"):
        aligned_pairs(["<s>", "a", "b"], ["<s>", "c", "d", "e"], bos=True)
    with pytest.raises(MechscopeError, match="share no context"):
        aligned_pairs(["x", "y"], ["z"])


def test_swap_of_different_length_names_transplants_every_token(tiny, tiny_tc):
    r, d = "Dallas is in the state of", "Michael Jordan is in the state of"
    rs, ds = tiny.tokenize(r).strs, tiny.tokenize(d).strs
    res = swap(tiny, tiny_tc, r, d)
    suffix = len(tiny.tokenize(" is in the state of").strs) - (1 if rs[0] == "<bos>" else 0)
    n_r, n_d = len(rs) - suffix, len(ds) - suffix
    first = 1 if rs[0] == ds[0] else 0
    # every recipient position of the name is swapped, and every donor position of the other name is used
    assert sorted(set(p for p, _ in res["pairs"])) == list(range(first, n_r))
    assert sorted(q for _, q in res["pairs"] if q is not None) == list(range(first, n_d))
    assert "←" in res["swapped"] and res["injected"] and res["removed"]
    with pytest.raises(MechscopeError, match="share no context"):
        swap(tiny, tiny_tc, "Dallas is", "One two three")


def test_cli_swap_prints_the_swapped_positions(tiny_dir, tiny_tc_dir):
    common = ["--model", str(tiny_dir), "--transcoders", str(tiny_tc_dir)]
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "swap", "Dallas is in the state of", *common]
        + ["--donor", "Michael Jordan is in the state of"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "swapped (recipient position <- donor position):" in r.stdout and "←" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "swap", "Dallas is", *common, "--donor", "One two three", "-q"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "share no context" in r.stderr
