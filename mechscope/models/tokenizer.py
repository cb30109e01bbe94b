"""Tokenizers that load in a fraction of the time: the bundled models' `tokenizer.json`, read by `tokenizers` once.

`AutoTokenizer.from_pretrained` (transformers 5) parses a `tokenizer.json` in Python twice and, for classes such as
`GemmaTokenizer`, rebuilds the backend from its vocabulary and merges: ≈3 s for Gemma 3's 262k tokens and 515k
merges, against ≈1.5 s for `tokenizers` reading the file directly — a third of a warm `mechscope trace`'s overhead.
The fast path is taken only for the registry's converted models, whose files mechscope writes itself and where
tests/test_tokenizer_load.py checks it against `AutoTokenizer` (ids, tokens, decoding, special ids, chat template);
any other directory goes through `AutoTokenizer` unchanged.

>>> tok = load_tokenizer(converted_dir("gemma3-270m"), fast=True)  # doctest: +SKIP
>>> tok("Dallas")["input_ids"]  # doctest: +SKIP
[2, 120384]
"""

from __future__ import annotations

import json
from pathlib import Path


def load_tokenizer(path: str | Path, fast: bool = False, local_files_only: bool = True):
    """The tokenizer of a model directory; `fast`: read tokenizer.json directly (registry models only)."""
    import transformers

    path = Path(path)
    spec = _fast_spec(path) if fast else None
    if spec is None:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=local_files_only)
    kwargs, cls = spec
    # the class's defaults that AutoTokenizer would apply (Gemma pads on the left)
    kwargs.setdefault("padding_side", getattr(cls, "padding_side", "right"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **kwargs)
    jinja = path / "chat_template.jinja"
    if jinja.exists() and not getattr(tok, "chat_template", None):
        tok.chat_template = jinja.read_text(encoding="utf-8")
    return tok


def _fast_spec(path: Path) -> tuple[dict, type | None] | None:
    """(constructor kwargs, the configured class) when the directory can take the fast path, else None."""
    import transformers

    try:
        cfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (path / "tokenizer.json").exists() or "auto_map" in cfg or cfg.get("backend", "tokenizers") != "tokenizers":
        return None
    cls = getattr(transformers, str(cfg.pop("tokenizer_class", "")), None)
    return cfg, cls
