"""Writes one layer of the feature index: labels each feature, then its rows in every table.

Per feature: `features` (density, activations, histogram, logit effects, label, held-out score), `dashboards`
(the two-sided label, quantile bands, tokens it fires on: JSON), `examples` (kinds `top`, `random`, and `q0`..
`q{n-1}`: the quantile bands from the weakest) and `token_features` (search by token). Dense features get
`dense_label` and dead ones `dead_label`, whatever the labeller says.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import Tensor

from mechscope.features.config import IndexConfig
from mechscope.features.labels import DENSE_DENSITY, FeatureInfo, Label, Labeller, as_label, dead_label, dense_label
from mechscope.features.layer_stats import LayerStats, Picks, by_feature
from mechscope.features.scoring import HeldOutScorer


@dataclass
class LayerInput:
    layer: int
    ids: Tensor  # [n_chunks, T] token ids
    vals: Tensor  # [N, k] this layer's top-k activations
    idxs: Tensor  # [N, k] their feature ids
    stats: LayerStats
    tops: list[list[tuple[str, float]]]  # per feature: promoted tokens (relative, merged)
    bots: list[list[tuple[str, float]]]
    keys: list[str]  # token key id -> normalised token
    shown: list[str]  # token key id -> a token as decoded, for display
    decode: Callable[[int], str]
    decode_text: Callable[[list[int]], str]


def _js(x) -> str:
    return json.dumps(x, ensure_ascii=False, separators=(",", ":"))


class LayerWriter:
    """Writes one layer's rows (see the module docstring)."""

    def __init__(self, con: sqlite3.Connection, cfg: IndexConfig, labeller: Labeller, scorer: HeldOutScorer) -> None:
        self.con, self.cfg, self.labeller, self.scorer = con, cfg, labeller, scorer

    def write(self, x: LayerInput) -> None:
        st = x.stats
        F = len(st.count)
        self.x = x
        groups = {
            "top": (st.top, by_feature(st.top, F)),
            "random": (st.random, by_feature(st.random, F)),
            "quantile": (st.quantile, by_feature(st.quantile, F)),
        }
        evidence = by_feature(st.evidence, F)
        for f in range(F):
            label = self._label(f, evidence[f]) if st.count[f] > 0 else dead_label()
            score = self.scorer.score(f, label) if st.count[f] > 0 else None
            self._feature_rows(f, label, score)
            if st.count[f] > 0:
                for kind, (picks, grouped) in groups.items():
                    self._examples(f, kind, picks, grouped[f])
        self.con.commit()

    def _label(self, f: int, ev: list[int]) -> Label:
        x, st, cfg = self.x, self.x.stats, self.cfg
        density = float(st.density[f])
        if density > DENSE_DENSITY:
            return dense_label(density)
        counts: dict[int, int] = {}
        contexts = []
        for i in ev:
            c, p = int(st.evidence.chunk[i]), int(st.evidence.pos[i])
            t = int(x.ids[c, p])
            counts[t] = counts.get(t, 0) + 1
            if len(contexts) < 12:
                contexts.append(x.decode_text(x.ids[c, max(0, p - cfg.window_before) : p + 1].tolist()))
        top_tokens = sorted(((x.decode(t), n) for t, n in counts.items()), key=lambda kv: -kv[1])[:10]
        self._top_tokens = top_tokens
        info = FeatureInfo(x.layer, f, top_tokens, x.tops[f], contexts, len(contexts), density, x.bots[f])
        return as_label(self.labeller.label(info))

    def _feature_rows(self, f: int, label: Label, score: float | None) -> None:
        x, st, l = self.x, self.x.stats, self.x.layer
        live = st.count[f] > 0
        top_tokens = self._top_tokens if live and label.kind != "dense" else []
        if live and label.kind == "dense":
            top_tokens = self._evidence_tokens(f)
        self.con.execute(
            "INSERT INTO features VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                l,
                f,
                float(st.density[f]),
                float(st.max_act[f]),
                float(st.mean_act[f]),
                _js(st.hist[f].int().tolist()) if live else "[]",
                _js(x.tops[f]),
                _js(x.bots[f]),
                _js(top_tokens),
                label.text,
                label.confidence,
                self.labeller.name if label.kind not in ("dense", "dead") else "index",
                score,
            ),
        )
        fires = []
        for key, n in st.fires[f].tolist() if live else []:
            if key < 0:
                break
            prec, rec = n / float(st.count[f]), n / max(1, int(st.key_total[key]))
            fires.append([x.shown[key], n, round(prec, 4), round(rec, 4)])
            if x.keys[key]:  # a whitespace-only token has the empty key: shown, but no query reaches it
                self.con.execute(
                    "INSERT INTO token_features VALUES (?,?,?,?,?,?,?)", (x.keys[key], l, f, x.shown[key], n, prec, rec)
                )
        bands = []
        for b in range(self.cfg.n_quantiles if live else 0):
            lo, hi = st.band_range[f, b].tolist()
            if hi > 0:
                q = 100 // self.cfg.n_quantiles
                bands.append(
                    {"band": b, "from_pct": b * q, "to_pct": (b + 1) * q, "lo": round(lo, 4), "hi": round(hi, 4)}
                )
        data = {"label": {**label.public(), "confidence": label.confidence}, "quantiles": bands, "fires_on": fires}
        self.con.execute("INSERT INTO dashboards VALUES (?,?,?)", (l, f, _js(data)))

    def _evidence_tokens(self, f: int) -> list:
        # a dense feature is not labelled, but its dashboard still says what it fires on
        return [[self.x.shown[k], n] for k, n in self.x.stats.fires[f].tolist() if k >= 0]

    def _examples(self, f: int, kind: str, picks: Picks, rows: list[int]) -> None:
        for i in rows:
            c, p, a = int(picks.chunk[i]), int(picks.pos[i]), float(picks.value[i])
            name = kind if picks.band is None else f"q{int(picks.band[i])}"
            tb, ab, mp = self._window(c, p, f)
            self.con.execute(
                "INSERT INTO examples VALUES (?,?,?,?,?,?,?,?)",
                (self.x.layer, f, name, int(picks.rank[i]), a, tb, ab, mp),
            )

    def _window(self, c: int, p: int, f: int) -> tuple[bytes, bytes, int]:
        x, cfg = self.x, self.cfg
        T = x.ids.shape[1]
        lo, hi = max(0, p - cfg.window_before), min(T, p + cfg.window_after + 1)
        t_ids = x.ids[c, lo:hi].numpy().astype(np.uint32)
        rows = slice(c * T + lo, c * T + hi)
        a = (x.vals[rows].float() * (x.idxs[rows] == f)).sum(-1).numpy()
        mx = a.max() if a.max() > 0 else 1.0
        return t_ids.tobytes(), (np.clip(a / mx, 0, 1) * 255).astype(np.uint8).tobytes(), p - lo
