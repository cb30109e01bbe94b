"""The lens suite: prompts with one-token answers, grouped in categories, and concept-swap pairs among them.

The suite is data (`suite.yaml` beside this module). Its format:

    version: 1
    models: [gemma3-270m, smollm2-135m]       # answers are checked strictly for these models
    prompts:
      - id: dallas                             # unique, [a-z0-9_]+
        category: city_state                   # one of CATEGORIES
        prompt: "Dallas is in the state of"
        answer: " Texas"                       # null only in category made_up (no true answer exists)
        answers: {smollm2-135m: " Texas"}      # optional per-model answer (another tokenisation, a synonym)
        skip: [smollm2-135m]                   # optional: models for which the answer is not one token
    swaps:
      - [dallas, oakland]                      # recipient, donor (both need answers)

Two checks: `load_suite` refuses a malformed file (unknown category or key, duplicate id, a swap naming an
unknown prompt or a prompt without answer) and `Suite.for_model` checks every answer against the model's
tokenizer. For a model listed under `models`, an answer that is not exactly one token is an error unless
the prompt lists that model under `skip`; for any other model (a local directory, a hub id) such prompts are
skipped and reported, since the suite cannot know every tokenizer in advance. Swap pairs lose their
skipped prompts with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mechscope.errors import MechscopeError

SUITE_PATH = Path(__file__).resolve().parent / "suite.yaml"
CATEGORIES = (
    "city_state",
    "city_country",
    "country_capital",
    "person_sport",
    "person_occupation",
    "landmark_city",
    "antonym_en",
    "antonym_fr",
    "antonym_es",
    "antonym_de",
    "antonym_zh",
    "arithmetic",
    "made_up",
)
QUICK_PER_CATEGORY = 3  # --quick: the first 3 prompts of every category, and the pairs among them
_ID = re.compile(r"^[a-z0-9_]+$")
_PROMPT_KEYS = {"id", "category", "prompt", "answer", "answers", "skip"}


@dataclass(frozen=True)
class LensPrompt:
    id: str
    category: str
    prompt: str
    answer: str | None  # the answer for the model the suite was resolved for
    answers: dict[str, str] = field(default_factory=dict)
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class SwapPair:
    recipient: str  # prompt ids
    donor: str


@dataclass
class Suite:
    """A parsed suite. `skipped` lists (prompt id, reason) for prompts left out for one model."""

    prompts: list[LensPrompt]
    swaps: list[SwapPair]
    models: tuple[str, ...] = ()
    version: int = 1
    path: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def by_id(self) -> dict[str, LensPrompt]:
        return {p.id: p for p in self.prompts}

    def record(self) -> dict:
        """What a result JSON says of the suite it ran: its file, version, sizes and the prompts left out."""
        return {
            "path": self.path,
            "version": self.version,
            "n_prompts": len(self.prompts),
            "n_pairs": len(self.swaps),
            "skipped": [list(s) for s in self.skipped],
        }

    def quick(self) -> Suite:
        """The first QUICK_PER_CATEGORY prompts of each category and the swap pairs among them."""
        seen: dict[str, int] = {}
        keep = []
        for p in self.prompts:
            seen[p.category] = seen.get(p.category, 0) + 1
            if seen[p.category] <= QUICK_PER_CATEGORY:
                keep.append(p)
        return self._keeping(keep)

    def _keeping(self, keep: list) -> Suite:
        """This suite with only the prompts `keep` and the swap pairs among them."""
        ids = {p.id for p in keep}
        return Suite(
            keep,
            [s for s in self.swaps if s.recipient in ids and s.donor in ids],
            self.models,
            self.version,
            self.path,
            list(self.skipped),
        )

    def only(self, categories: tuple[str, ...]) -> Suite:
        """The prompts of the given categories and the pairs among them."""
        bad = [c for c in categories if c not in CATEGORIES]
        if bad:
            raise MechscopeError(f"unknown lens category {bad[0]!r}; known: {', '.join(CATEGORIES)}")
        keep = [p for p in self.prompts if p.category in categories]
        return self._keeping(keep)

    def for_model(self, model_name: str, tokenizer) -> Suite:
        """This suite with each prompt's answer resolved for one model and checked to be one token.

        >>> suite = load_suite().for_model(m.name, m.tokenizer)
        >>> all(p.answer is None or len(m.tokenizer.encode(p.answer, add_special_tokens=False)) == 1 for p in suite.prompts)
        True
        """
        strict = model_name in self.models
        keep: list[LensPrompt] = []
        skipped = list(self.skipped)
        for p in self.prompts:
            if model_name in p.skip:
                skipped.append((p.id, "skipped for this model by the suite"))
                continue
            ans = p.answers.get(model_name, p.answer)
            if ans is not None:
                ids = tokenizer(ans, add_special_tokens=False)["input_ids"]
                if len(ids) != 1:
                    pieces = [tokenizer.decode([i]) for i in ids]
                    if strict:
                        raise MechscopeError(
                            f"lens suite: prompt {p.id!r}: answer {ans!r} is not one token for "
                            f"{model_name} (it splits into {pieces}); give answers: or skip:"
                        )
                    skipped.append((p.id, f"answer {ans!r} splits into {len(ids)} tokens"))
                    continue
            keep.append(LensPrompt(p.id, p.category, p.prompt, ans, p.answers, p.skip))
        ids = {p.id for p in keep}
        swaps = [s for s in self.swaps if s.recipient in ids and s.donor in ids]
        return Suite(keep, swaps, self.models, self.version, self.path, skipped)


def _fail(where: str, msg: str) -> MechscopeError:
    return MechscopeError(f"lens suite {where}: {msg}")


def parse_suite(data: object, path: str = "") -> Suite:
    """Validate a suite's parsed YAML and build the Suite (every problem is a one-line MechscopeError)."""
    name = Path(path).name or "suite"
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise _fail(name, "expected a mapping with a 'prompts' list")
    models = data.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise _fail(name, "'models' must be a list of model names")
    prompts: list[LensPrompt] = []
    seen: set[str] = set()
    for i, item in enumerate(data["prompts"]):
        where = f"{name}, prompt #{i + 1}"
        if not isinstance(item, dict):
            raise _fail(where, "expected a mapping")
        pid = item.get("id")
        if not isinstance(pid, str) or not _ID.match(pid):
            raise _fail(where, f"id {pid!r} must match [a-z0-9_]+")
        where = f"{name}, prompt {pid!r}"
        extra = set(item) - _PROMPT_KEYS
        if extra:
            raise _fail(where, f"unknown key {min(extra)!r}")
        if pid in seen:
            raise _fail(where, "duplicate id")
        seen.add(pid)
        cat = item.get("category")
        if cat not in CATEGORIES:
            raise _fail(where, f"unknown category {cat!r}; known: {', '.join(CATEGORIES)}")
        text = item.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise _fail(where, "'prompt' must be non-empty text")
        ans = item.get("answer")
        if ans is None and cat != "made_up":
            raise _fail(where, "'answer' is required outside category made_up")
        if ans is not None and (not isinstance(ans, str) or not ans):
            raise _fail(where, "'answer' must be non-empty text")
        answers = item.get("answers") or {}
        if not isinstance(answers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in answers.items()
        ):
            raise _fail(where, "'answers' must map model names to non-empty text")
        skip = item.get("skip") or []
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise _fail(where, "'skip' must be a list of model names")
        prompts.append(LensPrompt(pid, cat, text, ans, dict(answers), tuple(skip)))
    by_id = {p.id: p for p in prompts}
    swaps: list[SwapPair] = []
    for i, item in enumerate(data.get("swaps") or []):
        where = f"{name}, swap #{i + 1}"
        if isinstance(item, dict):
            item = [item.get("recipient"), item.get("donor")]
        if not isinstance(item, list) or len(item) != 2:
            raise _fail(where, "expected [recipient_id, donor_id]")
        for pid in item:
            if pid not in by_id:
                raise _fail(where, f"unknown prompt {pid!r}")
            if by_id[pid].answer is None:
                raise _fail(where, f"prompt {pid!r} has no answer to swap")
        if item[0] == item[1]:
            raise _fail(where, "recipient and donor are the same prompt")
        swaps.append(SwapPair(item[0], item[1]))
    return Suite(prompts, swaps, tuple(models), int(data.get("version", 1)), str(path))


def load_suite(path: str | Path | None = None) -> Suite:
    """Read and validate a suite file (default: the shipped `suite.yaml`).

    >>> s = load_suite()
    >>> len(s.prompts) >= 80 and len(s.swaps) >= 40
    True
    """
    p = Path(path) if path is not None else SUITE_PATH
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise MechscopeError(f"lens suite {p}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise MechscopeError(f"lens suite {p.name}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_suite(data, str(p))
