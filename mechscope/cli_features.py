"""CLI: index-features, feature, search-features."""
from __future__ import annotations

import argparse
import json

from mechscope.cli_registry import command
from mechscope.errors import MechscopeError


def add_parsers(sub, add_model) -> None:
    from mechscope.features.index import IndexConfig

    d = IndexConfig()
    p = sub.add_parser("index-features", help="build the feature index (examples, logit effects, labels)")
    add_model(p)
    p.add_argument("--tokens", type=int, default=d.tokens)
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--transcoders", default=None)
    p.add_argument("--out", default=None, help="SQLite path (default: the user data dir)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("feature", help="text dashboard of one feature")
    p.add_argument("id", metavar="L/F")
    add_model(p)
    p.add_argument("--index", default=None, help="feature index path (default: the model's)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("search-features", help="find features by label, input token, output token, or by running a text")
    p.add_argument("query", help="label text, a token, or (with --by prompt) a text to run the model on")
    add_model(p)
    p.add_argument("--by", choices=["label", "token", "logit", "prompt"], default="label",
                   help="prompt: run QUERY through the model and list the features active at --token/--pos (default: last token)")
    p.add_argument("--token", default=None, help="with --by prompt: probe the last occurrence of this token")
    p.add_argument("--pos", type=int, default=None, help="with --by prompt: probe this position (negative from the end)")
    p.add_argument("--transcoders", default=None)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--index", default=None)
    p.add_argument("--json", action="store_true")


def _index(args):
    from mechscope.features import FeatureIndex

    tok = _tokenizer(args.model)
    return FeatureIndex(args.index, tok) if args.index else FeatureIndex.for_model(args.model, tok)


def _tokenizer(model: str):
    """The tokenizer alone (no weights): enough to print examples."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from mechscope.models.loading import converted_dir
    from mechscope.models.registry import MODELS, resolve_model_name

    name = resolve_model_name(model)
    src = converted_dir(name) if name in MODELS else Path(name)
    try:
        return AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    except OSError:
        from mechscope.models import load_model
        return load_model(model).tokenizer


@command("index-features")
def cmd_index(args: argparse.Namespace) -> int:
    from mechscope.features import IndexConfig, build_index, user_index_path
    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders
    from mechscope.transcoders.registry import find_transcoders

    if args.tokens < 64:
        raise MechscopeError("--tokens must be at least 64")
    find_transcoders(args.model, args.transcoders)
    model = load_model(args.model)
    ts = load_default_transcoders(model, args.transcoders)
    out = args.out or user_index_path(args.model)
    meta = build_index(model, ts, out, IndexConfig(corpus=args.corpus, tokens=args.tokens), progress=not args.json)
    meta["path"] = str(out)
    print(json.dumps(meta) if args.json else
          f"indexed {meta['tokens']} tokens in {meta['elapsed_s']} s -> {out}; label F1 (held-out) mean {meta['label_f1_mean']}")
    return 0


def _bar(x: float, width: int = 20) -> str:
    return "█" * int(round(x * width))


@command("feature")
def cmd_feature(args: argparse.Namespace) -> int:
    from mechscope.interventions import parse_ref

    ref = parse_ref(args.id)
    d = _index(args).feature(ref.layer, ref.feature)
    if args.json:
        print(json.dumps(d, ensure_ascii=False))
        return 0
    print(f"feature {d['id']}  “{d['label']}”  (confidence {d['label_confidence']:.2f}"
          + (f", held-out F1 {d['label_score']:.2f}" if d["label_score"] is not None else "") + ")")
    print(f"density {d['density']:.5f}   max activation {d['max_act']:.2f}   mean {d['mean_act']:.2f}")
    print("fires on: " + ", ".join(f"{t!r}×{n}" for t, n in d["top_tokens"][:8]))
    print("promotes: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in d["top_logits"][:8]))
    print("suppresses: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in d["bottom_logits"][:8]))
    for ex in d["examples"]:
        text = "".join(f"[[{t}]]" if i == ex["max_pos"] else t for i, t in enumerate(ex["tokens"]))
        print(f"  {ex['kind']:<6} {ex['activation']:6.2f}  {text!r}")
    counts = d["hist"]["counts"]
    if counts:
        mx = max(counts) or 1
        edges = d["hist"]["edges"]
        print("histogram (non-zero activations):")
        for i, c in enumerate(counts):
            if c:
                lo = edges[i - 1] if i > 0 else 0
                print(f"  ≥{lo:8.3f} {_bar(c / mx)} {c}")
    return 0


def _search_by_prompt(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mechscope.features import FeatureIndex, index_path
    from mechscope.features.probe import hits_to_json, probe_features
    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders

    model = load_model(args.model)
    ts = load_default_transcoders(model, args.transcoders)
    idx = FeatureIndex.matching(Path(args.index) if args.index else index_path(args.model), ts, model.tokenizer)
    pos, toks, hits = probe_features(model, ts, args.query, token=args.token, pos=args.pos, index=idx, limit=args.limit)
    if args.json:
        print(json.dumps(hits_to_json(pos, toks, hits), ensure_ascii=False))
        return 0
    print(f"features at position {pos} ({toks[pos]!r}) of {args.query!r}"
          + ("" if idx else " — no matching feature index: ranked by raw activation, no labels"))
    for h in hits:
        rel = f"{h.relative:6.0%} of max" if h.relative is not None else ""
        print(f"{h.id:<10} act {h.activation:7.2f} {rel:>12}  density {h.density if h.density is not None else float('nan'):.4f}  “{h.label}”")
    return 0


@command("search-features")
def cmd_search(args: argparse.Namespace) -> int:
    if args.by == "prompt":
        return _search_by_prompt(args)
    if args.token is not None or args.pos is not None:
        raise MechscopeError("--token and --pos go with --by prompt")
    rows = _index(args).search(args.query, by=args.by, limit=args.limit)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("no match")
    for r in rows:
        print(f"{r['layer']}/{r['feature']:<6} {r['score']:7.3f}  density {r['density']:.4f}  “{r['label']}”")
    return 0
