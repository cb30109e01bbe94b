"""The suite's one policy for what a test needs beyond the core install: a missing optional package, system
package or file fails the test and names what to install; it never skips (a skip would hide a packaging error,
e.g. an extra that lost a dependency, and CI would pass without having run the test).

    require("fastapi")                                     # a package of the `test` extra (pip install -e '.[test]')
    require_path(WORDNET_DIR / "data.noun", "apt-get install wordnet-base")

tests/test_suite_policy.py keeps `pytest.importorskip` out of the suite.
Debian's Chromium for the page tests: tests/pagestub.py `chromium_browser` (apt-get install chromium)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest


def require(module: str, extra: str = "test") -> ModuleType:
    """`import module`, or fail with the install command of the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is not installed: pip install -e '.[{extra}]'", pytrace=False)


def require_path(path: Path, install: str) -> Path:
    """`path`, or fail naming how to install what provides it (a system package, a data file)."""
    if not Path(path).exists():
        pytest.fail(f"{path} is missing: {install}", pytrace=False)
    return Path(path)
