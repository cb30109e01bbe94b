"""Generation under edits with a KV cache (issue #37) is exactly the recompute it replaced: the same greedy
tokens and logits within 1e-4, unedited and edited (edits at a prompt position, at every position, both, and a
swap's skip patches), on llama and gemma3 here and on gemma2, qwen3, llama3 and gpt2 through test_families.py.

`greedy_uncached` is the path before the cache: the whole sequence re-run with the edits at every step. It is
kept here (and in benchmarks/bench_generate.py), as the reference, not in the package."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import every_family

from mechscope.interventions import Edit, FeatureRef, active_features, intervene, plan_swap, run_with_edits
from mechscope.interventions.generation import continue_pair, prompt_pair

PROMPT = "Dallas is in the state of Texas"  # longer than the fixtures' sliding windows (gemma3 8, gemma2 4)
N = 12  # generated tokens: the sequence outgrows the sliding windows further while generating


def greedy_uncached(model, ts, ids, edits, n, skip_patches=None, stop=frozenset()):
    """Greedy tokens and the logits [vocab] each was chosen from, recomputing everything at every step."""
    cur, toks, logits = ids.clone(), [], []
    for _ in range(n):
        last = run_with_edits(model, ts, cur, edits, skip_patches=skip_patches)[-1]
        toks.append(int(last.argmax()))
        logits.append(last)
        cur = torch.cat([cur, torch.tensor([toks[-1]])])
        if toks[-1] in stop:
            break
    return toks, logits


def _assert_same(got, ref_toks, ref_logits, what):
    assert got.tokens == ref_toks, what
    assert len(got.logits) == len(ref_logits)
    for a, b in zip(got.logits, ref_logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=what)


def _edit_sets(model, ts, ids):
    n = ids.shape[0]
    l, f, a = active_features(model, ts, ids, n - 1)[0]
    l2, f2, a2 = active_features(model, ts, ids, 2)[0]
    quiet = next(g for g in range(ts.d_transcoder) if g != f)  # set at every position, mostly off before
    return {
        "prompt position": [Edit(FeatureRef(l, f, n - 1), "set", 30 * a)],
        "every position": [Edit(FeatureRef(l2, quiet), "set", 5 * a2), Edit(FeatureRef(l, f), "scale", 3.0)],
        "both": [
            Edit(FeatureRef(l2, f2, 2), "ablate"),
            Edit(FeatureRef(l2, f2, 0), "set", 5 * a2),  # applied at every new token if offsets were wrong
            Edit(FeatureRef(l, f), "set", 8 * a),
        ],
        "strong": _token_changing(model, ts, ids),
    }


def _token_changing(model, ts, ids):
    """An edit that changes the greedy tokens, so the rows of the batch carry different sequences: the random
    fixtures repeat one token whatever mild edits do, so one layer's top feature is set to 100× or 1000× its
    activation at every position (the first that changes the tokens; the cached path picks, the test checks it)."""
    top = {}
    for l, f, a in active_features(model, ts, ids, ids.shape[0] - 1):  # largest first
        top.setdefault(l, (l, f, a))
    for mult in (100, 1000):
        for l, f, a in top.values():
            edits = [Edit(FeatureRef(l, f), "set", mult * a)]
            before, after = continue_pair(model, ts, prompt_pair(model, ts, ids, edits), N, stop=set())
            if before.tokens != after.tokens:
                return edits
    raise AssertionError("no edit changed the generation: the comparison would not see different rows")


def check_cached_generation_matches_recompute(model, ts):
    """Both rows of the batched, cached generation against the recompute, for every kind of edit."""
    ids = model.tokenize(PROMPT).ids
    ref_before = greedy_uncached(model, ts, ids, [], N)
    for what, edits in _edit_sets(model, ts, ids).items():
        before, after = continue_pair(model, ts, prompt_pair(model, ts, ids, edits), N, keep_logits=True, stop=set())
        _assert_same(before, *ref_before, f"unedited row beside {what}")
        _assert_same(after, *greedy_uncached(model, ts, ids, edits, N), what)
        # after the first token a prompt-position edit acts through the cache alone: it must still show
        moved = max(float((a - b).abs().max()) for a, b in zip(after.logits[1:], before.logits[1:]))
        assert moved > 1e-3, f"{what} changed nothing after the prompt ({moved:.2g})"


def check_swap_generation_matches_recompute(model, ts):
    """A swap with skip patches (prompt positions only) generates what the recompute generates."""
    plan = plan_swap(model, ts, "Dallas is in the state of", "Oakland is in the state of", span="rest", with_skip=True)
    ids = model.tokenize(plan.prompt).ids
    run = prompt_pair(model, ts, ids, plan.edits, plan.skip_patches)
    _, after = continue_pair(model, ts, run, N, keep_logits=True, stop=set())
    _assert_same(after, *greedy_uncached(model, ts, ids, plan.edits, N, plan.skip_patches), "swap with skip")


@every_family
def test_cached_generation_matches_recompute(tiny, tiny_tc):
    check_cached_generation_matches_recompute(tiny, tiny_tc)


@every_family
def test_swap_generation_matches_recompute(tiny, tiny_tc):
    check_swap_generation_matches_recompute(tiny, tiny_tc)


def test_a_row_stops_at_its_stop_token_the_other_goes_on(tiny, tiny_tc):
    ids = tiny.tokenize(PROMPT).ids
    edits = _edit_sets(tiny, tiny_tc, ids)["every position"]
    free_b, free_a = continue_pair(tiny, tiny_tc, prompt_pair(tiny, tiny_tc, ids, edits), N, stop=set())
    stop = {free_b.tokens[2]} - set(free_a.tokens)  # a token only the unedited row says
    if not stop:
        stop = {free_b.tokens[2]}
    before, after = continue_pair(tiny, tiny_tc, prompt_pair(tiny, tiny_tc, ids, edits), N, stop=stop)
    assert before.tokens == greedy_uncached(tiny, tiny_tc, ids, [], N, stop=stop)[0] and len(before.tokens) <= 3
    assert after.tokens == greedy_uncached(tiny, tiny_tc, ids, edits, N, stop=stop)[0]


def test_intervene_generation_is_the_recompute(tiny, tiny_tc):
    """intervene's texts and its before/after answers (from the batched pass) match the recompute and the
    unbatched passes; with frozen attention too (its answers then come from separate passes)."""
    ids = tiny.tokenize(PROMPT).ids
    edits = _edit_sets(tiny, tiny_tc, ids)["both"]
    stop = {tiny.tokenizer.eos_token_id}
    want = [tiny.tokenizer.decode(greedy_uncached(tiny, tiny_tc, ids, e, N, stop=stop)[0]) for e in ([], edits)]
    plain = intervene(tiny, tiny_tc, PROMPT, edits, top_k=20)
    for freeze in (False, True):
        res = intervene(tiny, tiny_tc, PROMPT, edits, generate=N, freeze_attention=freeze, top_k=20)
        assert [res["generation_before"], res["generation_after"]] == want
        for k in ("before", "after") if not freeze else ("before",):
            assert [r["token"] for r in res[k]] == [r["token"] for r in plain[k]]
            assert [r["prob"] for r in res[k]] == pytest.approx([r["prob"] for r in plain[k]], abs=1e-5)


def test_cli_generate_out_of_range_is_one_line(tiny_dir, tiny_tc_dir):
    common = ["--model", str(tiny_dir), "--transcoders", str(tiny_tc_dir), "--ablate", "0/1"]
    for n, msg in (("-1", "--generate must be"), ("100000", "exceeds the context")):
        r = subprocess.run(
            [sys.executable, "-m", "mechscope", "intervene", PROMPT, *common, "--generate", n],
            capture_output=True,
            text=True,
        )
        errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
        assert r.returncode == 2 and len(errors) == 1 and msg in errors[0], r.stderr
        assert "Traceback" not in r.stderr
