"""The suite's one policy for what a test needs beyond the core install: a missing optional package, system
package or file fails the test and names what to install; it never skips (a skip would hide a packaging error,
e.g. an extra that lost a dependency, and CI would pass without having run the test).

    require("fastapi")                                     # a package of the `test` extra (pip install -e '.[test]')
    require_path(WORDNET_DIR / "data.noun", "apt-get install wordnet-base")

A test that imports an optional package inline (`import uvicorn` in its body) and finds it missing fails the same
way: conftest.py's report hook rewrites the ModuleNotFoundError into the extra's install command (`missing_extra`).
tests/test_suite_policy.py keeps `pytest.importorskip` out of the suite.
Debian's Chromium for the page tests: tests/pagestub.py `chromium_browser` (apt-get install chromium)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest


PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
IMPORT_NAMES = {"import-linter": "importlinter", "pyyaml": "yaml"}  # distributions imported under another name


def extras_by_module() -> dict[str, str]:
    """{top-level import name: the extra of pyproject.toml that installs it}, `test` first."""
    import tomllib

    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    out: dict[str, str] = {}
    for extra in sorted(extras, key=lambda e: e != "test"):
        for req in extras[extra]:
            dist = req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("~")[0].strip()
            out.setdefault(IMPORT_NAMES.get(dist.lower(), dist.lower().replace("-", "_")), extra)
    return out


def missing_extra(module: str) -> str | None:
    """The message for a missing optional package: what to install; None if no extra provides it."""
    extra = extras_by_module().get(module.split(".")[0])
    return None if extra is None else f"{module} is not installed: pip install -e '.[{extra}]'"


def require(module: str) -> ModuleType:
    """`import module`, or fail with the install command of the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(missing_extra(module) or f"{module} is not installed", pytrace=False)


def require_path(path: Path, install: str) -> Path:
    """`path`, or fail naming how to install what provides it (a system package, a data file)."""
    if not Path(path).exists():
        pytest.fail(f"{path} is missing: {install}", pytrace=False)
    return Path(path)
