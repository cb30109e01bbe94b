import subprocess
import sys

import pytest
import torch
from conftest import every_family

from mechscope.errors import MechscopeError
from mechscope.models import load_model
from mechscope.models.loading import cache_is_complete


@every_family
def test_tiny_loads_and_sites_have_shapes(tiny):
    ids = tiny.tokenize("Dallas is in the state of").ids[None]
    sites = [
        f"blocks.{l}.hook_{h}"
        for l in range(tiny.n_layers)
        for h in ("mlp_in", "mlp_out", "mlp_out_raw", "resid_pre", "resid_mid", "resid_post")
    ]
    cache = tiny.run_with_cache(ids, sites + ["hook_embed"])
    for s in sites:
        assert cache[s].shape == (1, ids.shape[1], tiny.d_model), s
    # the residual stream adds up: resid_post = resid_mid + mlp_out
    for l in range(tiny.n_layers):
        torch.testing.assert_close(
            cache[f"blocks.{l}.hook_resid_post"],
            cache[f"blocks.{l}.hook_resid_mid"] + cache[f"blocks.{l}.hook_mlp_out"],
        )
    assert cache["logits"].shape == (1, ids.shape[1], tiny.vocab_size)


@every_family
def test_mlp_in_is_pre_mlp_norm_output(tiny):
    ids = tiny.tokenize("The capital of Texas").ids[None]
    c = tiny.run_with_cache(ids, ["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_in"])
    torch.testing.assert_close(tiny.pre_mlp_norm(1)(c["blocks.1.hook_resid_mid"]), c["blocks.1.hook_mlp_in"])


@every_family
def test_frozen_model_same_values_and_linear(tiny):
    ids = tiny.tokenize("Oakland is in California").ids[None]
    ref = tiny.forward(ids)
    with tiny.frozen():
        out = tiny.forward(ids)
    torch.testing.assert_close(ref, out, rtol=1e-5, atol=1e-5)
    # linear: past the last MLP only the final norm and the unembedding remain, so with the clean run's norm
    # scales a perturbation δ of the last MLP output moves the logits by exactly half of what 2δ does
    scales: dict = {}
    with tiny.record_norm_scales(scales):
        tiny.forward(ids)
    site = f"blocks.{tiny.n_layers - 1}.hook_mlp_out"
    delta = 20 * torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0))

    def moved(c: float, frozen: bool) -> torch.Tensor:
        with tiny.hooks({site: lambda y: y + c * delta}):
            if not frozen:
                return tiny.forward(ids) - ref
            with tiny.frozen(scales=scales):
                return tiny.forward(ids) - ref

    torch.testing.assert_close(moved(2, True), 2 * moved(1, True), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(moved(2, False), 2 * moved(1, False), rtol=1e-3, atol=1e-3)  # the live norm is not


@every_family
def test_attention_patterns_recorded_and_override(tiny):
    ids = tiny.tokenize("one two three four").ids[None]
    rec: dict = {}
    with tiny.attention_patterns(record=rec):
        ref = tiny.forward(ids)
    assert set(rec) == set(range(tiny.n_layers))
    p = rec[0]
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
    assert torch.all(p.triu(1) == 0)  # causal
    with tiny.attention_patterns(override=rec):
        out = tiny.forward(ids)
    torch.testing.assert_close(ref, out)


@every_family
def test_generate_greedy_is_argmax(tiny):
    res = tiny.generate("Dallas is", max_new_tokens=3)
    ids = tiny.tokenize("Dallas is").ids[None]
    first = int(tiny.forward(ids)[0, -1].argmax())
    assert res["tokens"][0] == tiny.tokenizer.decode([first])
    assert len(res["token_probs"]) == len(res["tokens"]) <= 3


def test_bad_inputs(tiny):
    with pytest.raises(MechscopeError, match="empty prompt"):
        tiny.tokenize("   ")
    with pytest.raises(MechscopeError, match="at most"):
        tiny.tokenize("one two " * 400)
    with pytest.raises(MechscopeError, match="unknown model"):
        load_model("no-such-model")


def test_cli_unknown_model_one_line_error():
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "generate", "hi", "--model", "nope"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "gemma3-270m" in r.stderr and "Traceback" not in r.stderr


def test_partial_cache_is_not_complete(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    assert not cache_is_complete(d)
    (d / "mechscope-complete.json").write_text('{"format": 1, "files": {"config.json": 2, "model.safetensors": 10}}')
    assert not cache_is_complete(d)  # listed weights file missing: a killed conversion


@pytest.mark.real
def test_gemma_completes_known_facts(gemma):
    res = gemma.generate("Michael Jordan plays the sport of", max_new_tokens=2)
    assert res["tokens"][0] == " basketball" and res["token_probs"][0] > 0.5
    res = gemma.generate("Dallas is in the state of", max_new_tokens=1)
    assert res["tokens"][0] == " Texas"


@pytest.mark.real
def test_gemma_context_limit_and_bos(gemma):
    t = gemma.tokenize("hello")
    assert t.strs[0] == "<bos>"
    assert gemma.family.name == "gemma3" and gemma.n_layers == 18 and gemma.d_model == 640


def test_chat_without_template_is_a_clear_error(tiny):
    with pytest.raises(MechscopeError, match="no chat template"):
        tiny.tokenize("hello", chat=True)


def test_models_command_lists_both(capsys):
    import json as _json

    from mechscope.cli import main

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in _json.loads(capsys.readouterr().out)["models"]}
    assert set(rows) == {"gemma3-270m", "smollm2-135m"} and rows["gemma3-270m"]["default"]


def test_unembedding_mean_is_cached_and_follows_edits(tiny):
    W = tiny.W_U
    first = tiny.W_U_mean
    assert torch.allclose(first, W.float().mean(0))
    assert tiny.W_U_mean is first  # cached: a long-lived session averages the vocabulary once
    row0 = W[0].clone()  # the fixture is shared: restored bit for bit (x + 1 - 1 need not be x in float)
    with torch.no_grad():
        W[0] += 1.0  # an in-place edit bumps the weight's version: the cache must not serve the old mean
    try:
        assert torch.allclose(tiny.W_U_mean, W.float().mean(0))
        assert not torch.allclose(tiny.W_U_mean, first)
    finally:
        with torch.no_grad():
            W[0] = row0
