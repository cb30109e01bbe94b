"""How the suite itself is written: one policy for what a test needs beyond the core install (tests/extras.py)."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
# a skip for something missing: importorskip, or a skip / skipif whose reason says what to install or what it needs
MISSING_SKIP = re.compile(r"importorskip\(|\bskip(?:if)?\((?:[^()]|\([^()]*\))*\b(?:install|needs|not installed)\b")


def test_no_test_skips_for_a_missing_package():
    """A missing extra, system package or data file fails naming what to install (extras.require,
    extras.require_path); it never skips, so CI cannot pass without having run a test."""
    found = [
        f"{p.name}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)[:60]}"
        for p in sorted(HERE.glob("*.py"))
        if p.name != Path(__file__).name
        for text in [p.read_text()]
        for m in MISSING_SKIP.finditer(text)
    ]
    assert not found, "use extras.require / extras.require_path instead:\n" + "\n".join(found)


def test_a_missing_package_names_its_extra():
    """What a test that lacks an optional package reports (extras.require, and conftest's hook for inline imports)."""
    from extras import missing_extra

    assert missing_extra("fastapi.testclient") == "fastapi.testclient is not installed: pip install -e '.[test]'"
    assert missing_extra("playwright.sync_api").endswith("'.[test]'")
    assert missing_extra("pyarrow").endswith("'.[corpora]'")
    assert missing_extra("numpy") is None  # a core dependency: its ImportError stays as it is
