"""Diff two attribution graphs: features, supernodes and edges that appear, disappear or change, by influence.

Two prompts on one model and set align by feature id (`L/F`); one prompt under two transcoder sets aligns by
supernode label (features have unrelated ids there). Graphs of different models are refused.

>>> d = diff_graphs(load_graph("dallas.json"), load_graph("oakland.json"))               # doctest: +SKIP
>>> d["features"]["change"][0]                                                            # doctest: +SKIP
{'key': '12/345', 'label': 'Texas', 'a': 0.031, 'b': 0.002, 'delta': -0.029}
"""

from __future__ import annotations

from collections import defaultdict

from mechscope.errors import MechscopeError
from mechscope.compare.config import DiffConfig
from mechscope.compare.keys import graph_model, is_feature, n_tokens, node_key, shares, supernode_labels


def _side(g: dict, by_label: bool, positions: bool, edges: bool = True, flowchart: bool = True) -> dict:
    """Per key: influence share (summed over the nodes of that key), label, node count; edges summed by key pair."""
    n = n_tokens(g)
    sh = shares(g)
    labs = supernode_labels(g, use_flowchart=flowchart) if by_label else None
    keys: dict[str, str | None] = {}
    feats: dict[str, dict] = {}
    unaligned = 0
    for nd in g["nodes"]:
        k = node_key(nd, n, positions, labs)
        keys[nd["node_id"]] = k
        if not is_feature(nd):
            continue
        if k is None:
            unaligned += 1
            continue
        f = feats.setdefault(k, {"share": 0.0, "label": (nd.get("clerp") or "").strip(), "nodes": 0})
        f["share"] += sh.get(nd["node_id"], 0.0)
        f["nodes"] += 1
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for link in g["links"] if edges else ():
        s, t = keys.get(link["source"]), keys.get(link["target"])
        if s is not None and t is not None:
            sums[(s, t)] += float(link["weight"])
    logits = {
        node_key(nd, n, False): float(nd.get("token_prob") or 0.0)
        for nd in g["nodes"]
        if nd.get("feature_type") == "logit"
    }
    feature_keys = {nd["node_id"]: keys[nd["node_id"]] for nd in g["nodes"] if is_feature(nd)}
    return {"features": feats, "edges": sums, "logits": logits, "unaligned": unaligned, "keys": feature_keys}


def choose_alignment(a: dict, b: dict, by: str) -> bool:
    """True to align by label: asked for, or (auto) the graphs come from different sets or transcoder kinds."""
    if by != "auto":
        return by == "label"
    ma, mb = a.get("metadata", {}), b.get("metadata", {})
    ka, kb = ma.get("info", {}).get("transcoder_kind", "plt"), mb.get("info", {}).get("transcoder_kind", "plt")
    return ma.get("scan") != mb.get("scan") or ka != kb


def diff_graphs(a: dict, b: dict, cfg: DiffConfig | None = None, node_keys: bool = False) -> dict:
    """The difference B − A as a JSON-ready dict (see module docstring); rows ranked by |change| of influence.

    node_keys: also give, per graph ("a", "b"), each feature node's row key (`node_id` → key; None for a feature
    that cannot be aligned), so a view of the two graphs can colour every node as its row says.
    """
    cfg = cfg or DiffConfig()
    if graph_model(a) != graph_model(b):
        raise MechscopeError(
            f"the graphs come from different models ({graph_model(a) or '?'} and {graph_model(b) or '?'}); "
            "diff compares graphs of one model"
        )
    by_label = choose_alignment(a, b, cfg.by)
    sa, sb = _side(a, by_label, cfg.positions), _side(b, by_label, cfg.positions)
    feats = _compare(sa["features"], sb["features"], cfg.min_change, label=True)
    fa = {k: v["share"] for k, v in sa["features"].items()}
    fb = {k: v["share"] for k, v in sb["features"].items()}
    edge_rows = _compare_values(sa["edges"], sb["edges"], cfg.min_change, limit=cfg.max_edges)
    out = {
        "a": _about(a),
        "b": _about(b),
        "aligned_by": "label" if by_label else "id",
        "positions": cfg.positions,
        "summary": {
            "features_a": len(fa),
            "features_b": len(fb),
            "shared": len(fa.keys() & fb.keys()),
            "appear": len(feats["appear"]),
            "disappear": len(feats["disappear"]),
            "change": len(feats["change"]),
            "edges_a": len(sa["edges"]),
            "edges_b": len(sb["edges"]),
            "unaligned_a": sa["unaligned"],
            "unaligned_b": sb["unaligned"],
            # share of A's feature influence carried by features B keeps (weighted overlap, 1 = same circuit)
            "influence_overlap": round(
                sum(min(fa[k], fb[k]) for k in fa.keys() & fb.keys())
                / max(1e-12, max(sum(fa.values()), sum(fb.values()))),
                4,
            ),
        },
        "logits": _compare_values(sa["logits"], sb["logits"], 0.0),
        "features": feats,
        "supernodes": _supernodes(a, b, cfg) if not by_label else feats,
        "edges": edge_rows,
    }
    if node_keys:
        out["node_keys"] = {"a": sa["keys"], "b": sb["keys"]}
    return out


def _about(g: dict) -> dict:
    m = g.get("metadata", {})
    return {"prompt": m.get("prompt", ""), "model": graph_model(g), "slug": m.get("slug", ""), "nodes": len(g["nodes"])}


def _compare(fa: dict[str, dict], fb: dict[str, dict], min_change: float, label: bool) -> dict:
    rows = _compare_values({k: v["share"] for k, v in fa.items()}, {k: v["share"] for k, v in fb.items()}, min_change)
    if label:
        for part in rows.values():
            for r in part:
                r["label"] = (fb.get(r["key"]) or fa.get(r["key"]) or {}).get("label", "")
    return rows


def _compare_values(va: dict, vb: dict, min_change: float, limit: int | None = None) -> dict[str, list[dict]]:
    """appear (only in B), disappear (only in A), change (both, |Δ| ≥ min_change); each ranked by |Δ| and cut to
    `limit` rows (rows are built only for what is kept: two graphs can differ in tens of thousands of edges)."""
    import heapq

    def ranked(items) -> list[dict]:
        best = heapq.nsmallest(limit, items) if limit is not None else sorted(items)
        return [
            {
                "key": list(k) if isinstance(k, tuple) else k,
                "a": round(x, 6),
                "b": round(y, 6),
                "delta": round(y - x, 6),
            }
            for _, _, k, x, y in best
        ]

    # (−|Δ|, key as text, key, a, b): the order is by |Δ|, ties by key, and never compares a tuple key with a str
    appear = ranked((-abs(vb[k]), str(k), k, 0.0, vb[k]) for k in vb.keys() - va.keys())
    gone = ranked((-abs(va[k]), str(k), k, va[k], 0.0) for k in va.keys() - vb.keys())
    floor = max(min_change, 1e-12)
    change = ranked(
        (-abs(vb[k] - va[k]), str(k), k, va[k], vb[k]) for k in va.keys() & vb.keys() if abs(vb[k] - va[k]) >= floor
    )
    return {"appear": appear, "disappear": gone, "change": change}


def _supernodes(a: dict, b: dict, cfg: DiffConfig) -> dict:
    """Supernode-level view of an id-aligned diff: influence per supernode label (flowchart boxes, labels)."""
    # the graphs' own supernodes and the features' labels; not their flowcharts (0.2 s a graph, for a side view)
    sa, sb = (_side(g, True, False, edges=False, flowchart=False) for g in (a, b))
    return _compare(sa["features"], sb["features"], cfg.min_change, label=False)
