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
from typing import Any, Callable, ClassVar

import torch

from mechscope.errors import MechscopeError


ROLES = ("precondition", "evidence")


# What a result says (`Result.status`): the evidence held; it failed where the features carry the computation
# (or where nothing located it); it failed but the effect lives outside the features (skip term, error,
# embedding: the dictionary cannot see it); a precondition failed (the model does not do the task there);
# nothing to judge; could not run.
STATUSES = ("passed", "failed", "not visible", "not applicable", "not judged", "not run")


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
    status: str = ""  # one of STATUSES; "" = from passed / not_run
    rule: str = ""  # the pass rule, in words
    control: str = ""  # what the control measured, in words ("" = the kind has none)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = (
                "not run" if self.not_run else {True: "passed", False: "failed", None: "not judged"}[self.passed]
            )
        assert self.status in STATUSES, self.status


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
    requires: list[Requirement] = field(default_factory=list)  # the variant's preconditions (see Requirement)

    # an evidence claim about what the model does needs a precondition (the model does it on this variant);
    # kinds whose claim is about representations on any text (overlap, operand_grid) set this False
    NEEDS_PRECONDITION: ClassVar[bool] = True

    def single_tokens(self) -> list[str]:
        """Strings this run needs to be exactly one token (expected answers, watched tokens)."""
        return [r.token for r in self.requires]

    def precondition(self) -> str | None:
        """The variant's precondition in words (checked before it runs), or None when it states none."""
        default = getattr(self, "prompt", None)
        return "; ".join(r.describe(default) for r in self.requires) or None

    def rule(self) -> str:
        """The pass rule, in words, as the report prints it."""
        return ""

    def control_problem(self) -> str | None:
        """Why this run's controls cannot run (refused when the file loads), or None."""
        return None

    def swap_pairs(self) -> list[tuple[str, str]]:
        """(recipient, donor) prompts whose swapped span must be aligned on shared context."""
        return []


@dataclass(frozen=True)
class Requirement:
    """A precondition of one variant: the model ranks `token` within its top `top_k` next tokens after `prompt`
    (default: the experiment's own prompt). A variant whose requirement fails is "not applicable".

    >>> Requirement.parse({"token": " Austin", "top_k": 5}).describe("Fact: the capital of ... Dallas is")
    "the model ranks ' Austin' in its top 5 after 'Fact: the capital of ... Dallas is'"
    """

    token: str
    top_k: int = 1
    prompt: str | None = None

    @classmethod
    def parse(cls, d: Any) -> Requirement:
        if not isinstance(d, dict) or "token" not in d or set(d) - {"token", "top_k", "prompt"}:
            raise ValueError(f"requires: each entry needs token (and optional top_k, prompt), not {d!r}")
        r = cls(str(d["token"]), d.get("top_k", 1), d.get("prompt"))
        if isinstance(r.top_k, bool) or not isinstance(r.top_k, int) or r.top_k < 1:
            raise ValueError(f"requires: top_k must be a positive integer, not {r.top_k!r}")
        return r

    def describe(self, default_prompt: str | None) -> str:
        where = self.prompt or default_prompt
        rank = "its top token" if self.top_k == 1 else f"its top {self.top_k}"
        return f"the model ranks {self.token!r} {'as' if self.top_k == 1 else 'in'} {rank} after {where!r}"


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
        if "requires" in e:
            if not isinstance(e["requires"], list):
                raise ValueError(f"requires must be a list of {{token, top_k, prompt}}, not {e['requires']!r}")
            e = {**e, "requires": [Requirement.parse(r) for r in e["requires"]]}
        return cls(**{k: v for k, v in e.items() if v is not None or fields[k].default is None})
    except (TypeError, ValueError, MechscopeError) as err:  # the options' own checks name the experiment too
        raise MechscopeError(f"{where} ({kind}): {err}") from None


def _check_testable(o: ExperimentOptions, role: str, where: str) -> None:
    """Refuse, before any work, evidence that states no precondition or whose controls cannot run."""
    if role == "evidence" and o.NEEDS_PRECONDITION and o.precondition() is None:
        raise MechscopeError(
            f"{where} ({o.kind}): evidence with no precondition for the claim it tests; add "
            "requires: [{token: ANSWER, top_k: K}] (the model gives the answer the experiment explains)"
        )
    problem = o.control_problem()
    if problem:
        raise MechscopeError(f"{where} ({o.kind}): its control cannot run: {problem}")


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
        _check_testable(runs[-1], role, f"{where} variant {j + 1}" if variants else where)
    title = e.get("title") or kind
    return Experiment(kind, str(title), role, float(ms), runs, where)
