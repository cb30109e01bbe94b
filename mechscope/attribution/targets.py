"""Hints for logit targets the user probably did not mean: `--target Texas` (no leading space) traces a token
the model gives p = 0.000 when " Texas" is at 0.76. The trace still runs (the user may want exactly that token);
the hint names the near variants and their probabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.models.adapter import ModelAdapter

#: a variant is worth naming when it is this many times likelier than the target and above `MIN_P`
RATIO = 5.0
MIN_P = 0.01


def variants(token: str) -> list[str]:
    """Spellings a user may have meant: with or without the leading space, and in other cases.

    >>> variants("Texas")
    [' Texas', 'texas', ' texas', 'TEXAS', ' TEXAS']
    """
    core = token.lstrip(" ")
    forms = [core, core.lower(), core.capitalize(), core.upper()]
    out: list[str] = []
    for f in forms:
        for v in (f, " " + f):
            if v != token and v not in out:
                out.append(v)
    return out


def _single_id(model: "ModelAdapter", text: str) -> int | None:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def target_hints(model: "ModelAdapter", probs: "Tensor", targets: list[str], what: str = "target") -> list[str]:
    """One line per target whose near variant is much likelier at the last position (probs: [vocab]); `what`
    names the token's role in the message ("target", "watched token").

    >>> target_hints(m, probs, ["Texas"])          # doctest: +SKIP
    ["target 'Texas' has p = 0.000 here; did you mean ' Texas' (0.763)?"]
    """
    out = []
    for t in targets:
        tid = _single_id(model, t)
        if tid is None:
            continue
        p = float(probs[tid])
        cands = [(v, float(probs[i])) for v in variants(t) if (i := _single_id(model, v)) is not None]
        cands = sorted((c for c in cands if c[1] >= max(MIN_P, RATIO * p)), key=lambda c: -c[1])[:3]
        if cands:
            alts = " or ".join(f"{v!r} ({q:.3f})" for v, q in cands)
            out.append(f"{what} {t!r} has p = {p:.3f} here; did you mean {alts}?")
    return out
