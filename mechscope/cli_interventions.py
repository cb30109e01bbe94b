"""CLI: intervene and swap."""
from __future__ import annotations

import argparse
import json

from mechscope.cli_registry import command
from mechscope.errors import MechscopeError


def add_parsers(sub, add_model) -> None:
    p = sub.add_parser("intervene", help="set / scale / ablate features and compare outputs before and after")
    p.add_argument("prompt")
    add_model(p)
    p.add_argument("--set", action="append", default=[], metavar="L/F[@P]=VALUE")
    p.add_argument("--scale", action="append", default=[], metavar="L/F[@P]=FACTOR")
    p.add_argument("--ablate", action="append", default=[], metavar="L/F[@P]")
    p.add_argument("--supernode", action="append", default=[], metavar="NAME=L/F@P,L/F@P", help="name a group of features")
    p.add_argument("--freeze-attention", action="store_true", help="keep attention patterns of the clean run")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="also generate N tokens before and after")
    p.add_argument("--watch", action="append", default=[], metavar="TOKEN", help="report this token's probability")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--transcoders", default=None)
    p.add_argument("--chat", action="store_true")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("swap", help="transplant a concept: suppress the prompt's features, inject a donor's")
    p.add_argument("prompt")
    add_model(p)
    p.add_argument("--donor", required=True, help="donor prompt, e.g. 'Oakland is in the state of'")
    p.add_argument("--remove", default="auto", help="'auto' or comma-separated features/supernodes to suppress")
    p.add_argument("--supernode", action="append", default=[])
    p.add_argument("--pos", type=int, action="append", default=None, help="recipient position(s) (default: where the prompts differ)")
    p.add_argument("--donor-pos", type=int, action="append", default=None)
    p.add_argument("--factor", type=float, default=1.0)
    p.add_argument("--max-layer", type=int, default=None, help="only swap features up to this layer")
    p.add_argument("--span", default="diff", choices=["diff", "rest"],
                   help="swap where the prompts differ (diff) or there and at every later position (rest)")
    p.add_argument("--with-skip", action="store_true", help="also transplant the transcoders' linear skip term there")
    p.add_argument("--watch", action="append", default=[], metavar="TOKEN", help="report this token's probability")
    p.add_argument("--locate", action="store_true",
                   help="instead of swapping, show which part of the MLPs (features, skip, error) carries the difference")
    p.add_argument("--generate", type=int, default=0)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--transcoders", default=None)
    p.add_argument("--json", action="store_true")


def _load(args):
    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders
    from mechscope.transcoders.registry import find_transcoders

    find_transcoders(args.model, args.transcoders)
    model = load_model(args.model)
    return model, load_default_transcoders(model, args.transcoders)


def _print(res: dict) -> None:
    width = max(len(repr(r["token"])) for r in res["before"] + res["after"])
    print(f"{'before':<{width + 8}}   after")
    for b, a in zip(res["before"], res["after"]):
        print(f"{b['token']!r:<{width}} {b['prob']:.3f}   {a['token']!r:<{width}} {a['prob']:.3f}")
    for w in res.get("watch", []):
        print(f"p({w['token']!r}): {w['before']:.3f} -> {w['after']:.3f}")
    if "generation_before" in res:
        print(f"generation before: {res['generation_before']!r}")
        print(f"generation after:  {res['generation_after']!r}")


@command("intervene")
def cmd_intervene(args: argparse.Namespace) -> int:
    from mechscope.interventions import Supernodes, intervene, parse_edits

    sn = Supernodes()
    for s in args.supernode:
        sn.add(s)
    edits = parse_edits(args.set, args.scale, args.ablate, sn)   # bad specs fail before the model loads
    if not edits:
        raise MechscopeError("no edit given: use --set, --scale or --ablate")
    if args.generate < 0 or args.top_k < 1:
        raise MechscopeError("--generate must be ≥ 0 and --top-k ≥ 1")
    model, ts = _load(args)
    res = intervene(model, ts, args.prompt, edits, generate=args.generate, freeze_attention=args.freeze_attention,
                    top_k=args.top_k, chat=args.chat, watch=args.watch)
    if args.json:
        print(json.dumps(res, ensure_ascii=False))
    else:
        _print(res)
    return 0


@command("swap")
def cmd_swap(args: argparse.Namespace) -> int:
    from mechscope.interventions import Edit, Supernodes, swap

    sn = Supernodes()
    for s in args.supernode:
        sn.add(s)
    remove = None
    if args.remove != "auto":
        remove = [Edit(r, "ablate") for tok in args.remove.split(",") if tok.strip() for r in sn.resolve(tok.strip())]
    model, ts = _load(args)
    if args.max_layer is not None and not 0 <= args.max_layer < model.n_layers:
        raise MechscopeError(f"--max-layer {args.max_layer} out of range (0..{model.n_layers - 1})")
    if args.locate:
        from mechscope.interventions import locate_concept
        if not args.watch:
            raise MechscopeError("--locate needs --watch TOKEN (e.g. --watch ' Texas' --watch ' California')")
        res = locate_concept(model, ts, args.prompt, args.donor, args.watch, span=args.span)
        if args.json:
            print(json.dumps(res, ensure_ascii=False))
            return 0
        print(f"patched from the donor at positions {res['positions']} (donor {res['donor_positions']}), all layers:")
        print(f"{'component':<12}" + "".join(f"{w!r:>14}" for w in args.watch))
        for comp, ps in res["probs"].items():
            print(f"{comp:<12}" + "".join(f"{p:>14.3f}" for p in ps))
        return 0
    res = swap(model, ts, args.prompt, args.donor, remove=remove, pos=args.pos, donor_pos=args.donor_pos,
               factor=args.factor, max_layer=args.max_layer, generate=args.generate, top_k=args.top_k,
               watch=args.watch, span=args.span, with_skip=args.with_skip)
    if args.json:
        print(json.dumps(res, ensure_ascii=False))
    else:
        print(f"positions {res['positions']} <- donor positions {res['donor_positions']}: "
              f"{len(res['removed'])} features suppressed, {len(res['injected'])} injected (factor {res['factor']})")
        _print(res)
    return 0
