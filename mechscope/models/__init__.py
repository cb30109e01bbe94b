"""Models: the registry of named models, loading with an offline cache, and the adapter."""

from mechscope.models.registry import DEFAULT_MODEL, MODELS, resolve_model_name


def __getattr__(name: str):
    # the adapter imports torch and transformers: loaded on first use, so the registry stays cheap to import
    if name in ("FAMILIES", "Family", "ModelAdapter", "load_model"):
        from mechscope.models import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module 'mechscope.models' has no attribute {name!r}")


__all__ = ["FAMILIES", "Family", "ModelAdapter", "load_model", "DEFAULT_MODEL", "MODELS", "resolve_model_name"]
