"""The pruned view (issue #22): what it costs, and whether fewer rows could give it for less work. Prints numbers.

The view a user sees is the graph after default pruning (nodes by cumulative influence, then edges). For each
prompt this traces at several feature-row budgets, in one process with the model loaded, and prints for each:
attribution seconds, pruning seconds (reading the view out into Python sets included), the view's size, and how much of the reference budget's view (the first budget,
2,048 rows by default) it recovers: its feature nodes (recall and precision) and the |weight| of its edges, plus
the largest relative change of a shared edge's weight, with the 1-minute load average beside each line.

    python benchmarks/bench_pruned_view.py [--model gemma3-270m] [--rows 2048 1024 512 256] [--json out.json]

Run it on a quiet machine: the seconds swing 3-8x beside other busy programs; the overlaps do not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_busy import PROMPTS  # noqa: E402  (the same 7- and 16-token prompts)
from mechscope.provenance import stamp


def view(graph) -> tuple[set[str], dict[tuple[str, str], float]]:
    """(feature node ids, {(target id, source id): weight}) of the graph's default pruned view."""
    node_mask, edge_mask, _ = graph.prune()
    ids = [nd["node_id"] for nd in graph.nodes]
    feats = {ids[i] for i in node_mask[: graph.n_feat].nonzero().squeeze(-1).tolist()}
    tgt, src = edge_mask.nonzero(as_tuple=True)
    return feats, {(ids[a], ids[b]): float(graph.A[a, b]) for a, b in zip(tgt.tolist(), src.tolist())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--tokens", type=int, nargs="+", default=[7, 16], choices=sorted(PROMPTS))
    ap.add_argument("--rows", type=int, nargs="+", default=[2048, 1024, 512, 256], help="first: the reference")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)

    from mechscope import load_model
    from mechscope.attribution.attribute import AttributionConfig, attribute
    from mechscope.transcoders import load_default_transcoders

    model = load_model(a.model)
    ts = load_default_transcoders(model)
    attribute(model, ts, "Warm up")  # one-off costs (first forward, page cache) out of the numbers
    results = []
    for n in a.tokens:
        ref: tuple[set[str], dict] | None = None
        for rows in a.rows:
            t = time.time()
            g = attribute(model, ts, PROMPTS[n], AttributionConfig(max_feature_nodes=rows))
            t_attr = time.time() - t
            t = time.time()
            feats, edges = view(g)
            t_prune = time.time() - t
            ref = ref or (feats, edges)
            shared = [k for k in ref[1] if k in edges]
            mass = sum(abs(v) for v in ref[1].values()) or 1.0
            r = {
                "tokens": len(g.meta["prompt_tokens"]),
                "rows": rows,
                "attribution_s": round(t_attr, 2),
                "prune_s": round(t_prune, 3),
                "view_features": len(feats),
                "view_edges": len(edges),
                "feature_recall": round(len(feats & ref[0]) / max(1, len(ref[0])), 3),
                "feature_precision": round(len(feats & ref[0]) / max(1, len(feats)), 3),
                "edge_weight_recall": round(sum(abs(ref[1][k]) for k in shared) / mass, 3),
                "max_rel_edge_change": max(
                    (abs(edges[k] - ref[1][k]) / max(abs(ref[1][k]), 1e-6) for k in shared), default=0.0
                ),
                "load": round(os.getloadavg()[0], 2),
            }
            results.append(r)
            print(
                f"{n:>2} tokens {rows:>5} rows: attribution {r['attribution_s']:.2f} s + pruning {r['prune_s']:.3f} s; "
                f"view {r['view_features']} features, {r['view_edges']} edges; of the {a.rows[0]}-row view: "
                f"features {r['feature_recall']:.0%} recalled ({r['feature_precision']:.0%} precise), edge weight "
                f"{r['edge_weight_recall']:.0%}, shared edges within {r['max_rel_edge_change']:.1e} "
                f"[load {r['load']:.2f}]",
                flush=True,
            )
    if a.json:
        Path(a.json).write_text(json.dumps(stamp({"model": a.model, "results": results}, model=a.model), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
