"""Validation as published: in the fully linear frozen model the graph's total effects are the ablation effects."""

import pytest
import torch

from mechscope.attribution import AttributionConfig, attribute
from mechscope.attribution.replacement import prepare
from mechscope.attribution.validate import replacement_readout, total_effects, validate_graph

PROMPT = "Dallas is in the state of Texas"


@pytest.fixture(scope="module")
def full_graph(tiny, tiny_tc):
    # every active feature gets a row: the graph then describes the linear frozen model exactly
    return attribute(tiny, tiny_tc, PROMPT, AttributionConfig(max_feature_nodes=10_000))


def test_replacement_run_reproduces_the_model(tiny, tiny_tc):
    t = tiny.tokenize(PROMPT)
    st = prepare(tiny, tiny_tc, t.ids, t.strs)
    W_U = tiny.W_U.float()
    tok = int(st.logits[-1].argmax())
    vec = W_U[tok] - W_U.mean(0)
    want = float(st.logits[-1, tok] - st.logits[-1].mean())
    for linear in (False, True):
        assert replacement_readout(tiny, tiny_tc, st, vec, None, linear) == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_linear_frozen_ablation_equals_the_graphs_total_effect(tiny, tiny_tc, full_graph):
    v = validate_graph(tiny, tiny_tc, full_graph, top_n=12)
    assert v["n"] == 12
    pred = torch.tensor([r["predicted"] for r in v["nodes"]])
    lin = torch.tensor([r["actual_linear"] for r in v["nodes"]])
    # not just ranks: the values agree, so a missing 1/activation in the path products would fail here
    torch.testing.assert_close(lin, pred, rtol=1e-3, atol=1e-4 * float(pred.abs().max()))
    assert v["spearman_linear"] > 0.99 and v["sign_agreement_linear"] == 1.0
    # the published comparison (thresholds live) and the real model are reported beside it
    assert -1 <= v["spearman"] <= 1 and -1 <= v["spearman_unfrozen"] <= 1
    assert {"actual", "actual_unfrozen"} <= set(v["nodes"][0])


def test_total_effects_divide_paths_by_the_intermediate_activation(full_graph):
    """T = A + P·A + P²·A + … = (I − P)⁻¹·A with P = A[:, features] / a: checked against a linear solve."""
    T = total_effects(full_graph).double()
    fs = full_graph.kinds()[0]
    A = full_graph.A.double()
    act = torch.tensor([full_graph.nodes[i]["activation"] for i in range(fs.stop)], dtype=torch.float64)
    P = torch.zeros_like(A)
    P[:, fs] = A[:, fs] / act
    want = torch.linalg.solve(torch.eye(A.shape[0], dtype=torch.float64) - P, A)
    torch.testing.assert_close(T, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    assert not torch.allclose(T[:, fs], A[:, fs])  # the paths matter on this model
