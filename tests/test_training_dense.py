"""Dense-latent control: the density cap in training (dense latents re-drawn as dead ones are) and fold-dense (the
constant part of always-on latents moved into the decoder bias, exactly on the measured text)."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.cli import main
from mechscope.errors import MechscopeError
from mechscope.training.config import TrainConfig
from mechscope.training.redraw import DensityTracker, redraw_at_checkpoint
from mechscope.training.train import train_transcoders
from mechscope.training.trainer import StackTrainer
from mechscope.transcoders.fold import apply_fold, fold_dense, measure
from mechscope.transcoders.storage import load_transcoders, save_transcoders
from tests.train_helpers import tiny_train_cfg


def test_tracker_flags_latents_over_the_cap_and_resets():
    t = DensityTracker(2, 4, cap=0.25, device=torch.device("cpu"))
    assert not t.dense().any()  # nothing counted yet: nothing is dense
    t.add(torch.tensor([[3, 1, 0, 2], [0, 0, 4, 1]]), tokens=4)
    t.add(torch.tensor([[3, 1, 0, 0], [0, 0, 4, 1]]), tokens=4)
    assert t.dense().tolist() == [[True, False, False, False], [False, False, True, False]]
    t.reset()
    assert t.tokens == 0 and not t.dense().any()


def test_redraw_replaces_the_dense_latent_and_marks_it_dead():
    cfg = TrainConfig(features=16, k=2, density_cap=0.5, checkpoint_every=1, dead_after_tokens=100)
    tr = StackTrainer(1, 8, cfg)
    opt = torch.optim.Adam(tr.parameters())
    layer = tr.layers[0]
    with torch.no_grad():
        layer.b_enc[5] = 50.0  # always chosen: the planted dense latent
    xs, ys = torch.randn(1, 64, 8), torch.randn(1, 64, 8)
    tracker = DensityTracker(1, 16, cfg.density_cap, torch.device("cpu"))
    tracker.add(torch.stack([layer(xs[0], ys[0], None, 0.0)[1]["n_fired"]]), tokens=64)
    assert tracker.dense()[0].nonzero().flatten().tolist() == [5]
    last_fired = torch.full((1, 16), 1000)
    last_drawn = torch.zeros(1, 16, dtype=torch.long)
    n_dead, n_dense = redraw_at_checkpoint(tr, opt, xs, ys, cfg, 1, 1000, last_fired, last_drawn, 1, tracker)
    assert (n_dead, n_dense) == (0, 1)
    assert float(layer.b_enc.detach()[5]) == 0.0 and int(last_drawn[0, 5]) == 1000
    assert 1000 - int(last_fired[0, 5]) > cfg.dead_after_tokens  # counts as dead: AuxK trains it
    assert int(last_fired[0, 4]) == 1000 and tracker.tokens == 0  # the others untouched; the count starts again


def test_density_cap_redraws_in_training_and_is_recorded(tiny, tiny_dir, tmp_path):
    # k 4 of 64 latents: 6% of the slots per token, so a cap of 3% finds dense latents; off, none are re-drawn
    capped = train_transcoders(tiny_train_cfg(tiny_dir, tmp_path / "cap", density_cap=0.03), model=tiny, progress=False)
    free = train_transcoders(tiny_train_cfg(tiny_dir, tmp_path / "free"), model=tiny, progress=False)
    assert capped["dense_resampled_latents"] > 0 and free["dense_resampled_latents"] == 0
    rec = json.loads((tmp_path / "cap" / "config.json").read_text())["training"]
    assert rec["density_cap"] == 0.03 and rec["dense_resampled_latents"] == capped["dense_resampled_latents"]


def test_density_cap_works_with_a_warm_start(tiny, tiny_dir, tiny_tc_dir, tmp_path):
    cfg = tiny_train_cfg(tiny_dir, tmp_path / "warm", init_from=str(tiny_tc_dir), features=96, k=6, density_cap=0.04)
    summary = train_transcoders(cfg, model=tiny, progress=False)
    assert summary["dense_resampled_latents"] > 0


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(density_cap=1.0), "--density-cap"),
        (dict(density_cap=-0.1), "--density-cap"),
        (dict(density_cap=0.1, activation="jumprelu"), "--density-cap"),
        (dict(density_cap=0.1, checkpoint_every=0), "--checkpoint-every"),
    ],
)
def test_bad_density_options_are_one_line_errors(kw, msg):
    with pytest.raises(MechscopeError, match=msg) as e:
        TrainConfig(**kw)
    assert "\n" not in str(e.value)


# ---- fold-dense ---------------------------------------------------------------------------------------------


def _with_dense(tiny_tc, activation: str = "topk"):
    """A copy of the tiny set with latent 7 of every layer made always-on (a large encoder bias)."""
    import copy

    ts = copy.deepcopy(tiny_tc)
    for tc in ts:
        tc.cfg.activation = activation
        with torch.no_grad():
            tc.b_enc[7] += 20.0
            if activation == "jumprelu":
                tc.threshold.fill_(0.05)
    return ts


def _outputs(tiny, ts, corpus):
    from mechscope.transcoders.fold import _text_inputs

    return [ts[l](x).detach() for xs in _text_inputs(tiny, corpus, 600, 32, 4) for l, x in enumerate(xs)]


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_fold_keeps_the_reconstruction_on_the_text(tiny, tiny_dir, tiny_tc, activation):
    corpus = str(tiny_dir / "corpus.txt")
    ts = _with_dense(tiny_tc, activation)
    before = _outputs(tiny, ts, corpus)
    b_dec = [tc.b_dec.clone() for tc in ts]
    rep = fold_dense(tiny, ts, corpus, tokens=600, seq_len=32, batch=4)
    assert rep["tokens"] == 600 and all(n >= 1 for n in rep["per_layer"])
    assert all(r["density"] == 1.0 and r["shift"] > 0 for r in rep["latents"])
    assert any(not torch.equal(tc.b_dec, b) for tc, b in zip(ts, b_dec))  # something really moved
    for y0, y1 in zip(before, _outputs(tiny, ts, corpus)):
        torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    assert rep["max_change_over_rms"] < 1e-4


def test_topk_fold_stays_inside_the_margin(tiny, tiny_dir, tiny_tc):
    """Folding a TopK latent's whole minimum can let another latent into the top k; the fold stops at the margin."""
    corpus = str(tiny_dir / "corpus.txt")
    ts = _with_dense(tiny_tc)
    stats, n = measure(tiny, ts, corpus, 600, 32, 4)
    st = stats[0]
    assert float(st.min_margin[7]) < float(st.min_act[7])  # the case that matters: the margin binds
    rows = apply_fold(ts, stats, n, 1.0, "float32")
    shift = next(r["shift"] for r in rows if r["layer"] == 0 and r["latent"] == 7)
    assert shift < float(st.min_margin[7])
    # what a fold of the whole minimum would do: the top-k choice changes, the reconstruction with it
    whole = _with_dense(tiny_tc)
    with torch.no_grad():
        whole[0].b_enc[7] -= float(st.min_act[7])
        whole[0].b_dec += float(st.min_act[7]) * whole[0].W_dec[7]
    y_ref, y_whole = torch.cat(_outputs(tiny, _with_dense(tiny_tc), corpus)), torch.cat(_outputs(tiny, whole, corpus))
    assert float((y_whole - y_ref).abs().max()) > 1e-3 * float(y_ref.pow(2).mean().sqrt())


def test_fold_rounds_towards_a_smaller_fold_for_half_storage(tiny, tiny_dir, tiny_tc):
    corpus = str(tiny_dir / "corpus.txt")
    ts = _with_dense(tiny_tc)
    stats, n = measure(tiny, ts, corpus, 600, 32, 4)
    rows = apply_fold(ts, stats, n, 1.0, "int8")
    for r in rows:
        b = ts[r["layer"]].b_enc.detach()[r["latent"]]
        assert float(b.half().float()) == float(b)  # representable: the save does not move it
        assert r["shift"] <= float(stats[r["layer"]].min_margin[r["latent"]])


def test_cli_fold_dense_writes_a_set_and_refuses_bad_input(tiny, tiny_dir, tiny_tc, tmp_path, capsys):
    src = tmp_path / "dense"
    save_transcoders(_with_dense(tiny_tc), src, dtype="float32")
    corpus = str(tiny_dir / "corpus.txt")
    args = ["fold-dense", "--model", str(tiny_dir), "--transcoders", str(src), "--corpus", corpus]
    args += ["--tokens", "300", "--seq-len", "32", "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "folded"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["folded"] >= tiny.n_layers and rep["max_change_over_rms"] < 1e-4
    ts = load_transcoders(tmp_path / "folded", n_layers=tiny.n_layers, d_model=tiny.d_model)
    assert len(ts.meta["folded_dense"]["latents"]) == rep["folded"]
    assert main([*args, "--out", str(src)]) == 2  # the input set itself: refused, nothing written
    assert main([*args, "--out", str(tmp_path / "x"), "--min-density", "0"]) == 2
    err = capsys.readouterr().err
    assert "--out must differ" in err and "--min-density" in err
    assert not (tmp_path / "x").exists()
