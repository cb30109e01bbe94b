"""The case-study table of docs/results.md, written from the studies' results.json (numbers never typed by hand).

`python -m mechscope.studies.summary` reads reports/studies/<model>/<study>/results.json and replaces what lies
between the markers `<!-- studies:begin -->` and `<!-- studies:end -->` in docs/results.md (`--print` writes
the table to stdout instead).

>>> table([{"name": "s", "title": "S", "model": "m", "verdict": "supported", "no": None, "decided_by": [1],
...         "experiments": [{"kind": "swap", "numbers": {"n_passed": 3, "n_judged": 4}}], "validation": []}])[2]
'| [s](../reports/studies/m/s/report.md) | `m` | supported | 1. swap: 3/4 passed | – |'
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mechscope.paths import atomic_write_text

BEGIN, END = "<!-- studies:begin -->", "<!-- studies:end -->"
NO_WORDS = {
    "model": "the model does not do the task",
    "instrument": "the dictionary cannot see it",
    "mechanism": "absent",
}


def _experiment(i: int, e: dict) -> str:
    n = e["numbers"]
    if "n_judged" not in n:
        return f"{i}. {e['kind']}: {e.get('status') or e['passed']}"
    s = f"{i}. {e['kind']}: {n['n_passed']}/{n['n_judged']} passed"
    extra = [f"{n[k]} {w}" for k, w in (("n_not_visible", "not visible"), ("n_not_applicable", "n/a")) if n.get(k)]
    return s + (f" ({', '.join(extra)})" if extra else "")


def _validation(res: dict) -> str:
    vals = res.get("validation") or []
    pairs = [(v["spearman"], v["spearman_unfrozen"]) for v in vals]
    pairs = [p for p in pairs if not any(math.isnan(x) for x in p)]
    if not pairs:
        return "–"
    return f"{sum(a for a, _ in pairs) / len(pairs):.2f} / {sum(b for _, b in pairs) / len(pairs):.2f}"


def table(results: list[dict], root: str = "../reports/studies") -> list[str]:
    """Markdown rows: study, model, verdict (and which no), the numbers of the experiments that decided it,
    mean graph-validation Spearman (frozen / real model)."""
    rows = [
        "| study | model | verdict | decided by | graph validation (Spearman frozen / real) |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["name"], r["model"])):
        v = r["verdict"] + (f" ({NO_WORDS[r['no']]})" if r.get("no") else "")
        decided = "; ".join(_experiment(i, r["experiments"][i - 1]) for i in r["decided_by"]) or "–"
        link = f"[{r['name']}]({root}/{r['model']}/{r['name']}/report.md)"
        rows.append(f"| {link} | `{r['model']}` | {v} | {decided} | {_validation(r)} |")
    return rows


def collect(reports: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(reports.glob("*/*/results.json"))]


def splice(doc: str, rows: list[str]) -> str:
    """`doc` with the text between the markers replaced by `rows` (the markers must be there, once each)."""
    if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
        raise SystemExit(f"the document needs one {BEGIN} and one {END}, in that order")
    head, rest = doc.split(BEGIN)
    _, tail = rest.split(END)
    return head + BEGIN + "\n" + "\n".join(rows) + "\n" + END + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reports", default="reports/studies", help="folder of <model>/<study>/results.json")
    ap.add_argument("--doc", default="docs/results.md", help="the document whose marked block is replaced")
    ap.add_argument("--print", action="store_true", help="write the table to stdout, not into --doc")
    a = ap.parse_args(argv)
    rows = table(collect(Path(a.reports)))
    if a.print:
        sys.stdout.write("\n".join(rows) + "\n")
        return 0
    doc = Path(a.doc)
    atomic_write_text(doc, splice(doc.read_text(), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
