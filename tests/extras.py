"""Test-only imports of optional packages: a missing one fails the test and names what to install (a skip would
hide a packaging error, e.g. an extra that lost a dependency)."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


def require(module: str, extra: str = "test") -> ModuleType:
    """`import module`, or fail with the install command of the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is not installed: pip install -e '.[{extra}]'", pytrace=False)
