"""Shared fixtures: tiny random-weight Llama and Gemma 3 models (no download), and the real models."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

TEXT = ("Dallas is in the state of Texas. The capital of Texas is Austin. Oakland is in California. "
        "Michael Jordan plays basketball. La capitale de la France est Paris. Der Hund ist groß. "
        "One two three four five six seven eight nine ten. The opposite of small is large.\n") * 3


def _tokenizer(path: Path, bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(path)
    return fast


def make_tiny(path: Path, family: str, n_layers: int = 3, d_model: int = 48, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    torch.manual_seed(seed)
    tok = _tokenizer(path, bos=family == "gemma3")
    common = dict(vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=256,
                  bos_token_id=2, eos_token_id=1, pad_token_id=0)
    if family == "gemma3":
        cfg = Gemma3TextConfig(**common, sliding_window=8, query_pre_attn_scalar=12,
                               layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"])
    else:
        cfg = LlamaConfig(**common, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # non-trivial norm gains so frozen-norm bugs show
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    # many short paragraphs, so the 5% held-out split of the file is not empty
    paras = [f"{i}. " + TEXT.replace("\n", " ")[(i * 37) % 200:] for i in range(600)]
    (path / "corpus.txt").write_text("\n\n".join(paras))
    return path


@pytest.fixture(scope="session", params=["llama", "gemma3"])
def tiny_dir(request, tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from mechscope.models import load_model
    return load_model(str(tiny_dir))


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
    from mechscope.transcoders.train import TrainConfig, train_transcoders

    out = tmp_path_factory.mktemp("tc") / "set"
    cfg = TrainConfig(model=str(tiny_dir), corpus=str(tiny_dir / "corpus.txt"), tokens=2000, features=96, k=6,
                      seq_len=32, batch_size=4, skip_init_tokens=400, out=str(out), save_dtype="float32")
    train_transcoders(cfg, model=tiny, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_tc(tiny, tiny_tc_dir):
    from mechscope.transcoders import load_transcoders
    return load_transcoders(tiny_tc_dir, n_layers=tiny.n_layers, d_model=tiny.d_model)
