"""Features: the feature index (examples, logit effects, labels), automatic labelling and search."""

from __future__ import annotations

from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.features.config import IndexConfig
from mechscope.features.dashboard import Example, dashboard
from mechscope.features.integrity import check_complete, check_matches
from mechscope.features.labels import FeatureInfo, HeuristicLabeller, Label, Labeller
from mechscope.features.search import empty_hint, search
from mechscope.features.shipped import index_path, user_index_path
from mechscope.store import get_meta, reader


class FeatureIndex:
    """Read access to a built index (safe with concurrent readers).

    >>> idx = FeatureIndex.for_model("gemma3-270m")      # the shipped index
    >>> idx.feature(12, 345)["label"]
    '"for"'
    """

    query_chunk = 500  # ids per SQL query (SQLite bounds the parameters of one statement)

    def __init__(self, path: str | Path, tokenizer=None) -> None:
        self.path = Path(path)
        self.tokenizer = tokenizer
        with reader(self.path) as con:
            self.meta = get_meta(con)
            check_complete(self.path, self.meta, con)  # a half-written index is refused, never half-read

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

    def check_set(self, set_name: str, fp: str) -> None:
        """Raise one line naming both sets when this index was built for another set than `fp` identifies.

        >>> idx.check_set("my-set", set_fingerprint("my-set"))    # doctest: +SKIP
        """
        check_matches(self.path, self.meta, set_name, fp)

    def _tok(self, i: int) -> str:
        return self.tokenizer.decode([i]) if self.tokenizer is not None else f"<{i}>"

    def labels(self) -> dict[str, str]:
        """{"L/F": label} for every feature."""
        with reader(self.path) as con:
            return {
                f"{r['layer']}/{r['feature']}": r["label"]
                for r in con.execute("SELECT layer, feature, label FROM features")
            }

    def densities(self, keys: "list[tuple[int, int]] | None" = None) -> dict[tuple[int, int], float]:
        """{(layer, feature): density} (share of the index's tokens the feature fires on) for `keys`, or every feature.

        >>> idx.densities([(10, 385)])          # doctest: +SKIP
        {(10, 385): 0.9964}
        """
        q = "SELECT layer, feature, density FROM features"
        with reader(self.path) as con:
            if keys is None:
                return {(r["layer"], r["feature"]): r["density"] for r in con.execute(q)}
            by_layer: dict[int, list[int]] = {}
            for layer, f in set(keys):
                by_layer.setdefault(int(layer), []).append(int(f))
            out = {}
            for layer, fs in by_layer.items():
                for i in range(0, len(fs), self.query_chunk):  # SQLite's bound-parameter limit
                    chunk = fs[i : i + self.query_chunk]
                    rows = con.execute(
                        f"{q} WHERE layer=? AND feature IN ({','.join('?' * len(chunk))})", (layer, *chunk)
                    )
                    out.update({(r["layer"], r["feature"]): r["density"] for r in rows})
            return out

    def feature(self, layer: int, feature: int) -> dict:
        """The dashboard of one feature (fields: `mechscope.features.dashboard`).

        >>> idx.feature(7, 331)["fires_on"][:2]     # doctest: +SKIP
        """
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
            return dashboard(con, r, self.meta, self._tok)

    def search(self, query: str, by: str = "label", limit: int = 20) -> list[dict]:
        """Live features by label text, by input token (fires on) or by output token (promotes), best first;
        each with `id`, `label`, `density`, `score` and `why` (see `mechscope.features.search`).

        >>> idx.search(" Texas", by="token", limit=5)[0]["why"]     # doctest: +SKIP
        """
        with reader(self.path) as con:
            return search(con, self.meta, query, by, limit, self.tokenizer)

    @staticmethod
    def empty_hint(query: str, by: str) -> str:
        """What to try when `search` found nothing."""
        return empty_hint(query, by)


__all__ = [
    "FeatureIndex",
    "IndexConfig",
    "build_index",
    "index_path",
    "user_index_path",
    "Example",
    "FeatureInfo",
    "HeuristicLabeller",
    "Label",
    "Labeller",
]


def __getattr__(name: str):
    # building an index runs the model (torch): loaded on first use, so reading one stays light
    if name == "build_index":
        from mechscope.features.index import build_index

        return build_index
    raise AttributeError(f"module 'mechscope.features' has no attribute {name!r}")
