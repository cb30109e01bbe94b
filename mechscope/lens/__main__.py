"""`python -m mechscope.lens`: run the lens benchmark on one model and transcoder set.

    python -m mechscope.lens --model gemma3-270m [--transcoders DIR] [--index FILE] [--suite FILE]
                             [--quick] [--category C ...] [--json] [--out FILE]

Prints a table (or the whole result as JSON with --json); --out also writes the JSON (temp file + rename).
User errors print one line on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mechscope.errors import MechscopeError


def build_parser() -> argparse.ArgumentParser:
    from mechscope.lens.evaluate import LensConfig
    from mechscope.models.registry import DEFAULT_MODEL

    d = LensConfig()
    p = argparse.ArgumentParser(prog="python -m mechscope.lens", description="the lens benchmark (see docs/lens.md)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--transcoders", default=None, help="transcoder set directory (default: the model's)")
    p.add_argument("--index", default=None, help="feature index .sqlite (default: the model's, if built for this set)")
    p.add_argument("--suite", default=None, help="suite YAML (default: the shipped mechscope/lens/suite.yaml)")
    p.add_argument("--quick", action="store_true", help="3 prompts per category and the swap pairs among them")
    p.add_argument("--category", action="append", default=[], help="only this category (repeatable)")
    p.add_argument("--max-feature-nodes", type=int, default=d.max_feature_nodes)
    p.add_argument("--factor", type=float, action="append", default=None, help=f"swap factor (repeatable; default {list(d.factors)})")
    p.add_argument("--span", choices=["diff", "rest"], default=d.swap_span)
    p.add_argument("--validate", type=int, default=d.validate_top, metavar="N", help="features ablated per graph (0: skip)")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="wall-clock budget: swaps first, then graphs round-robin over categories until it is spent")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--progress", action="store_true")
    return p


def _fmt(v) -> str:
    return "   –" if v is None else f"{v:5.2f}"


def render(res: dict) -> str:
    cols = [("swap", "swap_success"), ("feat", "feature_share"), ("tok", "token_share"), ("err", "error_share"),
            ("ct_rep", "ct_replacement"), ("ct_cmp", "ct_completeness"), ("rep", "replacement"),
            ("cmp", "completeness"), ("rho", "validate_spearman"), ("spec", "top20_specific_share"),
            ("dense", "top20_dense_share"), ("acc", "accuracy")]
    cut = f"; {len(res['not_run'])} items not run (budget)" if res.get("not_run") else ""
    lines = [(f"lens: {res['model']} · {res['transcoders']} · {res['suite']['n_prompts']} prompts, "
              f"{res['suite']['n_pairs']} swap pairs ({len(res['suite']['skipped'])} prompts skipped{cut})"),
             f"{'category':<18}" + "".join(f"{h:>7}" for h, _ in cols) + "  pairs"]
    for name, agg in list(res["categories"].items()) + [("overall", res["overall"])]:
        lines.append(f"{name:<18}" + "".join(f"{_fmt(agg.get(k)):>7}" for _, k in cols)
                     + f"  {agg['n_pairs_applicable']}/{agg['n_pairs']}")
    if res.get("index"):
        ix = res["index"]
        lines.append(f"index: held-out label F1 {_fmt(ix['label_f1_mean']).strip()}, features denser than 5%: "
                     f"{ix['dense_share']:.3f}, dead {ix['dead_share']:.3f}")
    else:
        lines.append("index: none for this transcoder set (label and density numbers left out)")
    lines.append("targets: " + ", ".join(f"{k} {'✓' if t['met'] else '✗' if t['met'] is False else '–'}"
                                         for k, t in res["targets"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        from mechscope.features import FeatureIndex, index_path
        from mechscope.lens.evaluate import LensConfig, evaluate_lens
        from mechscope.lens.suite import load_suite
        from mechscope.models import load_model
        from mechscope.paths import atomic_write_text, portable_path
        from mechscope.transcoders import load_default_transcoders
        from mechscope.transcoders.registry import find_transcoders

        cfg = LensConfig(subset="quick" if args.quick else "full", categories=tuple(args.category),
                         max_feature_nodes=args.max_feature_nodes,
                         factors=tuple(args.factor) if args.factor else LensConfig().factors,
                         swap_span=args.span, validate_top=args.validate, budget_s=args.budget_s,
                         progress=args.progress)
        suite = load_suite(args.suite)                       # bad suites and configs fail before the model loads
        find_transcoders(args.model, args.transcoders)
        if args.index and not Path(args.index).exists():
            raise MechscopeError(f"feature index {args.index} not found")
        model = load_model(args.model)
        ts = load_default_transcoders(model, args.transcoders)
        if args.index:
            index = FeatureIndex(args.index, model.tokenizer)
            if not index.matches(ts):
                raise MechscopeError(f"feature index {args.index} was built for another transcoder set")
        else:
            try:
                index = FeatureIndex.matching(index_path(args.model), ts, model.tokenizer)
            except MechscopeError:
                index = None
        res = evaluate_lens(model, ts, index, suite, cfg)
        res["transcoders"] = portable_path(res["transcoders"])
        if res.get("index"):
            from mechscope.paths import cache_dir
            ip = res["index"]["path"]
            # the shipped index is unpacked into the cache: name the archive, not this machine's cache
            res["index"]["path"] = (f"shipped index of {args.model}" if ip.startswith(str(cache_dir())) else portable_path(ip))
        res["suite"]["path"] = portable_path(res["suite"]["path"])
        text = json.dumps(res, ensure_ascii=False, indent=1)
        if args.out:
            atomic_write_text(Path(args.out), text + "\n")
    except MechscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text if args.json else render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
