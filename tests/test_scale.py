"""Memory that scales with the model: memory-mapped transcoder sets (per-layer and cross-layer), memory-mapped model
weights, and the whole-trace estimate that refuses what does not fit, before anything loads (tiny models only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mechscope.attribution import AttributionConfig, attribute
from mechscope.cli import main
from mechscope.errors import MechscopeError
from mechscope.transcoders import load_transcoders, save_transcoders
from mechscope.transcoders.clt import CLTConfig, CrossLayerTranscoder
from mechscope.transcoders.mapped import MappedCLT, MappedTranscoderSet, map_safetensors, write_safetensors
from mechscope.transcoders.module import Transcoder, TranscoderConfig, TranscoderSet

PROMPT = "Dallas is in the state of Texas"


def random_set(model, features=40, activation="jumprelu", skip=True, seed=0) -> TranscoderSet:
    torch.manual_seed(seed)
    layers = []
    for _ in range(model.n_layers):
        tc = Transcoder(TranscoderConfig(model.d_model, features, activation=activation, k=4, skip=skip))
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.3)
            tc.b_enc.normal_(0, 0.1)
            tc.W_dec.normal_(0, 0.1)
            tc.b_dec.normal_(0, 0.05)
            tc.threshold.fill_(0.3)
            if tc.W_skip is not None:
                tc.W_skip.normal_(0, 0.02)
        layers.append(tc)
    return TranscoderSet(layers, {"model": model.name})


def random_clt(model, features=24, seed=0) -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    cfg = CLTConfig(model.n_layers, model.d_model, features, activation="topk", k=4, skip=True, max_write_layers=2)
    clt = CrossLayerTranscoder(cfg, {"model": model.name})
    with torch.no_grad():
        clt.W_enc.normal_(0, 0.3)
        clt.b_enc.normal_(0, 0.1)
        clt.b_dec.normal_(0, 0.05)
        for W in clt.W_dec:
            W.normal_(0, 0.1)
        clt.W_skip.normal_(0, 0.02)
    return clt


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_mapped_equals_eager(tiny, tmp_path, dtype, kind):
    """A mapped set computes the same float32 numbers as the same files loaded whole, row for row."""
    src = random_set(tiny) if kind == "plt" else random_clt(tiny)
    path = save_transcoders(src, tmp_path / "set", dtype=dtype)
    eager = load_transcoders(path, mapped=False)
    mapped = load_transcoders(path, mapped=True)
    assert isinstance(mapped, MappedTranscoderSet if kind == "plt" else MappedCLT)
    assert (mapped.kind, mapped.n_layers, mapped.d_model, mapped.d_transcoder) == (
        eager.kind,
        eager.n_layers,
        eager.d_model,
        eager.d_transcoder,
    )
    x = torch.randn(5, tiny.d_model)
    idx = torch.tensor([3, 0, 7])
    for l in range(tiny.n_layers):
        assert torch.equal(mapped.layer_encode(l, x), eager.layer_encode(l, x))
        W, b = eager.enc_weights(l)
        assert torch.equal(mapped.enc_rows(l, idx)[0], W[idx]) and torch.equal(mapped.enc_rows(l, idx)[1], b[idx])
        assert torch.equal(mapped.out_bias(l), eager.out_bias(l))
        assert torch.equal(mapped.layer_skip(l, x), eager.layer_skip(l, x))
        for w in eager.write_layers(l):
            assert torch.equal(mapped.dec_rows(l, w, idx), eager.dec_weights(l, w)[idx])
            assert torch.equal(mapped.dec_weights(l, w), eager.dec_weights(l, w))
    if kind == "plt":
        assert torch.equal(mapped[1].W_dec, eager[1].W_dec)


def test_mapped_chunks_the_encoder(tiny, tmp_path, monkeypatch):
    """Wide sets are encoded CHUNK features at a time: the same activations as one product."""
    import mechscope.transcoders.mapped as mp

    path = save_transcoders(random_set(tiny, features=40), tmp_path / "set", dtype="int8")
    mapped = load_transcoders(path, mapped=True)
    x = torch.randn(4, tiny.d_model)
    whole = mapped.layer_pre_acts(1, x)
    monkeypatch.setattr(mp, "CHUNK", 16)
    torch.testing.assert_close(mapped.layer_pre_acts(1, x), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_mapped_graph_matches_eager(tiny, tmp_path, kind):
    """The graph traced with a memory-mapped set equals the one traced with the set loaded whole."""
    src = random_set(tiny) if kind == "plt" else random_clt(tiny)
    path = save_transcoders(src, tmp_path / "set", dtype="int8")
    cfg = AttributionConfig(max_feature_nodes=10_000, batch_size=16)
    g0 = attribute(tiny, load_transcoders(path, mapped=False), PROMPT, cfg)
    g1 = attribute(tiny, load_transcoders(path, mapped=True), PROMPT, cfg)
    assert [n["node_id"] for n in g0.nodes] == [n["node_id"] for n in g1.nodes]
    for a, b in ((g0.A, g1.A), (g0.values, g1.values), (g0.const, g1.const), (g0.w, g1.w)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mapped_set_is_not_read_into_memory(tiny, tmp_path):
    """Its tensors are views of the file's mapping: nothing is copied when the set opens."""
    path = save_transcoders(random_set(tiny), tmp_path / "set", dtype="int8")
    mapped = load_transcoders(path, mapped=True)
    ptr = mapped._enc[0]["W_enc"].data_ptr()
    assert any(a <= ptr < b and "layer_0.safetensors" in name for a, b, name in _maps())


def test_large_sets_map_by_default(tiny, tmp_path, monkeypatch):
    path = save_transcoders(random_set(tiny), tmp_path / "set", dtype="int8")
    assert isinstance(load_transcoders(path), TranscoderSet)  # small: loaded whole, as before
    monkeypatch.setenv("MECHSCOPE_MAPPED", "1")
    assert isinstance(load_transcoders(path), MappedTranscoderSet)
    monkeypatch.setenv("MECHSCOPE_MAPPED", "0")
    monkeypatch.setattr("mechscope.transcoders.storage.MAP_ABOVE_GB", 0.0)
    assert isinstance(load_transcoders(path), TranscoderSet)
    monkeypatch.delenv("MECHSCOPE_MAPPED")
    assert isinstance(load_transcoders(path), MappedTranscoderSet)


def test_mapped_bad_files(tiny, tmp_path):
    path = save_transcoders(random_set(tiny), tmp_path / "set", dtype="int8")
    f = path / "layer_1.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(MechscopeError, match="SHA-256"):
        load_transcoders(path, mapped=True)
    with pytest.raises(MechscopeError, match="does not fit the file"):
        load_transcoders(path, mapped=True, verify=False)
    with pytest.raises(MechscopeError, match="layers but the model has"):
        load_transcoders(path, n_layers=tiny.n_layers + 1, mapped=True)


def test_write_safetensors_streams(tmp_path):
    """The streaming writer's files read back with safetensors' own loader and with the mapping."""
    a = torch.randn(5, 3)
    b = torch.randint(-127, 127, (4, 2), dtype=torch.int8)
    c = torch.randn(7).to(torch.bfloat16)
    data = {"a": a, "b": b, "c": c}
    specs = [(k, tuple(v.shape), v.dtype) for k, v in data.items()]
    write_safetensors(tmp_path / "x.safetensors", specs, lambda k: (data[k][:2], data[k][2:]), {"note": "hi"})
    back = load_file(str(tmp_path / "x.safetensors"))
    mapped = map_safetensors(tmp_path / "x.safetensors")
    for k, v in data.items():
        assert torch.equal(back[k], v) and torch.equal(mapped[k], v)


def _maps() -> list[tuple[int, int, str]]:
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        a, b = (int(v, 16) for v in parts[0].split("-"))
        out.append((a, b, parts[-1] if len(parts) >= 6 else ""))
    return out


def test_model_weights_are_memory_mapped(tiny_dir):
    """Float32 weights stay views of the model's safetensors file (transformers maps them): loading copies none."""
    from mechscope.models import load_model

    m = load_model(str(tiny_dir))
    maps = _maps()
    ptrs = [p.data_ptr() for p in m.model.parameters()]
    mapped = sum(any(a <= p < b and name.endswith(".safetensors") for a, b, name in maps) for p in ptrs)
    assert mapped == len(ptrs)


# ---- the estimate before work --------------------------------------------------------------------------------
def test_estimate_covers_weights_and_set(tiny_dir, tmp_path, monkeypatch):
    from mechscope.attribution import precheck
    from mechscope.models import load_model

    m = load_model(str(tiny_dir))
    path = save_transcoders(random_set(m), tmp_path / "set", dtype="int8")
    src, shape = precheck.model_shape(str(tiny_dir))
    meta = json.loads((path / "config.json").read_text())
    parts = precheck.resident_parts(src, shape, path, meta, 8, AttributionConfig())
    n_params = sum(p.numel() for p in m.model.parameters())
    assert parts["model weights"] == pytest.approx(n_params * 4 / 2**30, rel=0.01)
    assert parts["transcoders"] > 0 and parts["tracing"] > 0
    monkeypatch.setenv("MECHSCOPE_MAPPED", "1")
    parts = precheck.resident_parts(src, shape, path, meta, 8, AttributionConfig())
    assert "transcoders (memory-mapped)" in parts


def test_too_large_is_refused_before_loading(tiny_dir, tmp_path, monkeypatch, capsys):
    """Not enough memory left: one line with the estimate and its parts, exit 2, and no weights loaded."""
    from mechscope.models import load_model

    path = save_transcoders(random_set(load_model(str(tiny_dir))), tmp_path / "set", dtype="int8")
    monkeypatch.setattr("mechscope.guards.available_gb", lambda: 0.01)

    def boom(*a, **k):
        raise AssertionError("the model loaded before the memory check")

    monkeypatch.setattr("mechscope.models.loading.load_hf", boom)
    capsys.readouterr()
    rc = main(["trace", PROMPT, "--model", str(tiny_dir), "--transcoders", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert "needs ~" in err and "model weights" in err and "transcoders" in err and "0.0 GB of memory" in err


def test_set_that_does_not_fit_the_model(tiny_dir, tmp_path, capsys):
    """A set made for another model: one line, exit 2."""
    from types import SimpleNamespace

    other = SimpleNamespace(n_layers=2, d_model=16, name="other")
    path = save_transcoders(random_set(other), tmp_path / "set", dtype="int8")
    capsys.readouterr()
    rc = main(["trace", PROMPT, "--model", str(tiny_dir), "--transcoders", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "layers" in err


def test_scale_shapes_build_tiny(tmp_path):
    """The benchmark's builder writes a random model and set of a shape that load and trace (scaled down)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_scale", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_scale.py"
    )
    bs = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = bs  # its dataclasses look their module up there
    spec.loader.exec_module(bs)
    for name in ("gemma-2-2b", "llama-3.2-1b"):
        shape = bs.tiny(bs.SHAPES[name])
        model_dir, set_dir = bs.build(shape, tmp_path / name)
        row = bs.run_row(shape, model_dir, set_dir, tokens=6, rows=16)
        assert row["tokens"] == 6 and row["rows"] == 16 and row["trace_s"] > 0
        ts = load_transcoders(set_dir)
        assert ts.kind == shape.kind and ts.d_transcoder == shape.width
