"""Case studies as data: a YAML file lists experiments (each with prompt variants and a role); the runner
checks the file against the model, measures every variant, and computes the verdict (`verdicts`).

Each experiment is a precondition (the model does the behaviour) or evidence (an intervention or graph
measurement that tests the mechanism); the verdict rests on the evidence (see `mechscope.studies.verdicts`).
Experiment kinds and the keys each takes: `mechscope.studies.kinds` (one options dataclass per kind).

>>> spec = load_study("known-entity")                                   # doctest: +SKIP
>>> res = run_study(spec, Context(model, ts), Path("reports/studies/gemma3-270m/known-entity"))  # doctest: +SKIP
>>> res["verdict"], res["decided_by"]                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml

from mechscope.errors import MechscopeError
from mechscope.studies import kinds  # noqa: F401  (registers the experiment kinds)
from mechscope.studies.catalog import DEFS, list_studies  # noqa: F401 (re-exported)
from mechscope.studies.preconditions import unmet
from mechscope.studies.registry import KINDS, Context, Experiment, Result, parse_experiment
from mechscope.studies.report import write_index, write_report
from mechscope.studies.verdicts import Outcome, combine, verdict

__all__ = ["Context", "Result", "check_study", "list_studies", "load_study", "run_study", "verdict", "write_index"]

log = logging.getLogger(__name__)
progress = logging.getLogger("mechscope.progress")  # the CLI prints it on stderr: one line per variant


def load_study(name_or_path: str) -> dict:
    """Read and check a study file (a shipped name or a path); MechscopeError names the first problem."""
    p = Path(name_or_path)
    if not p.exists():
        p = DEFS / f"{name_or_path}.yaml"
    if not p.exists():
        raise MechscopeError(
            f"unknown study {name_or_path!r}; known: {', '.join(list_studies())} (or a path to a .yaml file)"
        )
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise MechscopeError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MechscopeError(f"cannot read study {p}: {e}") from None
    if spec is None:
        raise MechscopeError(f"study {p} is empty: it needs name, title, hypothesis and experiments")
    if not isinstance(spec, dict):
        raise MechscopeError(
            f"study {p} must be a mapping with name, title, hypothesis and experiments, not a {type(spec).__name__}"
        )
    for key in ("name", "title", "hypothesis", "experiments"):
        if key not in spec:
            raise MechscopeError(f"study {p} lacks '{key}'")
    if not isinstance(spec["experiments"], list) or not spec["experiments"]:
        raise MechscopeError(f"study {p}: 'experiments' must be a non-empty list")
    exps = experiments(spec, str(p))  # typed options: refuses a bad file at once
    partly = spec.get("partly_supported_when")
    if partly is not None:
        ev = {i + 1 for i, e in enumerate(exps) if e.role == "evidence"}
        if not isinstance(partly, list) or not partly or not set(partly) <= ev:
            raise MechscopeError(
                f"study {p}: partly_supported_when must list evidence experiment numbers (here {sorted(ev)}), "
                f"not {partly!r}"
            )
    return spec


def experiments(spec: dict, where: str | None = None) -> list[Experiment]:
    where = where or spec["name"]
    return [parse_experiment(e, f"study {where}: experiment {i + 1}") for i, e in enumerate(spec["experiments"])]


def check_study(spec: dict, model) -> list[Experiment]:
    """Check every variant against the model's tokenizer before anything runs: expected answers must be one
    token and swap pairs must share context to align on. MechscopeError names the experiment and variant."""
    from mechscope.interventions import aligned_pairs

    exps = experiments(spec)
    bos = model.tokenizer.bos_token_id
    for exp in exps:
        for j, o in enumerate(exp.runs):
            if model.name in o.skip:
                continue
            where = exp.where + (f" variant {j + 1}" if len(exp.runs) > 1 else "") + f" ({exp.kind})"
            for tok in o.single_tokens():
                try:
                    model.token_id(tok)
                except MechscopeError as err:
                    raise MechscopeError(f"{where}: expected answer {err}") from None
            for a, b in o.swap_pairs():
                ta, tb = model.tokenize(a), model.tokenize(b)
                try:
                    aligned_pairs(
                        ta.strs, tb.strs, getattr(o, "span", "span"), bos is not None and int(ta.ids[0]) == bos
                    )
                except MechscopeError as err:
                    raise MechscopeError(f"{where}: {a!r} vs {b!r}: {err}") from None
    return exps


def _run_one(ctx: Context, exp: Experiment, o) -> Result:
    prompt = getattr(o, "prompt", None)  # a variant's row is named by its prompt, as the kinds name their own
    title = o.title or (f"{exp.kind} {prompt!r}" if prompt and len(exp.runs) > 1 else exp.title)
    if ctx.model.name in o.skip:
        return Result(exp.kind, title, None, f"skipped on {ctx.model.name} (the study file says so).")
    try:
        why = unmet(ctx, o)
        if why:  # the model does not do the task on this variant: not evidence either way
            r = Result(exp.kind, title, None, f"not applicable: {why}.", status="not applicable")
        else:
            r = KINDS[exp.kind].run(ctx, o)
    except MechscopeError as err:  # one bad variant is reported, the study goes on
        r = Result(exp.kind, title, None, f"could not run: {err}", not_run=True)
    r.rule = r.rule or o.rule()
    return r


def _run_experiment(ctx: Context, spec: dict, i: int, exps: list[Experiment]) -> Result:
    """One experiment's variants, each announced on the progress log (a study never sits silent for long)."""
    exp, out = exps[i], []
    for j, o in enumerate(exp.runs):
        progress.info(
            "study %s: experiment %d/%d (%s)%s",
            spec["name"],
            i + 1,
            len(exps),
            exp.kind,
            f", variant {j + 1}/{len(exp.runs)}" if len(exp.runs) > 1 else "",
        )
        out.append(_run_one(ctx, exp, o))
    return combine(exp, out)


def run_study(spec: dict, ctx: Context, out_dir: Path) -> dict:
    """Run every experiment's variants, compute the verdict, write report.md / report.html / results.json."""
    t0 = time.time()
    exps = check_study(spec, ctx.model)
    results = [_run_experiment(ctx, spec, i, exps) for i in range(len(exps))]
    outcomes = [Outcome(i + 1, r.role, r.passed, r.not_run, r.status) for i, r in enumerate(results)]
    decision = verdict(outcomes, spec.get("partly_supported_when"))
    return write_report(spec, ctx, results, decision, out_dir, time.time() - t0)
