"""Models: the registry of named models, loading with an offline cache, and the adapter."""

from mechscope.models.adapter import FAMILIES, Family, ModelAdapter, load_model
from mechscope.models.registry import DEFAULT_MODEL, MODELS, resolve_model_name

__all__ = ["FAMILIES", "Family", "ModelAdapter", "load_model", "DEFAULT_MODEL", "MODELS", "resolve_model_name"]
