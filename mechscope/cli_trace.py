"""CLI: trace (attribution graphs) and bench."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mechscope.cli_registry import command
from mechscope.errors import MechscopeError


def add_parsers(sub, add_model) -> None:
    from mechscope.attribution.attribute import AttributionConfig

    d = AttributionConfig()
    p = sub.add_parser("trace", help="compute the attribution graph of a prompt")
    p.add_argument("prompt")
    add_model(p)
    p.add_argument("--out", default=None, help="graph JSON path (default: the graph store)")
    p.add_argument("--target", action="append", default=[], help="logit token to explain (repeatable)")
    p.add_argument("--logit-diff", nargs=2, metavar=("TOKEN_A", "TOKEN_B"), default=None, help="explain logit(A) − logit(B)")
    p.add_argument("--max-feature-nodes", type=int, default=d.max_feature_nodes)
    p.add_argument("--node-threshold", type=float, default=d.node_threshold)
    p.add_argument("--edge-threshold", type=float, default=d.edge_threshold)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--transcoders", default=None, help="transcoder set directory (default: the model's)")
    p.add_argument("--validate", type=int, default=0, metavar="N",
                   help="ablate the N most influential features and compare with the graph's prediction")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="where the model runs (cuda: untested here, no GPU was available; rows are assembled on the CPU)")
    p.add_argument("--chat", action="store_true")
    p.add_argument("--flowchart", default=None, metavar="FILE.svg",
                   help="also write an automatic flowchart of labelled supernodes as SVG")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="time tracing on fixed prompts (prints numbers)")
    add_model(p)
    p.add_argument("--max-feature-nodes", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")


def _finite_threshold(name: str, v: float) -> None:
    if not (0 < v <= 1):
        raise MechscopeError(f"--{name} must lie in (0, 1], got {v}")


@command("trace")
def cmd_trace(args: argparse.Namespace) -> int:
    from mechscope.attribution import AttributionConfig, attribute, graph_store
    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders
    from mechscope.transcoders.registry import find_transcoders

    _finite_threshold("node-threshold", args.node_threshold)
    _finite_threshold("edge-threshold", args.edge_threshold)
    if args.max_feature_nodes < 0:
        raise MechscopeError("--max-feature-nodes must be ≥ 0")
    if args.flowchart and not args.flowchart.lower().endswith(".svg"):
        raise MechscopeError(f"--flowchart must name an .svg file, got {args.flowchart!r}")
    find_transcoders(args.model, args.transcoders)   # fail before loading the model
    from mechscope.models.loading import resolve_device
    model = load_model(args.model, device=str(resolve_device(args.device)))
    ts = load_default_transcoders(model, args.transcoders)
    cfg = AttributionConfig(max_feature_nodes=args.max_feature_nodes, targets=args.target,
                            logit_diff=tuple(args.logit_diff) if args.logit_diff else None,
                            node_threshold=args.node_threshold, edge_threshold=args.edge_threshold, batch_size=args.batch_size)
    g = attribute(model, ts, args.prompt, cfg, chat=args.chat)
    out = Path(args.out) if args.out else graph_store() / f"{g.slug()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    labels = _labels(args.model, ts)
    data = g.to_json(labels=labels)
    from mechscope.attribution.supernodes import flowchart
    from mechscope.paths import atomic_write_text
    atomic_write_text(out, json.dumps(data))
    g.save_binary(out.with_suffix(".adjacency.safetensors"))
    fc = flowchart(data, labels)
    if args.flowchart:
        atomic_write_text(Path(args.flowchart), fc.to_svg())
    info = data["metadata"]["info"]
    summary = {"graph_path": str(out), "n_nodes": len(data["nodes"]), "n_edges": len(data["links"]),
               "replacement_score": info["replacement_score"], "completeness_score": info["completeness_score"],
               "pruned_replacement_score": info["pruned_replacement_score"],
               "pruned_completeness_score": info["pruned_completeness_score"],
               "n_nodes_full": info["n_nodes_full"], "n_edges_full": info["n_edges_full"],
               "elapsed_s": g.meta["elapsed_s"], "top_logits": g.meta["top_logits"], "prompt_tokens": g.meta["prompt_tokens"]}
    if args.validate:
        from mechscope.interventions import validate_graph
        if args.chat:
            raise MechscopeError("--validate does not support --chat yet")
        summary["validation"] = validate_graph(model, ts, g, top_n=args.validate)
    summary["flowchart"] = fc.to_json()
    if args.flowchart:
        summary["flowchart_svg"] = str(args.flowchart)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    print(f"tokens: {' | '.join(repr(t) for t in g.meta['prompt_tokens'])}")
    print("top logits: " + ", ".join(f"{t['token']!r} {t['prob']:.3f}" for t in g.meta["top_logits"]))
    print("most influential features per position (layer/feature, activation, influence rank):")
    by_pos: dict[int, list[dict]] = {}
    for nd in data["nodes"]:
        if nd["feature_type"] == "cross layer transcoder":
            by_pos.setdefault(nd["ctx_idx"], []).append(nd)
    for p in sorted(by_pos):
        top = sorted(by_pos[p], key=lambda nd: nd["influence"])[:3]
        desc = "; ".join(f"{nd['layer']}/{nd['feature']} a={nd['activation']:.2f}" + (f" “{nd['clerp']}”" if nd["clerp"] else "")
                         for nd in top)
        print(f"  [{p}] {g.meta['prompt_tokens'][p]!r}: {desc}")
    print(f"replacement score {summary['replacement_score']:.3f} (pruned {summary['pruned_replacement_score']:.3f}), "
          f"completeness {summary['completeness_score']:.3f} (pruned {summary['pruned_completeness_score']:.3f})")
    print(f"pruned graph: {summary['n_nodes']} nodes, {summary['n_edges']} edges "
          f"(full: {summary['n_nodes_full']} nodes, {summary['n_edges_full']} edges); {summary['elapsed_s']:.2f} s")
    if args.validate:
        v = summary["validation"]
        print(f"validation on {v['target']}: {v['n']} features ablated; Spearman(predicted, actual) = {v['spearman']:.2f}, "
              f"sign agreement {v['sign_agreement']:.2f}")
    print(fc.to_text())
    print(f"saved {out}" + (f"; flowchart {args.flowchart}" if args.flowchart else ""))
    if out.parent.resolve() == graph_store().resolve():
        print(f"explore it: mechscope serve --model {args.model}  then open http://127.0.0.1:8765/#graph={out.stem}")
    return 0


def _labels(model: str, ts) -> dict[str, str]:
    """Feature labels from the model's feature index, if it was built for this transcoder set."""
    from mechscope.features import FeatureIndex, index_path

    try:
        idx = FeatureIndex.matching(index_path(model), ts)
    except MechscopeError:
        return {}
    return idx.labels() if idx else {}


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    import runpy
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_trace.py"
    if not script.exists():
        raise MechscopeError(f"benchmark script {script} not found (run from a source checkout)")
    sys.argv = [str(script), "--model", args.model, "--max-feature-nodes", str(args.max_feature_nodes),
                "--repeats", str(args.repeats)] + (["--json"] if args.json else [])
    runpy.run_path(str(script), run_name="__main__")
    return 0
