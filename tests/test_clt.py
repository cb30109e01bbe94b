"""Cross-layer transcoders: storage, bad input, and the exactness suite (tiny Llama and Gemma 3) with random CLTs.

Exactness does not depend on the dictionary's quality, so random CLTs (every feature writing to all later layers,
or to the next two only) check the source abstraction: the frozen replacement model reproduces the logits, each
row plus its constant equals its target, and removing a source moves every target by its adjacency column.
"""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.attribution import AttributionConfig, attribute, validate_graph_json
from mechscope.attribution.replacement import frozen_forward, prepare
from mechscope.errors import MechscopeError
from mechscope.transcoders import load_transcoders, save_transcoders
from mechscope.transcoders.clt import CLTConfig, CrossLayerTranscoder
from mechscope.transcoders.source import feature_output

PROMPT = "Dallas is in the state of Texas"


def random_clt(model, features=24, k=4, skip=True, max_write_layers=0, activation="topk", seed=0):
    """A random CLT whose features fire on real inputs (TopK keeps k positive pre-activations per layer)."""
    torch.manual_seed(seed)
    cfg = CLTConfig(
        n_layers=model.n_layers,
        d_model=model.d_model,
        d_transcoder=features,
        activation=activation,
        k=k,
        skip=skip,
        max_write_layers=max_write_layers,
    )
    clt = CrossLayerTranscoder(cfg, {"model": model.name})
    with torch.no_grad():
        clt.W_enc.normal_(0, 0.3)
        clt.b_enc.normal_(0, 0.1)
        clt.b_dec.normal_(0, 0.05)
        clt.threshold.fill_(0.2)
        for W in clt.W_dec:
            W.normal_(0, 0.1)
        if clt.W_skip is not None:
            clt.W_skip.normal_(0, 0.02)
    return clt


@pytest.fixture(scope="module", params=[0, 2], ids=["all-later", "next-2"])
def clt(request, tiny):
    return random_clt(tiny, max_write_layers=request.param)


@pytest.fixture(scope="module")
def clt_graph(tiny, clt):
    return attribute(tiny, clt, PROMPT, AttributionConfig(max_feature_nodes=10_000, batch_size=16))


def _state(tiny, src):
    t = tiny.tokenize(PROMPT)
    return prepare(tiny, src, t.ids, t.strs)


# ---- module and storage ------------------------------------------------------------------------------------
def test_write_layers_and_decoder_window():
    c = CrossLayerTranscoder(CLTConfig(n_layers=4, d_model=8, d_transcoder=5, max_write_layers=2))
    assert [list(c.write_layers(l)) for l in range(4)] == [[0, 1], [1, 2], [2, 3], [3]]
    assert [tuple(W.shape) for W in c.W_dec] == [(5, 2, 8), (5, 2, 8), (5, 2, 8), (5, 1, 8)]
    with pytest.raises(IndexError):
        c.dec_weights(0, 2)
    full = CrossLayerTranscoder(CLTConfig(n_layers=4, d_model=8, d_transcoder=5))
    assert [len(full.write_layers(l)) for l in range(4)] == [4, 3, 2, 1]


def test_decode_sums_every_layer_at_and_below(tiny):
    c = random_clt(tiny, skip=False)
    acts = [torch.randn(3, c.d_transcoder) for _ in range(c.n_layers)]
    out = c.decode(acts)
    w = c.n_layers - 1
    want = c.b_dec[w] + sum(acts[l] @ c.W_dec[l][:, w - l] for l in range(w + 1))
    torch.testing.assert_close(out[w], want)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_save_load_roundtrip(tiny, tmp_path, dtype):
    c = random_clt(tiny, max_write_layers=2, activation="jumprelu")
    p = save_transcoders(c, tmp_path / "clt", dtype=dtype)
    meta = json.loads((p / "config.json").read_text())
    assert meta["kind"] == "clt" and meta["max_write_layers"] == 2 and meta["dtype"] == dtype
    assert sorted(meta["files"]) == sorted(
        [f"enc_{l}.safetensors" for l in range(tiny.n_layers)] + [f"dec_{l}.safetensors" for l in range(tiny.n_layers)]
    )
    c2 = load_transcoders(p, n_layers=tiny.n_layers, d_model=tiny.d_model)
    assert isinstance(c2, CrossLayerTranscoder) and c2.cfg.max_write_layers == 2 and c2.cfg.activation == "jumprelu"

    def close(a, b):  # int8: within one quantisation step of the row's range
        step = 0.0 if dtype == "float32" else float(b.detach().abs().max()) / 127
        torch.testing.assert_close(a, b, rtol=0, atol=step * 1.01)

    close(c2.W_enc, c.W_enc)
    for a, b in zip(c2.W_dec, c.W_dec):
        close(a, b)
    close(c2.W_skip, c.W_skip)
    torch.testing.assert_close(c2.threshold, c.threshold, rtol=1e-3, atol=1e-3)


def test_bad_inputs_are_one_line(tiny, tmp_path):
    c = random_clt(tiny)
    p = save_transcoders(c, tmp_path / "clt", dtype="float32")
    with pytest.raises(MechscopeError, match="cross-layer transcoder .* has 3 layers but the model has 4"):
        load_transcoders(p, n_layers=4)
    with pytest.raises(MechscopeError, match="d_model 48 but the model has 64"):
        load_transcoders(p, d_model=64)
    wrong = random_clt(tiny)
    wrong.cfg.n_layers = 2  # as if made for another model: attribute refuses it before any forward
    with pytest.raises(MechscopeError, match="does not fit"):
        attribute(tiny, wrong, PROMPT)
    f = p / "dec_1.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a truncated decoder file
    with pytest.raises(MechscopeError, match="dec_1.safetensors does not match its SHA-256") as e:
        load_transcoders(p)
    assert "\n" not in str(e.value)
    with pytest.raises(MechscopeError, match="not a readable safetensors file"):
        load_transcoders(p, verify=False)
    with pytest.raises(MechscopeError, match="no per-layer transcoder"):
        c[0]


# ---- exactness ---------------------------------------------------------------------------------------------
def test_replacement_model_reproduces_logits(tiny, clt):
    st = _state(tiny, clt)
    assert st.acts.abs().sum() > 0
    run = frozen_forward(tiny, clt, st, want_logits=True)
    torch.testing.assert_close(run.logits[0].detach(), st.logits, rtol=1e-4, atol=1e-4)


def test_rows_reconstruct_their_values(clt_graph):
    g = clt_graph
    assert g.meta["transcoder_kind"] == "clt" and g.to_json()["metadata"]["info"]["transcoder_kind"] == "clt"
    assert 0 < g.n_feat <= g.meta["n_active_features"]
    rows = torch.cat([torch.arange(g.n_feat), torch.arange(g.N - g.n_logit, g.N)])
    recon = g.A[rows].sum(1) + g.const[rows] + g.dropped[rows]
    torch.testing.assert_close(recon, g.values[rows], rtol=1e-4, atol=1e-4)
    validate_graph_json(g.to_json())


def _targets(tiny, src, st, g, srcv=None, emb=None) -> torch.Tensor:
    run = frozen_forward(tiny, src, st, src_values=srcv, emb_value=emb, want_logits=True)
    vals = [
        src.layer_pre_acts(int(nd["layer"]), run.mlp_in[int(nd["layer"])][0, nd["ctx_idx"]])[nd["feature"]]
        for nd in g.nodes[: g.n_feat]
    ]
    logits = run.final[0, -1] @ tiny.W_U.T
    centred = logits - logits.mean()
    vals += [centred[nd["feature"]] for nd in g.nodes[g.N - g.n_logit :]]
    return torch.stack(vals).detach()


def test_perturbing_each_node_moves_targets_by_its_column(tiny, clt, clt_graph):
    """Removing a feature takes its output out of every layer it writes to; every target moves by its column."""
    g = clt_graph
    st = _state(tiny, clt)
    base_src = [st.recon[l] + st.error[l] for l in range(tiny.n_layers)]
    base = _targets(tiny, clt, st, g)
    targets = torch.cat([torch.arange(g.n_feat), torch.arange(g.N - g.n_logit, g.N)])
    torch.testing.assert_close(base, g.values[targets], rtol=1e-4, atol=1e-4)
    fs, es, toks, _ = g.kinds()
    # features read at layer 0 write to the most layers: include some of them
    early = [i for i in range(g.n_feat) if g.nodes[i]["layer"] == "0"][:3]
    checks = early + list(range(0, g.n_feat, max(1, g.n_feat // 5)))[:5] + [es.start + 1, toks.start + 1]
    multi = 0
    for j in checks:
        nd = g.nodes[j]
        src = [s.clone() for s in base_src]
        emb = st.embed.clone()
        if nd["feature_type"] == "cross layer transcoder":
            l, p, f = int(nd["layer"]), nd["ctx_idx"], nd["feature"]
            outs = feature_output(clt, l, f, st.acts[l, p, f])
            multi += len(outs) > 1
            for w, v in outs.items():
                src[w][p] -= v
        elif nd["feature_type"] == "mlp reconstruction error":
            src[int(nd["layer"])][nd["ctx_idx"]] -= st.error[int(nd["layer"]), nd["ctx_idx"]]
        else:
            emb[nd["ctx_idx"]] = 0
        moved = _targets(tiny, clt, st, g, srcv=src, emb=emb)
        diff = (base - moved - g.A[targets, j]).abs()
        assert diff.max() < 1e-4 + 1e-3 * g.A[targets, j].abs().max(), (nd["node_id"], float(diff.max()))
    assert multi > 0  # the check covered features that write to several layers


def test_direct_effect_matches_graph_in_frozen_model(tiny, clt, clt_graph):
    """Scaling a feature by (1+ε) (in every layer it writes to) moves each logit target by ε·edge."""
    g = clt_graph
    st = _state(tiny, clt)
    j = int(g.node_influence()[: g.n_feat].argmax())
    l, p, f = int(g.nodes[j]["layer"]), g.nodes[j]["ctx_idx"], g.nodes[j]["feature"]
    eps = 0.5
    src = [st.recon[k] + st.error[k] for k in range(tiny.n_layers)]
    for w, v in feature_output(clt, l, f, eps * st.acts[l, p, f]).items():
        src[w][p] += v
    base = frozen_forward(tiny, clt, st, want_logits=True).logits[0, -1].detach()
    moved = frozen_forward(tiny, clt, st, src_values=src, want_logits=True).logits[0, -1].detach()
    for k in range(g.n_logit):
        i = g.N - g.n_logit + k
        tok = g.nodes[i]["feature"]
        delta = float((moved[tok] - moved.mean()) - (base[tok] - base.mean()))
        assert delta == pytest.approx(eps * float(g.A[i, j]), rel=1e-3, abs=1e-5)


# ---- interventions and validation ---------------------------------------------------------------------------
def test_an_edit_writes_into_every_write_layer(tiny, clt):
    """Ablating l/f@p adds −a·W_dec[l→w][f] to every write layer w's MLP output, and nothing else."""
    from mechscope.interventions import Edit, FeatureRef, active_features, run_with_edits

    ids = tiny.tokenize(PROMPT).ids
    p = 3
    l, f, a = next(t for t in active_features(tiny, clt, ids, p) if t[0] == 0)  # layer 0 writes the most
    assert len(clt.write_layers(l)) > 1
    got = run_with_edits(tiny, clt, ids, [Edit(FeatureRef(l, f, p), "ablate")])

    def add(w):
        def fn(y):
            y = y.clone()
            y[0, p] -= (a * clt.dec_weights(l, w)[f]).to(y.dtype)
            return y

        return fn

    with torch.no_grad(), tiny.hooks({f"blocks.{w}.hook_mlp_out": add(w) for w in clt.write_layers(l)}):
        want = tiny.forward(ids[None])[0].float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # writing into the read layer alone (a per-layer view of the same feature) is a different intervention
    with torch.no_grad(), tiny.hooks({f"blocks.{l}.hook_mlp_out": add(l)}):
        only_l = tiny.forward(ids[None])[0].float()
    assert (only_l - got).abs().max() > 1e-4


def test_linear_frozen_ablation_equals_the_graphs_total_effect(tiny, clt, clt_graph):
    from mechscope.attribution.validate import validate_graph

    v = validate_graph(tiny, clt, clt_graph, top_n=8)
    pred = torch.tensor([r["predicted"] for r in v["nodes"]])
    lin = torch.tensor([r["actual_linear"] for r in v["nodes"]])
    torch.testing.assert_close(lin, pred, rtol=1e-3, atol=1e-4 * float(pred.abs().max()))


def test_mixing_kinds_in_one_graph_is_refused(tiny, clt, clt_graph):
    from mechscope.attribution.validate import validate_graph
    from mechscope.transcoders import Transcoder, TranscoderConfig, TranscoderSet

    torch.manual_seed(0)
    layers = []
    for _ in range(tiny.n_layers):
        tc = Transcoder(TranscoderConfig(d_model=tiny.d_model, d_transcoder=16, k=4, skip=False))
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.3)
            tc.W_dec.normal_(0, 0.1)
        layers.append(tc)
    plt = TranscoderSet(layers, {})
    with pytest.raises(
        MechscopeError, match="traced with a cross-layer transcoder but the loaded transcoders are a per-layer"
    ):
        validate_graph(tiny, plt, clt_graph)
    g = attribute(tiny, plt, PROMPT, AttributionConfig(max_feature_nodes=8))
    assert "transcoder_kind" not in g.meta and "transcoder_kind" not in g.to_json()["metadata"]["info"]
    with pytest.raises(MechscopeError, match="traced with a per-layer transcoder set"):
        validate_graph(tiny, clt, g)


# ---- circuit-tracer's CLT layout ------------------------------------------------------------------------------
def write_ct_clt(path, L=3, F=6, d=8, threshold=True, skip=True, seed=0, **cfg_over):
    """A CLT written the way circuit-tracer's `CrossLayerTranscoder.to_safetensors` writes one (by hand, not
    with our exporter): W_enc_{i} [F, d], b_enc_{i}, b_dec_{i}, threshold_{i}, W_skip_{i} (applied x @ W_skip),
    W_dec_{i} [F, L − i, d]; config.yaml with model_kind cross_layer_transcoder. Returns the raw tensors."""
    import yaml
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    raw = []
    for i in range(L):
        t = {
            f"W_enc_{i}": torch.randn(F, d, generator=g),
            f"b_enc_{i}": 0.1 * torch.randn(F, generator=g),
            f"b_dec_{i}": 0.1 * torch.randn(d, generator=g),
        }
        if threshold:
            t[f"threshold_{i}"] = 0.3 * torch.rand(F, generator=g)
        if skip:
            t[f"W_skip_{i}"] = 0.1 * torch.randn(d, d, generator=g)
        save_file(t, str(path / f"W_enc_{i}.safetensors"))
        dec = {f"W_dec_{i}": torch.randn(F, L - i, d, generator=g)}
        save_file(dec, str(path / f"W_dec_{i}.safetensors"))
        raw.append({**t, **dec})
    cfg = {
        "model_kind": "cross_layer_transcoder",
        "model_name": "tiny",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out",
        **cfg_over,
    }
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return raw


def ct_clt_reference(raw, xs):
    """circuit-tracer's CLT forward, written from its source: a_i = act(x_i W_enc_i^T + b_enc_i);
    y_w = Σ_{i ≤ w} a_i W_dec_i[:, w − i] + b_dec_w + x_w @ W_skip_w."""
    L = len(raw)
    acts = []
    for i in range(L):
        pre = xs[i] @ raw[i][f"W_enc_{i}"].T + raw[i][f"b_enc_{i}"]
        th = raw[i].get(f"threshold_{i}")
        acts.append(pre * (pre > th) if th is not None else pre.clamp_min(0))
    ys = []
    for w in range(L):
        y = raw[w][f"b_dec_{w}"] + sum(acts[i] @ raw[i][f"W_dec_{i}"][:, w - i] for i in range(w + 1))
        if f"W_skip_{w}" in raw[w]:
            y = y + xs[w] @ raw[w][f"W_skip_{w}"]
        ys.append(y)
    return acts, ys


@pytest.mark.parametrize("threshold,skip", [(True, True), (False, False)])
def test_import_circuit_tracer_clt_matches_its_forward(tmp_path, threshold, skip):
    from mechscope.transcoders import import_circuit_tracer

    raw = write_ct_clt(tmp_path / "ct", threshold=threshold, skip=skip)
    clt = import_circuit_tracer(tmp_path / "ct", n_layers=3, d_model=8)
    assert isinstance(clt, CrossLayerTranscoder) and clt.cfg.activation == ("jumprelu" if threshold else "relu")
    assert clt.cfg.max_write_layers == 0 and clt.cfg.skip == skip
    xs = [torch.randn(5, 8) for _ in range(3)]
    acts, ys = ct_clt_reference(raw, xs)
    with torch.no_grad():
        ours = [clt.layer_encode(l, xs[l]) for l in range(3)]
        for a, b in zip(ours, acts):
            torch.testing.assert_close(a, b)
        for a, b in zip(clt.decode(ours, xs), ys):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [0, 2])
def test_export_circuit_tracer_clt_roundtrip(tiny, tmp_path, window):
    from safetensors import safe_open

    from mechscope.transcoders import export_circuit_tracer, import_circuit_tracer

    c = random_clt(tiny, activation="jumprelu", max_write_layers=window)
    out = export_circuit_tracer(c, tmp_path / "ct", model_name="tiny")
    L, F, d = tiny.n_layers, c.d_transcoder, tiny.d_model
    raw = []
    for i in range(L):  # exactly the keys and shapes circuit-tracer's loader reads
        t = {}
        for name in (f"W_enc_{i}", f"W_dec_{i}"):
            with safe_open(str(out / f"{name}.safetensors"), framework="pt") as h:
                t.update({k: h.get_tensor(k) for k in h.keys()})
        assert set(t) == {f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}", f"threshold_{i}", f"W_skip_{i}", f"W_dec_{i}"}
        assert tuple(t[f"W_dec_{i}"].shape) == (F, L - i, d)
        raw.append(t)
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["model_kind"] == "cross_layer_transcoder"
    xs = [torch.randn(4, d) for _ in range(L)]
    _, ys = ct_clt_reference(raw, xs)
    with torch.no_grad():
        ours = c.decode([c.layer_encode(l, xs[l]) for l in range(L)], xs)
    for a, b in zip(ours, ys):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    back = import_circuit_tracer(out, n_layers=L, d_model=d)
    assert back.cfg.max_write_layers == window  # the zero decoders beyond the window give it back
    for a, b in zip(back.W_dec, c.W_dec):
        torch.testing.assert_close(a, b.detach())
    # and through a `--transcoders` directory: converted once into our layout
    from mechscope.transcoders.hub import resolve_transcoders

    p = resolve_transcoders(out, n_layers=L, d_model=d)
    assert json.loads((p / "config.json").read_text())["kind"] == "clt"


def test_circuit_tracer_clt_refusals_are_one_line(tiny, tmp_path):
    from mechscope.transcoders import export_circuit_tracer, import_circuit_tracer

    with pytest.raises(MechscopeError, match="not topk"):
        export_circuit_tracer(random_clt(tiny, activation="topk"), tmp_path / "x", model_name="tiny")
    write_ct_clt(tmp_path / "ct")
    with pytest.raises(MechscopeError, match="has 3 layers but the model has 4"):
        import_circuit_tracer(tmp_path / "ct", n_layers=4)
    with pytest.raises(MechscopeError, match="d_model 8 but the model has 16"):
        import_circuit_tracer(tmp_path / "ct", d_model=16)
    write_ct_clt(tmp_path / "mid", feature_input_hook="hook_resid_mid")
    with pytest.raises(MechscopeError, match="'hook_resid_mid' is not supported"):
        import_circuit_tracer(tmp_path / "mid")
    f = tmp_path / "ct" / "W_dec_1.safetensors"
    f.write_bytes(f.read_bytes()[:100])  # truncated decoder file
    with pytest.raises(MechscopeError, match="W_dec_1.safetensors is not a readable safetensors file") as e:
        import_circuit_tracer(tmp_path / "ct")
    assert "\n" not in str(e.value)


@pytest.mark.real
def test_real_model_exactness_with_a_random_clt(gemma):
    """Logits reproduced and rows + constants equal their targets on gemma3-270m with a random CLT (18 layers,
    decoders into the next 4 layers)."""
    c = random_clt(gemma, features=64, k=4, max_write_layers=4)
    with torch.no_grad():
        c.W_enc.normal_(0, 0.05)
        for W in c.W_dec:
            W.normal_(0, 0.05)
        c.W_skip.normal_(0, 0.01)
    prompt = "Dallas is in the state of"
    t = gemma.tokenize(prompt)
    st = prepare(gemma, c, t.ids, t.strs)
    run = frozen_forward(gemma, c, st, want_logits=True)
    torch.testing.assert_close(run.logits[0, -1].detach(), st.logits[-1], rtol=1e-3, atol=2e-3)
    g = attribute(gemma, c, prompt, AttributionConfig(max_feature_nodes=64, batch_size=32))
    assert g.nodes[-g.n_logit]["clerp"].startswith('Output " Texas"')
    rows = torch.cat([torch.arange(g.n_feat), torch.arange(g.N - g.n_logit, g.N)])
    recon = g.A[rows].sum(1) + g.const[rows] + g.dropped[rows]
    torch.testing.assert_close(recon, g.values[rows], rtol=1e-3, atol=5e-3)
    validate_graph_json(g.to_json())


def test_swap_and_locate_with_a_clt(tiny, clt):
    import copy

    from mechscope.interventions import locate_concept, swap

    res = swap(tiny, clt, PROMPT, PROMPT, pos=[2, 3], donor_pos=[2, 3], with_skip=True)
    for b, a in zip(res["before"], res["after"]):  # transplanting a prompt into itself changes nothing
        assert a["token"] == b["token"] and a["prob"] == pytest.approx(b["prob"], abs=1e-4)
    watch = [tiny.tokenizer.decode([i]) for i in (5, 7)]
    # only cross-layer decoders: a layer's 'features' part comes from features read at earlier layers
    cross = copy.deepcopy(clt)
    with torch.no_grad():
        for W in cross.W_dec:
            W[:, 0] = 0
        cross.W_skip.zero_()
    if cross.cfg.n_write(0) < 2:
        pytest.skip("no cross-layer decoders")
    probs = locate_concept(tiny, cross, "Dallas is in the state of", "Oakland is in the state of", watch)["probs"]
    assert probs["skip"] == pytest.approx(probs["none"], abs=1e-6)
    assert probs["features"] != pytest.approx(probs["none"], abs=1e-6)


def test_cached_generation_matches_recompute_with_a_clt(tiny, clt):
    """Generation with a KV cache (issue #37) when an edit at one layer writes into later layers too."""
    import test_generation as tg

    tg.check_cached_generation_matches_recompute(tiny, clt)
