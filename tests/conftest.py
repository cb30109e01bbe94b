"""Shared fixtures: tiny random-weight models of every family (no download), and the real models.

`tiny*` is parametrized over llama and gemma3 (the whole suite runs on both); `tiny_family*` over the other
families (gemma2, qwen3, llama3 with RoPE scaling, gpt2), which tests/test_families.py checks family by family.
A check that must hold for every family (the adapter's sites, the exactness suite, interventions, generation)
carries `@every_family`: it runs on all six tiny models. Each tiny model is built, and its set trained, once
per session whichever fixture asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TEXT = (
    "Dallas is in the state of Texas. The capital of Texas is Austin. Oakland is in California. "
    "Michael Jordan plays basketball. La capitale de la France est Paris. Der Hund ist groß. "
    "One two three four five six seven eight nine ten. The opposite of small is large.\n"
) * 3


def _tokenizer(path: Path, bos: bool):
    from extras import require

    require("tokenizers")  # every tiny model needs it: fail naming the extra, not with an ImportError
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT], trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(path)
    return fast


def make_tiny(path: Path, family: str, n_layers: int = 3, d_model: int = 48, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    if family in NEW_FAMILIES:
        return _make_tiny_new(path, family, n_layers, d_model, seed)
    torch.manual_seed(seed)
    tok = _tokenizer(path, bos=family == "gemma3")
    common = dict(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        max_position_embeddings=256,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    if family == "gemma3":
        cfg = Gemma3TextConfig(
            **common,
            sliding_window=8,
            query_pre_attn_scalar=12,
            layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"],
        )
    else:
        cfg = LlamaConfig(**common, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # non-trivial norm gains so frozen-norm bugs show
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    _write_corpus(path)
    return path


def _write_corpus(path: Path) -> None:
    # many short paragraphs, so the 5% held-out split of the file is not empty
    paras = [f"{i}. " + TEXT.replace("\n", " ")[(i * 37) % 200 :] for i in range(600)]
    (path / "corpus.txt").write_text("\n\n".join(paras))


NEW_FAMILIES = ("gemma2", "qwen3", "llama3", "gpt2")
ALL_FAMILIES = ("llama", "gemma3", *NEW_FAMILIES)
# on a test that takes `tiny` / `tiny_tc` (or a fixture built on them): run it on every family's tiny model
every_family = pytest.mark.parametrize("tiny_dir", ALL_FAMILIES, indirect=True)
# on a test whose subject does not depend on the family (and each run costs seconds): the llama tiny model only
llama_only = pytest.mark.parametrize("tiny_dir", ["llama"], indirect=True)


def _make_tiny_new(path: Path, family: str, n_layers: int, d_model: int, seed: int) -> Path:
    """Tiny random Gemma 2 / Qwen3 / Llama 3 (RoPE scaling) / GPT-2, with every feature that differs switched on
    hard enough to matter: soft-caps that bite, alternating sliding windows shorter than the prompt, non-trivial
    norm gains and biases (GPT-2's are zero at init)."""
    from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig, Qwen3Config

    torch.manual_seed(seed)
    tok = _tokenizer(path, bos=family in ("gemma2", "llama3"))
    ids = dict(vocab_size=len(tok), bos_token_id=2, eos_token_id=1, pad_token_id=0)
    common = dict(
        **ids,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        max_position_embeddings=256,
    )
    if family == "gemma2":
        cfg = Gemma2Config(
            **common,
            sliding_window=4,
            query_pre_attn_scalar=12,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=0.3,
            layer_types=["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(n_layers)],
        )
    elif family == "qwen3":
        cfg = Qwen3Config(**common, tie_word_embeddings=False)
    elif family == "llama3":
        cfg = LlamaConfig(
            **common,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
                "rope_theta": 500000.0,
            },
        )
    else:
        cfg = GPT2Config(
            **ids,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=4,
            n_positions=256,
            n_inner=2 * d_model,
            initializer_range=0.1,
        )  # weights large enough that MLP outputs vary more than their biases
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    _write_corpus(path)
    return path


_BUILT: dict[str, Path] = {}  # family -> its tiny model's directory, once per session
_TRAINED: dict[Path, tuple[Path, dict]] = {}  # model directory -> (its transcoder set, the training summary)


def _tiny_path(family: str, tmp_path_factory) -> Path:
    if family not in _BUILT:
        _BUILT[family] = make_tiny(tmp_path_factory.mktemp(f"tiny-{family}"), family)
    return _BUILT[family]


def trained_set(model, model_dir: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A small transcoder set trained on a tiny model (float32, so exactness tests are tight), once per model."""
    from mechscope.training.train import TrainConfig, train_transcoders

    if model_dir not in _TRAINED:
        out = tmp_path_factory.mktemp("tc") / "set"
        cfg = TrainConfig(
            model=str(model_dir),
            corpus=str(model_dir / "corpus.txt"),
            tokens=2000,
            features=96,
            k=6,
            seq_len=32,
            batch_size=4,
            skip_init_tokens=400,
            out=str(out),
            save_dtype="float32",
        )
        _TRAINED[model_dir] = out, train_transcoders(cfg, model=model, progress=False)
    return _TRAINED[model_dir]


@pytest.fixture(scope="session", params=["llama", "gemma3"])
def tiny_dir(request, tmp_path_factory) -> Path:
    return _tiny_path(request.param, tmp_path_factory)


@pytest.fixture(scope="session", params=NEW_FAMILIES)
def tiny_family_dir(request, tmp_path_factory) -> Path:
    return _tiny_path(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_family(tiny_family_dir):
    from mechscope.models import load_model

    return load_model(str(tiny_family_dir))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from mechscope.models import load_model

    return load_model(str(tiny_dir))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that failed on a missing optional package says which extra to install (tests/extras.py)."""
    rep = yield
    exc = call.excinfo.value if call.excinfo is not None else None
    if isinstance(exc, ModuleNotFoundError) and exc.name and rep.failed:
        from extras import missing_extra

        message = missing_extra(exc.name)
        if message:
            rep.longrepr = f"{message}\n({type(exc).__name__}: {exc} in {item.nodeid})"
    return rep


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Graph stores and user transcoder sets go to a temp dir; the converted-model cache stays shared."""
    monkeypatch.setenv("MECHSCOPE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session")
def gemma():
    from mechscope.models import load_model

    return load_model("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_tc_dir(tiny, tiny_dir, tmp_path_factory) -> Path:
    """A small transcoder set trained on the tiny model (float32, so exactness tests are tight)."""
    return trained_set(tiny, tiny_dir, tmp_path_factory)[0]


@pytest.fixture(scope="session")
def tiny_tc(tiny, tiny_tc_dir):
    from mechscope.transcoders import load_transcoders

    return load_transcoders(tiny_tc_dir, n_layers=tiny.n_layers, d_model=tiny.d_model)
