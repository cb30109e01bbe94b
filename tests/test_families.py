"""Gemma 2, Qwen3, Llama 3 (RoPE scaling) and GPT-2: what differs by family (fixture `tiny_family`, parametrized in
conftest.py). The checks every family must pass — the adapter's sites, the exactness suite, interventions and
cached generation — are the tests in test_models.py, test_attribution.py, test_interventions.py and
test_generation.py marked `@every_family`, which run on all six tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import trained_set

from mechscope.attribution import AttributionConfig, attribute, validate_graph_json
from mechscope.errors import MechscopeError

PROMPT = "Dallas is in the state of Texas"


@pytest.fixture(scope="session")
def family_train(tiny_family, tiny_family_dir, tmp_path_factory):
    """A short transcoder training run on each family (float32 so the exactness checks stay tight); the same set
    as `tiny_tc` on that family (conftest.trained_set trains it once)."""
    return trained_set(tiny_family, tiny_family_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def family_tc(tiny_family, family_train):
    from mechscope.transcoders import load_transcoders

    return load_transcoders(family_train[0], n_layers=tiny_family.n_layers, d_model=tiny_family.d_model)


@pytest.fixture(scope="session")
def family_graph(tiny_family, family_tc):
    return attribute(tiny_family, family_tc, PROMPT, AttributionConfig(max_feature_nodes=10_000, batch_size=16))


# ---- the adapter ------------------------------------------------------------------------------------------
def test_family_is_recognised(tiny_family):
    mt = tiny_family.cfg.model_type
    assert tiny_family.family.name == {"gemma2": "gemma2", "qwen3": "qwen3", "llama": "llama", "gpt2": "gpt2"}[mt]
    if mt == "llama":
        assert tiny_family.cfg.rope_parameters["rope_type"] == "llama3"
    norms = tiny_family.norm_modules()
    assert len(norms) == tiny_family.n_layers * len(tiny_family.family.residual_norms) + 1
    if mt == "qwen3":  # q/k norms share the residual norms' class but are not frozen (heads axis)
        q_norm = tiny_family.layers[0].self_attn.q_norm
        assert type(q_norm) is type(norms[0]) and all(q_norm is not m for m in norms)


def test_frozen_norms_are_affine(tiny_family):
    """With recorded scales and patterns (and MLPs removed), the model is affine in the embedding:
    f(a+b) − f(b) = f(a) − f(0), and f(0) is non-zero only where the family has biases (GPT-2)."""
    ids = tiny_family.tokenize(PROMPT).ids[None]
    scales = tiny_family.norm_scales(ids)
    pats: dict = {}
    with tiny_family.attention_patterns(record=pats):
        tiny_family.forward(ids)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1, ids.shape[1], tiny_family.d_model, generator=g) for _ in range(2))

    hooks = {f"blocks.{l}.hook_mlp_out": torch.zeros_like for l in range(tiny_family.n_layers)}  # MLPs are not linear

    def f(e):
        with (
            torch.no_grad(),
            tiny_family.frozen(scales=scales),
            tiny_family.attention_patterns(override=pats),
            tiny_family.hooks({"hook_embed": lambda x: e, **hooks}),
        ):
            return tiny_family.forward(ids, logits=False)

    zero = f(torch.zeros_like(a))
    torch.testing.assert_close(f(a + b) - f(b), f(a) - zero, rtol=1e-4, atol=1e-4)
    assert (float(zero.abs().max()) > 1e-3) == tiny_family.family.affine_biases


@pytest.mark.parametrize("tiny_family_dir", ["gemma2"], indirect=True)
def test_gemma2_softcaps_are_active(tiny_family):
    ids = tiny_family.tokenize(PROMPT).ids[None]
    c = tiny_family.run_with_cache(ids, ["ln_final.hook_normalized"])
    raw = c["ln_final.hook_normalized"] @ tiny_family.W_U.T
    assert (raw - c["logits"]).abs().max() > 1e-2, "the final soft-cap must bite in this fixture"
    torch.testing.assert_close(tiny_family.logits_from_resid(c["ln_final.hook_normalized"]), c["logits"])
    assert tiny_family.model.config.attn_logit_softcapping and len(set(tiny_family.model.config.layer_types)) == 2


# ---- training and the graph ----------------------------------------------------------------------------------
def test_training_run(family_train, tiny_family):
    summary = family_train[1]
    assert summary["tokens_trained"] >= 1900 and len(summary["train_fvu_per_layer"]) == tiny_family.n_layers
    assert all(0 <= v < 1.5 for v in summary["train_fvu_per_layer"])


def test_direct_effect_matches_graph(tiny_family, family_tc, family_graph):
    """Scaling a feature by (1+ε) in the frozen model moves each logit target (before the soft-cap) by ε·edge."""
    from mechscope.attribution.replacement import frozen_forward, prepare

    g, m = family_graph, tiny_family
    t = m.tokenize(PROMPT)
    st = prepare(m, family_tc, t.ids, t.strs)
    j = int(g.node_influence()[: g.n_feat].argmax())
    l, p, f = int(g.nodes[j]["layer"]), g.nodes[j]["ctx_idx"], g.nodes[j]["feature"]
    src = [st.recon[k] + st.error[k] for k in range(m.n_layers)]
    src[l][p] += 0.5 * st.acts[l, p, f] * family_tc[l].W_dec[f].float()
    base = (frozen_forward(m, family_tc, st).final[0, -1] @ m.W_U.T).detach()
    moved = (frozen_forward(m, family_tc, st, src_values=src).final[0, -1] @ m.W_U.T).detach()
    for k in range(g.n_logit):
        i = g.N - g.n_logit + k
        tok = g.nodes[i]["feature"]
        delta = float((moved[tok] - moved.mean()) - (base[tok] - base.mean()))
        assert delta == pytest.approx(0.5 * float(g.A[i, j]), rel=1e-3, abs=1e-5)


# ---- end to end and refusals -----------------------------------------------------------------------------
def test_cli_trace_end_to_end(tiny_family_dir, family_tc, tmp_path):
    """A local Hugging Face directory of the family traces from the CLI, here with the set in circuit-tracer's layout."""
    from mechscope.transcoders import export_circuit_tracer

    ct = export_circuit_tracer(family_tc, tmp_path / "ct", model_name=str(tiny_family_dir))
    out = tmp_path / "g.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechscope",
            "trace",
            PROMPT,
            "--model",
            str(tiny_family_dir),
            "--transcoders",
            str(ct),
            "--out",
            str(out),
            "--max-feature-nodes",
            "20",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    validate_graph_json(json.loads(out.read_text()))


def test_unsupported_family_is_one_line(tmp_path):
    from transformers import AutoModelForCausalLM, MistralConfig

    from mechscope.models import load_model

    cfg = MistralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "m")
    from conftest import _tokenizer

    _tokenizer(tmp_path / "m", bos=False)
    with pytest.raises(
        MechscopeError, match=r"unsupported model family 'mistral'; supported: llama .*gemma2.*qwen3.*gpt2"
    ) as e:
        load_model(str(tmp_path / "m"))
    assert "\n" not in str(e.value)
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", "generate", PROMPT, "--model", str(tmp_path / "m")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "unsupported model family 'mistral'" in r.stderr and "Traceback" not in r.stderr
