"""circuit-tracer's per-layer layouts: fixtures written here to its documented layout (not by our exporter),
imported sets reproduce its activations exactly, exports hold exactly the keys and fields its loader reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from mechscope.errors import MechscopeError
from mechscope.transcoders import (
    Transcoder,
    TranscoderConfig,
    TranscoderSet,
    export_circuit_tracer,
    import_circuit_tracer,
)

D, F_, L = 16, 40, 3
# what circuit-tracer's SingleLayerTranscoder.to_safetensors writes / load_transcoder reads
CT_KEYS = {"W_enc", "W_dec", "b_enc", "b_dec", "activation_function.threshold", "W_skip"}
CT_FIELDS = {"model_kind", "model_name", "feature_input_hook", "feature_output_hook", "scan", "activation", "k"}


def _raw_layer(g: torch.Generator, act: str, skip: bool) -> dict[str, torch.Tensor]:
    t = {
        "W_enc": torch.randn(F_, D, generator=g) / D**0.5,
        "W_dec": torch.randn(F_, D, generator=g),
        "b_enc": torch.randn(F_, generator=g) * 0.1,
        "b_dec": torch.randn(D, generator=g),
    }
    if act == "jumprelu":
        t["activation_function.threshold"] = torch.rand(F_, generator=g) * 0.6
    if act == "topk":
        t["b_enc"] += 3.0  # the k largest pre-activations are positive on the probe (see the module's note)
        t["k"] = torch.tensor(5)  # circuit-tracer's to_safetensors writes this for TopK
    if skip:
        t["W_skip"] = torch.randn(D, D, generator=g) * 0.1
    return t


def write_ct_set(path: Path, act: str, skip: bool, listed: bool, k: int = 5, **cfg_extra) -> list[dict]:
    """A set in circuit-tracer's layout, as its TranscoderSet.to_safetensors + a hub config.yaml would leave it."""
    g = torch.Generator().manual_seed(sum(map(ord, act)) + int(skip))
    path.mkdir(parents=True)
    layers = []
    for l in range(L):
        t = _raw_layer(g, act, skip)
        save_file(t, str(path / f"layer_{l}.safetensors"))
        layers.append(t)
    cfg = {
        "model_kind": "transcoder_set",
        "model_name": "tiny",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out",
        "scan": "test/scan",
        **cfg_extra,
    }
    if act != "jumprelu":
        cfg["activation"] = act
    if act == "topk":
        cfg["k"] = k
    if listed:
        cfg["transcoders"] = [str(path / f"layer_{l}.safetensors") for l in range(L)]
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return layers


def ct_reference(t: dict[str, torch.Tensor], cfg: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """circuit-tracer's formulas (activation_functions.py, SingleLayerTranscoder.encode/decode) on raw tensors."""
    pre = F.linear(x, t["W_enc"], t["b_enc"])
    if cfg.get("activation") == "topk":
        _, idx = torch.topk(pre, k=cfg["k"], dim=-1)
        acts = pre * torch.zeros_like(pre).scatter_(-1, idx, 1)
    elif cfg.get("activation") == "relu" or "activation_function.threshold" not in t:
        acts = F.relu(pre)
    else:
        acts = pre * (pre > t["activation_function.threshold"])
    y = acts @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        y = y + x @ t["W_skip"].T
    return acts, y


@pytest.mark.parametrize(
    "act,skip,listed",
    [
        ("jumprelu", True, True),
        ("jumprelu", False, False),
        ("topk", True, False),
        ("topk", False, True),
        ("relu", True, False),
        ("relu", False, True),
    ],
)
def test_import_reproduces_circuit_tracer_activations(tmp_path, act, skip, listed):
    raw = write_ct_set(tmp_path / "ct", act, skip, listed)
    cfg = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    ts = import_circuit_tracer(tmp_path / "ct", n_layers=L, d_model=D)
    assert len(ts) == L and ts[0].cfg.activation == act and ts[0].cfg.skip == skip
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(7))
    for tc, t in zip(ts, raw):
        ref_acts, ref_y = ct_reference(t, cfg, x)
        if act == "topk":
            assert float(torch.topk(F.linear(x, t["W_enc"], t["b_enc"]), cfg["k"]).values.min()) > 0
        with torch.no_grad():
            acts = tc.encode(x)
            y = tc.decode(acts, x)
        assert torch.equal(acts, ref_acts), (act, (acts != ref_acts).sum())
        assert 0 < int((acts > 0).sum(-1).min()) and int((acts > 0).sum(-1).max()) < F_
        torch.testing.assert_close(y, ref_y, rtol=1e-6, atol=1e-6)
    assert ts.meta["scan"] == "test/scan" and ts.meta["feature_output_hook"] == "hook_mlp_out"


def test_import_jumprelu_keeps_thresholds(tmp_path):
    """The bug of issue #20: reading `threshold` only turned a JumpReLU set into a ReLU one."""
    raw = write_ct_set(tmp_path / "ct", "jumprelu", True, False)
    ts = import_circuit_tracer(tmp_path / "ct")
    torch.testing.assert_close(ts[1].threshold.data, raw[1]["activation_function.threshold"], rtol=0, atol=0)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(3))
    relu_active = int((F.linear(x, raw[1]["W_enc"], raw[1]["b_enc"]) > 0).sum())
    assert int((ts[1].encode(x) > 0).sum()) < relu_active


def test_import_gemma_scope_npz(tmp_path):
    """Gemma Scope's .npz (W_enc stored [d_model, d_tc], `threshold`), converted as load_gemma_scope_transcoder does."""
    g = torch.Generator().manual_seed(1)
    d = tmp_path / "gs"
    d.mkdir()
    raws = []
    for l in range(L):
        t = _raw_layer(g, "jumprelu", False)
        raws.append(t)
        np.savez(
            d / f"params_{l}.npz",
            W_enc=t["W_enc"].T.numpy(),
            W_dec=t["W_dec"].numpy(),
            b_enc=t["b_enc"].numpy(),
            b_dec=t["b_dec"].numpy(),
            threshold=t["activation_function.threshold"].numpy(),
        )
    (d / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "model_name": "google/gemma-2-2b",
                "feature_input_hook": "ln2.hook_normalized",
                "feature_output_hook": "hook_mlp_out",
                "transcoders": [f"params_{l}.npz" for l in range(L)],
            }
        )
    )
    ts = import_circuit_tracer(d, n_layers=L, d_model=D)
    x = torch.randn(16, D, generator=g)
    for tc, t in zip(ts, raws):
        assert torch.equal(tc.encode(x), ct_reference(t, {}, x)[0])


def _our_set(act: str, skip: bool) -> TranscoderSet:
    g = torch.Generator().manual_seed(5)
    layers = []
    for _ in range(L):
        tc = Transcoder(TranscoderConfig(d_model=D, d_transcoder=F_, activation=act, k=4, skip=skip))
        for p in tc.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        if act == "topk":
            tc.b_enc.data += 3.0
        layers.append(tc)
    return TranscoderSet(layers, {"model": "tiny"})


@pytest.mark.parametrize("act,skip", [("jumprelu", True), ("topk", False), ("relu", True)])
def test_export_writes_exactly_what_circuit_tracer_reads(tmp_path, act, skip):
    ts = _our_set(act, skip)
    out = export_circuit_tracer(ts, tmp_path / "ct", model_name="tiny")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert set(cfg) <= CT_FIELDS and cfg["model_kind"] == "transcoder_set"
    assert cfg["feature_input_hook"] == "mlp.hook_in" and cfg["feature_output_hook"] == "hook_mlp_out"
    assert cfg["activation"] == act and ("k" in cfg) == (act == "topk")
    assert "transcoders" not in cfg and sorted(p.name for p in out.glob("layer_*.safetensors")) == [
        f"layer_{l}.safetensors" for l in range(L)
    ]
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(9))
    for l, tc in enumerate(ts):
        t = load_file(str(out / f"layer_{l}.safetensors"))
        want = (
            {"W_enc", "W_dec", "b_enc", "b_dec"}
            | ({"activation_function.threshold"} if act == "jumprelu" else set())
            | ({"W_skip"} if skip else set())
        )
        assert set(t) == want and set(t) <= CT_KEYS
        with torch.no_grad():
            assert torch.equal(tc.encode(x), ct_reference(t, cfg, x)[0])
    back = import_circuit_tracer(out)
    assert [b.cfg.activation for b in back] == [act] * L


def test_refusals_are_one_line(tmp_path):
    clt = tmp_path / "clt"
    clt.mkdir()
    save_file(
        {"W_enc_0": torch.zeros(4, D), "b_enc_0": torch.zeros(4), "b_dec_0": torch.zeros(D)},
        str(clt / "W_enc_0.safetensors"),
    )
    with pytest.raises(MechscopeError, match="cross-layer transcoder") as e:
        import_circuit_tracer(clt)
    assert "\n" not in str(e.value)
    (clt / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "cross_layer_transcoder",
                "feature_input_hook": "mlp.hook_in",
                "feature_output_hook": "mlp.hook_out",
            }
        )
    )
    with pytest.raises(MechscopeError, match="cross-layer transcoder file .*W_dec_0.safetensors is missing"):
        import_circuit_tracer(clt)  # a CLT directory is read as one (tests/test_clt.py), and an incomplete one refused
    write_ct_set(tmp_path / "ok", "jumprelu", True, False)
    with pytest.raises(MechscopeError, match="has 3 layers but the model has 4"):
        import_circuit_tracer(tmp_path / "ok", n_layers=4)
    with pytest.raises(MechscopeError, match="d_model 16 but the model has 32"):
        import_circuit_tracer(tmp_path / "ok", d_model=32)
    with pytest.raises(MechscopeError, match="before the post-MLP norm"):
        write_ct_set(tmp_path / "raw", "relu", False, False, feature_output_hook="mlp.hook_out")
        import_circuit_tracer(tmp_path / "raw", post_mlp_norm=True)
    assert len(import_circuit_tracer(tmp_path / "raw", post_mlp_norm=False)) == L
    write_ct_set(tmp_path / "badhook", "relu", False, False, feature_input_hook="hook_resid_mid")
    with pytest.raises(MechscopeError, match="unknown feature_input_hook 'hook_resid_mid'"):
        import_circuit_tracer(tmp_path / "badhook")
    write_ct_set(tmp_path / "badact", "relu", False, False)
    cfg = yaml.safe_load((tmp_path / "badact" / "config.yaml").read_text())
    (tmp_path / "badact" / "config.yaml").write_text(yaml.safe_dump({**cfg, "activation": "batchtopk"}))
    with pytest.raises(MechscopeError, match="unknown activation"):
        import_circuit_tracer(tmp_path / "badact")
    with pytest.raises(MechscopeError, match="no config.yaml"):
        import_circuit_tracer(tmp_path)
