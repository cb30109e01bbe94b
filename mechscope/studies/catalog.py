"""The shipped study files, listed without loading the runner (which imports torch): the CLI names them in its
help before any heavy import."""

from __future__ import annotations

from pathlib import Path

DEFS = Path(__file__).with_name("defs")


def list_studies() -> list[str]:
    """Names of the shipped studies, sorted.

    >>> "entity-attribute" in list_studies()
    True
    """
    return sorted(p.stem for p in DEFS.glob("*.yaml"))
