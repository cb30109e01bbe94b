"""Transcoders: module, storage (ours and circuit-tracer's), training (determinism, resume, DDP), evaluation."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mechscope.errors import MechscopeError
from mechscope.transcoders import (Transcoder, TranscoderConfig, export_circuit_tracer, import_circuit_tracer,
                                   load_transcoders, save_transcoders)
from mechscope.transcoders.corpus import iter_documents, troff_to_text, validate_corpus
from mechscope.transcoders.evaluate import EvalConfig, evaluate_transcoders
from mechscope.transcoders.module import TopKEncode, sparse_decode
from mechscope.transcoders.train import TrainConfig, train_transcoders


def _cfg(tiny_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(tiny_dir), corpus=str(tiny_dir / "corpus.txt"), tokens=1200, features=64, k=4, seq_len=32,
                batch_size=4, skip_init_tokens=300, out=str(out), save_dtype="float32", checkpoint_every=3, warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tiny, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "set"
    summary = train_transcoders(_cfg(tiny_dir, out), model=tiny, progress=False)
    return out, summary


def test_topk_sparse_backward_matches_dense():
    torch.manual_seed(0)
    x = torch.randn(7, 16)
    W = torch.randn(40, 16, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    Wd = torch.randn(40, 16, requires_grad=True)
    vals, idx = TopKEncode.apply(x, W, b, 5, None)
    (sparse_decode(vals, idx, Wd) ** 2).sum().backward()
    g_sparse = (W.grad.clone(), b.grad.clone(), Wd.grad.clone())
    W.grad = b.grad = Wd.grad = None
    tc = Transcoder(TranscoderConfig(d_model=16, d_transcoder=40, k=5, skip=False))
    pre = torch.nn.functional.linear(x, W, b)
    v, i = pre.topk(5, -1)
    acts = torch.zeros_like(pre).scatter(-1, i, v.clamp_min(0))
    ((acts @ Wd) ** 2).sum().backward()
    for a, c in zip(g_sparse, (W.grad, b.grad, Wd.grad)):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    assert tc.encode(x).shape == (7, 40)


def test_training_learns_and_saves(trained, tiny):
    out, summary = trained
    meta = json.loads((out / "config.json").read_text())
    assert meta["n_layers"] == tiny.n_layers and meta["d_transcoder"] == 64 and meta["activation"] == "topk"
    assert set(meta["files"]) == {f"layer_{l}.safetensors" for l in range(tiny.n_layers)}
    assert all(len(h) == 64 for h in meta["files"].values())
    assert meta["training"]["seed"] == 0 and meta["training"]["code_version"]
    assert max(summary["train_fvu_per_layer"]) < 1.0
    assert not (out.parent / f".{out.name}.checkpoint").exists()


def test_deterministic_for_a_seed(tiny, tiny_dir, tmp_path, trained):
    out, _ = trained
    train_transcoders(_cfg(tiny_dir, tmp_path / "again"), model=tiny, progress=False)
    a, b = load_transcoders(out), load_transcoders(tmp_path / "again")
    for x, y in zip(a, b):
        torch.testing.assert_close(x.W_enc, y.W_enc, rtol=0, atol=0)
        torch.testing.assert_close(x.W_skip, y.W_skip, rtol=0, atol=0)


def test_resume_after_interruption_gives_the_same_set(tiny, tiny_dir, tmp_path, trained):
    out, _ = trained
    res = train_transcoders(_cfg(tiny_dir, tmp_path / "r", stop_after_steps=4), model=tiny, progress=False)
    assert res["interrupted_at_step"] == 4 and not (tmp_path / "r" / "config.json").exists()
    train_transcoders(_cfg(tiny_dir, tmp_path / "r"), model=tiny, resume=True, progress=False)
    a, b = load_transcoders(out), load_transcoders(tmp_path / "r")
    for x, y in zip(a, b):
        torch.testing.assert_close(x.W_enc, y.W_enc, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.W_dec, y.W_dec, rtol=1e-5, atol=1e-6)


def test_storage_checks(trained, tmp_path, tiny):
    out, _ = trained
    with pytest.raises(MechscopeError, match="layers"):
        load_transcoders(out, n_layers=tiny.n_layers + 1)
    with pytest.raises(MechscopeError, match="d_model"):
        load_transcoders(out, d_model=tiny.d_model * 2)
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    f = bad / "layer_1.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(MechscopeError, match="SHA-256"):
        load_transcoders(bad)
    with pytest.raises(MechscopeError, match="not a transcoder set"):
        load_transcoders(tmp_path)


def test_circuit_tracer_roundtrip(trained, tmp_path, tiny):
    import yaml
    from safetensors.torch import load_file

    out, _ = trained
    ts = load_transcoders(out)
    ct = export_circuit_tracer(ts, tmp_path / "ct", model_name="tiny")
    cfg = yaml.safe_load((ct / "config.yaml").read_text())
    assert cfg["feature_input_hook"] == "mlp.hook_in" and cfg["feature_output_hook"] == "hook_mlp_out"
    assert len(cfg["transcoders"]) == tiny.n_layers
    t0 = load_file(str(ct / cfg["transcoders"][0]))
    assert set(t0) >= {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip", "threshold"}
    assert t0["W_enc"].shape == (64, tiny.d_model) and t0["W_skip"].shape == (tiny.d_model, tiny.d_model)
    back = import_circuit_tracer(ct)
    assert back[0].cfg.activation == "jumprelu"
    for a, b in zip(ts, back):
        torch.testing.assert_close(a.W_dec, b.W_dec)
        torch.testing.assert_close(a.threshold, b.threshold)
    # the JumpReLU export approximates TopK: most of the top-k latents survive the threshold
    x = torch.randn(20, tiny.d_model)
    topk_active = ts[0].encode(x) > 0
    jump_active = back[0].encode(x) > 0
    assert (topk_active & jump_active).sum() >= 0.5 * topk_active.sum()


def test_eval_reports_metrics(trained, tiny, tiny_dir):
    out, _ = trained
    ts = load_transcoders(out)
    res = evaluate_transcoders(tiny, ts, EvalConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=300, ce_layer_tokens=100), progress=False)
    for k in ("mean_fvu", "max_fvu", "mean_l0", "dead_fraction", "ce_loss_recovered_all_layers", "fvu_per_layer", "ce_loss_recovered_per_layer"):
        assert k in res
    assert 0 <= res["mean_fvu"] < 1 and res["max_fvu"] >= res["mean_fvu"]
    assert 0 < res["mean_l0"] <= 4
    assert res["ce_loss_recovered_all_layers"] > 0.5
    # trimming massive-activation tokens: a small share of tokens, FVUs of the same kind
    assert 0 <= res["trimmed_token_fraction"] < 0.2
    assert len(res["fvu_per_layer_trimmed"]) == tiny.n_layers and 0 <= res["mean_fvu_trimmed"] < 1
    if res["trimmed_token_fraction"] == 0:
        assert res["fvu_per_layer_trimmed"] == pytest.approx(res["fvu_per_layer"])


def test_bad_corpus(tmp_path, tiny, tiny_dir):
    with pytest.raises(MechscopeError, match="not found"):
        validate_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(MechscopeError):
        validate_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(MechscopeError, match="binary"):
        validate_corpus(str(tmp_path / "bin.txt"))
    with pytest.raises(MechscopeError, match="binary"):
        train_transcoders(_cfg(tiny_dir, tmp_path / "o", corpus=str(tmp_path / "bin.txt")), model=tiny, progress=False)


def test_nan_loss_stops_with_step_and_layer(tiny, tiny_dir, tmp_path):
    with pytest.raises(MechscopeError, match=r"non-finite loss at step \d+, layer \d+"):
        train_transcoders(_cfg(tiny_dir, tmp_path / "nan", lr=1e30, checkpoint_every=1), model=tiny, progress=False)
    assert not (tmp_path / "nan" / "config.json").exists()


def test_heldout_split_is_disjoint(tiny_dir):
    train = set(iter_documents(str(tiny_dir / "corpus.txt"), "train"))
    held = set(iter_documents(str(tiny_dir / "corpus.txt"), "heldout"))
    assert train and held and not (train & held - {""}) or len(held) == 0


def test_troff_to_text():
    raw = '.TH LS 1\n.SH NOM\nls \\- lister le contenu\n.B \\-a\n\\fBgras\\fR texte\n'
    txt = troff_to_text(raw)
    assert "NOM" in txt and "ls - lister le contenu" in txt and "gras texte" in txt and "\\f" not in txt


def test_ddp_two_processes_gloo(tiny_dir, tmp_path):
    """The same command under torchrun (2 CPU processes, gloo) trains and writes one set."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "mechscope", "train-transcoders", "--model", str(tiny_dir), "--corpus", str(tiny_dir / "corpus.txt"),
           "--tokens", "600", "--features", "32", "--k", "4", "--seq-len", "32", "--batch-size", "2",
           "--out", str(out), "--device", "cpu", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][0])
    assert summary["world_size"] == 2
    assert load_transcoders(out).meta["training"]["world_size"] == 2


def test_init_from_existing_set_reproduces_it(tiny, tiny_dir, tmp_path, trained):
    """Continuing from a saved set starts exactly where it ended (export ∘ init_from = identity)."""
    from mechscope.transcoders.train import LayerTrainer, LinearStats, StackTrainer

    out, _ = trained
    ts = load_transcoders(out)
    st = LinearStats(tiny.d_model)
    st.add(torch.randn(50, tiny.d_model) * 3, torch.randn(50, tiny.d_model))
    lt = LayerTrainer(tiny.d_model, 64, 4, True, torch.Generator().manual_seed(0))
    lt.init_from_transcoder(ts[1], st)
    back = lt.export(float(ts[1].threshold[0]))
    x = torch.randn(9, tiny.d_model)
    torch.testing.assert_close(back(x), ts[1](x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["batchtopk", "jumprelu"])
def test_batchtopk_and_jumprelu_training(tiny, tiny_dir, tmp_path, activation):
    out = tmp_path / activation
    summary = train_transcoders(_cfg(tiny_dir, out, activation=activation, tokens=2400), model=tiny, progress=False)
    ts = load_transcoders(out, n_layers=tiny.n_layers, d_model=tiny.d_model)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["activation"] == "jumprelu" and cfg["training"]["activation"] == activation
    thr = torch.stack([tc.threshold for tc in ts])
    assert bool((thr > 0).all())
    if activation == "jumprelu":      # learned per-feature thresholds differ between features
        assert float(thr.std(-1).max()) > 0
    # the saved set runs as a sparse JumpReLU with roughly the trained sparsity and explains the MLP
    res = evaluate_transcoders(tiny, ts, EvalConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=256, ce_layer_tokens=64, seq_len=32))
    assert 0.5 <= res["mean_l0"] <= 4 * 4
    assert res["mean_fvu"] < 0.9
    assert max(summary["train_l0_per_layer"]) <= 3 * 4


def test_jumprelu_threshold_gradient_is_the_kernel_estimate():
    from mechscope.transcoders.module import JumpReLUFn, StepFn
    pre = torch.tensor([[0.48, 0.52, 0.9]], requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    a = JumpReLUFn.apply(pre, theta, 0.1)
    assert a.tolist() == [[0.0, pytest.approx(0.52), pytest.approx(0.9)]]
    a.sum().backward()
    # inside the ±ε/2 window the threshold gets −θ/ε; far from it nothing; pre gets the gate
    assert theta.grad.tolist() == [pytest.approx(-5.0), pytest.approx(-5.0), 0.0]
    assert pre.grad.tolist() == [[0.0, 1.0, 1.0]]
    theta.grad = None
    StepFn.apply(pre.detach(), theta, 0.1).sum().backward()
    assert theta.grad.tolist() == [pytest.approx(-10.0), pytest.approx(-10.0), 0.0]


def test_corpus_sources_mix_and_repeat(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("alpha text\n\nalpha two")
    b.write_text("beta text")
    docs = list(iter_documents(f"{a}*2,{b}", split="all"))
    assert docs == ["alpha text\n\nalpha two", "alpha text\n\nalpha two", "beta text"]
    with pytest.raises(MechscopeError, match="SOURCE\\*N"):
        list(iter_documents(f"{a}*0,{b}", split="all"))


def test_wordnet_sentences_name_entities():
    from mechscope.transcoders.corpus import WORDNET_NOUNS, _wordnet_sentences
    if not WORDNET_NOUNS.exists():
        pytest.skip("wordnet-base is not installed (apt-get install wordnet-base)")
    sents = dict(_wordnet_sentences())
    assert len(sents) > 5000
    assert any(t.startswith("Dallas is ") and "Texas" in t for t in sents.values())
