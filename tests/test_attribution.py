"""Exactness of the local replacement model and of attribution graphs (tiny random models + real model)."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch
from conftest import every_family

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


@every_family
def test_replacement_model_reproduces_logits(tiny, tiny_tc):
    st = _state(tiny, tiny_tc)
    run = frozen_forward(tiny, tiny_tc, st, want_logits=True)
    torch.testing.assert_close(run.logits[0].detach(), st.logits, rtol=1e-4, atol=1e-4)


@every_family
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
    logits = run.final[0, -1] @ tiny.W_U.T  # the linear readout: logits before any final soft-cap (Gemma 2)
    centred = logits - logits.mean()
    for nd in graph.nodes[graph.N - graph.n_logit :]:
        vals.append(centred[nd["feature"]])
    return torch.stack(vals).detach()


@every_family
def test_perturbing_each_node_moves_targets_by_its_column(tiny, tiny_tc, graph):
    """(b) removing a source node changes every target by exactly minus that node's adjacency column."""
    st = _state(tiny, tiny_tc)
    base_src = [st.recon[l] + st.error[l] for l in range(tiny.n_layers)]
    base = _target_values(tiny, tiny_tc, st, graph)
    targets = torch.cat([torch.arange(graph.n_feat), torch.arange(graph.N - graph.n_logit, graph.N)])
    torch.testing.assert_close(base, graph.values[targets], rtol=1e-4, atol=1e-4)
    fs, es, ts_, _ = graph.kinds()
    checks = list(range(0, graph.n_feat, max(1, graph.n_feat // 6)))[:6] + [
        es.start + 1,
        es.start + st.ids.shape[0] + 2,
        ts_.start + 1,
        ts_.stop - 1,
    ]
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
        assert diff.max() < 1e-4 + 1e-3 * graph.A[targets, j].abs().max(), (
            nd["node_id"],
            diff.max(),
            diff.argmax(),
            graph.nodes[targets[diff.argmax()]],
            (base - moved)[diff.argmax()],
            graph.A[targets, j][diff.argmax()],
        )


@every_family
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
    assert 0 <= info["input_completeness_score"] <= info["ct_completeness_score"] <= 1 + 1e-6


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
    out, svg = tmp_path / "graph.json", tmp_path / "flow.svg"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechscope",
            "trace",
            PROMPT,
            "--model",
            str(tiny_dir),
            "--transcoders",
            str(tc_dir),
            "--out",
            str(out),
            "--max-feature-nodes",
            "20",
            "--flowchart",
            str(svg),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for key in (
        "graph_path",
        "n_nodes",
        "n_edges",
        "replacement_score",
        "input_completeness_score",
        "ct_completeness_score",
        "elapsed_s",
        "top_logits",
    ):
        assert key in res
    validate_graph_json(json.loads(out.read_text()))
    assert res["flowchart"]["boxes"] and ET.fromstring(svg.read_text()).tag.endswith("svg")
    assert not list(tmp_path.glob(".tmp-*")), "the SVG is written atomically"
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "trace", PROMPT, "--model", str(tiny_dir)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "train-transcoders" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------- flowcharts
def _feat(l, f, p, label, infl):
    return {
        "node_id": f"{l}_{f}_{p}",
        "feature": f,
        "layer": str(l),
        "ctx_idx": p,
        "feature_type": "cross layer transcoder",
        "clerp": label,
        "influence": infl,
        "activation": 1.0,
    }


def _hand_graph(bos: bool = True) -> dict:
    """A Dallas→Texas graph: labelled groups at "Dallas" and the last position, unlabelled ones at "state", a BOS sink."""
    toks = ["<bos>" if bos else "Hey", "Dallas", " is", " in", " the", " state", " of"]
    nodes = [
        _feat(1, 1, 1, "US city", 0.10),
        _feat(2, 2, 1, "US city", 0.18),
        _feat(3, 3, 1, "Texas", 0.30),
        _feat(4, 4, 6, "Texas", 0.36),
        _feat(5, 5, 6, '"Texas" → say "Austin"', 0.45),
        _feat(5, 6, 6, 'say "Texas"', 0.50),
        _feat(1, 7, 0, '"<bos>"', 0.05),
        _feat(2, 8, 5, 'mixed: "a" / "b"', 0.55),
        _feat(3, 9, 5, 'mixed: "c"', 0.60),
        _feat(2, 10, 5, "", 0.62),
    ]
    nodes += [
        {"node_id": f"E_{p}_{p}", "feature": p, "layer": "E", "ctx_idx": p, "feature_type": "embedding", "clerp": t}
        for p, t in enumerate(toks)
    ]
    nodes += [
        {
            "node_id": f"7_{100 + k}_6",
            "feature": 100 + k,
            "layer": "7",
            "ctx_idx": 6,
            "feature_type": "logit",
            "clerp": f'Output "{t}" (p={pr:.3f})',
            "token_prob": pr,
        }
        for k, (t, pr) in enumerate([(" Texas", 0.6), (" Austin", 0.2), (" the", 0.1)])
    ]
    edges = [
        ("E_1_1", "1_1_1", 2.0),
        ("E_1_1", "2_2_1", 1.0),
        ("E_0_0", "1_7_0", 5.0),
        ("E_0_0", "1_1_1", 9.0),
        ("1_1_1", "3_3_1", 1.0),
        ("2_2_1", "4_4_6", 1.5),
        ("3_3_1", "5_5_6", 0.8),
        ("4_4_6", "5_5_6", 0.5),
        ("5_5_6", "7_100_6", 3.0),
        ("5_6_6", "7_100_6", 1.0),
        ("E_5_5", "2_8_5", 1.0),
        ("E_5_5", "2_10_5", 0.5),
        ("E_5_5", "3_9_5", 0.5),
        ("2_8_5", "7_100_6", -0.2),
        ("E_6_6", "7_100_6", 0.05),
        ("E_4_4", "2_2_1", 0.01),
    ]
    return {
        "metadata": {"prompt": "".join(toks[1:]), "prompt_tokens": toks},
        "nodes": nodes,
        "links": [{"source": a, "target": b, "weight": w} for a, b, w in edges],
    }


def test_flowchart_groups_names_and_drops_bos():
    from mechscope.attribution import flowchart

    fc = flowchart(_hand_graph())
    feats = {b.name: b for b in fc.boxes if b.kind == "features"}
    assert set(feats) == {"US city", "Texas", "Texas @Dallas L3", "state features L2–3"}
    assert feats["US city"].members == ["1_1_1", "2_2_1"]  # the label both members share
    assert feats["Texas"].members == ["4_4_6", "5_5_6", "5_6_6"]  # the word all three labels share
    assert feats["Texas"].layers == [4, 5] and feats["Texas"].positions == [6]
    assert feats["state features L2–3"].members == ["2_8_5", "3_9_5", "2_10_5"]  # "mixed"/missing labels: where it sits
    # strongest box first; influence = summed own shares (steps of the cumulative influence)
    assert [b.name for b in fc.boxes if b.kind == "features"][0] == "Texas"
    assert abs(feats["Texas"].influence - (0.06 + 0.09 + 0.05)) < 1e-9
    # <bos> (position 0) is neither an input box nor a feature box, though its feature is the most influential
    assert all(0 not in b.positions for b in fc.boxes)
    assert [b.name for b in fc.boxes if b.kind == "output"] == ['say "Texas"', 'say "Austin"']
    assert {b.id for b in fc.boxes if b.kind == "input"} == {"in1", "in5"}  # "of" only had a negligible arrow
    # labels from the index fill empty clerps; a label that only repeats its token gives way to the place
    g = _hand_graph()
    for n in g["nodes"][:2]:
        n["clerp"] = ""
    fc = flowchart(g, labels={"1/1": '"Dallas"', "2/2": '"Dallas"'})
    assert next(b for b in fc.boxes if b.members == ["1_1_1", "2_2_1"]).name == "Dallas features L1–2"
    # no box spans more layers than max_span
    assert all(max(b.layers) - min(b.layers) <= 1 for b in flowchart(_hand_graph(), max_span=1).boxes if b.layers)
    # without a BOS token, position 0 is a real word and takes part
    plain = flowchart(_hand_graph(bos=False))
    assert any(b.id == "in0" for b in plain.boxes) and any(m == "1_7_0" for b in plain.boxes for m in b.members)


def test_flowchart_arrows_sum_links_and_keep_strong_ones():
    from mechscope.attribution import flowchart

    fc = flowchart(_hand_graph())
    ids = {b.name: b.id for b in fc.boxes}
    arrows = {(a.src, a.dst): a.weight for a in fc.arrows}
    assert arrows[(ids["Texas"], ids['say "Texas"'])] == 4.0  # 3.0 + 1.0, summed over member links
    assert (ids["state features L2–3"], ids['say "Texas"']) not in arrows  # |−0.2| < 10% of 4.0
    for a in fc.arrows:
        into = [abs(b.weight) for b in fc.arrows if b.dst == a.dst]
        assert abs(a.weight) >= 0.1 * max(into) and len(into) <= 3
    # at most three arrows into a box, the strongest ones
    toks = ["The", " a", " b", " c", " d", " e", " f"]
    nodes = [_feat(4 * k, k, k + 1, f"word{k}", 0.1 * (k + 1)) for k in range(5)] + [_feat(20, 9, 6, "target", 0.9)]
    nodes += [
        {"node_id": f"E_{p}_{p}", "feature": p, "layer": "E", "ctx_idx": p, "feature_type": "embedding", "clerp": t}
        for p, t in enumerate(toks)
    ]
    links = [
        {"source": f"{4 * k}_{k}_{k + 1}", "target": "20_9_6", "weight": w}
        for k, w in enumerate([1.0, -0.9, 0.8, 0.7, 0.05])
    ]
    links += [{"source": f"E_{k + 1}_{k + 1}", "target": f"{4 * k}_{k}_{k + 1}", "weight": 1.0} for k in range(5)]
    fc = flowchart({"metadata": {"prompt": "".join(toks), "prompt_tokens": toks}, "nodes": nodes, "links": links})
    target = next(b.id for b in fc.boxes if b.name == "target")
    into = sorted((a.weight for a in fc.arrows if a.dst == target), key=abs, reverse=True)
    assert into == [1.0, -0.9, 0.8]


def test_flowchart_is_deterministic_and_renders():
    from mechscope.attribution import flowchart
    from mechscope.attribution.supernodes import complete_linkage

    g = _hand_graph()
    g["nodes"][0]["clerp"] = '<script>alert("x")</script> & "Dallas"'
    a = flowchart(g)
    shuffled = {**g, "nodes": g["nodes"][::-1], "links": g["links"][::-1]}
    b = flowchart(shuffled)
    assert json.dumps(a.to_json()) == json.dumps(flowchart(json.loads(json.dumps(g))).to_json())
    assert [(x.id, x.name, x.members) for x in a.boxes] == [(x.id, x.name, x.members) for x in b.boxes]
    assert [(x.src, x.dst) for x in a.arrows] == [(x.src, x.dst) for x in b.arrows]
    data = a.to_json()
    assert set(data) == {"prompt", "boxes", "arrows", "qParams"}
    assert set(data["boxes"][0]) == {"id", "name", "kind", "members", "layers", "positions", "influence"}
    assert data["qParams"]["supernodes"] == [[x.name, *x.members] for x in a.boxes if x.kind == "features"]
    svg = a.to_svg()
    root = ET.fromstring(svg)  # well-formed, so every label was escaped
    assert "<script>" not in svg and "http" not in svg.replace("http://www.w3.org/2000/svg", "")
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f".//{ns}g[@data-box]")) == len(a.boxes)
    assert len(root.findall(f".//{ns}path[@data-src]")) == len(a.arrows)
    text = a.to_text()
    assert all(x.name in text for x in a.boxes) and "←" in text
    # complete linkage does not chain: 0~1 and 1~2 but not 0~2 (single linkage would give one cluster)
    import numpy as np

    S = np.array([[1, 0.9, 0.1], [0.9, 1, 0.8], [0.1, 0.8, 1]])
    assert complete_linkage(S, 0.5) == [[0, 1], [2]]
    with pytest.raises(MechscopeError):
        flowchart(g, max_boxes=0)


def test_flowchart_of_a_traced_graph(graph):
    from mechscope.attribution import flowchart
    from mechscope.attribution.supernodes import has_bos

    data = graph.to_json()
    fc = flowchart(data, max_boxes=4)
    kinds = [b.kind for b in fc.boxes]
    assert 1 <= kinds.count("features") <= 4 and kinds.count("output") == min(2, graph.n_logit)
    by_id = {n["node_id"]: n for n in data["nodes"]}
    members = [m for b in fc.boxes for m in b.members]
    assert len(members) == len(set(members)) and all(m in by_id for m in members)
    for b in fc.boxes:
        want = {"features": "cross layer transcoder", "input": "embedding", "output": "logit"}[b.kind]
        assert all(by_id[m]["feature_type"] == want for m in b.members)
        if b.kind == "features":  # no labels in this graph: named by where they sit
            assert "features L" in b.name
    if has_bos(data):  # the Gemma-style tiny model prepends <bos>
        assert all(0 not in b.positions for b in fc.boxes)
    for a in fc.arrows:
        into = [abs(x.weight) for x in fc.arrows if x.dst == a.dst]
        assert abs(a.weight) >= 0.1 * max(into) and len(into) <= 3
    assert json.dumps(flowchart(json.loads(json.dumps(data)), max_boxes=4).to_json()) == json.dumps(fc.to_json())
    ET.fromstring(fc.to_svg())


def test_cli_trace_prints_flowchart(tiny_dir, tiny_tc, tmp_path, capsys):
    from mechscope.cli import main
    from mechscope.transcoders import save_transcoders

    tc_dir = save_transcoders(tiny_tc, tmp_path / "tc", dtype="float32")
    assert (
        main(
            [
                "trace",
                PROMPT,
                "--model",
                str(tiny_dir),
                "--transcoders",
                str(tc_dir),
                "--out",
                str(tmp_path / "g.json"),
                "--max-feature-nodes",
                "20",
                "--flowchart",
                str(tmp_path / "f.svg"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "flowchart:" in out and "output" in out.split("flowchart:")[1] and (tmp_path / "f.svg").exists()
    assert main(["trace", PROMPT, "--model", str(tiny_dir), "--transcoders", str(tc_dir), "--flowchart", "f.png"]) == 2


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
