"""The fast tokenizer path (models/tokenizer.py) gives the same tokenizer as AutoTokenizer for the registry models."""

from __future__ import annotations

import json
import lzma

import pytest

from mechscope.models.loading import converted_dir, ensure_converted
from mechscope.models.registry import MODELS
from mechscope.models.tokenizer import load_tokenizer
from mechscope.corpus.sampled import shipped_path

TEXTS = [
    "Dallas is in the state of",
    "  leading and trailing spaces  ",
    "<bos>literal special tokens<eos>",
    "<start_of_turn>user\nhi<end_of_turn>",
    "",
    "\n\n\t",
    "Ünïcödé café ß 東京是日本的首都 12+35=47",
]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fast_tokenizer_equals_autotokenizer(name):
    from transformers import AutoTokenizer

    path = ensure_converted(name)
    assert path == converted_dir(name)
    auto = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    fast = load_tokenizer(path, fast=True)
    assert type(fast) is not type(auto) or name != "gemma3-270m"  # the fast path really is another route
    docs = (
        [json.loads(x)["text"] for x in lzma.open(shipped_path(name), "rt")][:150]
        if shipped_path(name).exists()
        else []
    )
    for text in TEXTS + docs:
        a, f = auto(text)["input_ids"], fast(text)["input_ids"]
        assert a == f, text[:60]
        assert auto.convert_ids_to_tokens(a) == fast.convert_ids_to_tokens(f)
        assert auto.decode(a) == fast.decode(f)
        assert auto.decode(a, skip_special_tokens=True) == fast.decode(f, skip_special_tokens=True)
        assert auto(text, add_special_tokens=False)["input_ids"] == fast(text, add_special_tokens=False)["input_ids"]
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side", "all_special_ids"):
        assert getattr(auto, attr) == getattr(fast, attr), attr
    assert len(auto) == len(fast)
    assert bool(auto.chat_template) == bool(fast.chat_template)
    if auto.chat_template:
        msgs = [{"role": "user", "content": "Where is Dallas?"}]
        assert auto.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == fast.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=False
        )


def test_other_directories_keep_autotokenizer(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = load_tokenizer(tiny_dir)  # not a registry model: AutoTokenizer's class
    assert type(tok) is type(AutoTokenizer.from_pretrained(str(tiny_dir), local_files_only=True))
    # a directory the fast path cannot read falls back to AutoTokenizer (which then names the problem)
    from mechscope.models.tokenizer import _fast_spec

    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    assert _fast_spec(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text('{"auto_map": {"AutoTokenizer": "x.Tok"}}')
    assert _fast_spec(tmp_path) is None  # custom code: never bypassed
