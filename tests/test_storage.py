"""Compact storage: int8-with-scales transcoder sets load back close to the original and keep their checks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mechscope.errors import MechscopeError
from mechscope.transcoders import load_transcoders, save_transcoders
from mechscope.transcoders.storage import quantize_int8


def test_quantize_int8_per_row_error_bound():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 40, generator=g) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different scales
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (16,)
    back = q.float() * s.float()[:, None]
    # half a quantisation step per entry (plus fp16 rounding of the scale), relative to each row's own range
    err = (back - w).abs().amax(1) / w.abs().amax(1)
    assert float(err.max()) < 0.5 / 127 + 2e-3
    assert int(q.abs().max()) == 127


def test_int8_set_roundtrip(tiny, tiny_tc, tiny_tc_dir, tmp_path):
    out = save_transcoders(tiny_tc, tmp_path / "q8", dtype="int8")
    raw = load_file(str(out / "layer_0.safetensors"))
    assert raw["W_enc"].dtype == torch.int8 and raw["W_enc.scale"].dtype == torch.float16
    assert raw["b_enc"].dtype == torch.float16
    fp32_bytes = sum(f.stat().st_size for f in tiny_tc_dir.glob("*.safetensors"))
    q8_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert q8_bytes < 0.3 * fp32_bytes
    back = load_transcoders(out, n_layers=tiny.n_layers, d_model=tiny.d_model)
    x = torch.randn(64, tiny.d_model, generator=torch.Generator().manual_seed(1))
    for a, b in zip(tiny_tc, back):
        with torch.no_grad():
            ya, yb = a(x), b(x)
        rel = float((ya - yb).norm() / ya.norm())
        assert rel < 0.05, rel
    with pytest.raises(MechscopeError, match="dtype"):
        save_transcoders(tiny_tc, tmp_path / "bad", dtype="int4")


def test_biases_beyond_fp16_survive_saving(tiny, tiny_tc, tmp_path):
    """A sink latent's bias (SmolLM2: ~ -9e4) would become -inf in fp16 and switch the latent off for good: int8
    sets keep such a vector in float32, and a float16 save refuses it instead of writing inf."""
    import copy

    tc = copy.deepcopy(tiny_tc)
    with torch.no_grad():
        tc[0].b_enc[3] = -9.0e4
    out = save_transcoders(tc, tmp_path / "q8", dtype="int8")
    raw = load_file(str(out / "layer_0.safetensors"))
    assert raw["b_enc"].dtype == torch.float32 and float(raw["b_enc"][3]) == -9.0e4
    assert load_file(str(out / "layer_1.safetensors"))["b_enc"].dtype == torch.float16  # others stay compact
    back = load_transcoders(out, n_layers=tiny.n_layers, d_model=tiny.d_model)
    assert torch.isfinite(back[0].b_enc).all()
    with pytest.raises(MechscopeError, match="float16's range"):
        save_transcoders(tc, tmp_path / "f16", dtype="float16")
    assert not (tmp_path / "f16").exists()  # nothing half-written


def test_int8_without_scale_is_an_error(tiny_tc, tmp_path):
    from safetensors.torch import save_file
    import json
    from mechscope.transcoders.storage import sha256_file

    out = save_transcoders(tiny_tc, tmp_path / "q8", dtype="int8")
    f = out / "layer_0.safetensors"
    t = load_file(str(f))
    del t["W_dec.scale"]
    save_file(t, str(f))
    cfg = json.loads((out / "config.json").read_text())
    cfg["files"]["layer_0.safetensors"] = sha256_file(f)
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MechscopeError, match="scale"):
        load_transcoders(out)


def test_cli_export_compact_and_refusals(tiny, tiny_dir, tiny_tc_dir, tmp_path):
    import subprocess
    import sys

    base = [
        sys.executable,
        "-m",
        "mechscope",
        "export-transcoders",
        "--model",
        str(tiny_dir),
        "--transcoders",
        str(tiny_tc_dir),
    ]
    r = subprocess.run(
        base + [str(tmp_path / "q8"), "--format", "mechscope", "--dtype", "int8"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert load_file(str(tmp_path / "q8" / "layer_0.safetensors"))["W_dec"].dtype == torch.int8
    assert len(load_transcoders(tmp_path / "q8", n_layers=tiny.n_layers)) == tiny.n_layers
    r = subprocess.run(base + [str(tmp_path / "ct"), "--dtype", "int8"], capture_output=True, text=True)
    assert r.returncode == 2 and "circuit-tracer" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ct").exists()


def test_check_writable_accepts_an_existing_file_and_refuses_a_file_as_parent(tmp_path):
    from mechscope.errors import MechscopeError
    from mechscope.paths import check_writable

    f = tmp_path / "g.json"
    f.write_text("{}")
    assert check_writable(f) == f  # re-running with the same --out replaces the file
    with pytest.raises(MechscopeError, match="is a file, not a directory"):
        check_writable(f / "sub.json")
    with pytest.raises(MechscopeError, match="is a directory"):
        check_writable(tmp_path)
