"""Which transcoder set a model uses: an explicit directory, else a user-trained set, else the shipped one."""
from __future__ import annotations

from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.paths import data_dir

SHIPPED = Path(__file__).resolve().parent.parent / "artifacts" / "transcoders"


def _safe(model: str) -> str:
    return model.strip("/").replace("/", "__")


def user_transcoder_dir(model: str) -> Path:
    """Where `train-transcoders` writes by default."""
    return data_dir() / "transcoders" / _safe(model)


def default_transcoder_dir(model: str) -> Path | None:
    for cand in (user_transcoder_dir(model), SHIPPED / _safe(model)):
        if (cand / "config.json").exists():
            return cand
    return None


def find_transcoders(model: str, explicit: str | Path | None = None) -> Path:
    if explicit:
        p = Path(explicit)
        if not (p / "config.json").exists():
            raise MechscopeError(f"{p} is not a transcoder set (no config.json)")
        return p
    p = default_transcoder_dir(model)
    if p is None:
        from mechscope.models.registry import resolve_model_name
        resolve_model_name(model)           # a misspelt name is "unknown model", not "has no transcoders"
        raise MechscopeError(f"model {model} has no transcoders; train them with: mechscope train-transcoders --model {model}")
    return p
