"""A variant's stated preconditions (`requires`), checked before it runs: a variant whose model does not give
the answer the experiment explains is "not applicable" — never evidence for or against the claim.

>>> unmet(ctx, options)        # None, or why not: "the model ranks ' Austin' 55th (p = 0.002) ..."  # doctest: +SKIP
"""

from __future__ import annotations

from mechscope.studies.kinds.common import rank
from mechscope.studies.registry import Context, ExperimentOptions


def unmet(ctx: Context, o: ExperimentOptions) -> str | None:
    """Why the first unmet requirement of `o` fails on this model, or None when all hold."""
    default = getattr(o, "prompt", None)
    for r in o.requires:
        prompt = r.prompt or default
        if prompt is None:
            return f"requires {r.token!r} but names no prompt (the kind has none to default to)"
        p = ctx.probs(prompt)
        k = rank(p, ctx.model.token_id(r.token))
        if k > r.top_k:
            return (
                f"the model ranks {r.token!r} {k}th (p = {float(p[ctx.model.token_id(r.token)]):.3f}) after "
                f"{prompt!r}, not within its top {r.top_k}"
            )
    return None
