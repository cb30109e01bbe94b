"""The consensus flowchart of a group: the recurring part of its graphs drawn as one graph.

From a `Tally` it builds one graph JSON (the format `mechscope trace` writes) whose feature nodes are the
features found in at least `min_frequency` of the graphs, placed at their most common position from the end,
with their mean influence; token nodes are the positions from the end (named by the token most prompts have
there, else "·"); logit nodes are the answer ranks (named by the most common top answer); links are the mean
weights of the recurring edges between those nodes. `mechscope.attribution.flowchart` then draws it as it
draws any graph, so a group's flowchart reads like a prompt's.

>>> fc = consensus_flowchart(tally, 0.5); print(fc.to_text())                             # doctest: +SKIP
"""

from __future__ import annotations

from mechscope.attribution.flowchart import Flowchart, flowchart


def consensus_graph(t, min_frequency: float = 0.5) -> dict:
    """A graph JSON of the recurring features and edges of Tally `t` (see module docstring)."""
    n = max(1, t.n)
    width = max([-k for k, c in t.tokens.items() if sum(c.values()) >= min_frequency * n] or [1])
    toks = []
    for k in range(width, 0, -1):
        tok, c = (t.tokens.get(-k) or {"·": 0}).most_common(1)[0] if t.tokens.get(-k) else ("·", 0)
        toks.append(tok if c >= min_frequency * n else "·")
    pos = lambda rel: width + rel  # position from the end → index in the consensus prompt
    nodes: list[dict] = []
    ids: dict[str, str] = {}
    for k in range(1, width + 1):
        nid = f"E_{k}_{pos(-k)}"
        ids[f"tok@{-k}"] = nid
        nodes.append(_node(nid, pos(-k), "embedding", "E", k, clerp=toks[pos(-k)]))
    feats = [r for r in t.features(min_frequency) if r["position"] is not None and -r["position"] <= width]
    cum = 0.0
    for r in feats:  # most influential first: the graph JSON's influence is cumulative
        cum += r["mean_share"]
        layer, f = r["key"].split("@")[0].split("/")
        nid = f"{layer}_{f}_{pos(r['position'])}"
        ids[r["key"]] = nid
        nodes.append(
            _node(nid, pos(r["position"]), "cross layer transcoder", layer, int(f), clerp=r["label"], influence=cum)
        )
    top, c = (t.top.most_common(1) or [("answer", 0)])[0]
    if c < min_frequency * n:  # the answers vary (Texas, California, …): the box is the answer, not one token
        top = "the answer"
    n_layers = max([int(r["key"].split("/")[0]) for r in feats] or [0]) + 1
    for rank, (key, p) in enumerate(sorted(t.rank_prob.items(), key=lambda kv: -kv[1])[:2], 1):
        name = top if key == "out#1" else f"answer #{key[4:]}"
        nid = f"{n_layers + 1}_{rank}_{width - 1}"
        ids[key] = nid
        nodes.append(
            _node(
                nid,
                width - 1,
                "logit",
                str(n_layers + 1),
                rank,
                clerp=f'Output "{name}" (p={p / n:.3f})',
                token_prob=p / n,
            )
        )
    links = [
        {"source": ids[a], "target": ids[b], "weight": r["mean_weight"]}
        for r in t.edge_rows(min_frequency)
        for a, b in [r["key"]]
        if a in ids and b in ids
    ]
    return {
        "metadata": {"prompt": "consensus of %d graphs" % t.n, "prompt_tokens": toks, "info": {"model": ""}},
        "qParams": {"pinnedIds": [], "supernodes": []},
        "nodes": nodes,
        "links": links,
    }


def _node(nid: str, ctx: int, kind: str, layer, feature: int, clerp: str = "", influence=None, token_prob=0.0) -> dict:
    return {
        "node_id": nid,
        "feature": feature,
        "layer": str(layer),
        "ctx_idx": ctx,
        "feature_type": kind,
        "clerp": clerp,
        "influence": influence,
        "activation": None,
        "token_prob": token_prob,
    }


def consensus_flowchart(t, min_frequency: float = 0.5) -> Flowchart | None:
    """The flowchart of `consensus_graph(t)`, or None when no feature recurs often enough."""
    g = consensus_graph(t, min_frequency)
    if not any(nd["feature_type"] == "cross layer transcoder" for nd in g["nodes"]):
        return None
    fc = flowchart(g)
    fc.prompt = f"consensus of {t.n} graphs (features in ≥ {min_frequency:.0%} of them)"
    return fc
