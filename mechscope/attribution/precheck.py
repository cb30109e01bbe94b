"""Refuse a trace before the model's weights load: only the tokenizer, the model's config.json and the transcoder
set's config.json are read, so a 5,000-word prompt is turned away in seconds and a few hundred MB, instead of after
a multi-GB forward pass (or the kernel's OOM killer).

>>> precheck_trace("gemma3-270m", "Dallas is in the state of", AttributionConfig())   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mechscope.attribution.config import AttributionConfig
from mechscope.attribution.memory import check_trace
from mechscope.errors import MechscopeError


@dataclass
class _Shape:
    """The attributes of a ModelAdapter that the estimates read."""

    name: str
    n_layers: int
    d_model: int
    vocab_size: int
    max_context: int
    cfg: object = None


@dataclass
class _SetShape:
    """The attributes of a TranscoderSet (and of its layers: `.cfg`) that the estimates read; no weights."""

    d_transcoder: int
    n_layers: int
    cfg: object = None

    def __len__(self) -> int:
        return self.n_layers

    def __getitem__(self, i: int) -> "_SetShape":
        return self


def _model_source(name: str) -> str:
    from mechscope.models.loading import converted_dir, ensure_converted
    from mechscope.models.registry import MODELS, resolve_model_name

    name = resolve_model_name(name)
    if name not in MODELS:
        if not Path(name).is_dir():
            raise MechscopeError(f"model '{name}' is not available offline; the memory check needs its files")
        return name
    done = converted_dir(name)
    return str(
        done if (done / "config.json").exists() and (done / "tokenizer.json").exists() else ensure_converted(name)
    )


def count_tokens(model: str, prompt: str, chat: bool = False) -> tuple[int, _Shape]:
    """Tokens of `prompt` as the model would see them (BOS, chat template), and the model's shape, without weights.

    The plain case reads tokenizer.json with the `tokenizers` library alone (seconds, ~100 MB); the chat template
    needs transformers' tokenizer.
    """
    if not prompt or not prompt.strip():
        raise MechscopeError("empty prompt")
    src, shape = model_shape(model)
    if not chat and (src / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        return len(Tokenizer.from_file(str(src / "tokenizer.json")).encode(prompt).ids), shape
    return _count_with_transformers(model, src, prompt, chat), shape


def model_shape(model: str) -> tuple[Path, _Shape]:
    """(model directory, its shape) from config.json alone."""
    import json

    src = Path(_model_source(model))
    try:
        raw = json.loads((src / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise MechscopeError(f"could not read the config of model '{model}': {e}") from None
    cfg = raw.get("text_config") or raw

    def first(*keys: str, default: int | None = None) -> int:
        # families name the same size differently (GPT-2: n_layer / n_embd / n_positions)
        for k in keys:
            if cfg.get(k) is not None:
                return int(cfg[k])
        if default is None:
            raise KeyError(repr(keys[0]))
        return default

    try:
        shape = _Shape(
            model,
            first("num_hidden_layers", "n_layer"),
            first("hidden_size", "n_embd"),
            first("vocab_size"),
            first("max_position_embeddings", "n_positions", "n_ctx", default=2048),
            type("Cfg", (), dict(cfg))(),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise MechscopeError(f"model '{model}': config.json lacks {e}") from None
    return src, shape


def _count_with_transformers(model: str, src: Path, prompt: str, chat: bool) -> int:
    from mechscope.models.registry import MODELS, resolve_model_name
    from mechscope.models.tokenizer import load_tokenizer

    tok = load_tokenizer(src, fast=resolve_model_name(model) in MODELS)
    if chat:
        if not getattr(tok, "chat_template", None):
            raise MechscopeError(f"model {model} has no chat template; run without --chat")
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
        )
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids
    else:
        ids = tok(prompt, add_special_tokens=True)["input_ids"]
    return len(ids)


SPECIAL_TOKENS_BOUND = 8  # BOS, EOS, a sentencepiece prefix piece: generous


def precheck_trace(
    model: str, prompt: str, cfg: AttributionConfig, chat: bool = False, transcoders: str | None = None
) -> int:
    """Raise MechscopeError if tracing `prompt` cannot fit the model's context or `cfg.max_memory_gb`; returns the
    token count (or an upper bound of it, when that bound already fits). Call it before `load_model` (the CLI does); `attribute` repeats the check with the real objects."""
    from mechscope.transcoders.registry import find_transcoders

    where = find_transcoders(model, transcoders)  # an unknown model is refused here, before torch loads
    from mechscope.transcoders.storage import read_config

    meta = read_config(where)
    tc_shape = set_shape(meta)
    if not chat and prompt and prompt.strip():
        # No tokenizer: tokens never outnumber UTF-8 bytes (byte fallback is the worst case) plus a few special
        # ones, so a prompt that passes at that bound passes for sure; reading the 33 MB tokenizer costs ~1.7 s.
        src, shape = model_shape(model)
        bound = len(prompt.encode("utf-8")) + SPECIAL_TOKENS_BOUND
        try:
            check_trace(shape, tc_shape, bound, cfg)
            check_resident(src, shape, where, meta, bound, cfg)
            return bound
        except MechscopeError:
            pass  # may still fit: count exactly
    n, shape = count_tokens(model, prompt, chat)
    check_trace(shape, tc_shape, n, cfg)
    check_resident(model_shape(model)[0], shape, where, meta, n, cfg)
    return n


def set_shape(meta: dict) -> _SetShape:
    """The attributes of a set that the estimates read, from its config.json."""
    fields = {"k": meta["k"], "activation": meta["activation"]}
    if meta.get("kind") == "clt":  # a cross-layer transcoder's decoder window sizes its attribution tables
        fields.update(max_write_layers=meta.get("max_write_layers", 0), n_layers=meta["n_layers"])
    return _SetShape(meta["d_transcoder"], meta["n_layers"], type("TcCfg", (), fields)())


def model_weights_gb(src: Path) -> float:
    """GB the model's weights take once loaded in float32 (float32 files are memory-mapped, their pages all read
    by a forward; other dtypes are converted), from the safetensors headers alone."""
    from mechscope.transcoders.mapped import read_header

    n = 0
    for f in sorted(Path(src).glob("*.safetensors")):
        header, _ = read_header(f)
        for key, info in header.items():
            if key != "__metadata__":
                size = 1
                for s in info["shape"]:
                    size *= int(s)
                n += size
    return n * 4 / 2**30


def resident_parts(
    src: Path, shape: _Shape, set_path: Path, meta: dict, n_pos: int, cfg: AttributionConfig
) -> dict[str, float]:
    """The whole trace's memory by part (GB): model weights, transcoders (loaded whole or memory-mapped, as
    `load_transcoders` will) and tracing (`trace_gb`, the runtime included); nothing is loaded to know it."""
    from mechscope.attribution.memory import set_resident_gb, trace_gb
    from mechscope.transcoders.mapped import stored_bytes
    from mechscope.transcoders.storage import use_mapped

    mapped = use_mapped(meta)
    return {
        "model weights": model_weights_gb(src),
        "transcoders" + (" (memory-mapped)" if mapped else ""): set_resident_gb(
            meta, stored_bytes(Path(set_path), meta) if mapped else {}, mapped, n_pos
        ),
        "tracing": trace_gb(shape, set_shape(meta), n_pos, cfg),
    }


def check_resident(src: Path, shape: _Shape, set_path: Path, meta: dict, n_pos: int, cfg: AttributionConfig) -> float:
    """Refuse, before anything loads, a trace whose model, set and work together exceed the memory available now
    (the message carries the estimate and its parts); returns the estimate in GB."""
    from mechscope.guards import check_fits_memory

    parts = resident_parts(src, shape, set_path, meta, n_pos, cfg)
    return check_fits_memory(parts, f"tracing {n_pos} tokens with {shape.name}")
