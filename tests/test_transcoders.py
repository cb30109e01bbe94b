"""Transcoders: module, storage (ours and circuit-tracer's), training (determinism, resume, DDP), evaluation."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from train_helpers import tiny_train_cfg

from mechscope.errors import MechscopeError
from mechscope.transcoders import (
    Transcoder,
    TranscoderConfig,
    export_circuit_tracer,
    import_circuit_tracer,
    load_transcoders,
)
from mechscope.corpus.sources import iter_documents, troff_to_text, validate_corpus
from mechscope.transcoders.evaluate import EvalConfig, evaluate_transcoders
from mechscope.transcoders.module import TopKEncode, sparse_decode
from mechscope.training.train import TrainConfig, train_transcoders


def _cfg(tiny_dir, out, **kw) -> TrainConfig:
    return tiny_train_cfg(tiny_dir, out, **kw)


@pytest.fixture(scope="module")
def trained(tiny, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "set"
    summary = train_transcoders(_cfg(tiny_dir, out), model=tiny, progress=False)
    return out, summary


@pytest.mark.parametrize("f, k", [(40, 5), (1400, 5)])  # dense scatter path (f <= 128 k), sparse gather path
def test_topk_backward_matches_dense_autograd(f, k):
    torch.manual_seed(0)
    x = torch.randn(7, 16, requires_grad=True)
    W = torch.randn(f, 16, requires_grad=True)
    b = torch.randn(f, requires_grad=True)
    Wd = torch.randn(f, 16, requires_grad=True)
    vals, idx, _, _ = TopKEncode.apply(x, W, b, k, None)
    (sparse_decode(vals, idx, Wd) ** 2).sum().backward()
    g_ours = (W.grad.clone(), b.grad.clone(), Wd.grad.clone(), x.grad.clone())
    W.grad = b.grad = Wd.grad = x.grad = None
    tc = Transcoder(TranscoderConfig(d_model=16, d_transcoder=f, k=k, skip=False))
    pre = torch.nn.functional.linear(x, W, b)
    v, i = pre.topk(k, -1)
    acts = torch.zeros_like(pre).scatter(-1, i, v.clamp_min(0))
    ((acts @ Wd) ** 2).sum().backward()
    for a, c in zip(g_ours, (W.grad, b.grad, Wd.grad, x.grad)):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-3)
    assert tc.encode(x).shape == (7, f)


@pytest.mark.parametrize("f, k", [(40, 5), (1400, 3)])
def test_topk_with_auxk_matches_dense_autograd(f, k):
    """Main TopK and AuxK's picks among masked-in latents, from one product, give dense autograd's gradients."""
    torch.manual_seed(1)
    x = torch.randn(6, 16, requires_grad=True)
    W = torch.randn(f, 16, requires_grad=True)
    b = torch.randn(f, requires_grad=True)
    dead = torch.rand(f) < 0.5
    mask = torch.where(dead, 0.0, float("-inf"))
    vals, idx, v2, i2 = TopKEncode.apply(x, W, b, k, None, 2 * k, mask)
    assert bool(dead[i2].all()) and i2.shape == (6, 2 * k)
    w1, w2 = torch.randn(f), torch.randn(f)  # distinct weights so both gradients must land
    ((vals * w1[idx]).sum() + (v2 * w2[i2]).pow(2).sum()).backward()
    ours = (W.grad.clone(), b.grad.clone(), x.grad.clone())
    W.grad = b.grad = x.grad = None
    pre = torch.nn.functional.linear(x, W, b)
    v, i = pre.topk(k, -1)
    a1 = torch.zeros_like(pre).scatter(-1, i, v.clamp_min(0))
    v, i = pre.masked_fill(~dead, float("-inf")).topk(2 * k, -1)
    a2 = torch.zeros_like(pre).scatter(-1, i, v.clamp_min(0))
    ((a1 * w1).sum() + (a2 * w2).pow(2).sum()).backward()
    for a, c in zip(ours, (W.grad, b.grad, x.grad)):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-3)


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
    # circuit-tracer finds layer_{i}.safetensors beside config.yaml; TopK goes as `activation: topk` + `k`
    assert len(list(ct.glob("layer_*.safetensors"))) == tiny.n_layers
    assert cfg["activation"] == ts[0].cfg.activation and cfg.get("k") == (
        ts[0].cfg.k if cfg["activation"] == "topk" else None
    )
    t0 = load_file(str(ct / "layer_0.safetensors"))
    assert set(t0) >= {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip"} and "threshold" not in t0
    assert t0["W_enc"].shape == (64, tiny.d_model) and t0["W_skip"].shape == (tiny.d_model, tiny.d_model)
    back = import_circuit_tracer(ct, n_layers=tiny.n_layers, d_model=tiny.d_model)
    assert back[0].cfg.activation == ts[0].cfg.activation
    x = torch.randn(20, tiny.d_model)
    for a, b in zip(ts, back):
        torch.testing.assert_close(a.W_dec, b.W_dec)
        assert torch.equal(a.encode(x), b.encode(x))


def test_eval_dead_window_reads_further_chunks(trained, tiny, tiny_dir):
    """--dead-tokens extends the dead-latent window past the loss tokens; it covers exactly the next chunks, so
    it equals a plain eval over the whole window."""
    ts = load_transcoders(trained[0])
    corpus = str(tiny_dir / "corpus.txt")
    short = evaluate_transcoders(
        tiny, ts, EvalConfig(corpus=corpus, tokens=62, ce_layer_tokens=0, seq_len=32, dead_tokens=0), progress=False
    )
    long = evaluate_transcoders(
        tiny, ts, EvalConfig(corpus=corpus, tokens=62, ce_layer_tokens=0, seq_len=32, dead_tokens=310), progress=False
    )
    assert short["dead_window_tokens"] == short["tokens"] == 62
    assert long["dead_window_tokens"] == 62 + 8 * 31 and long["mean_fvu"] == short["mean_fvu"]
    assert long["dead_fraction_in_loss_tokens"] == short["dead_fraction"] > long["dead_fraction"]
    whole = evaluate_transcoders(
        tiny,
        ts,
        EvalConfig(corpus=corpus, tokens=long["dead_window_tokens"], ce_layer_tokens=0, seq_len=32, dead_tokens=0),
        progress=False,
    )
    assert whole["tokens"] == long["dead_window_tokens"]
    assert whole["dead_fraction_per_layer"] == long["dead_fraction_per_layer"]


def test_eval_reports_metrics(trained, tiny, tiny_dir):
    out, _ = trained
    ts = load_transcoders(out)
    res = evaluate_transcoders(
        tiny, ts, EvalConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=300, ce_layer_tokens=100), progress=False
    )
    for k in (
        "mean_fvu",
        "max_fvu",
        "mean_l0",
        "dead_fraction",
        "ce_loss_recovered_all_layers",
        "fvu_per_layer",
        "ce_loss_recovered_per_layer",
    ):
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
    assert train and held, "both splits must hold documents (the tiny corpus has 600 paragraphs)"
    assert not (train & held - {""})


def test_troff_to_text():
    raw = ".TH LS 1\n.SH NOM\nls \\- lister le contenu\n.B \\-a\n\\fBgras\\fR texte\n"
    txt = troff_to_text(raw)
    assert "NOM" in txt and "ls - lister le contenu" in txt and "gras texte" in txt and "\\f" not in txt


def test_ddp_two_processes_gloo(tiny_dir, tmp_path):
    """The same command under torchrun (2 CPU processes, gloo) trains and writes one set (re-drawn latents broadcast)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29533",
        "-m",
        "mechscope",
        "train-transcoders",
        "--model",
        str(tiny_dir),
        "--corpus",
        str(tiny_dir / "corpus.txt"),
        "--tokens",
        "1200",
        "--features",
        "128",
        "--k",
        "4",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--json",
        "--resample-dead",
        "--dead-after-tokens",
        "100",
        "--checkpoint-every",
        "2",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][0])
    assert summary["world_size"] == 2 and summary["resampled_latents"] > 0
    assert load_transcoders(out).meta["training"]["world_size"] == 2


def test_init_from_existing_set_reproduces_it(tiny, tiny_dir, tmp_path, trained):
    """Continuing from a saved set starts exactly where it ended (export ∘ init_from = identity)."""
    from mechscope.training.train import LayerTrainer, LinearStats

    out, _ = trained
    ts = load_transcoders(out)
    st = LinearStats(tiny.d_model)
    st.add(torch.randn(50, tiny.d_model) * 3, torch.randn(50, tiny.d_model))
    lt = LayerTrainer(tiny.d_model, 64, 4, True, torch.Generator().manual_seed(0))
    lt.init_from_transcoder(ts[1], st)
    back = lt.export(float(ts[1].threshold[0]))
    x = torch.randn(9, tiny.d_model)
    torch.testing.assert_close(back(x), ts[1](x), rtol=1e-4, atol=1e-4)


def test_skip_init_zero_leaves_the_skip_to_training():
    """'ls' starts W_skip at the least-squares map of the MLP; 'zero' starts it at 0 (same scales and b_pre)."""
    from mechscope.training.train import LayerTrainer, LinearStats

    d = 6
    x = torch.randn(400, d, generator=torch.Generator().manual_seed(1)) * 2
    y = x @ torch.randn(d, d, generator=torch.Generator().manual_seed(2)) + 0.5
    st = LinearStats(d)
    st.add(x, y)
    ls = LayerTrainer(d, 16, 2, True, torch.Generator().manual_seed(0))
    zero = LayerTrainer(d, 16, 2, True, torch.Generator().manual_seed(0))
    ls.init_from_stats(st)
    zero.init_from_stats(st, skip_ls=False)
    assert float(ls.W_skip.detach().abs().max()) > 0.1 and float(zero.W_skip.detach().abs().max()) == 0
    assert torch.equal(ls.b_pre, zero.b_pre) and float(ls.sy) == float(zero.sy)
    # with the LS skip the mean output is matched through the skip; with zero it sits in b_dec (y's mean)
    torch.testing.assert_close(zero.b_dec, (y.mean(0) / zero.sy).float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(MechscopeError, match="--skip-init"):
        TrainConfig(skip_init="random")


@pytest.mark.parametrize("activation", ["batchtopk", "jumprelu"])
def test_batchtopk_and_jumprelu_training(tiny, tiny_dir, tmp_path, activation):
    out = tmp_path / activation
    summary = train_transcoders(_cfg(tiny_dir, out, activation=activation, tokens=2400), model=tiny, progress=False)
    ts = load_transcoders(out, n_layers=tiny.n_layers, d_model=tiny.d_model)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["activation"] == "jumprelu" and cfg["training"]["activation"] == activation
    thr = torch.stack([tc.threshold for tc in ts])
    assert bool((thr > 0).all())
    if activation == "jumprelu":  # learned per-feature thresholds differ between features
        assert float(thr.std(-1).max()) > 0
    # the saved set runs as a sparse JumpReLU with roughly the trained sparsity and explains the MLP
    res = evaluate_transcoders(
        tiny, ts, EvalConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=256, ce_layer_tokens=64, seq_len=32)
    )
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
    # one source repeated, without a comma (this form used to be read as a file name)
    assert list(iter_documents(f"{b}*3", split="all")) == ["beta text"] * 3
    with pytest.raises(MechscopeError, match="SOURCE\\*N"):
        list(iter_documents(f"{a}*0,{b}", split="all"))
    with pytest.raises(MechscopeError, match="SOURCE\\*N"):
        list(iter_documents(f"{b}*x", split="all"))


def test_wordnet_sentences_name_entities():
    from mechscope.corpus.sources import WORDNET_NOUNS, wordnet_sentences

    if not WORDNET_NOUNS.exists():
        pytest.fail("WordNet is not installed: apt-get install wordnet-base", pytrace=False)
    sents = dict(wordnet_sentences())
    assert len(sents) > 5000
    assert any(t.startswith("Dallas is ") and "Texas" in t for t in sents.values())


def _layer_batch(activation: str, n: int = 40, d: int = 16, f: int = 64):
    """A LayerTrainer initialised from a random batch (non-trivial scales and b_pre), that batch, and a dead mask."""
    from mechscope.training.train import LayerTrainer, LinearStats

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g) * 3 + 1, torch.randn(n, d, generator=g) * 2
    layer = LayerTrainer(d, f, 4, True, g, activation)
    stats = LinearStats(d)
    stats.add(x, y)
    layer.init_from_stats(stats)
    dead = torch.rand(f, generator=g) < 0.25
    return layer, x, y, dead


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_redrawn_latent_sits_at_scale_times_the_cut(activation, scale):
    """A re-drawn latent decodes its token's error direction; its pre-activation there is scale × the live latents'
    cut (so at 1.5 it is among the token's active latents, and the layer's output changes there)."""
    layer, x, y, dead = _layer_batch(activation)
    layer.b_enc.data[dead] = -1e4  # really silent, as dead latents are
    err = layer(x, y, None, 0.0)[1]["err"]
    ids, enc, dec, tok = layer.draw_dead(x, y, dead, torch.Generator().manual_seed(0), scale)
    assert torch.equal(ids, dead.nonzero().squeeze(-1))
    layer.set_rows(ids, enc, dec)
    pre = torch.addmm(layer.b_enc, x / layer.sx - layer.b_pre, layer.W_enc.T)  # [n, f]
    live = pre[:, ~dead]
    cut = (
        live.topk(4, -1).values[:, -1]
        if activation == "topk"
        else live.flatten().topk(4 * len(x)).values[-1].expand(len(x))
    )
    assert bool((cut[tok] > 0).all())
    torch.testing.assert_close(pre[tok, ids], scale * cut[tok], rtol=1e-5, atol=1e-6)
    if activation == "topk":
        err_after = layer(x, y, None, 0.0)[1]["err"]
        changed = (err_after[tok] - err[tok]).abs().amax(-1) > 1e-6
        assert bool(changed.all()) if scale > 1 else not bool(changed.any())
    torch.testing.assert_close(layer.W_dec[ids], err[tok] / err[tok].norm(dim=-1, keepdim=True))
    assert bool((layer.b_enc[ids] == 0).all())


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_resample_dead_touches_only_dead_rows(activation):
    """Only dead latents' rows change (and their Adam moments restart at 0); decoder rows stay unit norm."""
    from mechscope.training.train import StackTrainer, resample_dead

    L, d = 2, 16
    layer_batches = [_layer_batch(activation, d=d) for _ in range(L)]
    st = StackTrainer(L, d, TrainConfig(features=64, k=4, activation=activation))
    st.layers = torch.nn.ModuleList(b[0] for b in layer_batches)
    xs, ys = torch.stack([b[1] for b in layer_batches]), torch.stack([b[2] for b in layer_batches])
    dead = torch.stack([b[3] for b in layer_batches])
    dead[1, :3] = True  # the layers differ
    opt = torch.optim.Adam(st.parameters(), lr=1e-3)
    st(xs, ys, torch.zeros_like(dead), 0.0)[0].backward()
    opt.step()
    for layer in st.layers:
        layer.normalize_decoder()
    params = dict(st.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    moments = {k: {m: opt.state[p][m].clone() for m in ("exp_avg", "exp_avg_sq")} for k, p in params.items()}
    ids = resample_dead(st, opt, xs, ys, dead, torch.Generator().manual_seed(0))
    for l in range(L):
        assert torch.equal(ids[l], dead[l].nonzero().squeeze(-1))
    for name, p in params.items():
        l, field = int(name.split(".")[1]), name.split(".")[2]
        rows = dead[l] if field in ("W_enc", "b_enc", "W_dec") else torch.zeros(p.shape[0], dtype=torch.bool)
        assert torch.equal(p[~rows], before[name][~rows]), name
        for m in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][m][~rows], moments[name][m][~rows]), name
            assert bool((opt.state[p][m][rows] == 0).all()), name
        if field == "W_enc":
            assert bool((p[rows] != before[name][rows]).any(-1).all())
        if field == "W_dec":
            torch.testing.assert_close(p.norm(dim=-1), torch.ones(p.shape[0]))


def test_training_with_resample_dead(tiny, tiny_dir, tmp_path):
    """--resample-dead re-draws latents at checkpoint steps, still learns, and resumes bit-exactly after a re-draw."""
    kw = dict(resample_dead=True, dead_after_tokens=200, tokens=2400)
    with pytest.raises(MechscopeError, match="topk and batchtopk"):
        train_transcoders(_cfg(tiny_dir, tmp_path / "j", activation="jumprelu", **kw), model=tiny, progress=False)
    summary = train_transcoders(_cfg(tiny_dir, tmp_path / "a", **kw), model=tiny, progress=False)
    assert summary["resampled_latents"] > 0
    a = load_transcoders(tmp_path / "a")
    assert a.meta["training"]["resampled_latents"] == summary["resampled_latents"]
    assert max(summary["train_fvu_per_layer"]) < 1.0
    res = evaluate_transcoders(
        tiny,
        a,
        EvalConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=256, ce_layer_tokens=64, seq_len=32),
        progress=False,
    )
    assert res["mean_fvu"] < 0.9
    # interrupted right after a re-draw (step 6 is a checkpoint step), the resumed run ends where the straight one did
    train_transcoders(_cfg(tiny_dir, tmp_path / "r", stop_after_steps=6, **kw), model=tiny, progress=False)
    assert json.loads((tmp_path / ".r.checkpoint" / "state.json").read_text())["resampled_latents"] > 0
    summary_r = train_transcoders(_cfg(tiny_dir, tmp_path / "r", **kw), model=tiny, resume=True, progress=False)
    assert summary_r["resampled_latents"] == summary["resampled_latents"]
    for x, y in zip(a, load_transcoders(tmp_path / "r")):
        for name in ("W_enc", "b_enc", "W_dec", "W_skip"):
            torch.testing.assert_close(getattr(x, name), getattr(y, name), rtol=0, atol=0)


def test_eval_with_position_0_kept(tiny, tiny_dir, trained, capsys):
    """Transcoders exact everywhere but at position 0 recover all the loss once position 0 keeps the model's MLP output."""
    from mechscope.cli import main
    from mechscope.transcoders import TranscoderSet

    class ExactButPos0(Transcoder):
        def __init__(self, layer: int) -> None:
            super().__init__(TranscoderConfig(d_model=tiny.d_model, d_transcoder=8, k=2, skip=False))
            self.layer = layer

        def decode(self, acts, x=None):  # x: [b, n, d] -> the MLP block's true output, wrong at position 0
            y = tiny.mlp(self.layer).forward(x)  # .forward: not through the eval's own hooks
            if tiny.mlp_out_module(self.layer) is not tiny.mlp(self.layer):
                y = tiny.mlp_out_module(self.layer).forward(y)
            return torch.cat([y[:, :1] + 10.0, y[:, 1:]], 1)

    ts = TranscoderSet([ExactButPos0(l) for l in range(tiny.n_layers)], {})
    res = evaluate_transcoders(
        tiny, ts, EvalConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=256, ce_layer_tokens=0), progress=False
    )
    assert res["mean_fvu"] == pytest.approx(0, abs=1e-6)
    assert res["ce_loss_recovered_all_layers_bos_kept"] == pytest.approx(1, abs=1e-4)
    assert res["kl_all_layers_bos_kept"] == pytest.approx(0, abs=1e-5)
    # ... while transcoders replacing position 0 too change the loss (a random tiny model's logits are flat: KL is small)
    assert res["kl_all_layers"] > 1e-5 and abs(res["ce_loss_recovered_all_layers"] - 1) > 0.01
    assert res["ce_spliced_all_layers_bos_kept"] == pytest.approx(res["ce_clean"], abs=1e-5)
    assert res["ce_zero_ablate_all_layers_bos_kept"] != res["ce_zero_ablate_all_layers"]
    out, _ = trained
    assert (
        main(
            [
                "eval-transcoders",
                "--model",
                str(tiny_dir),
                "--transcoders",
                str(out),
                "--corpus",
                str(tiny_dir / "corpus.txt"),
                "--tokens",
                "256",
                "--layer-tokens",
                "64",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    for k in (
        "ce_loss_recovered_all_layers",
        "kl_all_layers",
        "ce_loss_recovered_all_layers_bos_kept",
        "kl_all_layers_bos_kept",
        "ce_spliced_all_layers_bos_kept",
        "ce_zero_ablate_all_layers_bos_kept",
    ):
        assert isinstance(res[k], float), k


def test_builtin_corpus_refuses_when_a_source_package_is_missing(tmp_path, monkeypatch):
    """A missing Debian package is named, with its apt-get command, before anything is built or cached."""
    from mechscope.corpus import offline_text as corpus  # where the built-in corpus is assembled

    present = tmp_path / "present.html"
    present.write_text("<p>x</p>")
    everything = {pkg: str(present) for pkg in corpus.BUILTIN_REQUIRES}
    docs = [(f"/doc/{i}.html", f"document {i} " * 40) for i in range(40)]
    monkeypatch.setattr(corpus, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(corpus, "_builtin_sources", lambda: iter(docs))
    monkeypatch.setattr(
        corpus,
        "BUILTIN_REQUIRES",
        {**everything, "fortunes-de": str(tmp_path / "de" / "*"), "manpages-ja": str(tmp_path / "hier.7.gz")},
    )
    with pytest.raises(
        MechscopeError, match=r"needs fortunes-de, manpages-ja, .*: apt-get install fortunes-de manpages-ja$"
    ) as e:
        corpus.build_builtin()
    assert "\n" not in str(e.value) and not (tmp_path / "cache").exists()
    monkeypatch.setattr(corpus, "BUILTIN_REQUIRES", everything)  # all there: built as before
    out = corpus.build_builtin()
    lines = (out / "train.jsonl").read_text().splitlines() + (out / "heldout.jsonl").read_text().splitlines()
    assert sorted(json.loads(l)["id"] for l in lines if l) == sorted(f"{src}#0" for src, _ in docs)


def test_all_layers_splice_feeds_each_transcoder_the_spliced_input(tiny):
    """Errors compound: with later transcoders exact, splicing every layer equals perturbing layer 0 alone."""
    from mechscope.transcoders import TranscoderSet
    from mechscope.transcoders.evaluate import _splice_all

    class Exact(Transcoder):
        def __init__(self, layer: int, offset: float) -> None:
            super().__init__(TranscoderConfig(d_model=tiny.d_model, d_transcoder=8, k=2, skip=False))
            self.layer, self.offset = layer, offset

        def forward(self, x):  # the MLP block's true output on *this* input, plus an offset
            y = tiny.mlp(self.layer).forward(x)  # .forward: not through the eval's own hooks
            if tiny.mlp_out_module(self.layer) is not tiny.mlp(self.layer):
                y = tiny.mlp_out_module(self.layer).forward(y)
            return y + self.offset

    ts = TranscoderSet([Exact(l, 0.5 if l == 0 else 0.0) for l in range(tiny.n_layers)], {})
    L = tiny.n_layers
    sites_in = [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    sites_out = [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    ids = tiny.tokenize("the cat sat on the mat").ids[None]
    with torch.no_grad():
        with tiny.hooks(_splice_all(ts, sites_in, sites_out, keep_pos0=False)):
            spliced = tiny.forward(ids)
        with tiny.hooks({sites_out[0]: lambda y: y + 0.5}):
            layer0_only = tiny.forward(ids)
        clean = tiny.forward(ids)
    torch.testing.assert_close(spliced, layer0_only, rtol=1e-4, atol=1e-4)
    assert (spliced - clean).abs().max() > 1e-3


def test_continued_set_records_its_lineage(tiny, tiny_dir, tmp_path, trained):
    """A set trained --init-from another keeps the earlier stages' records, oldest first."""
    out, _ = trained
    b = tmp_path / "b"
    train_transcoders(_cfg(tiny_dir, b, tokens=400, init_from=str(out), seed=3), model=tiny, progress=False)
    c = tmp_path / "c"
    train_transcoders(_cfg(tiny_dir, c, tokens=300, init_from=str(b), seed=4), model=tiny, progress=False)
    stages = json.loads((c / "config.json").read_text())["training"]["previous_stages"]
    assert [s["seed"] for s in stages] == [0, 3] and [s["tokens"] for s in stages] == [1200, 400]
    assert "previous_stages" not in stages[-1]


def _sink_data(gen, n=400, s=12, d=16):
    """Ordinary tokens with small outputs, and sinks: inputs near one direction, one huge output vector."""
    xn = torch.randn(n, d, generator=gen)
    yn = xn @ torch.randn(d, d, generator=gen) * 0.1
    v = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    xs = 6 * v + 0.2 * torch.randn(s, d, generator=gen)
    ys = (300 * torch.randn(d, generator=gen)).expand(s, d) * (1 + 0.05 * torch.randn(s, 1, generator=gen))
    return xs, ys, xn, yn


def test_sink_latent_reproduces_massive_outputs():
    from mechscope.transcoders.sinks import fit_sink_latent

    gen = torch.Generator().manual_seed(0)
    xs, ys, xn, yn = _sink_data(gen)
    tc = Transcoder(TranscoderConfig(d_model=16, d_transcoder=64, k=4))
    with torch.no_grad():
        for p in (tc.W_enc, tc.W_dec, tc.W_skip):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    fires = (tc.encode(xn) > 0).sum(0)
    rep = fit_sink_latent(tc, xs, ys, xn, yn)
    assert rep["fitted"] and rep["latent"] == int(fires.argmin())
    assert rep["sink_rel_err_before"] > 0.9 and rep["sink_rel_err_after"] < 0.03  # 5% magnitude noise
    assert not bool((tc.encode(xn)[:, rep["latent"]] > 0).any())  # silent on ordinary tokens
    assert rep["normal_fvu_after"] <= rep["normal_fvu_before"] + 0.05 * (int(fires.min()) > 0)
    # sinks that look like ordinary tokens are left alone
    tc2 = Transcoder(TranscoderConfig(d_model=16, d_transcoder=64, k=4))
    rep2 = fit_sink_latent(tc2, xn[:12], ys, xn, yn)
    assert not rep2["fitted"] and "not separable" in rep2["reason"] and not bool(tc2.W_dec.any())


def test_refitting_reuses_a_stale_sink_latent():
    """A set fitted, then trained on (AuxK moved its sink latent's decoder: the sinks' error went far above 1, as
    SmolLM2's layer 28 after the stop-18 fine-tune), is refitted through that same latent, and the error falls."""
    from mechscope.transcoders.sinks import fit_sink_latent

    gen = torch.Generator().manual_seed(1)
    xs, ys, xn, yn = _sink_data(gen)
    tc = Transcoder(TranscoderConfig(d_model=16, d_transcoder=64, k=4))
    with torch.no_grad():
        for p in (tc.W_enc, tc.W_dec, tc.W_skip):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    j = fit_sink_latent(tc, xs, ys, xn, yn)["latent"]
    with torch.no_grad():
        tc.W_dec[j] = -5 * tc.W_dec[j] + torch.randn(16, generator=gen)  # stale: now far off the sinks' output
    before = {k: v.detach().clone() for k, v in tc.state_dict().items()}
    rep = fit_sink_latent(tc, xs, ys, xn, yn)
    assert rep["sink_rel_err_before"] > 10 and rep["fitted"] and rep["latent"] == j, rep
    assert rep["sink_rel_err_after"] < 0.03  # the old output is not counted in the residual it fits
    others = torch.arange(64) != j  # no second sink latent beside the first: every other latent is untouched
    for k in ("W_enc", "b_enc", "W_dec"):
        assert torch.equal(tc.state_dict()[k][others], before[k][others]), k


def test_fit_sinks_on_a_model_with_a_sink(tiny, tiny_dir, trained, tmp_path, capsys):
    """A massive output at position 0 of one layer (as in SmolLM2) gets a sink latent; the CLI writes a new set."""
    from mechscope.cli import main
    from mechscope.transcoders.sinks import SinkConfig, fit_sinks

    out, _ = trained
    ts = load_transcoders(out)
    d = tiny.d_model
    big = 500 * torch.nn.functional.normalize(torch.arange(d, dtype=torch.float32) - d / 2, dim=0) * d**0.5

    def mark(x):  # a real model's sink also has a distinctive MLP input
        return torch.cat([x[:, :1] + big.to(x.dtype) / 50, x[:, 1:]], 1)

    def sink(y):
        return torch.cat([y[:, :1] + big.to(y.dtype), y[:, 1:]], 1)

    with tiny.hooks({"blocks.1.hook_mlp_in": mark, "blocks.1.hook_mlp_out": sink}):
        reports = fit_sinks(tiny, ts, SinkConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=512, seq_len=32))
    assert [r["layer"] for r in reports] == [1]
    r = reports[0]
    assert r["fitted"] and r["sink_rel_err_before"] > 0.9 and r["sink_rel_err_after"] < 0.05, r
    assert (
        main(
            [
                "fit-sinks",
                "--model",
                str(tiny_dir),
                "--transcoders",
                str(out),
                "--out",
                str(tmp_path / "s"),
                "--corpus",
                str(tiny_dir / "corpus.txt"),
                "--tokens",
                "256",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == []  # the model itself has no sinks: nothing fitted
    meta = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (
        meta["sink_latents"]["layers"] == []
        and meta["training"] == json.loads((out / "config.json").read_text())["training"]
    )
    assert main(["fit-sinks", "--model", str(tiny_dir), "--transcoders", str(out), "--out", str(out)]) == 2


def test_chunk_stream_is_the_old_training_and_eval_streams(tiny, tiny_dir):
    """The one stream helper yields exactly what training (docs shuffle + chunk shuffle) and eval/index/sinks
    (docs shuffle only) built by hand before it existed, so training results for a seed are unchanged."""
    import itertools

    from mechscope.corpus.sources import chunk_stream, iter_documents, shuffled, token_chunks

    corpus, tok = str(tiny_dir / "corpus.txt"), tiny.tokenizer
    for seed in (0, 3):
        old_train = shuffled(
            token_chunks(tok, shuffled(iter_documents(corpus, "train"), seed), 32), seed + 1, buffer=512
        )
        old_eval = token_chunks(tok, shuffled(iter_documents(corpus, "heldout"), seed), 32)
        new_train = chunk_stream(tok, corpus, "train", 32, seed)
        new_eval = chunk_stream(tok, corpus, "heldout", 32, seed, chunk_buffer=0)
        a, b = list(itertools.islice(old_train, 200)), list(itertools.islice(new_train, 200))
        assert len(a) == len(b) == 200 and all(torch.equal(x, y) for x, y in zip(a, b))
        a, b = list(old_eval), list(new_eval)
        assert a and len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    # and the chunk shuffle really reorders (it is not a no-op)
    plain = list(itertools.islice(chunk_stream(tok, corpus, "train", 32, 0, chunk_buffer=0), 50))
    mixed = list(itertools.islice(chunk_stream(tok, corpus, "train", 32, 0), 50))
    assert not all(torch.equal(x, y) for x, y in zip(plain, mixed))
