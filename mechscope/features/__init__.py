"""Features: the feature index (examples, logit effects, labels), automatic labelling and search."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mechscope.errors import MechscopeError
from mechscope.features.config import IndexConfig
from mechscope.features.shipped import index_path, user_index_path
from mechscope.features.labels import FeatureInfo, HeuristicLabeller, Labeller, norm_token
from mechscope.store import get_meta, reader


@dataclass
class Example:
    kind: str
    activation: float
    tokens: list[str]
    acts: list[float]  # relative to the window's maximum, 0..1
    max_pos: int


def _example(row, tok) -> Example:
    ids = np.frombuffer(row["tokens"], dtype=np.uint32).tolist()
    acts = (np.frombuffer(row["acts"], dtype=np.uint8) / 255.0).round(3).tolist()
    return Example(row["kind"], row["activation"], [tok(i) for i in ids], acts, row["max_pos"])


class FeatureIndex:
    """Read access to a built index (safe with concurrent readers).

    >>> idx = FeatureIndex.for_model("gemma3-270m")      # doctest: +SKIP
    >>> idx.feature(12, 345)["label"]
    """

    def __init__(self, path: str | Path, tokenizer=None) -> None:
        self.path = Path(path)
        self.tokenizer = tokenizer
        with reader(self.path) as con:
            self.meta = get_meta(con)

    @classmethod
    def for_model(cls, model: str, tokenizer=None) -> "FeatureIndex":
        p = index_path(model)
        if not p.exists():
            raise MechscopeError(
                f"model {model} has no feature index; build it with: mechscope index-features --model {model}"
            )
        return cls(p, tokenizer)

    @classmethod
    def matching(cls, path: str | Path, ts, tokenizer=None) -> "FeatureIndex | None":
        """The index at `path` if it exists and was built for transcoder set `ts`, else None: an index of another
        set would attach wrong labels, dashboards and maxima.

        >>> idx = FeatureIndex.matching(index_path("gemma3-270m"), ts, model.tokenizer)   # doctest: +SKIP
        """
        if not Path(path).exists():
            return None
        idx = cls(path, tokenizer)
        return idx if idx.matches(ts) else None

    def matches(self, ts) -> bool:
        """Whether this index was built for transcoder set `ts` (its dashboards and labels describe it)."""
        from mechscope.features.index import fingerprint

        return self.meta.get("transcoder_fingerprint") == fingerprint(ts)

    def _tok(self, i: int) -> str:
        return self.tokenizer.decode([i]) if self.tokenizer is not None else f"<{i}>"

    def labels(self) -> dict[str, str]:
        """{"L/F": label} for every feature."""
        with reader(self.path) as con:
            return {
                f"{r['layer']}/{r['feature']}": r["label"]
                for r in con.execute("SELECT layer, feature, label FROM features")
            }

    def feature(self, layer: int, feature: int) -> dict:
        with reader(self.path) as con:
            r = con.execute("SELECT * FROM features WHERE layer=? AND feature=?", (layer, feature)).fetchone()
            if r is None:
                n_l, n_f = con.execute("SELECT MAX(layer) + 1, MAX(feature) + 1 FROM features").fetchone()
                if n_l and not (0 <= layer < n_l and 0 <= feature < n_f):
                    raise MechscopeError(
                        f"feature {layer}/{feature} is out of range: the set has layers 0–{n_l - 1} and features "
                        f"0–{n_f - 1} per layer (write LAYER/FEATURE, e.g. {n_l // 2}/{min(n_f - 1, 331)})"
                    )
                raise MechscopeError(f"feature {layer}/{feature} is not in the index {self.path}")
            ex = con.execute(
                "SELECT * FROM examples WHERE layer=? AND feature=? ORDER BY kind DESC, rank", (layer, feature)
            ).fetchall()
        d = {k: r[k] for k in r.keys()}
        for k in ("hist", "top_logits", "bottom_logits", "top_tokens"):
            d[k] = json.loads(d[k])
        d["hist"] = {"edges": self.meta.get("hist_edges", []), "counts": d["hist"]}
        d["examples"] = [_example(e, self._tok).__dict__ for e in ex]
        d["id"] = f"{layer}/{feature}"
        return d

    def search(self, query: str, by: str = "label", limit: int = 20) -> list[dict]:
        """Features by label text, by input token (fires on), or by output token (promotes)."""
        q = query.strip()
        if not q:
            raise MechscopeError("empty search query")
        with reader(self.path) as con:
            if by == "label":
                rows = con.execute(
                    "SELECT layer, feature, label, label_confidence AS score, density FROM features "
                    "WHERE label LIKE ? ORDER BY label_confidence DESC, density DESC LIMIT ?",
                    (f"%{q}%", limit),
                ).fetchall()
                return [dict(r) for r in rows]
            col = {"token": "top_tokens", "logit": "top_logits"}.get(by)
            if col is None:
                raise MechscopeError(f"--by must be label, token or logit, not {by!r}")
            # Tokens are stored as decoded, most with their leading space (" Texas"), and the query arrives
            # stripped: SQL narrows to the word alone or after a space (LIKE ignores ASCII case), then tokens
            # compare as labels compare them (`norm_token`)
            needle = json.dumps(q)[1:-1]
            rows = con.execute(
                f"SELECT layer, feature, label, density, {col} AS data FROM features WHERE {col} LIKE ? OR {col} LIKE ?",
                (f'%"{needle}"%', f'%" {needle}"%'),
            ).fetchall()
        key = norm_token(q)
        out = []
        for r in rows:
            data = [(norm_token(t), v) for t, v in json.loads(r["data"])]
            total = sum(abs(v) for _, v in data) or 1
            score = sum(v for t, v in data if t == key)
            rank = next((i for i, (t, _) in enumerate(data) if t == key), 99)
            out.append(
                {
                    "layer": r["layer"],
                    "feature": r["feature"],
                    "label": r["label"],
                    "density": r["density"],
                    "score": score if by == "logit" else score / total,
                    "rank": rank,
                }
            )
        out.sort(key=lambda d: (d["rank"], -d["score"]))
        return out[:limit]


__all__ = [
    "FeatureIndex",
    "IndexConfig",
    "build_index",
    "index_path",
    "user_index_path",
    "FeatureInfo",
    "HeuristicLabeller",
    "Labeller",
]


def __getattr__(name: str):
    # building an index runs the model (torch): loaded on first use, so reading one stays light
    if name == "build_index":
        from mechscope.features.index import build_index

        return build_index
    raise AttributeError(f"module 'mechscope.features' has no attribute {name!r}")
