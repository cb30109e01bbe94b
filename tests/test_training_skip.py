"""The skip term's shapes and schedules (full, low rank, diagonal; annealed, decayed) and what a saved set keeps."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.errors import MechscopeError
from mechscope.training.config import TrainConfig
from mechscope.training.skip import SkipTerm, anneal_factor
from mechscope.training.train import train_transcoders
from mechscope.transcoders.storage import load_transcoders
from tests.train_helpers import tiny_train_cfg


def _rand(d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(d, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("form", ["full", "lowrank", "diagonal"])
def test_forward_is_the_matrix_it_reports(form):
    d = 12
    s = SkipTerm(d, form, rank=3)
    s.load_matrix(_rand(d))
    s.scale.fill_(0.7)
    x = torch.randn(5, d)
    torch.testing.assert_close(s(x), x @ s.matrix().T)


def test_low_rank_start_is_the_best_rank_r_approximation():
    d, r = 16, 4
    w = _rand(d, 1)
    s = SkipTerm(d, "lowrank", rank=r)
    s.load_matrix(w)
    u, sv, vh = torch.linalg.svd(w)
    best = (u[:, :r] * sv[:r]) @ vh[:r]
    torch.testing.assert_close(s.matrix(), best, rtol=1e-4, atol=1e-4)
    # Eckart–Young: the error is the tail of the singular values, so a wrong factorisation would show here
    assert abs(float((w - s.matrix().detach()).norm()) - float(sv[r:].norm())) < 1e-3
    diag = SkipTerm(d, "diagonal")
    diag.load_matrix(w)
    assert torch.equal(diag.matrix(), torch.diag(w.diagonal()))


def test_decay_shrinks_the_map_by_the_factor():
    for form in ("full", "lowrank", "diagonal"):
        s = SkipTerm(8, form, rank=2)
        s.load_matrix(_rand(8, 2))
        before = s.matrix().clone()
        s.decay(0.9)
        torch.testing.assert_close(s.matrix(), 0.9 * before)


def test_anneal_factor_schedule():
    assert anneal_factor(0, 100, 0.0) == 1.0 and anneal_factor(99, 100, 0.0) == 1.0
    assert anneal_factor(0, 100, 0.5) == 1.0
    assert anneal_factor(25, 100, 0.5) == pytest.approx(0.5)
    assert anneal_factor(50, 100, 0.5) == 0.0 and anneal_factor(80, 100, 0.5) == 0.0


def test_annealed_set_is_saved_without_a_skip(tiny, tiny_dir, tmp_path):
    out = tmp_path / "anneal"
    train_transcoders(tiny_train_cfg(tiny_dir, out, skip_anneal=0.5), model=tiny, progress=False)
    ts = load_transcoders(out, n_layers=tiny.n_layers, d_model=tiny.d_model)
    assert all(tc.W_skip is None for tc in ts)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["skip_anneal"] == 0.5


def test_low_rank_set_saves_a_low_rank_skip(tiny, tiny_dir, tmp_path):
    out = tmp_path / "lowrank"
    train_transcoders(tiny_train_cfg(tiny_dir, out, skip_form="lowrank", skip_rank=2), model=tiny, progress=False)
    ts = load_transcoders(out, n_layers=tiny.n_layers, d_model=tiny.d_model)
    for tc in ts:
        assert tc.W_skip is not None
        assert int(torch.linalg.matrix_rank(tc.W_skip.float(), rtol=1e-4)) <= 2


def test_decayed_skip_is_smaller_than_a_free_one(tiny, tiny_dir, tmp_path):
    free, decayed = tmp_path / "free", tmp_path / "decayed"
    train_transcoders(tiny_train_cfg(tiny_dir, free), model=tiny, progress=False)
    train_transcoders(tiny_train_cfg(tiny_dir, decayed, skip_decay=0.2), model=tiny, progress=False)
    n = lambda p: sum(  # noqa: E731
        float(tc.W_skip.detach().norm()) for tc in load_transcoders(p, n_layers=tiny.n_layers, d_model=tiny.d_model)
    )
    assert n(decayed) < 0.5 * n(free)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(skip_form="banded"), "--skip-form"),
        (dict(skip_rank=0), "--skip-rank"),
        (dict(skip_anneal=1.5), "--skip-anneal"),
        (dict(skip_decay=1.0), "--skip-decay"),
        (dict(skip=False, skip_anneal=0.5), "--no-skip"),
        (dict(kind="clt", skip_form="lowrank"), "--kind plt"),
    ],
)
def test_bad_skip_options_are_one_line_errors(kw, msg):
    with pytest.raises(MechscopeError, match=msg) as e:
        TrainConfig(**kw)
    assert "\n" not in str(e.value)


def test_resume_with_another_skip_form_is_refused(tiny, tiny_dir, tmp_path):
    out = tmp_path / "r"
    train_transcoders(tiny_train_cfg(tiny_dir, out, stop_after_steps=2), model=tiny, progress=False)
    with pytest.raises(MechscopeError, match="skip"):
        train_transcoders(tiny_train_cfg(tiny_dir, out, skip_form="diagonal"), model=tiny, resume=True, progress=False)
