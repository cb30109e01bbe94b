"""What every command shares: the command table, the common options (--model, --json, --transcoders)."""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Any, Callable

from mechscope.configs import param, require
from mechscope.models.registry import DEFAULT_MODEL, MODEL_HELP


@dataclass
class Command:
    fn: Callable[[Any], int]
    config: type
    help: str
    description: str


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, description: str = "") -> Callable:
    """Register `fn(config) -> exit status` as `mechscope NAME`; its options come from fn's annotated dataclass."""

    def deco(fn: Callable[[Any], int]) -> Callable[[Any], int]:
        hints = typing.get_type_hints(fn)
        cfg = next(v for k, v in hints.items() if k != "return")
        COMMANDS[name] = Command(fn, cfg, help, description)
        return fn

    return deco


@dataclass(kw_only=True)
class ThreadsOpt:
    # applied by `mechscope.cli.main`, before torch loads (mechscope.threads)
    threads: int = param(
        0, help="CPU threads for torch (0: one per core; idle threads sleep, so a busy machine costs little)"
    )

    def __post_init__(self) -> None:
        require(self.threads >= 0, f"--threads must be ≥ 0 (0: one per core), got {self.threads}")


@dataclass(kw_only=True)
class ModelOpt(ThreadsOpt):
    model: str = param(DEFAULT_MODEL, help=MODEL_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        from mechscope.models.registry import resolve_model_name

        resolve_model_name(self.model)  # an unknown name is refused with the others' options, before any import


@dataclass(kw_only=True)
class TranscodersOpt:
    transcoders: str | None = param(None, help="transcoder set directory (default: the model's)")


@dataclass(kw_only=True)
class MemoryOpt:
    # applied by `mechscope.cli.main` as $MECHSCOPE_MAX_MEMORY_GB, the default of every guard in the library
    max_memory_gb: float | None = param(
        None, help="refuse work whose estimate needs more memory than this (GB; default 8, or $MECHSCOPE_MAX_MEMORY_GB)"
    )


@dataclass(kw_only=True)
class JsonOut:
    json: bool = param(False, help="print the result as one JSON object")


def emit(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, ensure_ascii=False) if as_json else text)
