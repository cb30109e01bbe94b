"""Search the feature index: by the token a feature fires on, the token it promotes, or its label.

Every result names the feature (`id`, `layer`, `feature`), its `label`, `density`, the `score` it is ranked
by (descending) and `why` it matched. Dead features and dense ones (active on more than `DENSE_DENSITY` of
tokens) are never offered: they match everything or nothing.
  * token: features that fire on the token, ranked by specificity √(precision · recall) · n/(n + 2), where n
    counts its firings on the token, precision = the larger of n / its firings and the share of its top examples
    that peak on the token, recall = n / the token's occurrences (older indexes: the share of its top examples
    that peak on the token);
  * logit: features that promote the token, ranked by the logit rise when they fire (effect × mean
    activation) weighted by how often they fire, n/(n + FIRING_PRIOR) with n its firings in the index;
  * label: the label contains the text; ranked by the label's confidence.
Case and a leading space never matter (" Texas", "Texas", "texas" are one query).

>>> search(con, meta, "Texas", "token", 5)       # doctest: +SKIP
[{'id': '7/331', 'label': 'American states: "Texas" / "Ohio"', 'score': 0.61, 'why': 'fires on "texas" 14×: ...'}]
"""

from __future__ import annotations

import json
import math
import sqlite3

from mechscope.errors import MechscopeError
from mechscope.features.dashboard import has_table
from mechscope.features.labels import DENSE_DENSITY, norm_token

FIRING_PRIOR = 10.0  # firings: a feature seen 10 times counts half, 90 times 90%
BY = ("label", "token", "logit")
LIVE = f"density > 0 AND density <= {DENSE_DENSITY}"


def check_query(query: str, by: str, tokenizer=None) -> str:
    """The stripped query; one-line errors for an empty one, an unknown `by`, or a word the tokenizer splits."""
    q = query.strip()
    if not q:
        raise MechscopeError("empty search query: give a label text or a token, e.g. ' Texas'")
    if by not in BY:
        raise MechscopeError(f"--by must be label, token, logit or prompt, not {by!r}")
    if by in ("token", "logit") and tokenizer is not None:
        # search ignores case and a leading space, so one of those variants being one token is enough
        forms = {query} | {p + w for p in ("", " ") for w in (q, q.lower(), q.capitalize())}
        pieces = {f: tokenizer.encode(f, add_special_tokens=False) for f in forms}
        if all(len(p) != 1 for p in pieces.values()):
            parts = [tokenizer.decode([i]) for i in pieces[" " + q]]
            raise MechscopeError(
                f"{q!r} is {len(parts)} tokens for this model ({' + '.join(map(repr, parts))}), not one: search one "
                f"of them, or run a text with --by prompt --token"
            )
    return q


def _row(r: sqlite3.Row, score: float, why: str) -> dict:
    return {
        "id": f"{r['layer']}/{r['feature']}",
        "layer": r["layer"],
        "feature": r["feature"],
        "label": r["label"],
        "density": r["density"],
        "score": float(f"{score:.4g}"),
        "why": why,
    }


def _by_label(con: sqlite3.Connection, q: str, limit: int) -> list[dict]:
    rows = con.execute(
        f"SELECT layer, feature, label, label_confidence, density FROM features WHERE {LIVE} AND label LIKE ? "
        "ORDER BY label_confidence DESC, density DESC, layer, feature LIMIT ?",
        (f"%{q}%", limit),
    ).fetchall()
    return [_row(r, r["label_confidence"], f"label contains {q!r} (score: label confidence)") for r in rows]


def _by_token(con: sqlite3.Connection, q: str, limit: int) -> list[dict]:
    key = norm_token(q)
    if has_table(con, "token_features"):
        rows = con.execute(
            "SELECT t.layer, t.feature, t.n, t.precision, t.recall, f.label, f.density, f.top_tokens FROM "
            f"token_features t JOIN features f ON f.layer = t.layer AND f.feature = t.feature WHERE t.key = ? AND f.{LIVE}",
            (key,),
        ).fetchall()
        out = []
        for r in rows:
            # precision counts every firing alike; the share of its strongest examples that peak on the token
            # says whether the token is what it is most active on, so the larger of the two is taken
            tops = [(norm_token(t), c) for t, c in json.loads(r["top_tokens"])]
            peak = sum(c for t, c in tops if t == key) / (sum(c for _, c in tops) or 1)
            prec = max(r["precision"], peak)
            score = math.sqrt(prec * r["recall"]) * r["n"] / (r["n"] + 2)
            why = f"fires on {q!r} {r['n']}×: {r['precision']:.0%} of its firings, {r['recall']:.0%} of the token's" + (
                f"; {peak:.0%} of its top examples peak on it" if peak > 0 else ""
            )
            out.append(_row(r, score, why))
    else:  # schema 2: only the peaks of the top examples are known
        out = [
            _row(r, share, f"{share:.0%} of its top examples peak on {q!r}")
            for r, share in _json_matches(con, "top_tokens", q, key, share=True)
        ]
    return sorted(out, key=lambda d: (-d["score"], d["layer"], d["feature"]))[:limit]


def _by_logit(con: sqlite3.Connection, q: str, limit: int, n_tokens: int) -> list[dict]:
    key = norm_token(q)
    out = []
    for r, (v, rank) in _json_matches(con, "top_logits", q, key, share=False):
        n = r["density"] * n_tokens
        rise = v * r["mean_act"]
        score = rise * n / (n + FIRING_PRIOR)
        why = (
            f"promotes {q!r} by {rise:+.2f} when active (effect {v:+.2f}, its #{rank + 1}); fires {n:.0f}× in the index"
        )
        out.append(_row(r, score, why))
    out = [d for d in out if d["score"] > 0]
    return sorted(out, key=lambda d: (-d["score"], d["layer"], d["feature"]))[:limit]


def _json_matches(con: sqlite3.Connection, col: str, q: str, key: str, share: bool):
    """Rows whose JSON list `col` holds the token (SQL narrows: LIKE ignores ASCII case), with the share of
    the list's weight on it (share=True) or (its value, its rank) in the list."""
    needle = json.dumps(q)[1:-1]
    rows = con.execute(
        f"SELECT layer, feature, label, density, mean_act, {col} AS data FROM features "
        f"WHERE {LIVE} AND ({col} LIKE ? OR {col} LIKE ?)",
        (f'%"{needle}"%', f'%" {needle}"%'),
    ).fetchall()
    for r in rows:
        data = [(norm_token(t), v) for t, v in json.loads(r["data"])]
        hits = [(i, v) for i, (t, v) in enumerate(data) if t == key]
        if not hits:
            continue
        if share:
            yield r, sum(v for _, v in hits) / (sum(abs(v) for _, v in data) or 1)
        else:
            yield r, (max(v for _, v in hits), hits[0][0])


def search(con: sqlite3.Connection, meta: dict, query: str, by: str, limit: int, tokenizer=None) -> list[dict]:
    """Features matching `query` (see the module docstring), best first."""
    q = check_query(query, by, tokenizer)
    if by == "label":
        return _by_label(con, q, limit)
    if by == "token":
        return _by_token(con, q, limit)
    return _by_logit(con, q, limit, int(meta.get("tokens", 0)))


def empty_hint(query: str, by: str) -> str:
    """What to try when a search finds nothing."""
    q = query.strip()
    tok = json.dumps(" " + q if not query.startswith(" ") else query)
    if by == "token":
        return (
            f"no live feature of this index fires on {q!r} (its text may lack the word): try --by logit {tok}, "
            f'or run a text: search-features "... {q}" --by prompt --token {tok}'
        )
    if by == "logit":
        return (
            f"no live feature promotes {q!r} among its top logits: try --by token {tok} or --by label {json.dumps(q)}"
        )
    return f"no live feature's label contains {q!r}: try --by token {tok} or --by logit {tok}"
