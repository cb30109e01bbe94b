"""`train-transcoders --kind clt`: the per-layer trainer's guarantees for cross-layer transcoders (learning,
checkpoints and resume, determinism, dead-latent handling, TopK and JumpReLU, DDP under torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from train_helpers import tiny_train_cfg

from mechscope.errors import MechscopeError
from mechscope.transcoders import CrossLayerTranscoder, load_transcoders
from mechscope.training.train import TrainConfig, train_transcoders


def _cfg(tiny_dir, out, **kw) -> TrainConfig:
    return tiny_train_cfg(tiny_dir, out, **{"kind": "clt", "features": 48, **kw})


@pytest.fixture(scope="module")
def clt_trained(tiny, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clt") / "set"
    summary = train_transcoders(_cfg(tiny_dir, out), model=tiny, progress=False)
    return out, summary


def test_clt_training_learns_and_saves(clt_trained, tiny):
    out, summary = clt_trained
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "clt" and meta["training"]["kind"] == "clt" and meta["max_write_layers"] == 0
    clt = load_transcoders(out, n_layers=tiny.n_layers, d_model=tiny.d_model)
    assert isinstance(clt, CrossLayerTranscoder) and clt.cfg.activation == "topk"
    assert max(summary["train_fvu_per_layer"]) < 1.0
    # cross-layer decoders learned something (they start at zero)
    assert float(clt.W_dec[0].detach()[:, 1:].abs().max()) > 0
    assert not (out.parent / f".{out.name}.checkpoint").exists()
    assert 0 <= summary["train_dead_fraction"] <= 1


def test_trained_clt_reconstructs_the_mlp_outputs(clt_trained, tiny):
    """The exported CLT (raw units, folded normalisation) predicts every layer's MLP output better than its mean."""
    out, _ = clt_trained
    clt = load_transcoders(out)
    ids = tiny.tokenize("Dallas is in the state of Texas. The capital of Texas is Austin.").ids
    sites = [f"blocks.{l}.hook_mlp_{k}" for l in range(tiny.n_layers) for k in ("in", "out")]
    cache = tiny.run_with_cache(ids[None], sites, logits=False)
    xs = [cache[f"blocks.{l}.hook_mlp_in"][0, 1:].float() for l in range(tiny.n_layers)]
    ys = [cache[f"blocks.{l}.hook_mlp_out"][0, 1:].float() for l in range(tiny.n_layers)]
    with torch.no_grad():
        pred = clt.decode([clt.layer_encode(l, xs[l]) for l in range(tiny.n_layers)], xs)
    for y, p in zip(ys, pred):
        fvu = float((y - p).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
        assert fvu < 1.0


def test_clt_deterministic_and_resumes(tiny, tiny_dir, tmp_path, clt_trained):
    out, _ = clt_trained
    res = train_transcoders(_cfg(tiny_dir, tmp_path / "r", stop_after_steps=4), model=tiny, progress=False)
    assert res["interrupted_at_step"] == 4 and not (tmp_path / "r" / "config.json").exists()
    with pytest.raises(MechscopeError, match="--kind"):  # a per-layer run cannot resume a CLT checkpoint
        train_transcoders(_cfg(tiny_dir, tmp_path / "r", kind="plt"), model=tiny, resume=True, progress=False)
    train_transcoders(_cfg(tiny_dir, tmp_path / "r"), model=tiny, resume=True, progress=False)
    a, b = load_transcoders(out), load_transcoders(tmp_path / "r")
    torch.testing.assert_close(a.W_enc, b.W_enc, rtol=1e-5, atol=1e-6)
    for x, y in zip(a.W_dec, b.W_dec):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["jumprelu", "batchtopk"])
def test_clt_jumprelu_batchtopk_and_decoder_window(tiny, tiny_dir, tmp_path, activation):
    out = tmp_path / "w"
    kw = dict(activation=activation, clt_write_layers=2, save_dtype="int8", dead_after_tokens=200)
    summary = train_transcoders(_cfg(tiny_dir, out, **kw), model=tiny, progress=False)
    clt = load_transcoders(out)
    assert clt.cfg.activation == "jumprelu" and clt.cfg.max_write_layers == 2
    assert [W.shape[1] for W in clt.W_dec] == [min(2, tiny.n_layers - l) for l in range(tiny.n_layers)]
    assert json.loads((out / "config.json").read_text())["dtype"] == "int8"
    assert bool((clt.threshold > 0).all()) and max(summary["train_fvu_per_layer"]) < 1.5


def test_clt_options_are_checked():
    with pytest.raises(MechscopeError, match="--kind clt does not support --resample-dead"):
        TrainConfig(kind="clt", resample_dead=True)
    with pytest.raises(MechscopeError, match="--clt-write-layers"):
        TrainConfig(kind="clt", clt_write_layers=-1)


def test_clt_ddp_two_processes_gloo(tiny_dir, tmp_path):
    """`--kind clt` under torchrun (2 CPU processes, gloo) trains and writes one CLT."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29541"]
    cmd += ["-m", "mechscope", "train-transcoders", "--kind", "clt", "--model", str(tiny_dir)]
    cmd += ["--corpus", str(tiny_dir / "corpus.txt"), "--tokens", "1200", "--features", "48", "--k", "4"]
    cmd += ["--seq-len", "32", "--batch-size", "2", "--out", str(out), "--device", "cpu", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][0])
    assert summary["world_size"] == 2
    clt = load_transcoders(out)
    assert clt.kind == "clt" and clt.meta["training"]["world_size"] == 2


def test_eval_transcoders_on_a_clt(clt_trained, tiny, tiny_dir):
    """eval-transcoders reads a CLT: each layer predicted from the features at and below it; splices compound."""
    from mechscope.transcoders.evaluate import EvalConfig, evaluate_transcoders

    out, _ = clt_trained
    clt = load_transcoders(out)
    cfg = EvalConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=256, seq_len=32, batch_size=4, dead_tokens=256)
    res = evaluate_transcoders(tiny, clt, cfg, progress=False)
    assert len(res["fvu_per_layer"]) == tiny.n_layers and res["mean_fvu"] < 1.0
    assert res["kl_all_layers"] >= 0 and res["ce_spliced_all_layers"] == res["ce_spliced_all_layers"]  # not NaN
    assert 0 < res["mean_l0"] <= 4 + 1e-6 and 0 <= res["dead_fraction"] <= 1
    # without its cross-layer decoders the same features explain less
    import copy

    cut = copy.deepcopy(clt)
    with torch.no_grad():
        for W in cut.W_dec:
            W[:, 1:] = 0
    assert evaluate_transcoders(tiny, cut, cfg, progress=False)["mean_fvu"] > res["mean_fvu"]


def test_clt_starts_from_a_per_layer_set(tiny, tiny_dir, tiny_tc, tiny_tc_dir, tmp_path):
    """--kind clt --init-from PLT: before any step the CLT is that set (cross-layer decoders zero); then it trains
    and records the set it continued in its lineage. A CLT cannot be the starting point yet (one line)."""
    from mechscope.training.clt_trainer import CLTStackTrainer
    from mechscope.training.train import LinearStats

    F = tiny_tc.d_transcoder
    cfg = _cfg(tiny_dir, tmp_path / "c", features=F, k=tiny_tc.cfg.k, init_from=str(tiny_tc_dir))
    tr = CLTStackTrainer(tiny.n_layers, tiny.d_model, cfg)
    st = LinearStats(tiny.d_model)
    st.add(torch.randn(50, tiny.d_model) * 3, torch.randn(50, tiny.d_model))
    for l, layer in enumerate(tr.layers):
        layer.init_from_transcoder(tiny_tc[l], st)
    clt = tr.export([0.0] * tiny.n_layers, {})
    xs = [torch.randn(7, tiny.d_model) for _ in range(tiny.n_layers)]
    with torch.no_grad():
        ys = clt.decode([clt.layer_encode(l, xs[l]) for l in range(tiny.n_layers)], xs)
        for l in range(tiny.n_layers):
            torch.testing.assert_close(ys[l], tiny_tc[l](xs[l]), rtol=1e-4, atol=1e-4)
    summary = train_transcoders(cfg, model=tiny, progress=False)
    out = load_transcoders(tmp_path / "c")
    assert out.kind == "clt" and max(summary["train_fvu_per_layer"]) < 1.0
    assert out.meta["training"]["previous_stages"][-1]["features"] == F
    with pytest.raises(MechscopeError, match="--init-from takes a per-layer set"):
        train_transcoders(_cfg(tiny_dir, tmp_path / "d", init_from=str(tmp_path / "c"), features=F), model=tiny)
