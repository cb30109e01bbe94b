"""Exactness of the local replacement model and of attribution graphs (tiny random models + real model)."""
import json
import subprocess
import sys

import pytest
import torch

from mechscope.attribution import AttributionConfig, Graph, attribute, validate_graph_json
from mechscope.attribution.replacement import frozen_forward, prepare
from mechscope.errors import MechscopeError

PROMPT = "Dallas is in the state of Texas"




@pytest.fixture(scope="module")
def graph(tiny, tiny_tc) -> Graph:
    return attribute(tiny, tiny_tc, PROMPT, AttributionConfig(max_feature_nodes=10_000, batch_size=16))


def _state(tiny, ts):
    t = tiny.tokenize(PROMPT)
    return prepare(tiny, ts, t.ids, t.strs)


def test_replacement_model_reproduces_logits(tiny, tiny_tc):
    st = _state(tiny, tiny_tc)
    run = frozen_forward(tiny, tiny_tc, st, want_logits=True)
    torch.testing.assert_close(run.logits[0].detach(), st.logits, rtol=1e-4, atol=1e-4)


def test_logit_and_feature_rows_reconstruct_their_values(graph):
    """(c) incoming edges + constant terms (biases) reproduce each target's value exactly."""
    # with an unlimited budget every feature that can reach the logits gets a row; the rest (e.g. last-layer
    # features before the final position) have no path, so nothing is dropped
    assert 0 < graph.n_feat <= graph.meta["n_active_features"]
    rows = torch.cat([torch.arange(graph.n_feat), torch.arange(graph.N - graph.n_logit, graph.N)])
    recon = graph.A[rows].sum(1) + graph.const[rows] + graph.dropped[rows]
    torch.testing.assert_close(recon, graph.values[rows], rtol=1e-4, atol=1e-4)
    assert graph.dropped.abs().max() < 1e-6


def _target_values(tiny, ts, st, graph, src=None, emb=None) -> torch.Tensor:
    """Pre-activations of every feature node and centred logits of every logit node in the frozen model."""
    run = frozen_forward(tiny, ts, st, src_values=src, emb_value=emb, want_logits=True)
    vals = []
    for nd in graph.nodes[: graph.n_feat]:
        l, p, f = int(nd["layer"]), nd["ctx_idx"], nd["feature"]
        vals.append(ts[l].pre_acts(run.mlp_in[l][0, p])[f])
    logits = run.logits[0, -1]
    centred = logits - logits.mean()
    for nd in graph.nodes[graph.N - graph.n_logit:]:
        vals.append(centred[nd["feature"]])
    return torch.stack(vals).detach()


def test_perturbing_each_node_moves_targets_by_its_column(tiny, tiny_tc, graph):
    """(b) removing a source node changes every target by exactly minus that node's adjacency column."""
    st = _state(tiny, tiny_tc)
    base_src = [st.recon[l] + st.error[l] for l in range(tiny.n_layers)]
    base = _target_values(tiny, tiny_tc, st, graph)
    targets = torch.cat([torch.arange(graph.n_feat), torch.arange(graph.N - graph.n_logit, graph.N)])
    torch.testing.assert_close(base, graph.values[targets], rtol=1e-4, atol=1e-4)
    fs, es, ts_, _ = graph.kinds()
    checks = list(range(0, graph.n_feat, max(1, graph.n_feat // 6)))[:6] + [es.start + 1, es.start + st.ids.shape[0] + 2, ts_.start + 1, ts_.stop - 1]
    for j in checks:
        nd = graph.nodes[j]
        src = [s.clone() for s in base_src]
        emb = st.embed.clone()
        if nd["feature_type"] == "cross layer transcoder":
            l, p, f = int(nd["layer"]), nd["ctx_idx"], nd["feature"]
            src[l][p] -= st.acts[l, p, f] * tiny_tc[l].W_dec[f].float()
        elif nd["feature_type"] == "mlp reconstruction error":
            l, p = int(nd["layer"]), nd["ctx_idx"]
            src[l][p] -= st.error[l, p]
        else:
            emb[nd["ctx_idx"]] = 0
        moved = _target_values(tiny, tiny_tc, st, graph, src=src, emb=emb)
        diff = (base - moved - graph.A[targets, j]).abs()
        assert diff.max() < 1e-4 + 1e-3 * graph.A[targets, j].abs().max(), (nd["node_id"], diff.max(), diff.argmax(), graph.nodes[targets[diff.argmax()]], (base - moved)[diff.argmax()], graph.A[targets, j][diff.argmax()])


def test_json_follows_schema_and_prunes(graph):
    data = graph.to_json()
    validate_graph_json(data)
    ids = [nd["node_id"] for nd in data["nodes"]]
    assert len(ids) == len(set(ids)), "node ids must be unique (error ids never collide with features)"
    kinds = {nd["feature_type"] for nd in data["nodes"]}
    assert {"embedding", "logit"} <= kinds
    known = set(ids)
    assert all(l["source"] in known and l["target"] in known for l in data["links"])
    loose = graph.to_json(node_threshold=1.0, edge_threshold=1.0)
    tight = graph.to_json(node_threshold=0.3, edge_threshold=0.5)
    assert len(tight["nodes"]) < len(loose["nodes"]) and len(tight["links"]) < len(loose["links"])
    info = data["metadata"]["info"]
    assert 0 <= info["pruned_replacement_score"] <= info["replacement_score"] + 1e-6 <= 1 + 1e-6
    assert 0 <= info["completeness_score"] <= 1 + 1e-6


def test_binary_roundtrip_reprunes_identically(graph, tmp_path):
    p = graph.save(tmp_path / "g.json")
    g2 = Graph.load_binary(p.with_suffix(".adjacency.safetensors"))
    assert torch.equal(g2.A, graph.A)
    a, b = graph.to_json(node_threshold=0.5), g2.to_json(node_threshold=0.5)
    assert a["nodes"] == b["nodes"] and a["links"] == b["links"]


def test_budget_limits_feature_nodes_and_logit_targets(tiny, tiny_tc):
    g = attribute(tiny, tiny_tc, PROMPT, AttributionConfig(max_feature_nodes=5, batch_size=4))
    assert g.n_feat <= 5
    rows = torch.cat([torch.arange(g.n_feat), torch.arange(g.N - g.n_logit, g.N)])
    torch.testing.assert_close(g.A[rows].sum(1) + g.const[rows] + g.dropped[rows], g.values[rows], rtol=1e-4, atol=1e-4)
    assert 1 <= g.n_logit <= 10
    tok = tiny.tokenizer.decode([int(tiny.tokenize(" Texas").ids[-1])])
    g = attribute(tiny, tiny_tc, PROMPT, AttributionConfig(max_feature_nodes=5, targets=[tok]))
    assert g.n_logit == 1 and tok in g.nodes[-1]["clerp"]


def test_bad_inputs(tiny, tiny_tc):
    with pytest.raises(MechscopeError, match="empty"):
        attribute(tiny, tiny_tc, "  ")
    with pytest.raises(MechscopeError, match="not a single token"):
        attribute(tiny, tiny_tc, PROMPT, AttributionConfig(targets=["Dallas is in the state"]))
    with pytest.raises(MechscopeError, match="at most"):
        attribute(tiny, tiny_tc, "one two " * 400)


def test_cli_trace_json_and_errors(tiny_dir, tiny_tc, tmp_path):
    from mechscope.transcoders import save_transcoders

    tc_dir = save_transcoders(tiny_tc, tmp_path / "tc", dtype="float32")
    out = tmp_path / "graph.json"
    r = subprocess.run([sys.executable, "-m", "mechscope", "trace", PROMPT, "--model", str(tiny_dir), "--transcoders",
                        str(tc_dir), "--out", str(out), "--max-feature-nodes", "20", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for key in ("graph_path", "n_nodes", "n_edges", "replacement_score", "completeness_score", "elapsed_s", "top_logits"):
        assert key in res
    validate_graph_json(json.loads(out.read_text()))
    r = subprocess.run([sys.executable, "-m", "mechscope", "trace", PROMPT, "--model", str(tiny_dir)], capture_output=True, text=True)
    assert r.returncode == 2 and "train-transcoders" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.real
def test_real_model_exactness_with_random_transcoders(gemma):
    """(a) and (c) on gemma3-270m: exactness does not depend on transcoder quality, so a small random set is used."""
    from mechscope.transcoders import Transcoder, TranscoderConfig, TranscoderSet

    torch.manual_seed(0)
    layers = []
    for _ in range(gemma.n_layers):
        tc = Transcoder(TranscoderConfig(d_model=gemma.d_model, d_transcoder=128, k=8, skip=True))
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.05)
            tc.W_dec.normal_(0, 0.05)
            tc.W_skip.normal_(0, 0.01)
        layers.append(tc)
    ts = TranscoderSet(layers, {"model": "gemma3-270m"})
    prompt = "Dallas is in the state of"
    t = gemma.tokenize(prompt)
    st = prepare(gemma, ts, t.ids, t.strs)
    run = frozen_forward(gemma, ts, st, want_logits=True)
    torch.testing.assert_close(run.logits[0, -1].detach(), st.logits[-1], rtol=1e-3, atol=2e-3)
    g = attribute(gemma, ts, prompt, AttributionConfig(max_feature_nodes=64, batch_size=32))
    assert g.nodes[-g.n_logit]["clerp"].startswith('Output " Texas"')
    rows = torch.cat([torch.arange(g.n_feat), torch.arange(g.N - g.n_logit, g.N)])
    recon = g.A[rows].sum(1) + g.const[rows] + g.dropped[rows]
    torch.testing.assert_close(recon, g.values[rows], rtol=1e-3, atol=5e-3)
    validate_graph_json(g.to_json())
