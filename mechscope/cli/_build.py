"""Turn config dataclasses into argparse options and back (the CLI has no second copy of defaults or help).

Why not simple-parsing / tyro / jsonargparse: the README, the tests and users' scripts rely on today's flag
spellings (`--target` repeated into `targets`, `--no-skip` for `skip`, `--layer-tokens` for `ce_layer_tokens`,
a positional PROMPT, `--logit-diff A B`), and on argparse's one-line errors; mapping a dataclass field onto
argparse is ~100 lines with those spellings declared on the field itself (`mechscope.configs.param`).

Rules: `Literal[...]` → choices; `bool` → a switch (`negate=` names the off switch of a default-True knob);
`list[X]` → a repeatable option; `tuple[X, X]` → nargs=2; `X | None` → optional X; a field whose type is a
dataclass is flattened (its fields become options of the same command).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

_NONE = type(None)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not _NONE]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one argparse option per field of dataclass `cls` (recursing into dataclass-typed fields)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        md = f.metadata
        if not md.get("cli", True) or not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            add_options(parser, tp, prefix + f.name + ".")
            continue
        if "help" not in md:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text (declare it with mechscope.configs.param)")
        default = _default(f)
        dest = prefix + f.name
        help_ = md["help"]
        kw: dict[str, Any] = {"help": help_}
        kw["metavar"] = md.get("metavar") or f.name.upper()
        origin = typing.get_origin(tp)
        if tp is bool:
            if md.get("negate"):
                parser.add_argument(md["negate"], dest=dest, action="store_false", default=default, help=help_)
            else:
                parser.add_argument(_flag(f), dest=dest, action="store_true", default=bool(default), help=help_)
            continue
        if origin is Literal:
            choices = list(typing.get_args(tp))
            kw.update(
                choices=choices,
                type=type(choices[0]),
                metavar=md.get("metavar") or "{" + ",".join(map(str, choices)) + "}",
            )
        elif origin is list:
            (item,) = typing.get_args(tp)
            kw.update(action="append", type=item)
            default = None  # argparse appends to its default in place: build() restores the field's
        elif origin is tuple:
            items = typing.get_args(tp)
            # tuple[X, ...]: one or more values; tuple[X, Y]: exactly that many
            kw.update(nargs="+" if items[-1] is Ellipsis else len(items), type=items[0])
        elif tp in (int, float, str):
            kw["type"] = tp
            if md.get("const") is not None:  # `--flag` alone takes the const, `--flag VALUE` the value
                kw.update(nargs="?", const=md["const"])
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: type {tp} has no CLI mapping")
        if default not in (dataclasses.MISSING, None, "", False) and not isinstance(default, (list, tuple)):
            kw["help"] = f"{help_} (default: {default})"
        if md.get("positional"):
            parser.add_argument(dest, **kw) if not optional else parser.add_argument(
                dest, nargs="?", default=default, **kw
            )
            continue
        if default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(_flag(f), dest=dest, **kw)


def build(cls: type, ns: argparse.Namespace, prefix: str = "") -> Any:
    """The dataclass `cls` from parsed options (its __post_init__ validates; errors are MechscopeError)."""
    hints = _hints(cls)
    values = vars(ns)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or not f.metadata.get("cli", True):
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = build(tp, ns, prefix + f.name + ".")
            continue
        v = values[prefix + f.name]
        if typing.get_origin(tp) is list:
            v = list(v) if v is not None else _default(f)
        elif typing.get_origin(tp) is tuple and v is not None:
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)
