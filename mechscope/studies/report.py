"""A study's report: report.md, report.html (figures inline) and results.json, plus the index of all studies.

>>> write_report(spec, ctx, results, ("supported", [3], "every judged evidence experiment passed"), out, 12.0)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from pathlib import Path

from mechscope.paths import atomic_write_bytes, atomic_write_text
from mechscope.provenance import stamp
from mechscope.studies.registry import Context, Result
from mechscope.studies.verdicts import NO, RULE


def _supernode_rows(fc: dict) -> list[tuple[str, str, str, str, str]]:
    """(supernode, kind, layers, members, inputs from) for the boxes of a flowchart (to_json form)."""
    names = {b["id"]: b["name"] for b in fc["boxes"]}
    rows = []
    for b in fc["boxes"]:
        ins = [f"{names[a['src']]} ({a['weight']:+.2f})" for a in fc["arrows"] if a["dst"] == b["id"]]
        layers = f"{min(b['layers'])}–{max(b['layers'])}" if b["layers"] else "–"
        rows.append((b["name"], b["kind"], layers, str(len(b["members"])), ", ".join(ins) or "–"))
    return rows


def _cell(s: str) -> str:
    return " ".join(str(s).split()).replace("|", "\\|")


def _supernode_table(fc: dict) -> list[str]:
    md = [
        "**Supernodes** (automatic flowchart: the most influential features grouped and named by their labels):",
        "",
        "| supernode | kind | layers | members | driven by (summed direct effect) |",
        "|---|---|---|---|---|",
    ]
    md += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in _supernode_rows(fc)]
    return md + [""]


def _table_html(head: tuple[str, ...], rows: list[tuple]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table border='1' cellpadding='3' style='border-collapse:collapse'><tr>{h}</tr>{body}</table>"


MARK = {
    "passed": "✅ passed",
    "failed": "❌ failed",
    "not visible": "👁 not visible",
    "not applicable": "⊘ not applicable",
    "not judged": "· not judged",
    "not run": "⚠ could not run",
}


def _mark(r: Result | dict) -> str:
    status = (
        r.status
        if isinstance(r, Result)
        else r.get("status") or {True: "passed", False: "failed"}.get(r["passed"], "not judged")
    )
    return MARK[status]


def decisive(results: list[Result], decided: list[int]) -> list[str]:
    """One line of numbers per deciding experiment: how many variants passed, failed, were not visible or not
    applicable (what the verdict rests on)."""
    out = []
    for i in decided:
        n = results[i - 1].numbers
        if "n_judged" not in n:
            continue
        parts = [f"{n['n_passed']}/{n['n_judged']} judged variants passed (needs ≥ {n['min_success']:.0%})"]
        parts += [
            f"{n[k]} {w}"
            for k, w in (
                ("n_failed", "failed"),
                ("n_not_visible", "not visible"),
                ("n_not_applicable", "not applicable"),
            )
            if n.get(k)
        ]
        out.append(f"experiment {i} ({results[i - 1].title}): " + ", ".join(parts))
    return out


def _validation(results: list[Result]) -> list[tuple[str, float, float, int]]:
    """(prompt, Spearman frozen, Spearman unfrozen, n) of every traced variant that was validated."""
    rows = []
    for r in results:
        for v in r.numbers.get("variants", []):
            val = v["numbers"].get("validation")
            if val:
                rows.append(
                    (v["numbers"].get("prompt", v["title"]), val["spearman"], val["spearman_unfrozen"], val["n"])
                )
    return rows


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def write_report(
    spec: dict, ctx: Context, results: list[Result], decision: tuple, out_dir: Path, elapsed: float
) -> dict:
    v, decided, why, no = (*decision, None)[:4]  # a Verdict, or the (verdict, decided_by, why) of earlier callers
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [
        f"# {spec['title']}",
        "",
        f"*Model:* `{ctx.model.name}` · *study:* `{spec['name']}` · *run:* {time.strftime('%Y-%m-%d %H:%M')}"
        f" · {elapsed:.0f} s",
        "",
        f"**Hypothesis.** {spec['hypothesis'].strip()}",
        "",
    ]
    body = [
        f"<h1>{html.escape(spec['title'])}</h1>",
        f"<p><em>Model:</em> <code>{html.escape(ctx.model.name)}</code></p>",
        f"<p><strong>Hypothesis.</strong> {html.escape(spec['hypothesis'].strip())}</p>",
    ]
    if spec.get("note"):
        md += [f"*Note.* {spec['note'].strip()}", ""]
        body.append(f"<p><em>Note.</em> {html.escape(spec['note'].strip())}</p>")
    head = f"Verdict: **{v}** — decided by experiment{'s' if len(decided) != 1 else ''} {', '.join(map(str, decided)) or '–'} ({why})"
    md += [f"## {head}", ""]
    body.append(f"<h2>{html.escape(head.replace('**', ''))}</h2>")
    lines = ([f"Which no: {NO[no]}."] if no else []) + [f"Decided by: {d}." for d in decisive(results, decided)]
    md += [f"* {x}" for x in lines] + ([""] if lines else [])
    body += [f"<p>{html.escape(x)}</p>" for x in lines]
    for i, r in enumerate(results, 1):
        title = f"{i}. {r.title} — {r.role} — {_mark(r)}"
        rule = [f"*Rule:* {r.rule}."] if r.rule else []
        rule += [f"*Control:* {r.control}."] if r.control else []
        md += [f"## {title}", "", *rule, "", r.summary, ""]
        body += [f"<h2>{html.escape(title)}</h2>", *(f"<p>{html.escape(x)}</p>" for x in rule)]
        body.append(f"<p>{html.escape(r.summary)}</p>")
        vs = r.numbers.get("variants", [])
        if len(vs) > 1:
            md += ["| variant | result | measured | control |", "|---|---|---|---|"]
            md += [
                f"| {_cell(x['title'])} | {_mark(x)} | {_cell(x['summary'])} | {_cell(x.get('control') or '–')} |"
                for x in vs
            ]
            md.append("")
            body.append(
                _table_html(
                    ("variant", "result", "measured", "control"),
                    [(x["title"], _mark(x), x["summary"], x.get("control") or "–") for x in vs],
                )
            )
        if r.kind == "trace" and r.numbers.get("flowchart"):
            md += _supernode_table(r.numbers["flowchart"])
            body.append(
                _table_html(
                    ("supernode", "kind", "layers", "members", "driven by"), _supernode_rows(r.numbers["flowchart"])
                )
            )
        if r.kind == "trace" and r.numbers.get("features"):
            md += ["| feature | token | label | activation | cum. influence |", "|---|---|---|---|---|"]
            md += [
                f"| {f['feature']} | {f['token']!r} | {_cell(f['label'] or '–')} | {f['activation']} | {f['influence_rank']} |"
                for f in r.numbers["features"]
            ]
            md.append("")
        for name, fig in r.figures:
            if fig.startswith("data:image/png"):
                atomic_write_bytes(out_dir / name, base64.b64decode(fig.split(",", 1)[1]))
                body.append(f'<p><img alt="{name}" src="{fig}"></p>')
            else:
                atomic_write_text(out_dir / name, fig)
                body.append(fig)
            md += [f"![{name}]({name})", ""]
    val = _validation(results)
    if val:
        rows = [(p, f"{a:.2f}", f"{b:.2f}", str(n)) for p, a, b, n in val]
        mean = (_mean([a for _, a, _, _ in val]), _mean([b for _, _, b, _ in val]))
        md += [
            "## Graph validation",
            "",
            "Spearman between each graph's predicted total effect of ablating its most influential features and the "
            "measured effect: in the local replacement model (attention and norms frozen, as published) and in the "
            "real model (attention frozen only).",
            "",
            "| prompt | frozen | unfrozen | features |",
            "|---|---|---|---|",
        ]
        md += [f"| {_cell(repr(p))} | {a} | {b} | {n} |" for p, a, b, n in rows]
        md += [f"| **mean** | {mean[0]:.2f} | {mean[1]:.2f} | |", ""]
        body += ["<h2>Graph validation</h2>", _table_html(("prompt", "frozen", "unfrozen", "features"), rows)]
        body.append(f"<p>mean: frozen {mean[0]:.2f}, unfrozen {mean[1]:.2f}</p>")
    not_run = [(i, r) for i, r in enumerate(results, 1) if r.not_run]
    partial = [
        (i, x["title"])
        for i, r in enumerate(results, 1)
        for x in r.numbers.get("variants", [])
        if x["summary"].startswith("could not run")
    ]
    if not_run or partial:
        md += ["## Not run", ""]
        md += [f"* experiment {i} ({r.title}): {r.summary}" for i, r in not_run]
        md += [
            f"* experiment {i}, variant {t!r}: could not run (see its row)"
            for i, t in partial
            if not any(i == j for j, _ in not_run)
        ]
        md.append("")
        body.append(
            "<h2>Not run</h2><ul>"
            + "".join(f"<li>experiment {i}: {html.escape(r.summary)}</li>" for i, r in not_run)
            + "</ul>"
        )
    md += [f"(verdict rule: {RULE})", ""]
    body.append(f"<p>(verdict rule: {html.escape(RULE)})</p>")
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
        "decided_by": decided,
        "why": why,
        "no": no,
        "decisive": decisive(results, decided),
        "elapsed_s": round(elapsed, 1),
        "validation": [{"prompt": p, "spearman": a, "spearman_unfrozen": b, "n": n} for p, a, b, n in val],
        "experiments": [
            {
                "kind": r.kind,
                "title": r.title,
                "role": r.role,
                "passed": r.passed,
                "status": r.status,
                "not_run": r.not_run,
                "rule": r.rule,
                "control": r.control,
                "summary": r.summary,
                "numbers": r.numbers,
            }
            for r in results
        ],
    }
    idx = getattr(ctx.index, "path", None)
    stamp(res, set_dir=ctx.ts.meta.get("path") or None, index=idx)
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
