"""Helpers for config dataclasses: one place for a knob's default, help text and CLI spelling.

Every config dataclass (AttributionConfig, TrainConfig, EvalConfig, IndexConfig, SinkConfig, and the CLI's
command configs) declares each field with `param(...)`, so the field documents itself and `mechscope.cli`
can generate its flag from it; choices are `Literal` types; `__post_init__` validates with `require`.

>>> from dataclasses import dataclass
>>> @dataclass
... class Knobs:
...     tokens: int = param(1000, help="tokens to read")
...     def __post_init__(self) -> None:
...         require(self.tokens > 0, "--tokens must be positive")
>>> Knobs(tokens=5).tokens
5
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mechscope.errors import MechscopeError


def param(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Any = dataclasses.MISSING,
    flag: str | None = None,
    positional: bool = False,
    metavar: str | None = None,
    negate: str | None = None,
    cli: bool = True,
    const: Any = None,
) -> Any:
    """A dataclass field with its documentation and CLI spelling.

    help: what the knob does (shown by `--help`); flag: the option's name if not `--field-name`;
    positional: a positional argument; negate: for a bool that defaults to True, the flag that turns it off
    (e.g. "--no-skip"); cli=False: a library-only knob (tests, internal); const: the value of an option given
    without its argument (`--ray` alone means `--ray local`).
    """
    meta = {"help": help, "flag": flag, "positional": positional, "metavar": metavar, "negate": negate, "cli": cli}
    if const is not None:
        meta["const"] = const
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def require(ok: bool, message: str) -> None:
    """Raise MechscopeError(message) unless `ok` (config validation; the CLI prints it on one line, exit 2)."""
    if not ok:
        raise MechscopeError(message)
