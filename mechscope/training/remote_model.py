"""A model carried to another machine: what travels (the GGUF file, about a quarter of the float32 weights, and the
converted tokenizer), how it is converted there, and the proof that it is the same model (a SHA-256 of every
weight tensor, compared with this machine's converted weights).

A local model directory (a test's tiny model, a Hugging Face download) travels as it is.

>>> payload_files("gemma3-270m")          # doctest: +SKIP
{'gemma3-270m/model.gguf': ..., 'gemma3-270m/tokenizer.json': ..., ...}
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.models.registry import MODELS

#: converted files that travel beside the GGUF: the tokenizer as this machine converted it (token ids must agree
#: with the runs here), not the weights
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def weights_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every tensor of a safetensors file (name, dtype, shape and bytes): equal digests, equal weights,
    whatever the file's header order or metadata."""
    import torch
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), "pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            out[name] = h.hexdigest()
    return out


def site_files(package: str = "gguf") -> dict[str, Path]:
    """An installed pure-Python package (its modules and dist-info) to carry under `site/`: the device's image
    lacks gguf, which transformers needs to read a GGUF file."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise MechscopeError(
            f"converting a GGUF file elsewhere needs the {package} package here (pip install {package})"
        ) from None
    out = {}
    for f in dist.files or []:
        if ".." in f.parts or "__pycache__" in f.parts:
            continue
        path = Path(str(dist.locate_file(f)))
        if path.is_file():
            out[f"site/{f.as_posix()}"] = path
    return out


def payload_files(name: str) -> tuple[dict[str, Path], dict]:
    """(files to carry under `name/`, the model's manifest entry) for a registry model or a local directory."""
    if name in MODELS:
        from mechscope.models.loading import ensure_converted

        conv = ensure_converted(name)  # this machine's float32 weights: the digest the other side must match
        files = {f"{name}/model.gguf": MODELS[name].gguf()}
        files |= {f"{name}/{f}": conv / f for f in TOKENIZER_FILES if (conv / f).exists()}
        entry = {"kind": "gguf", "digest": weights_digest(conv / "model.safetensors")}
        return files, entry
    src = Path(name)
    if not (src / "config.json").exists():
        raise MechscopeError(f"model {name}: give a registry model or a local model directory (with config.json)")
    files = {f"{src.name}/{p.name}": p for p in sorted(src.iterdir()) if p.is_file()}
    return files, {"kind": "dir", "dir": src.name}


def install(name: str, entry: dict, work: Path) -> str:
    """Make the carried model loadable on this machine; returns the --model to train with. A registry model is
    converted from its GGUF into the converted-model cache (as `mechscope` converts it on first use) and must
    match the digest recorded where it was packed."""
    if entry["kind"] == "dir":
        return str(work / entry["dir"])
    from mechscope.models.loading import cache_is_complete, converted_dir

    dest = converted_dir(name)
    if not cache_is_complete(dest):
        _convert(work / name, dest)
    got = weights_digest(dest / "model.safetensors")
    want = entry["digest"]
    differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    if differ:
        shutil.rmtree(dest, ignore_errors=True)
        raise MechscopeError(
            f"{name}: the weights converted here differ from the packing machine's in {len(differ)} tensors "
            f"({', '.join(differ[:3])}); check the transformers and gguf versions"
        )
    return name


def _convert(src: Path, dest: Path) -> None:
    """GGUF → float32 safetensors as models.loading converts it, with the carried tokenizer files."""
    import torch
    from transformers import AutoModelForCausalLM

    from mechscope.models.loading import CACHE_MARKER, CACHE_FORMAT
    from mechscope.paths import atomic_dir, file_sha256

    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file="model.gguf", dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses GGUF-quantized models; these weights are dequantized
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp)
        for f in TOKENIZER_FILES:
            if (src / f).exists():
                shutil.copy2(src / f, tmp / f)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        checks = {p.name: {"sha256": file_sha256(p), "mtime_ns": p.stat().st_mtime_ns} for p in tmp.iterdir()}
        marker = {"format": CACHE_FORMAT, "source": str(src / "model.gguf"), "files": files, "checks": checks}
        (tmp / CACHE_MARKER).write_text(json.dumps(marker))
