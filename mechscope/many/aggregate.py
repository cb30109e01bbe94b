"""What recurs across a store's graphs: features, supernodes and edges with how often and how much influence, a
consensus flowchart, and the contrast between two groups.

Graphs are read one at a time and folded into running sums (`Tally`), so memory does not grow with the number
of graphs: features are bounded by the dictionary (layers × features, × positions with `positions`), supernode
names by the labels, and edges by `max_keys` (when the table is full the rarest edges are dropped, and the
largest count that can be missing from a kept edge is reported). Nodes are keyed by role, so prompts of one
template line up: features by id (`L/F`, or `L/F@-k` with positions), tokens by position from the end
(`tok@-1` is the last token), logits by rank (`out#1` is the top answer, whatever its token).

>>> agg = aggregate_store("runs/cities", AggregateConfig(group="famous"))                 # doctest: +SKIP
>>> agg["features"][0]["key"], agg["features"][0]["frequency"]                            # doctest: +SKIP
('10/385', 1.0)
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from fnmatch import fnmatchcase
from pathlib import Path

from mechscope.attribution.clustering import informative
from mechscope.errors import MechscopeError
from mechscope.many.config import AggregateConfig
from mechscope.compare.keys import feature_key, graph_model, is_feature, n_tokens, rel_pos, shares
from mechscope.many.store import ManyStore

MAX_POS = 64  # consensus token slots, counted from the prompt's end
MIN_PER_JOB = 64  # fewer graphs than this per process: starting the process costs more than it saves


class Tally:
    """Running sums over graphs; `add(graph)` once per graph, `result()` at the end."""

    def __init__(self, positions: bool = False, max_keys: int = 200_000) -> None:
        self.positions, self.max_keys = positions, max_keys
        self.n = 0
        self.feat: dict[str, list] = {}  # key -> [graphs, summed share, label]
        self.feat_pos: dict[str, Counter] = defaultdict(Counter)  # key -> positions from the end (consensus)
        self.sup: dict[str, list] = {}  # supernode name -> [graphs, summed share]
        self.edges: dict[tuple[str, str], list] = {}  # (source key, target key) -> [graphs, summed weight]
        self.edges_dropped = 0
        self.edge_error = 0  # a kept edge's count can be low by at most this (rare edges dropped, then seen again)
        self.top: Counter = Counter()  # top-1 answer tokens
        self.rank_prob: Counter = Counter()  # out#r -> summed probability
        self.tokens: dict[int, Counter] = defaultdict(Counter)  # position from the end -> token counts
        self.models: Counter = Counter()

    def add(self, g: dict) -> None:
        self.n += 1
        self.models[graph_model(g)] += 1
        n = n_tokens(g)
        sh = shares(g)
        toks = g.get("metadata", {}).get("prompt_tokens") or []
        for k in range(1, min(len(toks), MAX_POS) + 1):
            self.tokens[-k][str(toks[-k])] += 1
        keys, per_feat, per_sup, labels = self._keys(g, n, sh)
        for k, s in per_feat.items():
            f = self.feat.get(k)
            if f is None:
                self.feat[k] = [1, s, labels.get(k, "")]
            else:
                f[0] += 1
                f[1] += s
        for name, s in per_sup.items():
            e = self.sup.setdefault(name, [0, 0.0])
            e[0] += 1
            e[1] += s
        per_edge: dict[tuple[str, str], float] = defaultdict(float)
        for link in g.get("links", []):
            a, b = keys.get(link["source"]), keys.get(link["target"])
            if a is not None and b is not None:
                per_edge[(a, b)] += float(link["weight"])
        for k, w in per_edge.items():
            e = self.edges.get(k)
            if e is None:
                self.edges[k] = [1, w]
            else:
                e[0] += 1
                e[1] += w
        if len(self.edges) > self.max_keys:
            self._shrink()

    def _keys(self, g: dict, n: int, sh: dict[str, float]):
        keys: dict[str, str] = {}
        per_feat: dict[str, float] = defaultdict(float)
        per_sup: dict[str, float] = defaultdict(float)
        labels: dict[str, str] = {}
        logits = sorted(
            (nd for nd in g.get("nodes", []) if nd.get("feature_type") == "logit"),
            key=lambda nd: -float(nd.get("token_prob") or 0.0),
        )
        for r, nd in enumerate(logits, 1):
            keys[nd["node_id"]] = f"out#{r}"
            self.rank_prob[f"out#{r}"] += float(nd.get("token_prob") or 0.0)
        if logits:
            from mechscope.compare.keys import logit_token

            self.top[logit_token(logits[0])] += 1
        member = {}
        for grp in (g.get("qParams") or {}).get("supernodes") or []:
            if isinstance(grp, list) and len(grp) > 1:
                for m in grp[1:]:
                    member[str(m)] = str(grp[0])
        for nd in g.get("nodes", []):
            kind = nd.get("feature_type")
            if kind == "embedding":
                keys[nd["node_id"]] = f"tok@{rel_pos(nd, n)}"
            elif is_feature(nd):
                k = feature_key(nd, n, self.positions)
                keys[nd["node_id"]] = k
                s = sh.get(nd["node_id"], 0.0)
                per_feat[k] += s
                if k not in labels:
                    labels[k] = (nd.get("clerp") or "").strip()
                self.feat_pos[k][rel_pos(nd, n)] += 1
                # a supernode: the graph's own (qParams), else the feature's label when it names something
                name = member.get(nd["node_id"]) or (
                    (nd.get("clerp") or "").strip() if informative(nd.get("clerp") or "") else ""
                )
                if name:
                    per_sup[name] += s
        return keys, per_feat, per_sup, labels

    def _shrink(self) -> None:
        """Drop the rarest edges until the table is half full (memory stays bounded whatever the graph count)."""
        counts = Counter(e[0] for e in self.edges.values())
        target, removed, cut = len(self.edges) - self.max_keys // 2, 0, 0
        for c in sorted(counts):
            removed += counts[c]
            cut = c
            if removed >= target:
                break
        before = len(self.edges)
        self.edges = {k: e for k, e in self.edges.items() if e[0] > cut}
        self.edges_dropped += before - len(self.edges)
        self.edge_error += cut

    def merge(self, o: "Tally") -> None:
        """Fold another Tally (of other graphs) into this one, as if its graphs had been added here."""
        self.n += o.n
        self.models.update(o.models)
        for k, (c, s, lab) in o.feat.items():
            f = self.feat.setdefault(k, [0, 0.0, lab])
            f[0] += c
            f[1] += s
            f[2] = f[2] or lab
        for k, cnt in o.feat_pos.items():
            self.feat_pos[k].update(cnt)
        for table, other in ((self.sup, o.sup), (self.edges, o.edges)):
            for k, (c, s) in other.items():
                e = table.setdefault(k, [0, 0.0])
                e[0] += c
                e[1] += s
        self.edges_dropped += o.edges_dropped
        self.edge_error += o.edge_error  # an edge can be missing counts on both sides
        self.top.update(o.top)
        self.rank_prob.update(o.rank_prob)
        for k, cnt in o.tokens.items():
            self.tokens[k].update(cnt)
        if len(self.edges) > self.max_keys:
            self._shrink()

    # ---- results ---------------------------------------------------------------------------------------
    def features(self, min_frequency: float = 0.0) -> list[dict]:
        n = max(1, self.n)
        rows = [
            {
                "key": k,
                "graphs": c,
                "frequency": round(c / n, 4),
                "mean_share": round(s / n, 6),
                "share_present": round(s / c, 6),
                "label": lab,
                "position": self.feat_pos[k].most_common(1)[0][0] if self.feat_pos.get(k) else None,
            }
            for k, (c, s, lab) in self.feat.items()
            if c / n >= min_frequency
        ]
        return sorted(rows, key=lambda r: (-r["mean_share"], r["key"]))

    def supernodes(self, min_frequency: float = 0.0) -> list[dict]:
        n = max(1, self.n)
        rows = [
            {
                "key": k,
                "graphs": c,
                "frequency": round(c / n, 4),
                "mean_share": round(s / n, 6),
                "share_present": round(s / c, 6),
            }
            for k, (c, s) in self.sup.items()
            if c / n >= min_frequency
        ]
        return sorted(rows, key=lambda r: (-r["mean_share"], r["key"]))

    def edge_rows(self, min_frequency: float = 0.0) -> list[dict]:
        n = max(1, self.n)
        rows = [
            {"key": list(k), "graphs": c, "frequency": round(c / n, 4), "mean_weight": round(w / n, 6)}
            for k, (c, w) in self.edges.items()
            if c / n >= min_frequency
        ]
        return sorted(rows, key=lambda r: (-abs(r["mean_weight"]), r["key"]))


def in_group(row, group: str | None) -> bool:
    """Whether a catalogue row belongs to `group`: a group name or glob (`famous*`), `id:GLOB` (by prompt id),
    or `answer:right` / `answer:wrong` (top logit equal to the input's `expect`, or not).

    >>> in_group({"id": "is-dallas", "grp": "famous", "correct": 1}, "id:is-*")
    True
    """
    if group is None:
        return True
    if group in ("answer:right", "answer:wrong"):
        return row["correct"] is not None and bool(row["correct"]) == (group == "answer:right")
    if group.startswith("id:"):
        return fnmatchcase(row["id"], group[3:])
    return fnmatchcase(row["grp"], group)


def read_graph(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a file removed or damaged since: the next trace-many run re-traces it


def tally_files(paths: list[Path], positions: bool, max_keys: int) -> Tally:
    """A Tally of these graph files, read one at a time (also the job of each parallel aggregation process)."""
    t = Tally(positions, max_keys)
    for p in paths:
        g = read_graph(p)
        if g is not None:
            t.add(g)
    return t


def tally_group(paths: list[Path], positions: bool, max_keys: int, jobs: int) -> Tally:
    """Tally `paths` in `jobs` processes (contiguous slices, merged at the end); each holds one graph at a time."""
    jobs = min(jobs, max(1, len(paths) // MIN_PER_JOB))
    if jobs <= 1:
        return tally_files(paths, positions, max_keys)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    step = -(-len(paths) // jobs)
    parts = [paths[i : i + step] for i in range(0, len(paths), step)]
    # spawn: the CLI may already run torch threads, which a forked child would inherit half-initialised
    with ProcessPoolExecutor(len(parts), mp_context=mp.get_context("spawn")) as ex:
        tallies = list(ex.map(tally_files, parts, [positions] * len(parts), [max_keys] * len(parts)))
    total = tallies[0]
    for t in tallies[1:]:
        total.merge(t)
    return total


def aggregate_store(root: str | Path, cfg: AggregateConfig | None = None) -> dict:
    """Aggregate one group (or all) of a store, or contrast two groups (`cfg.contrast`); JSON-ready."""
    from mechscope.many.consensus import consensus_flowchart

    cfg = cfg or AggregateConfig()
    store = ManyStore.open(root)
    try:
        meta = store.meta()
        groups = list(cfg.contrast) if cfg.contrast else [cfg.group]
        paths = [[store.graph_path(r["id"]) for r in store.rows("done") if in_group(r, g)] for g in groups]
        jobs = cfg.jobs or min(os.cpu_count() or 1, 4)
        tallies = [tally_group(p, cfg.positions, cfg.max_keys, jobs) for p in paths]
        known = sorted({r["grp"] for r in store.rows(None)} | {"answer:right", "answer:wrong"})
    finally:
        store.close()
    for g_name, t in zip(groups, tallies):
        if t.n == 0:
            what = f"group {g_name!r}" if g_name else "the store"
            raise MechscopeError(f"no traced graphs in {what} ({root}); groups: {', '.join(known)}")
    if cfg.contrast:
        return contrast(tallies[0], tallies[1], cfg, str(root))
    t = tallies[0]
    fc = consensus_flowchart(t, cfg.min_frequency)
    return {
        "store": str(root),
        "model": meta.get("model"),
        "group": cfg.group,
        "n_graphs": t.n,
        "top_logits": [list(x) for x in t.top.most_common(10)],
        "features": t.features(cfg.min_frequency),
        "supernodes": t.supernodes(cfg.min_frequency),
        "edges": t.edge_rows(cfg.min_frequency),
        "edges_dropped": t.edges_dropped,
        "edge_error": t.edge_error,
        "flowchart": fc.to_json() if fc else None,
        "flowchart_text": fc.to_text() if fc else "",
        "_flowchart": fc,
    }


def contrast(a: Tally, b: Tally, cfg: AggregateConfig, store: str) -> dict:
    """Features and supernodes whose mean influence differs most between two groups (B − A)."""

    def rows(ra: list[dict], rb: list[dict]) -> list[dict]:
        da, db = {r["key"]: r for r in ra}, {r["key"]: r for r in rb}
        out = []
        for k in da.keys() | db.keys():
            x, y = da.get(k, {}), db.get(k, {})
            out.append(
                {
                    "key": k,
                    "frequency": [x.get("frequency", 0.0), y.get("frequency", 0.0)],
                    "mean_share": [x.get("mean_share", 0.0), y.get("mean_share", 0.0)],
                    "delta": round(y.get("mean_share", 0.0) - x.get("mean_share", 0.0), 6),
                    "label": x.get("label") or y.get("label") or "",
                }
            )
        return sorted(out, key=lambda r: (-abs(r["delta"]), r["key"]))

    return {
        "store": store,
        "contrast": list(cfg.contrast or ()),
        "n_graphs": [a.n, b.n],
        "top_logits": [[list(x) for x in a.top.most_common(5)], [list(x) for x in b.top.most_common(5)]],
        "features": rows(a.features(), b.features()),
        "supernodes": rows(a.supernodes(), b.supernodes()),
    }
