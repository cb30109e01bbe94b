"""The registry of experiment kinds and what every kind receives (Context) and returns (Result).

>>> from mechscope.studies.registry import KINDS, parse_experiment
>>> sorted(KINDS)[:3]                           # after `import mechscope.studies.kinds`      # doctest: +SKIP
['compare', 'locate', 'operand_grid']
>>> exp = parse_experiment({"kind": "compare", "token": " of", "variants": [{"prompts": ["a", "a b"]}]}, "e1")  # doctest: +SKIP
>>> exp.role, len(exp.runs)                                                                   # doctest: +SKIP
('precondition', 1)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mechscope.errors import MechscopeError


ROLES = ("precondition", "evidence")


@dataclass
class Result:
    kind: str
    title: str
    passed: bool | None  # None: not testable here (not applicable, or could not run)
    summary: str
    numbers: dict = field(default_factory=dict)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, svg text or png data-uri)
    role: str = "evidence"
    not_run: bool = False  # the experiment (or every variant of it) could not run at all


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
    """Keys every experiment takes; each kind's options dataclass adds its own.

    role: precondition (the model does the behaviour: a fact about the model) or evidence (an intervention or
    graph measurement that tests the mechanism); default per kind. variants: mappings of keys that replace the
    experiment's own, one run each (other entities, lengths, languages); the experiment passes when at least
    `min_success` of the variants that could be judged pass. skip: model names this run (or variant) is not
    made on, as in the lens suite (an answer that is not one token of that model); the report says so.
    """

    kind: str
    title: str | None = None
    role: str | None = None
    variants: list[dict] = field(default_factory=list)
    min_success: float = 0.5
    skip: list[str] = field(default_factory=list)  # models this run is not made on (e.g. its answer splits there)

    def single_tokens(self) -> list[str]:
        """Strings this run needs to be exactly one token (expected answers, watched tokens)."""
        return []

    def swap_pairs(self) -> list[tuple[str, str]]:
        """(recipient, donor) prompts whose swapped span must be aligned on shared context."""
        return []


@dataclass
class Kind:
    options: type
    run: Callable[[Context, Any], Result]
    role: str


KINDS: dict[str, Kind] = {}


def experiment(kind: str, role: str = "evidence") -> Callable:
    """Register `fn(ctx, options) -> Result` as experiment kind `kind` (default role `role`); its options type is
    fn's annotation."""

    def deco(fn: Callable) -> Callable:
        KINDS[kind] = Kind(typing.get_type_hints(fn)["o"], fn, role)
        return fn

    return deco


@dataclass
class Experiment:
    """One experiment of a study: its role, the success share it needs, and one options object per variant."""

    kind: str
    title: str
    role: str
    min_success: float
    runs: list[ExperimentOptions]
    where: str


def _options(kind: str, e: dict, where: str) -> ExperimentOptions:
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
    except (TypeError, ValueError) as err:
        raise MechscopeError(f"{where} ({kind}): {err}") from None


def parse_experiment(e: Any, where: str) -> Experiment:
    """The typed experiment (one options object per variant) from its YAML mapping; MechscopeError names what
    is wrong, and where (`where`, e.g. "study s.yaml: experiment 2", plus the variant's number).
    """
    if not isinstance(e, dict):
        raise MechscopeError(f"{where} must be a mapping with a 'kind'")
    kind = e.get("kind")
    if kind not in KINDS:
        raise MechscopeError(f"{where}: unknown experiment kind {kind!r}; kinds: {', '.join(KINDS)}")
    role = e.get("role") or KINDS[kind].role
    if role not in ROLES:
        raise MechscopeError(f"{where} ({kind}): role must be one of {', '.join(ROLES)}, not {role!r}")
    ms = e.get("min_success", 0.5)
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 < ms <= 1:
        raise MechscopeError(f"{where} ({kind}): min_success must be a share in (0, 1], not {ms!r}")
    variants = e.get("variants") or []
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise MechscopeError(f"{where} ({kind}): variants must be a list of mappings of keys to replace")
    # a variant's result is titled by its own prompts (the kind's default title), the experiment by `title`
    drop = ("variants", "role", "min_success") + (("title",) if variants else ())
    base = {k: v for k, v in e.items() if k not in drop}
    runs = []
    for j, v in enumerate(variants or [{}]):
        bad = [k for k in v if k in ("kind", "variants", "role", "min_success", "title")]
        if bad:
            raise MechscopeError(
                f"{where} variant {j + 1} ({kind}): {bad[0]!r} belongs to the experiment, not a variant"
            )
        runs.append(_options(kind, {**base, **v}, f"{where} variant {j + 1}" if variants else where))
    title = e.get("title") or kind
    return Experiment(kind, str(title), role, float(ms), runs, where)
