"""CLI: study NAME|all|FILE.yaml."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechscope.cli_registry import command


def add_parsers(sub, add_model) -> None:
    p = sub.add_parser("study", help="run a case study (or 'all') and write Markdown + HTML reports")
    p.add_argument("name", help="study name, 'all', or a path to a study .yaml file")
    p.add_argument("--model", default=None, help="model (default: the study's own)")
    p.add_argument("--out", default="mechscope-studies", help="output directory")
    p.add_argument("--max-feature-nodes", type=int, default=512)
    p.add_argument("--transcoders", default=None)
    p.add_argument("--json", action="store_true")


@command("study")
def cmd_study(args: argparse.Namespace) -> int:
    from mechscope.features import FeatureIndex, index_path
    from mechscope.models import load_model
    from mechscope.studies.runner import Context, list_studies, load_study, run_study, write_index
    from mechscope.transcoders import load_default_transcoders

    specs = [load_study(n) for n in (list_studies() if args.name == "all" else [args.name])]
    out = Path(args.out)
    results, loaded = [], {}
    for spec in specs:
        name = args.model or spec.get("model", "gemma3-270m")
        if name not in loaded:
            model = load_model(name)
            ts = load_default_transcoders(model, args.transcoders)
            idx = FeatureIndex.matching(index_path(name), ts, model.tokenizer)
            loaded[name] = Context(model, ts, idx, args.max_feature_nodes)
        res = run_study(spec, loaded[name], out / spec["name"])
        results.append(res)
        if not args.json:
            print(f"{spec['name']}: {res['verdict']} ({res['elapsed_s']} s) -> {out / spec['name'] / 'report.md'}")
    if args.name == "all":
        write_index(results, out)
        if not args.json:
            print(f"index: {out / 'index.html'}")
    if args.json:
        print(json.dumps([{k: r[k] for k in ("name", "model", "verdict", "elapsed_s")} for r in results]))
    return 0
