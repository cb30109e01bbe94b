"""Search by inference: which features fire on a token of *your* text, ranked against their usual strength.

The feature index only knows the corpus it was built on; a concept the corpus lacks (the built-in corpus
has almost no US states) never shows up in `search-features --by token`. Probing runs the model on any
text and reads the transcoders at one position, so "which features fire on ' Texas' in 'Dallas, Texas'"
has an answer whatever the corpus held. Features are ranked by activation relative to the largest one
the index saw (a feature at 90% of its maximum is more specific to this token than a generic feature at
10% of a larger one), capped at 1 and shrunk by how often the index saw the feature fire: a feature seen
on two tokens has an unreliable maximum, and ranking by the raw ratio put such features (at 188% of a
tiny maximum) above the ones a user is looking for. Without an index, by raw activation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import asdict, dataclass

import torch

from mechscope.errors import MechscopeError
from mechscope.guards import check_forward
from mechscope.edits import active_features
from mechscope.store import reader
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


EVIDENCE_PRIOR = 5.0  # firings: a feature seen 5 times in the index counts half, 45 times 90%


def specificity(relative: float, density: float | None, index_tokens: int) -> float:
    """The probe's rank key: activation relative to the index maximum, capped at 1, times the index's evidence."""
    n = (density or 0.0) * index_tokens
    return min(relative, 1.0) * n / (n + EVIDENCE_PRIOR)


@dataclass
class ProbeHit:
    layer: int
    feature: int
    activation: float
    relative: float | None  # activation / the index's max activation of this feature (None: no index)
    density: float | None
    label: str
    score: float | None = None  # min(relative, 1) · n / (n + EVIDENCE_PRIOR), n = firings the index saw; the rank key

    @property
    def id(self) -> str:
        return f"{self.layer}/{self.feature}"


def probe_position(tokens: list[str], token: str | None, pos: int | None) -> int:
    """The probed position: `pos` (negative from the end), else the last occurrence of `token`, else the last token."""
    if pos is not None:
        if not -len(tokens) <= pos < len(tokens):
            raise MechscopeError(f"position {pos} is out of range: the text has {len(tokens)} tokens")
        return pos % len(tokens)
    if token is None:
        return len(tokens) - 1
    hits = [i for i, t in enumerate(tokens) if t == token] or [
        i for i, t in enumerate(tokens) if t.strip() == token.strip()
    ]
    if not hits:
        raise MechscopeError(f"token {token!r} is not in the text; its tokens are {tokens}")
    return hits[-1]


@torch.no_grad()
def probe_features(
    model: ModelAdapter,
    ts: Source,
    text: str,
    token: str | None = None,
    pos: int | None = None,
    index=None,
    limit: int = 20,
) -> tuple[int, list[str], list[ProbeHit]]:
    """Features active at one position of `text`, most specific first; returns (position, tokens, hits).

    >>> p, toks, hits = probe_features(model, ts, "Dallas, Texas", token=" Texas", index=idx)   # doctest: +SKIP
    >>> hits[0].id, hits[0].label                                                               # doctest: +SKIP
    """
    toks = model.tokenize(text)
    check_forward(model, ts, toks.ids.shape[0], what=f"probing {toks.ids.shape[0]} tokens")
    p = probe_position(toks.strs, token, pos)
    active = active_features(model, ts, toks.ids, p)
    stats: dict[tuple[int, int], tuple[float, float, str]] = {}
    if index is not None and active:
        # only the rows of the features active here (a few hundred), not the whole table, on every probe
        by_layer: dict[int, list[int]] = {}
        for l, f, _ in active:
            by_layer.setdefault(l, []).append(f)
        with reader(index.path) as con:
            for l, fs in by_layer.items():
                q = f"SELECT layer, feature, max_act, density, label FROM features WHERE layer=? AND feature IN ({','.join('?' * len(fs))})"
                for r in con.execute(q, (l, *fs)):
                    stats[(r["layer"], r["feature"])] = (r["max_act"], r["density"], r["label"])
    n_index = int(index.meta.get("tokens", 0)) if index is not None else 0
    hits = []
    for l, f, a in active:
        mx, dens, label = stats.get((l, f), (None, None, ""))
        rel = a / mx if mx else None
        score = round(specificity(rel, dens, n_index), 4) if rel is not None else None
        hits.append(ProbeHit(l, f, round(a, 4), round(rel, 4) if rel is not None else None, dens, label, score))
    hits.sort(key=lambda h: (-(h.score if h.score is not None else 0.0), -h.activation, h.layer, h.feature))
    return p, toks.strs, hits[:limit]


def hits_to_json(position: int, tokens: list[str], hits: list[ProbeHit]) -> dict:
    return {
        "position": position,
        "token": tokens[position],
        "tokens": tokens,
        "features": [{**asdict(h), "id": h.id} for h in hits],
    }
