"""From experiment results to a claim's verdict: success rates over prompt variants (with a Wilson interval),
then a verdict decided by the evidence, never by the preconditions alone — and, when the answer is no, which
kind of no.

Each variant ends as: passed; failed (the features carry the computation, or nothing located the effect
outside them, and the predicted intervention fails); not visible (it failed, and `locate` on the same prompts
finds the effect in the skip term, the error or the embedding, not the features); not applicable (its
precondition failed: the model does not do the task there); not judged; not run.

An experiment passes when at least `min_success` of its judged variants (passed, failed, not visible) pass.
A failed experiment is "not visible" when at least as many of its failing variants are not visible as failed.

Rules (`verdict`), three kinds of "no":
  * a precondition experiment failed, or every evidence experiment is not applicable → "inconclusive"
    (the model does not do the task);
  * every judged evidence experiment passed → "supported";
  * none passed: any failed → "not supported" (the mechanism is absent where the features carry the
    computation); all not visible → "not visible with this dictionary" (the instrument cannot see it);
  * a mix → "partly supported" only where the study states that mix (`partly_supported_when`), else
    "inconclusive".

>>> wilson(6, 8)
(0.409, 0.929)
>>> verdict([Outcome(1, "precondition", True), Outcome(2, "evidence", False)]).verdict
'not supported'
>>> verdict([Outcome(1, "evidence", False, status="not visible")]).no
'instrument'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from mechscope.studies.registry import Experiment, Result

NOT_VISIBLE = "not visible with this dictionary"
NO = {  # which kind of "no" a verdict is, in words
    "model": "the model does not do the task (a precondition failed): nothing is concluded about the mechanism",
    "instrument": "the instrument cannot see the mechanism: the effect lives outside the transcoder features",
    "mechanism": "the mechanism is absent: the features carry the computation and the predicted intervention fails",
}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a success share k/n (rounded to 3 digits); (0, 1) when n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (round(max(0.0, mid - half), 3), round(min(1.0, mid + half), 3))


def _counts(results: list[Result]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in ("passed", "failed", "not visible", "not applicable")}


def _status(passed: bool | None, c: dict[str, int], n_results: int, n_not_run: int) -> str:
    if passed:
        return "passed"
    if passed is False:
        return "not visible" if c["not visible"] >= c["failed"] else "failed"
    if n_not_run == n_results:
        return "not run"
    return "not applicable" if c["not applicable"] else "not judged"


def _summary(exp: Experiment, c: dict[str, int], n_results: int) -> str:
    k, n = c["passed"], c["passed"] + c["failed"] + c["not visible"]
    lo, hi = wilson(k, n)
    if not n:
        return "no variant could be judged (not applicable, no expectation set, or could not run)."
    s = f"{k}/{n} judged variants passed ({k / n:.0%}, 95% CI {lo:.0%}–{hi:.0%}; needs ≥ {exp.min_success:.0%})"
    if c["not visible"]:
        s += f"; {c['not visible']} of the {n - k} that did not pass are not visible with this dictionary"
    if n_results > n:
        na = f", {c['not applicable']} of them not applicable" if c["not applicable"] else ""
        s += f"; {n_results - n} of {n_results} not judged{na}"
    return s + "."


def combine(exp: Experiment, results: list[Result]) -> Result:
    """One result for an experiment from its variants' results: passed when ≥ min_success of the judged ones
    passed (None when none could be judged); numbers hold the rate, its interval, the counts per status and
    every variant."""
    c = _counts(results)
    k, n = c["passed"], c["passed"] + c["failed"] + c["not visible"]
    n_not_run = sum(r.not_run for r in results)
    passed = None if n == 0 else k / n >= exp.min_success
    status = _status(passed, c, len(results), n_not_run)
    summary = results[0].summary if len(results) == 1 else _summary(exp, c, len(results))
    numbers = {
        "n_variants": len(results),
        "n_judged": n,
        "n_passed": k,
        "n_failed": c["failed"],
        "n_not_visible": c["not visible"],
        "n_not_applicable": c["not applicable"],
        "success_rate": round(k / n, 4) if n else None,
        "ci95": list(wilson(k, n)),
        "min_success": exp.min_success,
        "variants": [
            {
                "title": r.title,
                "passed": r.passed,
                "status": r.status,
                "summary": r.summary,
                "rule": r.rule,
                "control": r.control,
                "numbers": r.numbers,
            }
            for r in results
        ],
    }
    if len(results) == 1:
        numbers.update(results[0].numbers)
    rules = list(dict.fromkeys(r.rule for r in results if r.rule))
    rule = (
        rules[0] if len(rules) <= 1 else f"(variant 1; the others alike, with their own prompts and answers) {rules[0]}"
    )
    figs = [f for r in results for f in r.figures]
    return Result(
        exp.kind,
        exp.title,
        passed,
        summary,
        numbers,
        figs,
        role=exp.role,
        not_run=n_not_run == len(results),
        status=status,
        rule=rule,
        control=results[0].control if len(results) == 1 else "",
    )


@dataclass
class Outcome:
    number: int  # 1-based, as the report numbers experiments
    role: str
    passed: bool | None
    not_run: bool = False
    status: str = ""  # as Result.status; "" = from passed / not_run

    def __post_init__(self) -> None:
        if not self.status:
            self.status = (
                "not run" if self.not_run else {True: "passed", False: "failed", None: "not judged"}[self.passed]
            )


class Verdict(NamedTuple):
    verdict: str
    decided_by: list[int]
    why: str
    no: str | None = None  # "model", "instrument", "mechanism" (see NO) when the answer is a kind of no


def verdict(outcomes: list[Outcome], partly: list[int] | None = None) -> Verdict:
    """The verdict, the experiment numbers that decided it, why, and which kind of no — see the module
    docstring for the rules."""
    pre_failed = [o.number for o in outcomes if o.role == "precondition" and o.passed is False]
    if pre_failed:
        return Verdict(
            "inconclusive", pre_failed, "a precondition failed: the model does not do the task it tests", "model"
        )
    evidence = [o for o in outcomes if o.role == "evidence"]
    ev = [o for o in evidence if o.passed is not None]
    if not ev:
        na = [o.number for o in evidence if o.status == "not applicable"]
        if na:
            why = "every evidence variant failed its precondition: the model does not do the task there"
            return Verdict("inconclusive", na, why, "model")
        return Verdict("inconclusive", [o.number for o in evidence], "no evidence experiment could be judged")
    ok = [o.number for o in ev if o.passed]
    failed = [o.number for o in ev if not o.passed and o.status != "not visible"]
    unseen = [o.number for o in ev if not o.passed and o.status == "not visible"]
    if not failed and not unseen:
        return Verdict("supported", ok, "every judged evidence experiment passed")
    if not ok and failed:
        why = "judged evidence failed, and locate does not put its effect outside the transcoder features"
        if unseen:
            why += f" (experiments {unseen} failed outside the features: not visible with this dictionary)"
        return Verdict("not supported", failed, why, "mechanism")
    if not ok:
        why = "every judged evidence experiment failed, and locate puts the effect outside the features"
        return Verdict(NOT_VISIBLE, unseen, why, "instrument")
    bad = sorted(failed + unseen)
    if partly and set(partly) <= set(ok):
        return Verdict("partly supported", ok + bad, f"the stated mix held: experiments {partly} passed, {bad} failed")
    why = f"mixed evidence that the study does not call partial support: {ok} passed, {bad} failed"
    return Verdict("inconclusive", ok + bad, why + (f" ({unseen} not visible with this dictionary)" if unseen else ""))


RULE = (
    "a failed precondition, or evidence whose every variant fails its precondition → inconclusive (the model does "
    "not do the task); every judged evidence experiment passed → supported; none passed → not supported where the "
    "features carry the computation, not visible with this dictionary where locate puts the effect outside them "
    "(skip term, error, embedding); a mix → partly supported only where the study states it, else inconclusive. "
    "An experiment passes when at least min_success of its judged variants pass; variants that fail their "
    "precondition are not applicable and never count."
)
