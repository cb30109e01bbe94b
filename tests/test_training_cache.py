"""More training per forward pass and per machine: the activation cache (blocks replayed, shuffled), the kernel
trims (sparse encoder gradient, folded pre-encoder bias) checked against dense autograd, and continuing a saved
candidate on another machine (`--time-limit`, `--continue-from`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mechscope.cli import main
from mechscope.errors import MechscopeError
from mechscope.training import train as train_mod
from mechscope.training.cache import block_batches, check_cache_fits, replay
from mechscope.training.config import TrainConfig
from mechscope.training.train import train_transcoders
from mechscope.training.trainer import LayerTrainer
from mechscope.transcoders.storage import load_transcoders
from tests.train_helpers import tiny_train_cfg

# ---- the cache ------------------------------------------------------------------------------------------------


def _raw(n_batches: int, tokens: int = 6):
    """Batches whose tokens carry their own ids (x = y = id), 10 chunks each."""
    for b in range(n_batches):
        ids = torch.arange(b * tokens, (b + 1) * tokens, dtype=torch.float32)
        x = ids.view(1, -1, 1).expand(2, -1, 3).clone()
        yield x, x.clone(), 10 * (b + 1)


def test_replay_trains_each_block_epochs_times_in_fresh_orders():
    got = list(replay(_raw(5), block_batches=2, tokens_per_batch=6, epochs=3, seed=0))
    assert len(got) == 15  # 5 batches, each block passed 3 times (the last block holds one batch)
    first_block = [x[0, :, 0] for x, _, _ in got[:6]]
    for epoch in range(3):
        seen = torch.cat(first_block[2 * epoch : 2 * epoch + 2])
        assert sorted(seen.tolist()) == list(range(12))  # every token of the block once per pass
    assert not torch.equal(torch.cat(first_block[2:4]), torch.cat(first_block[:2]))  # shuffled, not replayed as read
    assert [p.fresh for _, _, p in got[:6]] == [True, True, False, False, False, False]
    # inside a block the position stays at its start; a block's last batch moves it to the next block's start
    assert [tuple(p[:2]) for _, _, p in got[:6]] == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (20, 0)]
    assert all(torch.equal(x, y) for x, y, _ in got)  # inputs and outputs stay paired


def test_replay_resumed_inside_a_block_yields_the_rest_unchanged():
    full = list(replay(_raw(4), 2, 6, epochs=2, seed=3))
    chunks, skip = full[4][2].chunks, full[4][2].in_block  # stopped after the 5th batch: inside block 2
    raw = (b for i, b in enumerate(_raw(4)) if 10 * (i + 1) > chunks)  # the corpus read again from `chunks`
    rest = list(replay(raw, 2, 6, epochs=2, seed=3, start_chunks=chunks, skip=skip))
    assert len(rest) == len(full) - 5
    for (x, _, p), (x2, _, p2) in zip(full[5:], rest):
        assert torch.equal(x, x2) and p == p2


def test_block_size_and_memory_bound():
    assert block_batches(1.0, 18, 1016, 640, 4) == 11 and block_batches(1e-9, 18, 1016, 640, 4) == 1
    check_cache_fits(0, torch.device("cpu"))
    with pytest.raises(MechscopeError, match="does not fit") as e:
        check_cache_fits(1e6, torch.device("cpu"))
    assert "\n" not in str(e.value)


def _cached(tiny_dir, out, **kw) -> TrainConfig:
    # 2 batches of the tiny model (3 layers, d 48, 4 × 31 tokens + one sequence) per block
    return tiny_train_cfg(tiny_dir, out, cache_gb=0.0004, cache_epochs=2, **kw)


def test_training_with_a_cache_counts_distinct_tokens(tiny, tiny_dir, tmp_path):
    s = train_transcoders(_cached(tiny_dir, tmp_path / "c"), model=tiny, progress=False)
    assert s["steps"] == 9 and s["tokens_trained"] == 9 * 124
    assert s["distinct_tokens"] == 5 * 124  # blocks of 2 batches passed twice: 5 forward batches for 9 steps
    plain = train_transcoders(tiny_train_cfg(tiny_dir, tmp_path / "p"), model=tiny, progress=False)
    assert plain["distinct_tokens"] == plain["tokens_trained"]
    assert max(s["train_fvu_per_layer"]) < 1.5


def test_resume_inside_a_cached_block_gives_the_same_set(tiny, tiny_dir, tmp_path):
    train_transcoders(_cached(tiny_dir, tmp_path / "a"), model=tiny, progress=False)
    res = train_transcoders(_cached(tiny_dir, tmp_path / "r", stop_after_steps=3), model=tiny, progress=False)
    state = json.loads((tmp_path / ".r.checkpoint" / "state.json").read_text())
    assert res["interrupted_at_step"] == 3 and state["cache_skip"] == 3  # inside the second pass of block 1
    with pytest.raises(MechscopeError, match="inside a cached block"):
        train_transcoders(tiny_train_cfg(tiny_dir, tmp_path / "r"), model=tiny, resume=True, progress=False)
    train_transcoders(_cached(tiny_dir, tmp_path / "r"), model=tiny, resume=True, progress=False)
    for x, y in zip(load_transcoders(tmp_path / "a"), load_transcoders(tmp_path / "r")):
        for name in ("W_enc", "b_enc", "W_dec", "W_skip"):
            torch.testing.assert_close(getattr(x, name), getattr(y, name), rtol=1e-5, atol=1e-6)


def test_a_cache_larger_than_memory_is_refused_before_anything_is_written(tiny_dir, tmp_path, capsys):
    out = tmp_path / "big"
    argv = ["train-transcoders", "--model", str(tiny_dir), "--corpus", str(tiny_dir / "corpus.txt")]
    argv += ["--tokens", "500", "--features", "32", "--k", "4", "--out", str(out), "--cache-gb", "1e6"]
    assert main([*argv, "--cache-epochs", "2"]) == 2
    assert main(argv) == 2  # a cache without passes to replay
    err = capsys.readouterr().err.strip().splitlines()
    assert "does not fit" in err[0] and "--cache-epochs" in err[1] and not out.exists()


# ---- kernel trims ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("f, k, dead", [(256, 4, False), (256, 4, True), (48, 8, False)])  # sparse, AuxK, dense
def test_layer_gradients_match_dense_autograd(f, k, dead):
    """The trainer's encoder (sparse Gᵀx where it pays, b_pre folded into b_enc) against a plain dense reference."""
    torch.manual_seed(0)
    d, n = 12, 40
    lt = LayerTrainer(d, f, k, False, torch.Generator().manual_seed(0))
    with torch.no_grad():
        lt.b_pre.normal_()
        lt.b_enc.normal_(0, 0.1)
    x, y = torch.randn(n, d), torch.randn(n, d)
    dead_mask = torch.rand(f) < 0.5 if dead else torch.zeros(f, dtype=torch.bool)
    loss, _ = lt(x, y, dead_mask, 1 / 32)
    loss.backward()
    ours = {name: p.grad.clone() for name, p in lt.named_parameters() if p.grad is not None}
    lt.zero_grad()
    pre = torch.nn.functional.linear(x - lt.b_pre, lt.W_enc, lt.b_enc)  # the unfolded, dense definition
    v, i = pre.topk(k, -1)
    acts = torch.zeros_like(pre).scatter(-1, i, v.clamp_min(0))
    err = y - (acts @ lt.W_dec + lt.b_dec)
    total_var = (y - y.mean(0)).pow(2).sum()
    ref = err.pow(2).sum() / total_var
    if dead:
        k_aux = min(int(dead_mask.sum()), d // 2)
        v2, i2 = pre.masked_fill(~dead_mask, float("-inf")).topk(k_aux, -1)
        aux_acts = torch.zeros_like(pre).scatter(-1, i2, v2.clamp_min(0))
        ref = ref + (aux_acts @ lt.W_dec - err.detach()).pow(2).sum() / total_var / 32
    ref.backward()
    for name, p in lt.named_parameters():
        if name in ours:
            torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert "b_pre" in ours and float(ours["b_pre"].abs().sum()) > 0


# ---- continuing a candidate -----------------------------------------------------------------------------------


def _candidate(tiny, tiny_dir, tmp_path, **kw):
    """A candidate stopped by --time-limit at the first chance (step 1 without a cache), copied as a fresh
    machine would get it from the repository: the set's directory only, no checkpoint."""
    cfg = tiny_train_cfg(tiny_dir, tmp_path / "run" / "cand", time_limit_s=1e-9, **kw)
    s = train_transcoders(cfg, model=tiny, progress=False)
    repo = tmp_path / "repo" / "cand"
    shutil.copytree(tmp_path / "run" / "cand", repo)
    return repo, s


def test_time_limit_saves_a_candidate_with_its_position(tiny, tiny_dir, tmp_path):
    repo, s = _candidate(tiny, tiny_dir, tmp_path)
    pos = json.loads((repo / "config.json").read_text())["training"]["position"]
    assert s["steps"] == 1 and pos["step"] == 1 and pos["total_steps"] == 9 and not pos["complete"]
    assert pos["chunks"] > 0 and pos["cache_skip"] == 0 and len(pos["scales"]) == tiny.n_layers
    assert (tmp_path / "run" / ".cand.checkpoint").exists()  # --resume on the same machine still works


def test_continue_from_a_committed_candidate(tiny, tiny_dir, tmp_path, monkeypatch):
    repo, _ = _candidate(tiny, tiny_dir, tmp_path)
    pos = json.loads((repo / "config.json").read_text())["training"]["position"]
    seen = {}
    real = train_mod.activation_batches

    def spy(model, cfg, rank=0, world=1, skip_chunks=0, split="train"):
        seen["skip_chunks"] = skip_chunks
        return real(model, cfg, rank, world, skip_chunks, split)

    monkeypatch.setattr(train_mod, "activation_batches", spy)
    out = tmp_path / "continued"
    s = train_transcoders(tiny_train_cfg(tiny_dir, out, continue_from=str(repo)), model=tiny, progress=False)
    assert seen["skip_chunks"] == pos["chunks"]  # the next unread text
    assert s["steps"] == 9 and s["position"]["complete"] and s["distinct_tokens"] == 9 * 124
    rec = json.loads((out / "config.json").read_text())["training"]
    assert rec["continued_from"][0]["steps"] == 1 and rec["position"]["step"] == 9
    assert max(s["train_fvu_per_layer"]) < 1.5
    with pytest.raises(MechscopeError, match="finished its schedule"):
        train_transcoders(tiny_train_cfg(tiny_dir, tmp_path / "again", continue_from=str(out)), model=tiny)


def test_continue_after_a_cached_block_with_another_cache(tiny, tiny_dir, tmp_path):
    repo, s = _candidate(tiny, tiny_dir, tmp_path, cache_gb=0.0004, cache_epochs=2)
    assert s["steps"] == 4 and s["position"]["cache_skip"] == 0  # stopped at the end of the first block
    s2 = train_transcoders(tiny_train_cfg(tiny_dir, tmp_path / "c", continue_from=str(repo)), model=tiny)
    assert s2["steps"] == 9


@pytest.mark.parametrize(
    "change, msg",
    [
        (dict(features=32), "--features 64, not 32"),
        (dict(k=8, lr=1e-3), "--k 4, not 8; --lr 0.0, not 0.001"),
        (dict(seed=5), "--seed"),
    ],
)
def test_continuing_with_other_options_is_refused(tiny, tiny_dir, tmp_path, change, msg):
    repo, _ = _candidate(tiny, tiny_dir, tmp_path)
    out = tmp_path / "x"
    with pytest.raises(MechscopeError, match=msg) as e:
        train_transcoders(tiny_train_cfg(tiny_dir, out, continue_from=str(repo), **change), model=tiny)
    assert "\n" not in str(e.value) and not out.exists()


def test_candidate_that_does_not_fit_or_has_no_position_is_refused(tiny, tiny_dir, tmp_path, capsys):
    repo, _ = _candidate(tiny, tiny_dir, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    meta = json.loads((repo / "config.json").read_text())
    meta["n_layers"] = tiny.n_layers + 1
    (repo / "config.json").write_text(json.dumps(meta))
    with pytest.raises(MechscopeError, match="layers but the model has"):
        train_transcoders(tiny_train_cfg(tiny_dir, out, continue_from=str(repo)), model=tiny)
    del meta["training"]["position"]
    (repo / "config.json").write_text(json.dumps(meta))
    argv = ["train-transcoders", "--model", str(tiny_dir), "--corpus", str(tiny_dir / "corpus.txt")]
    argv += ["--tokens", "1200", "--features", "64", "--k", "4", "--seq-len", "32", "--batch-size", "4"]
    assert main([*argv, "--out", str(out), "--continue-from", str(repo)]) == 2
    assert "records no training position" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # nothing overwritten
