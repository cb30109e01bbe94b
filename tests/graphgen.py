"""A synthetic attribution graph in the page's JSON format (graph_schema.json), for browser tests and benchmarks.

No model: feature nodes spread over layers × positions, edges only go upwards (from an earlier layer or the token
embeddings to a later layer or the outputs), weights heavy-tailed like real graphs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_graph(
    n_edges: int, n_features: int = 4000, n_layers: int = 18, tokens: list[str] | None = None, seed: int = 0
) -> dict:
    """>>> g = make_graph(1000); len(g["links"])
    1000
    """
    rng = np.random.default_rng(seed)
    tokens = tokens or ["<bos>", "The", " capital", " of", " the", " state", " containing", " Dallas", " is"]
    T = len(tokens)
    nodes = []
    for p, t in enumerate(tokens):
        nodes.append(
            {
                "node_id": f"E_{100 + p}_{p}",
                "feature": p,
                "layer": "E",
                "ctx_idx": p,
                "feature_type": "embedding",
                "jsNodeId": f"E_{100 + p}-{p}",
                "clerp": t,
                "influence": None,
                "activation": None,
            }
        )
    # features cluster at the last positions, as in real graphs: dense columns
    pos = np.minimum(T - 1, (T * rng.beta(3, 1.2, n_features)).astype(int))
    lay = rng.integers(0, n_layers, n_features)
    infl = np.sort(rng.uniform(0.0, 1.0, n_features))
    seen = set()
    for i in range(n_features):
        f = int(rng.integers(0, 16384))
        while (int(lay[i]), f, int(pos[i])) in seen:
            f = int(rng.integers(0, 16384))
        seen.add((int(lay[i]), f, int(pos[i])))
        nodes.append(
            {
                "node_id": f"{lay[i]}_{f}_{pos[i]}",
                "feature": f,
                "layer": str(lay[i]),
                "ctx_idx": int(pos[i]),
                "feature_type": "cross layer transcoder",
                "jsNodeId": f"{lay[i]}_{f}-0",
                "clerp": f"concept {i}" if i % 3 == 0 else "",
                "influence": float(infl[i]),
                "activation": float(rng.gamma(2.0, 1.5)),
            }
        )
    for l in range(n_layers):
        for p in range(T):
            nodes.append(
                {
                    "node_id": f"err_{l}_{p}",
                    "feature": -1,
                    "layer": str(l),
                    "ctx_idx": p,
                    "feature_type": "mlp reconstruction error",
                    "jsNodeId": f"{l}_{p}-0",
                    "clerp": "",
                    "influence": float(rng.uniform(0.3, 1.0)),
                    "activation": float(rng.uniform(0, 3)),
                }
            )
    outs = [" Austin", " Texas", " the", " a", " Houston", " Dallas", " TX", " located", " called", " known"]
    probs = np.sort(rng.dirichlet(np.ones(len(outs))))[::-1]
    for k, (o, pr) in enumerate(zip(outs, probs)):
        nodes.append(
            {
                "node_id": f"{n_layers + 1}_{200 + k}_{T - 1}",
                "feature": 200 + k,
                "layer": str(n_layers + 1),
                "ctx_idx": T - 1,
                "feature_type": "logit",
                "jsNodeId": f"L_{200 + k}-{T - 1}",
                "token_prob": float(pr),
                "is_target_logit": k == 0,
                "clerp": f'Output "{o}" (p={pr:.3f})',
                "influence": None,
                "activation": None,
            }
        )
    for n in nodes:
        n.setdefault("token_prob", 0.0), n.setdefault("is_target_logit", False)
        n.update(run_idx=0, reverse_ctx_idx=0)
    # rank of each node: embeddings 0, layer l -> l + 1, logits L + 1
    rank = np.array(
        [
            0
            if n["feature_type"] == "embedding"
            else n_layers + 1
            if n["feature_type"] == "logit"
            else int(n["layer"]) + 1
            for n in nodes
        ]
    )
    ids = [n["node_id"] for n in nodes]
    src = rng.integers(0, len(nodes), 3 * n_edges)
    tgt = rng.integers(0, len(nodes), 3 * n_edges)
    ok = rank[src] < rank[tgt]
    pairs = np.unique(np.stack([src[ok], tgt[ok]], 1), axis=0)
    pairs = pairs[rng.permutation(len(pairs))[:n_edges]]
    assert len(pairs) == n_edges, "not enough distinct edges for this many nodes"
    w = rng.standard_t(2, n_edges) * 0.05
    links = [{"source": ids[a], "target": ids[b], "weight": round(float(x), 5)} for (a, b), x in zip(pairs.tolist(), w)]
    return {
        "metadata": {
            "slug": f"synthetic-{n_edges}",
            "scan": "synthetic",
            "transcoder_list": [],
            "prompt_tokens": tokens,
            "prompt": "".join(tokens[1:]),
            "node_threshold": 0.8,
            "schema_version": 1,
            "info": {
                "generator": "mechscope",
                "model": "synthetic",
                "replacement_score": 0.7,
                "input_completeness_score": 0.9,
                "ct_completeness_score": 0.95,
                "pruned_replacement_score": 0.6,
                "pruned_input_completeness_score": 0.85,
                "completeness_score": 0.9,  # the deprecated alias the page still reads
                "pruned_completeness_score": 0.85,
                "top_logits": [
                    {"token": o, "id": 200 + k, "prob": float(p)} for k, (o, p) in enumerate(zip(outs, probs))
                ],
            },
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def write_graph(dir: Path, name: str, n_edges: int, **kw) -> Path:
    p = Path(dir) / f"{name}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(make_graph(n_edges, **kw)))
    return p
