"""CLI: eval-lens (the lens benchmark: does a dictionary see the concepts of everyday prompts?) and probe-lens (its
quick probes, for candidates between training stages)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mechscope.cli._common import JsonOut, ModelOpt, TranscodersOpt, command
from mechscope.configs import param
from mechscope.lens.config import LensConfig
from mechscope.lens.probe_config import ProbeConfig


@dataclass(kw_only=True)
class EvalLensArgs(ModelOpt, TranscodersOpt, JsonOut):
    lens: LensConfig = field(default_factory=LensConfig)  # its knobs become options
    index: str | None = param(None, help="feature index .sqlite (default: the model's, if built for this set)")
    suite: str | None = param(None, help="suite YAML (default: the shipped mechscope/lens/suite.yaml)")
    out: str | None = param(None, help="also write the JSON result here (e.g. lens.json beside a set)")


@command("eval-lens", help="judge a transcoder set on the lens benchmark (docs/lens.md)")
def cmd_eval_lens(a: EvalLensArgs) -> int:
    from mechscope.lens.run import render, run_lens
    from mechscope.paths import atomic_write_text, check_writable

    if a.out:
        check_writable(a.out)
    res = run_lens(a.model, a.lens, transcoders=a.transcoders, index=a.index, suite=a.suite)
    text = json.dumps(res, ensure_ascii=False, indent=1)
    if a.out:
        atomic_write_text(Path(a.out), text + "\n")
    print(text if a.json else render(res))
    return 0


@dataclass(kw_only=True)
class ProbeLensArgs(ModelOpt, TranscodersOpt, JsonOut):
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # its knobs become options
    suite: str | None = param(None, help="suite YAML (default: the shipped mechscope/lens/suite.yaml)")
    out: str | None = param(None, help="also write the JSON result here (e.g. probes.json beside a candidate set)")


@command("probe-lens", help="quick probes of a transcoder set: swaps, FVU by position, locate shares, dense census")
def cmd_probe_lens(a: ProbeLensArgs) -> int:
    from mechscope.lens.probes import render
    from mechscope.lens.run import run_probes_named
    from mechscope.paths import atomic_write_text, check_writable

    if a.out:
        check_writable(a.out)
    res = run_probes_named(a.model, a.probe, transcoders=a.transcoders, suite=a.suite)
    text = json.dumps(res, ensure_ascii=False, indent=1)
    if a.out:
        atomic_write_text(Path(a.out), text + "\n")
    print(text if a.json else render(res))
    return 0
