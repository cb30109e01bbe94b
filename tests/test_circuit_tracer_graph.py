"""mechscope's graph against circuit-tracer's own, edge by edge.

tests/data/circuit_tracer/ holds what circuit-tracer 0.5.0 computed once (make_fixture.py there made it; it is not
installed here: it pins transformers < 5): a tiny random Gemma 3 model, a JumpReLU transcoder set trained on it by
mechscope and exported in circuit-tracer's layout, and circuit-tracer's `attribute` on one prompt with every active
feature given a row (NNSight backend). Here mechscope loads the same directory, imports the same set, traces the
same prompt, and every edge of circuit-tracer's adjacency is found in mechscope's.

The conventions that differ, aligned before comparing (tests/data/circuit_tracer/README.md):

1. node order and ids: matched by (layer, position, feature) for features, (layer, position) for error nodes,
   position for token nodes and token id for logit nodes;
2. position 0: both zero the features there; circuit-tracer also zeroes the error nodes there, while mechscope
   keeps position 0's MLP output in that error node (its graph still adds up), so those columns are compared as
   "all zero on circuit-tracer's side" only;
3. token nodes: circuit-tracer's value is the raw embedding row W_E[token]; Gemma multiplies the embedding by
   √d_model before the first layer, and mechscope's token node is what enters the residual stream, so every
   circuit-tracer token edge is mechscope's divided by √d_model;
4. features with no path to a logit (the top layer's, before the last position): circuit-tracer gives them nodes
   with no outgoing edges; mechscope leaves them out.

Tolerance: float32 on both sides, through different transformers versions (4.57 there, 5 here): edges agree to
EDGE_ATOL absolute plus EDGE_RTOL relative; the largest edge is ~0.4, the largest difference measured 7.5e-8.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mechscope.attribution import AttributionConfig, attribute
from mechscope.models import load_model
from mechscope.transcoders import import_circuit_tracer

FIXTURE = Path(__file__).parent / "data" / "circuit_tracer"
EDGE_ATOL, EDGE_RTOL = 1e-6, 1e-4


@pytest.fixture(scope="module")
def both():
    meta = json.loads((FIXTURE / "ct_side.json").read_text())
    ct = load_file(str(FIXTURE / "graph.safetensors"))
    model = load_model(str(FIXTURE / "model"))
    ts = import_circuit_tracer(FIXTURE / "ct-set", n_layers=model.n_layers, d_model=model.d_model)
    g = attribute(model, ts, meta["prompt"], AttributionConfig(max_feature_nodes=100_000))
    return meta, ct, model, g


def _ct_keys(ct, n_layers: int) -> list[tuple]:
    """circuit-tracer's node order: selected features, errors by layer then position, tokens, logits."""
    n_pos = len(ct["input_tokens"])
    feats = ct["active_features"][ct["selected_features"]].tolist()
    return (
        [("feature", l, p, f) for l, p, f in feats]
        + [("error", l, p) for l in range(n_layers) for p in range(n_pos)]
        + [("token", p) for p in range(n_pos)]
        + [("logit", t) for t in ct["logit_tokens"].tolist()]
    )


def _key(node: dict) -> tuple:
    kind = node["feature_type"]
    if kind == "cross layer transcoder":
        return ("feature", int(node["layer"]), node["ctx_idx"], node["feature"])
    if kind == "mlp reconstruction error":
        return ("error", int(node["layer"]), node["ctx_idx"])
    if kind == "embedding":
        return ("token", node["ctx_idx"])
    return ("logit", node["feature"])


def test_same_model_set_and_prompt(both):
    """The fixture's model reads the same under transformers 5 as under 4, and the prompt tokenizes the same."""
    meta, ct, model, g = both
    ids = model.tokenize(meta["prompt"]).ids
    assert ids.tolist() == meta["input_ids"] == ct["input_tokens"].tolist()
    with torch.no_grad():
        logits = model.forward(ids[None])[0, -1]
    torch.testing.assert_close(logits, ct["last_logits"], rtol=1e-5, atol=1e-5)


def test_nodes_match(both):
    """Same logit targets and probabilities, same active features with the same activations; circuit-tracer's
    extra features are exactly those with no path to a logit (convention 4) and have no outgoing edges."""
    meta, ct, model, g = both
    ct_keys, ms_keys = _ct_keys(ct, model.n_layers), [_key(n) for n in g.nodes]
    assert len(ct["active_features"]) == g.meta["n_active_features"] == meta["n_selected_features"]
    assert set(ms_keys) <= set(ct_keys)
    extra = [i for i, k in enumerate(ct_keys) if k not in set(ms_keys)]
    top, last = model.n_layers - 1, len(ct["input_tokens"]) - 1
    assert extra and all(ct_keys[i][0] == "feature" and ct_keys[i][1] == top and ct_keys[i][2] < last for i in extra)
    assert float(ct["adjacency"][:, extra].abs().max()) == 0.0
    ms_logits = [n for n in g.nodes if n["feature_type"] == "logit"]
    assert [n["feature"] for n in ms_logits] == ct["logit_tokens"].tolist()
    torch.testing.assert_close(
        torch.tensor([n["token_prob"] for n in ms_logits]), ct["logit_probabilities"], rtol=1e-4, atol=1e-6
    )
    at = {k: i for i, k in enumerate(ct_keys)}
    feats = [n for n in g.nodes if n["feature_type"] == "cross layer transcoder"]
    torch.testing.assert_close(
        torch.tensor([n["activation"] for n in feats]),
        ct["activation_values"][[at[_key(n)] for n in feats]],
        rtol=1e-5,
        atol=1e-6,
    )


def test_adjacency_matches_edge_by_edge(both):
    meta, ct, model, g = both
    ct_keys, ms_keys = _ct_keys(ct, model.n_layers), [_key(n) for n in g.nodes]
    at = {k: i for i, k in enumerate(ct_keys)}
    ci = torch.tensor([at[k] for k in ms_keys])
    theirs = ct["adjacency"][ci][:, ci].clone()  # in mechscope's node order
    ours = g.A.float()
    tokens = [i for i, k in enumerate(ms_keys) if k[0] == "token"]
    theirs[:, tokens] *= math.sqrt(model.d_model)  # convention 3
    err0 = [i for i, k in enumerate(ms_keys) if k[0] == "error" and k[2] == 0]
    assert float(theirs[:, err0].abs().max()) == 0.0  # convention 2: zero there ...
    assert float(ours[:, err0].abs().max()) > 0.0  # ... and carrying position 0's MLP output here
    keep = [i for i in range(len(ms_keys)) if i not in set(err0)]
    assert (theirs[:, keep] != 0).sum() > 1000, "enough edges to compare"
    torch.testing.assert_close(ours[:, keep], theirs[:, keep], rtol=EDGE_RTOL, atol=EDGE_ATOL)


def test_circuit_tracer_scores_match_its_own(both):
    """mechscope's rendering of circuit-tracer's score formulas (lens `ct_replacement` / `ct_completeness`), on
    mechscope's graph put in circuit-tracer's conventions, gives what circuit-tracer's `compute_graph_scores` gave."""
    from mechscope.lens.metrics import circuit_tracer_scores

    meta, ct, model, g = both
    ms_keys = [_key(n) for n in g.nodes]
    A = g.A.clone().float()
    A[:, [i for i, k in enumerate(ms_keys) if k[0] == "error" and k[2] == 0]] = 0
    A[:, [i for i, k in enumerate(ms_keys) if k[0] == "token"]] /= math.sqrt(model.d_model)
    as_ct = copy.copy(g)
    as_ct.A = A
    s = circuit_tracer_scores(as_ct)
    assert s["replacement_score"] == pytest.approx(meta["ct_replacement_score"], abs=1e-5)
    assert s["ct_completeness_score"] == pytest.approx(meta["ct_completeness_score"], abs=1e-5)
