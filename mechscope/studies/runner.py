"""Case studies as data: a YAML file lists prompts and experiments; the runner measures, draws and decides.

Each experiment returns numbers, optional figures and `passed` (True / False / None = not testable here).
The study's verdict is computed, never written: all testable experiments passed → "supported"; some →
"partly supported"; none → "not supported on this model".

Experiment kinds and the keys each takes: `mechscope.studies.kinds` (one options dataclass per kind).
"""

from __future__ import annotations

import html
import json
import logging
import time
from pathlib import Path

import yaml

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_bytes, atomic_write_text
from mechscope.studies import kinds  # noqa: F401  (registers the experiment kinds)
from mechscope.studies.registry import KINDS, Context, Result, parse_experiment

log = logging.getLogger(__name__)
DEFS = Path(__file__).with_name("defs")


def list_studies() -> list[str]:
    return sorted(p.stem for p in DEFS.glob("*.yaml"))


def load_study(name_or_path: str) -> dict:
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
    for i, e in enumerate(spec["experiments"]):
        parse_experiment(e, f"study {p}: experiment {i + 1}")  # typed options: refuses a bad file at once
    return spec


def _supernode_rows(fc: dict) -> list[tuple[str, str, str, str, str]]:
    """(supernode, kind, layers, members, inputs from) for the boxes of a flowchart (to_json form)."""
    names = {b["id"]: b["name"] for b in fc["boxes"]}
    rows = []
    for b in fc["boxes"]:
        ins = [f"{names[a['src']]} ({a['weight']:+.2f})" for a in fc["arrows"] if a["dst"] == b["id"]]
        layers = f"{min(b['layers'])}–{max(b['layers'])}" if b["layers"] else "–"
        rows.append((b["name"], b["kind"], layers, str(len(b["members"])), ", ".join(ins) or "–"))
    return rows


def _supernode_table(fc: dict) -> list[str]:
    md = [
        "**Supernodes** (automatic flowchart: the most influential features grouped and named by their labels):",
        "",
        "| supernode | kind | layers | members | driven by (summed direct effect) |",
        "|---|---|---|---|---|",
    ]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in _supernode_rows(fc)]
    return md + [""]


def _supernode_table_html(fc: dict) -> str:
    head = "".join(
        f"<th>{h}</th>" for h in ("supernode", "kind", "layers", "members", "driven by (summed direct effect)")
    )
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in _supernode_rows(fc))
    return f"<table border='1' cellpadding='3' style='border-collapse:collapse'><tr>{head}</tr>{rows}</table>"


def verdict(results: list[Result]) -> str:
    tested = [r.passed for r in results if r.passed is not None]
    if tested and all(tested):
        return "supported"
    if any(tested):
        return "partly supported"
    return "not supported on this model"


def run_study(spec: dict, ctx: Context, out_dir: Path) -> dict:
    t0 = time.time()
    results = []
    opts = [parse_experiment(e, f"study {spec['name']}: experiment {i + 1}") for i, e in enumerate(spec["experiments"])]
    for o in opts:
        log.info("study %s: %s", spec["name"], o.title or o.kind)
        try:
            results.append(KINDS[o.kind].run(ctx, o))
        except MechscopeError as err:  # one bad experiment is reported, the study goes on
            results.append(Result(o.kind, o.title or o.kind, None, f"could not run: {err}"))
    v = verdict(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [
        f"# {spec['title']}",
        "",
        f"*Model:* `{ctx.model.name}` · *study:* `{spec['name']}` · *run:* {time.strftime('%Y-%m-%d %H:%M')}"
        f" · {time.time() - t0:.0f} s",
        "",
        f"**Hypothesis.** {spec['hypothesis'].strip()}",
        "",
    ]
    if spec.get("note"):
        md += [f"*Note.* {spec['note'].strip()}", ""]
    body = [
        f"<h1>{html.escape(spec['title'])}</h1>",
        f"<p><em>Model:</em> <code>{html.escape(ctx.model.name)}</code></p>",
        f"<p><strong>Hypothesis.</strong> {html.escape(spec['hypothesis'].strip())}</p>",
    ]
    for i, r in enumerate(results, 1):
        mark = {True: "✅ passed", False: "❌ failed", None: "— not testable"}[r.passed]
        md += [f"## {i}. {r.title} — {mark}", "", r.summary, ""]
        body += [f"<h2>{i}. {html.escape(r.title)} — {mark}</h2>", f"<p>{html.escape(r.summary)}</p>"]
        if r.kind == "trace" and r.numbers.get("flowchart"):
            md += _supernode_table(r.numbers["flowchart"])
            body.append(_supernode_table_html(r.numbers["flowchart"]))
        if r.kind == "trace" and r.numbers.get("features"):
            md += ["| feature | token | label | activation | cum. influence |", "|---|---|---|---|---|"]
            md += [
                f"| {f['feature']} | {f['token']!r} | {f['label'] or '–'} | {f['activation']} | {f['influence_rank']} |"
                for f in r.numbers["features"]
            ]
            md.append("")
        for name, fig in r.figures:
            if fig.startswith("data:image/png"):
                import base64

                atomic_write_bytes(out_dir / name, base64.b64decode(fig.split(",", 1)[1]))
                body.append(f'<p><img alt="{name}" src="{fig}"></p>')
            else:
                atomic_write_text(out_dir / name, fig)
                body.append(fig)
            md += [f"![{name}]({name})", ""]
    rule = "all testable experiments passed → supported; some → partly supported; none → not supported on this model"
    md += [f"## Verdict: **{v}**", "", f"(computed: {rule})", ""]
    body += [f"<h2>Verdict: {html.escape(v)}</h2>", f"<p>(computed: {html.escape(rule)})</p>"]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    atomic_write_text(
        out_dir / "report.html",
        "<!doctype html><meta charset='utf-8'><title>"
        + html.escape(spec["title"])
        + "</title><style>body{font:14px sans-serif;max-width:900px;margin:2em auto}svg{max-width:100%}</style>"
        + "".join(body),
    )
    res = {
        "name": spec["name"],
        "title": spec["title"],
        "model": ctx.model.name,
        "verdict": v,
        "elapsed_s": round(time.time() - t0, 1),
        "experiments": [
            {"kind": r.kind, "title": r.title, "passed": r.passed, "summary": r.summary, "numbers": r.numbers}
            for r in results
        ],
    }
    atomic_write_text(out_dir / "results.json", json.dumps(res, indent=1, ensure_ascii=False, default=str))
    return res


def write_index(results: list[dict], out_dir: Path) -> None:
    rows = "".join(
        f"<tr><td><a href='{html.escape(r['name'])}/report.html'>{html.escape(r['title'])}</a></td><td>{html.escape(r['model'])}</td>"
        f"<td>{html.escape(r['verdict'])}</td></tr>"
        for r in results
    )
    atomic_write_text(
        out_dir / "index.html",
        "<!doctype html><meta charset='utf-8'><title>mechscope studies</title>"
        "<style>body{font:14px sans-serif;max-width:900px;margin:2em auto}td{padding:4px 10px}</style>"
        f"<h1>mechscope case studies</h1><table><tr><th>study</th><th>model</th><th>verdict</th></tr>{rows}</table>",
    )
    atomic_write_text(
        out_dir / "index.md",
        "# mechscope case studies\n\n| study | model | verdict |\n|---|---|---|\n"
        + "".join(f"| [{r['title']}]({r['name']}/report.md) | `{r['model']}` | {r['verdict']} |\n" for r in results),
    )
