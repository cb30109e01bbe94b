"""One feature's dashboard from the index, as the CLI, the page and the notebook show it.

Fields (all indexes): `id`, `layer`, `feature`, `density`, `max_act`, `mean_act`, `hist` {edges, counts},
`top_logits` / `bottom_logits` [[token, value], ...], `top_tokens` [[token, count], ...] (peaks of the top
examples), `label`, `label_confidence`, `label_method`, `label_score` (held-out F1), `examples` (every stored
example: kind `top`, `q{band}`, `random`). Added by schema 3 (empty or derived on older indexes):
  * `top_examples`, `random_examples`, `quantiles` [{band, from_pct, to_pct, lo, hi, examples}], strongest
    band first: examples drawn from each activation quantile band of the feature's firings;
  * `fires_on` [[token, count, precision, recall], ...]: the tokens it fires on most often over all index text
    (precision: share of its firings; recall: share of the token's occurrences) — on older indexes the top
    examples' peaks, without the two shares;
  * `label_input`, `label_output`, `label_kind`, `label_category`: the two sides of the label;
  * `dense`, `dead`: flags (dense: active on more than `DENSE_DENSITY` of tokens);
  * `logits_relative`: whether the logit effects are relative to the mean unembedding (schema 3) or raw;
    both are shown with case / leading-space variants merged.

>>> from mechscope.features import FeatureIndex
>>> d = FeatureIndex.for_model("gemma3-270m").feature(7, 331)     # the shipped index
>>> d["label_input"], [t for t, *_ in d["fires_on"][:3]]
('mixed: "States" / "Mexico" / "France"', [' States', ' Mexico', ' France'])
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from mechscope.features.labels import DENSE_DENSITY
from mechscope.features.logits import merge_variants


@dataclass
class Example:
    kind: str
    activation: float
    tokens: list[str]
    acts: list[float]  # relative to the window's maximum, 0..1
    max_pos: int


def _example(row: sqlite3.Row, tok: Callable[[int], str]) -> dict:
    ids = np.frombuffer(row["tokens"], dtype=np.uint32).tolist()
    acts = (np.frombuffer(row["acts"], dtype=np.uint8) / 255.0).round(3).tolist()
    return asdict(Example(row["kind"], row["activation"], [tok(i) for i in ids], acts, row["max_pos"]))


def _kind_order(kind: str) -> tuple[int, int]:
    # top first, then the quantile bands from the strongest, then random ones
    if kind == "top":
        return (0, 0)
    if kind.startswith("q") and kind[1:].isdigit():
        return (1, -int(kind[1:]))
    return (2, 0)


def has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def dashboard(con: sqlite3.Connection, row: sqlite3.Row, meta: dict, tok: Callable[[int], str]) -> dict:
    """The dashboard dict of the feature in `row` (a `features` row), reading its examples and extras."""
    layer, feature = row["layer"], row["feature"]
    d = {k: row[k] for k in row.keys()}
    for k in ("hist", "top_logits", "bottom_logits", "top_tokens"):
        d[k] = json.loads(d[k])
    schema = int(meta.get("schema_version", 2))
    d["logits_relative"] = schema >= 3
    d["top_logits"] = [list(p) for p in merge_variants([tuple(p) for p in d["top_logits"]], len(d["top_logits"]))]
    d["bottom_logits"] = [
        list(p) for p in merge_variants([tuple(p) for p in d["bottom_logits"]], len(d["bottom_logits"]))
    ]
    d["hist"] = {"edges": meta.get("hist_edges", []), "counts": d["hist"]}
    ex = con.execute("SELECT * FROM examples WHERE layer=? AND feature=?", (layer, feature)).fetchall()
    examples = sorted(
        (_example(e, tok) | {"rank": e["rank"]} for e in ex), key=lambda e: (*_kind_order(e["kind"]), e["rank"])
    )
    for e in examples:
        e.pop("rank")
    d["examples"] = examples
    d["top_examples"] = [e for e in examples if e["kind"] == "top"]
    d["random_examples"] = [e for e in examples if e["kind"] == "random"]
    extra = None
    if has_table(con, "dashboards"):
        r = con.execute("SELECT data FROM dashboards WHERE layer=? AND feature=?", (layer, feature)).fetchone()
        extra = json.loads(r["data"]) if r else None
    _label_sides(d, extra)
    bands = (extra or {}).get("quantiles", [])
    d["quantiles"] = [
        {**b, "examples": [e for e in examples if e["kind"] == f"q{b['band']}"]}
        for b in sorted(bands, key=lambda b: -b["band"])
    ]
    d["fires_on"] = (extra or {}).get("fires_on") or [[t, n, None, None] for t, n in d["top_tokens"]]
    d["dead"] = d["density"] == 0
    d["dense"] = d["density"] > DENSE_DENSITY
    d["id"] = f"{layer}/{feature}"
    return d


def _label_sides(d: dict, extra: dict | None) -> None:
    """The label's two sides: stored (schema 3) or read off the combined text ("input → output")."""
    lab = (extra or {}).get("label")
    if lab:
        d["label_input"], d["label_output"] = lab.get("input", ""), lab.get("output", "")
        d["label_kind"], d["label_category"] = lab.get("kind", ""), lab.get("category", "")
        return
    inp, _, out = (d.get("label") or "").partition("→")
    inp, out = inp.strip(), out.strip()
    if inp.startswith("say "):
        inp, out = "", inp
    d["label_input"], d["label_output"], d["label_kind"], d["label_category"] = inp, out, "", ""
