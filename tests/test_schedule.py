"""Tracing's schedule (#22): pooled, layer-sorted backward chunks, run on several threads, give the same graph;
idle OpenMP threads sleep; --threads is validated."""

import os
import random
import subprocess
import sys

import pytest
import torch

from mechscope.attribution import AttributionConfig, attribute
from mechscope.errors import MechscopeError
from mechscope.threads import apply_threads, resolve_threads

import mechscope.attribution.rows as R

PROMPT = "Dallas is in the state of Texas"


def test_chunks_cover_every_target_once_on_a_long_enough_prefix():
    rng = random.Random(0)
    for batch in (1, 4, 16, 64):
        targets = [
            R.Target(rng.randrange(18), rng.randrange(19), torch.zeros(1), i) for i in range(rng.randrange(1, 300))
        ]
        chunks = R._chunks(targets, batch)
        seen = sorted(i for _, c in chunks for i in c)
        assert seen == list(range(len(targets)))  # each target exactly once
        for pos, c in chunks:
            assert 1 <= len(c) <= batch
            assert all(targets[i].pos <= pos for i in c)  # the prefix reaches every member's position
            layers = [targets[i].layer for i in c]
            assert layers == sorted(layers)  # layer-sorted within a chunk


@pytest.mark.parametrize("budget", [7, 10_000])
def test_parallel_chunks_give_the_serial_graph(tiny, tiny_tc, budget):
    cfg = AttributionConfig(max_feature_nodes=budget, batch_size=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        g1 = attribute(tiny, tiny_tc, PROMPT, cfg)
        torch.set_num_threads(3)  # 3 workers, whatever the machine has
        g3 = attribute(tiny, tiny_tc, PROMPT, cfg)
        assert torch.get_num_threads() == 3  # restored after the trace
    finally:
        torch.set_num_threads(before)
    assert [n["node_id"] for n in g1.nodes] == [n["node_id"] for n in g3.nodes]
    torch.testing.assert_close(g1.A, g3.A, rtol=1e-5, atol=1e-6)
    assert g1.A.abs().sum() > 0


def test_threads_is_an_argument_and_the_library_leaves_the_count_alone(tiny, tiny_tc, tiny_dir):
    """attribute(threads=) picks the trace's workers without changing the process's thread count; loading a model
    does not change it either (only front ends, from --threads, set it for the process)."""
    from mechscope.models.adapter import load_model

    cfg = AttributionConfig(max_feature_nodes=7, batch_size=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        g1 = attribute(tiny, tiny_tc, PROMPT, cfg, threads=1)
        g3 = attribute(tiny, tiny_tc, PROMPT, cfg, threads=3)
        assert torch.get_num_threads() == 2
        load_model(str(tiny_dir))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(g1.A, g3.A, rtol=1e-5, atol=1e-6)


def test_serial_rows_equal_rows_in_old_per_position_order(tiny, tiny_tc):
    """Pooling positions onto a longer prefix leaves every row unchanged (later positions carry nothing), and so
    does the layer sweep that joins each row at its own layer (a row alone is one plain backward)."""
    from mechscope.attribution.replacement import prepare

    tiny_tc.requires_grad_(False)
    t = tiny.tokenize(PROMPT)
    st = prepare(tiny, tiny_tc, t.ids, t.strs)
    att = R.Attributor(tiny, tiny_tc, st, AttributionConfig(batch_size=64))
    nz = st.acts.nonzero()
    nz = nz[torch.randperm(nz.shape[0], generator=torch.Generator().manual_seed(0))[:40]]
    assert len(set(nz[:, 0].tolist())) >= 3  # the pooled chunk's sweep joins rows at several layers
    targets = [R.Target(int(l), int(p), tiny_tc[int(l)].W_enc.float()[int(f)], j) for j, (l, p, f) in enumerate(nz)]
    pooled = att.rows(targets)  # one pool: all positions on the longest prefix
    alone = torch.stack([att.rows([tg])[0] for tg in targets])  # each on its own prefix
    torch.testing.assert_close(pooled, alone, rtol=1e-5, atol=1e-6)


def test_threads_resolution_and_errors(monkeypatch):
    monkeypatch.delenv("MECHSCOPE_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(0) == 3 and resolve_threads(5) == 5
    monkeypatch.setenv("MECHSCOPE_THREADS", "2")
    assert resolve_threads(None) == 2
    monkeypatch.setenv("MECHSCOPE_THREADS", "two")
    with pytest.raises(MechscopeError, match="whole number"):
        resolve_threads(0)
    with pytest.raises(MechscopeError, match="--threads"):
        resolve_threads(-1)
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        assert os.environ["MECHSCOPE_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_import_makes_idle_threads_sleep_unless_the_user_chose():
    code = "import os, mechscope; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True
    )
    assert out.stdout.strip() == "ACTIVE"


def test_cli_refuses_negative_threads(capsys):
    from mechscope.cli import main

    assert main(["trace", "--threads", "-1", "Dallas is"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads" in err[0]


@pytest.mark.parametrize("budget", [5, 10_000])
def test_all_rows_at_once_choose_what_the_rounds_choose(tiny, tiny_tc, budget, monkeypatch):
    """Computing every feature's row in one pass and replaying the rounds' ranking on them gives the same graph."""
    A = sys.modules["mechscope.attribution.attribute"]
    cfg = AttributionConfig(max_feature_nodes=budget, batch_size=4)
    monkeypatch.setattr(A, "ALL_AT_ONCE", 2.0)  # never: rows computed round by round
    rounds = attribute(tiny, tiny_tc, PROMPT, cfg)
    monkeypatch.setattr(A, "ALL_AT_ONCE", 0.0)  # always
    at_once = attribute(tiny, tiny_tc, PROMPT, cfg)
    assert [n["node_id"] for n in rounds.nodes] == [n["node_id"] for n in at_once.nodes]
    assert len(rounds.nodes) > rounds.n_err + rounds.n_tok + rounds.n_logit  # feature nodes were chosen
    for name in ("A", "const", "dropped", "values"):
        torch.testing.assert_close(getattr(rounds, name), getattr(at_once, name), rtol=1e-5, atol=1e-6)
