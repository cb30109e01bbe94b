"""From experiment results to a claim's verdict: success rates over prompt variants (with a Wilson interval),
then a verdict decided by the evidence, never by the preconditions alone.

Rules (`verdict`):
  * a precondition failed (the model does not do the task on most variants) → "inconclusive";
  * no evidence experiment could be judged → "inconclusive";
  * every judged evidence experiment passed → "supported"; none → "not supported";
  * a mix → "partly supported" only where the study states that mix (`partly_supported_when`: experiment
    numbers whose passing, with the rest failing, the authors call partial support); any other mix →
    "inconclusive".
An experiment passes when at least `min_success` of its judged variants pass.

>>> wilson(6, 8)
(0.409, 0.929)
>>> verdict([Outcome(1, "precondition", True), Outcome(2, "evidence", False)])[0]
'not supported'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mechscope.studies.registry import Experiment, Result


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a success share k/n (rounded to 3 digits); (0, 1) when n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (round(max(0.0, mid - half), 3), round(min(1.0, mid + half), 3))


def combine(exp: Experiment, results: list[Result]) -> Result:
    """One result for an experiment from its variants' results: passed when ≥ min_success of the judged ones
    passed (None when none could be judged); numbers hold the rate, its interval and every variant."""
    judged = [r for r in results if r.passed is not None]
    k, n = sum(bool(r.passed) for r in judged), len(judged)
    not_run = [r for r in results if r.not_run]
    passed = None if n == 0 else k / n >= exp.min_success
    lo, hi = wilson(k, n)
    if len(results) == 1:
        r = results[0]
        summary = r.summary
    else:
        summary = (
            (
                f"{k}/{n} judged variants passed ({k / n:.0%}, 95% CI {lo:.0%}–{hi:.0%}; needs ≥ {exp.min_success:.0%})"
                if n
                else "no variant could be judged (not applicable, no expectation set, or could not run)"
            )
            + (f"; {len(results) - n} of {len(results)} not judged" if len(results) > n else "")
            + "."
        )
    numbers = {
        "n_variants": len(results),
        "n_judged": n,
        "n_passed": k,
        "success_rate": round(k / n, 4) if n else None,
        "ci95": [lo, hi],
        "min_success": exp.min_success,
        "variants": [
            {"title": r.title, "passed": r.passed, "summary": r.summary, "numbers": r.numbers} for r in results
        ],
    }
    if len(results) == 1:
        numbers.update(results[0].numbers)
    figs = [f for r in results for f in r.figures]
    return Result(
        exp.kind,
        exp.title,
        passed,
        summary,
        numbers,
        figs,
        role=exp.role,
        not_run=len(not_run) == len(results),
    )


@dataclass
class Outcome:
    number: int  # 1-based, as the report numbers experiments
    role: str
    passed: bool | None
    not_run: bool = False


def verdict(outcomes: list[Outcome], partly: list[int] | None = None) -> tuple[str, list[int], str]:
    """(verdict, the experiment numbers that decided it, why) — see the module docstring for the rules."""
    pre_failed = [o.number for o in outcomes if o.role == "precondition" and o.passed is False]
    if pre_failed:
        return "inconclusive", pre_failed, "a precondition failed: the model does not do the task it tests"
    ev = [o for o in outcomes if o.role == "evidence" and o.passed is not None]
    if not ev:
        why = "no evidence experiment could be judged"
        return "inconclusive", [o.number for o in outcomes if o.role == "evidence"], why
    ok = [o.number for o in ev if o.passed]
    bad = [o.number for o in ev if not o.passed]
    if not bad:
        return "supported", ok, "every judged evidence experiment passed"
    if not ok:
        return "not supported", bad, "every judged evidence experiment failed"
    if partly and set(partly) <= set(ok):
        return "partly supported", ok + bad, f"the stated mix held: experiments {partly} passed, {bad} failed"
    return (
        "inconclusive",
        ok + bad,
        f"mixed evidence that the study does not call partial support: {ok} passed, {bad} failed",
    )


RULE = (
    "a failed precondition → inconclusive; every judged evidence experiment passed → supported; none → not "
    "supported; a mix → partly supported only where the study states it, else inconclusive. An experiment passes "
    "when at least min_success of its judged variants pass."
)
