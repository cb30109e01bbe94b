"""CLI: study NAME|all|FILE.yaml."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mechscope.attribution.config import PRESETS
from mechscope.cli._common import JsonOut, MemoryOpt, ThreadsOpt, TranscodersOpt, command
from mechscope.configs import param
from mechscope.models.registry import MODEL_HELP
from mechscope.studies.catalog import list_studies

_STUDIES = ", ".join(list_studies())


@dataclass(kw_only=True)
class StudyArgs(TranscodersOpt, MemoryOpt, ThreadsOpt, JsonOut):
    name: str = param(positional=True, help=f"study name ({_STUDIES}), 'all', or a path to a study .yaml file")
    model: str | None = param(None, help=MODEL_HELP + " (default: the study's own)")
    out: str = param("mechscope-studies", help="output directory")
    max_feature_nodes: int = param(
        PRESETS["interactive"].max_feature_nodes, help="feature nodes per traced graph (an experiment may set its own)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model is not None:  # an unknown name is refused before any import
            from mechscope.models.registry import resolve_model_name

            resolve_model_name(self.model)


@command(
    "study",
    help="run a case study (or 'all') and write Markdown + HTML reports",
    description=f"Run a case study and write Markdown + HTML reports.\n\nstudies: {_STUDIES}",
)
def cmd_study(a: StudyArgs) -> int:
    from mechscope.configs import require
    from mechscope.models.registry import DEFAULT_MODEL
    from mechscope.paths import check_writable
    from mechscope.session import Session
    from mechscope.studies.runner import Context, check_study, load_study, run_study, write_index

    require(a.max_feature_nodes >= 0, "--max-feature-nodes must be ≥ 0")
    specs = [load_study(n) for n in (list_studies() if a.name == "all" else [a.name])]
    out = Path(a.out)
    check_writable(out, kind="dir")
    results, loaded = [], {}
    for spec in specs:
        name = a.model or spec.get("model", DEFAULT_MODEL)
        if name not in loaded:
            s = Session(name, a.transcoders)
            s.check_transcoders()
            loaded[name] = Context(s.model, s.transcoders, s.index, a.max_feature_nodes)
        check_study(spec, loaded[name].model)  # every study checked before any runs: no late one-line error
    for spec in specs:
        res = run_study(spec, loaded[a.model or spec.get("model", DEFAULT_MODEL)], out / spec["name"])
        results.append(res)
        if not a.json:
            print(
                f"{spec['name']}: {res['verdict']} (decided by experiments {res['decided_by']}; {res['elapsed_s']} s)"
                f" -> {out / spec['name'] / 'report.md'}"
            )
    if a.name == "all":
        write_index(results, out)
        if not a.json:
            print(f"index: {out / 'index.html'}")
    if a.json:
        print(json.dumps([{k: r[k] for k in ("name", "model", "verdict", "decided_by", "elapsed_s")} for r in results]))
    return 0
