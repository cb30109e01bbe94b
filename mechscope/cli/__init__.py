"""The `mechscope` command: one entry point; every subcommand is generated from a config dataclass.

Adding a command is one dataclass and one function, in one module of this package:

    # mechscope/cli/lens.py
    from dataclasses import dataclass
    from mechscope.cli._common import JsonOut, ModelOpt, command
    from mechscope.configs import param

    @dataclass(kw_only=True)
    class EvalLens(ModelOpt, JsonOut):
        suite: str = param("default", help="prompt suite to run")        # → --suite, with this help and default

    @command("eval-lens", help="judge a dictionary on the lens benchmark")
    def eval_lens(a: EvalLens) -> int:
        ...                                  # use mechscope.session.Session(a.model); print; return 0

then name the module in `COMMAND_MODULES` below. The options come from the dataclass fields (see
`mechscope.cli._build` for the type → flag rules; a library config such as AttributionConfig can be a field,
its knobs then become the command's options). Validation belongs in the dataclass's `__post_init__`
(raise MechscopeError via `mechscope.configs.require`): the CLI prints it on one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from mechscope.cli._build import add_options, build
from mechscope.cli._common import COMMANDS
from mechscope.errors import MechscopeError
from mechscope.progress import configure, watch_command  # a leaf helper: no torch, no layer below

COMMAND_MODULES = (
    "general",
    "transcoders",
    "trace",
    "features",
    "interventions",
    "studies",
    "lens",
    "many",
    "attention",
    "corpus",
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one `--help` away)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _quiet_libraries() -> None:
    # environment only: transformers reads these when (and if) it is first imported, so a command that is
    # refused early never pays the second it takes to import it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # libraries' own tqdm bars (transformers' GGUF loader uses tqdm directly) would print \r-junk into logs
    # beside ours; tqdm reads this once, at its import, and mechscope.progress's bars pass disable=False
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "transformers" in sys.modules:  # already imported (tests, notebooks): tell it directly
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subparser per registered command, its options from the command's dataclass."""
    for mod in COMMAND_MODULES:
        importlib.import_module(f"mechscope.cli.{mod}")
    ap = _Parser(prog="mechscope", description="A microscope for language models.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=cmd.help,
            description=cmd.description or cmd.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_options(p, cmd.config)
        p.add_argument("-q", "--quiet", action="store_true", help="print no progress lines (results and errors only)")
    return ap


class _Stderr(logging.StreamHandler):
    """Writes to sys.stderr as it is at each line: main() called in-process (tests, notebooks) must not keep a
    stream that its caller later swaps out and closes."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # slow steps always say what they are doing (mechscope.progress), on stderr, as plain lines
    prog = logging.getLogger("mechscope.progress")
    if not prog.handlers:
        h = _Stderr()
        h.setFormatter(logging.Formatter("mechscope: %(message)s"))
        prog.addHandler(h)
    prog.setLevel(logging.INFO)
    prog.propagate = False
    warns = logging.getLogger("mechscope.warnings")  # likely mistakes in the input: shown even with --quiet
    if not warns.handlers:
        h = _Stderr()
        h.setFormatter(logging.Formatter("mechscope: warning: %(message)s"))
        warns.addHandler(h)
    warns.propagate = False


def _progress_mode(args: argparse.Namespace, cfg: object) -> None:
    """--quiet silences progress; --json turns it into JSON lines on stderr (stdout keeps the one result)."""
    configure("quiet" if args.quiet else "json" if getattr(cfg, "json", False) else "text")


def main(argv: list[str] | None = None) -> int:
    """Run `mechscope ARGV...`; returns the exit status (2 for a user error, printed on one line)."""
    _quiet_libraries()
    try:
        ap = build_parser()
        try:
            args = ap.parse_args(argv)
        except SystemExit as e:  # --help, or a usage error already printed on one line
            return int(e.code or 0)
        _setup_logging(args.verbose)
        cmd = COMMANDS[args.cmd]
        cfg = build(cmd.config, args)
        _progress_mode(args, cfg)
        limit = getattr(cfg, "max_memory_gb", None)
        if limit is not None:  # one knob for the whole process (guards read it as their default)
            from mechscope.guards import ENV, validate_limit

            os.environ[ENV] = str(validate_limit(limit))
        if getattr(cfg, "threads", None) is not None:
            from mechscope.threads import apply_threads

            apply_threads(cfg.threads)
        # the first line within ~1 s, before torch and transformers load (seconds on a busy machine), and never
        # 8 s without a line afterwards
        try:
            with watch_command(args.cmd):
                return cmd.fn(cfg)
        finally:
            configure("text")  # main() called in-process (tests, notebooks): later library calls talk as usual
    except MechscopeError as e:
        print(f"mechscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
