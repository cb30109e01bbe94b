"""The registry of experiment kinds and what every kind receives (Context) and returns (Result).

>>> from mechscope.studies.registry import KINDS, parse_experiment
>>> sorted(KINDS)[:3]                           # after `import mechscope.studies.kinds`      # doctest: +SKIP
['compare', 'locate', 'operand_grid']
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mechscope.errors import MechscopeError


@dataclass
class Result:
    kind: str
    title: str
    passed: bool | None
    summary: str
    numbers: dict = field(default_factory=dict)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, svg text or png data-uri)


class Context:
    def __init__(self, model, ts, index=None, max_feature_nodes: int = 512) -> None:
        self.model, self.ts, self.index = model, ts, index
        self.labels = index.labels() if index else {}
        self.max_feature_nodes = max_feature_nodes

    def probs(self, prompt: str) -> torch.Tensor:
        ids = self.model.tokenize(prompt).ids
        with torch.no_grad():
            return torch.softmax(self.model.forward(ids[None])[0, -1].float(), -1)

    def top(self, p: torch.Tensor, k: int = 3) -> list[tuple[str, float]]:
        v, i = p.topk(k)
        return [(self.model.tokenizer.decode([int(t)]), round(float(x), 4)) for x, t in zip(v, i)]


@dataclass(kw_only=True)
class ExperimentOptions:
    """Keys every experiment takes; each kind's options dataclass adds its own."""

    kind: str
    title: str | None = None


@dataclass
class Kind:
    options: type
    run: Callable[[Context, Any], Result]


KINDS: dict[str, Kind] = {}


def experiment(kind: str) -> Callable:
    """Register `fn(ctx, options) -> Result` as experiment kind `kind`; its options type is fn's annotation."""

    def deco(fn: Callable) -> Callable:
        KINDS[kind] = Kind(typing.get_type_hints(fn)["o"], fn)
        return fn

    return deco


def parse_experiment(e: Any, where: str) -> ExperimentOptions:
    """The typed options of one experiment from its YAML mapping; MechscopeError names what is wrong.

    `where` names the experiment in messages, e.g. "study s.yaml: experiment 2".
    """
    if not isinstance(e, dict):
        raise MechscopeError(f"{where} must be a mapping with a 'kind'")
    kind = e.get("kind")
    if kind not in KINDS:
        raise MechscopeError(f"{where}: unknown experiment kind {kind!r}; kinds: {', '.join(KINDS)}")
    cls = KINDS[kind].options
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in e
    ]
    if missing:
        raise MechscopeError(f"{where} ({kind}) lacks {', '.join(missing)}")
    unknown = [k for k in e if k not in fields]
    if unknown:
        raise MechscopeError(
            f"{where} ({kind}): unknown key {', '.join(map(repr, unknown))}; {kind} takes {', '.join(fields)}"
        )
    try:
        return cls(**{k: v for k, v in e.items() if v is not None or fields[k].default is None})
    except TypeError as err:
        raise MechscopeError(f"{where} ({kind}): {err}") from None
