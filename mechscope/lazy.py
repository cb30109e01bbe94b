"""Package exports that load on first use (PEP 562): a package's `__init__` names what it exports and from which
submodule, and nothing heavy (torch, transformers) is imported until a name is asked for.

>>> __getattr__ = lazy_exports("mechscope.attribution", {"AttributionConfig": "config"})
>>> __getattr__("AttributionConfig").__name__
'AttributionConfig'
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The module-level `__getattr__` of `package`: name → `getattr(package.where[name], name)`, imported once."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
