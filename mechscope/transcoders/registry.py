"""Which transcoder set a model uses: an explicit directory, else a user-trained set, else the shipped one."""

from __future__ import annotations

from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.paths import data_dir

SHIPPED = Path(__file__).resolve().parent.parent / "artifacts" / "transcoders"
#: How new sets are saved by default (training, fit-sinks, re-export): like both shipped sets.
SHIPPED_DTYPE = "int8"


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
    """The set to use: `explicit` (our directory, a circuit-tracer directory or a hub reference such as
    `org/repo//subfolder@rev`, converted once into the cache), else the user-trained or shipped set."""
    if explicit:
        p = Path(explicit)
        if not (p / "config.json").exists():
            from mechscope.models.loading import peek_dims
            from mechscope.transcoders.hub import resolve_transcoders  # lazy: hub imports storage

            # the model's shape from its config.json (no weights loaded) checks the set before its weights arrive
            n_layers, d_model, post_norm = peek_dims(model) or (None, None, None)
            return resolve_transcoders(explicit, n_layers=n_layers, d_model=d_model, post_mlp_norm=post_norm)
        return p
    p = default_transcoder_dir(model)
    if p is None:
        from mechscope.models.registry import resolve_model_name

        resolve_model_name(model)  # a misspelt name is "unknown model", not "has no transcoders"
        raise MechscopeError(
            f"model {model} has no transcoders; train them with: mechscope train-transcoders --model {model}"
        )
    return p
