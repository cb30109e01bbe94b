"""Where does a failed intervention's effect live? `locate` on the variant's own prompts tells the model from
the microscope: if the transcoder features alone carry the difference, the intervention's failure is evidence
against the mechanism ("failed"); if only the skip term, the error or the embedding carry it, the dictionary
cannot see the mechanism ("not visible").

>>> status, numbers, text = where_it_lives(ctx, "Dallas is in", "Oakland is in", measure, moved)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.studies.registry import Context

PARTS = ("mlp_out", "features", "skip", "error", "embedding")


def where_it_lives(
    ctx: Context,
    prompt: str,
    donor: str,
    measure: Callable[[Tensor], float],
    moved: Callable[[float, float], bool],
    unit: str,
) -> tuple[str, dict, str]:
    """(status, numbers, sentence) for a variant whose intervention failed.

    Patches each MLP component of the donor (the differing span and every later position, all layers) into
    the recipient and reads `measure` of the next-token distribution; `moved(before, after)` says whether a
    component alone moves it as the claim predicts. Status "not visible" when some other component (the whole
    MLP output, the skip term, the error, the embedding) does and the features do not; "failed" when the
    features do, or when nothing does (or locating is impossible): nothing then shows the effect outside them.
    """
    from mechscope.interventions import locate_distributions

    try:
        res = locate_distributions(ctx.model, ctx.ts, prompt, donor, span="rest")
    except MechscopeError as err:
        return "failed", {"locate": None}, f"Not located ({err}): counted as a failure."
    vals = {c: measure(p) for c, p in res["dists"].items()}
    carriers = [c for c in PARTS if moved(vals["none"], vals[c])]
    # "not visible" needs evidence that the effect lives elsewhere: some other component carries it alone
    status = "not visible" if carriers and "features" not in carriers else "failed"
    rows = ", ".join(f"{c} {vals[c]:.3f}" for c in ("none",) + PARTS)
    if "features" in carriers:
        verdict = "the transcoder features alone carry it, so the failure counts against the mechanism"
    elif carriers:
        verdict = "the features alone do not carry it: not visible with this dictionary"
    else:
        verdict = "no single component carries it, so nothing puts it outside the features: counted as a failure"
    text = (
        f"Located ({unit} with each donor component patched in: {rows}): moved by "
        f"{', '.join(carriers) or 'none'}; {verdict}."
    )
    return status, {"locate": {c: round(v, 4) for c, v in vals.items()}, "carriers": carriers}, text
