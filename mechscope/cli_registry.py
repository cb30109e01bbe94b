"""The table of CLI subcommands (kept apart from cli.py so `python -m mechscope.cli` sees one table)."""
from __future__ import annotations

import argparse
from typing import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    """Register a function as the handler of `mechscope NAME`."""
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco
