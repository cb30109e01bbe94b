"""Tables in README.md and docs/ generated from the results JSON, so no number there is typed by hand.

A generated table sits between two markers that name its renderer and the JSON it reads:

    <!-- table: busy-threads reports/speed/bench_busy_threads.json -->
    | threads | prompt | quiet | ... |
    |---|---|---|...|
    <!-- /table -->

`python -m mechscope.docs_tables --write` regenerates every marked table (and the case-study table between
`<!-- studies:begin -->` and `<!-- studies:end -->`, `mechscope.studies.summary`); `--check` (and
tests/test_docs_tables.py, in CI) fails when a table differs from its JSON, naming the document and line, the
row and column, the number written and the number the JSON gives.

>>> _range([1.18, 1.23], 2), _range([2.12, 2.12], 1)
('1.18–1.23 s', '2.1 s')
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from mechscope.provenance import DOCS, ROOT, TABLE_END, TABLE_RE

Table = tuple[list[str], list[list[str]]]  # header, rows of cells
RENDERERS: dict[str, Callable[..., Table]] = {}


def renderer(name: str):
    def deco(fn):
        RENDERERS[name] = fn
        return fn

    return deco


def _range(xs: list[float], nd: int, unit: str = " s") -> str:
    lo, hi = f"{min(xs):.{nd}f}", f"{max(xs):.{nd}f}"
    return (lo if lo == hi else f"{lo}–{hi}") + unit


# ---- renderers: one per generated table ----------------------------------------------------------------------------

LENS_ROWS = [  # (label, target as written, (overall key, meets its target) per number)
    ("features-only swap makes the donor's answer top-1 (×1 or ×2)", "≥ 0.60", [("swap_success", 0.6)]),
    ("share of the top logit's input through features", "≥ 0.50", [("feature_share", 0.5)]),
    (
        "replacement / completeness (circuit-tracer's formulas: ct_replacement / ct_completeness)",
        "≥ 0.55 / 0.80",
        [("ct_replacement", 0.55), ("ct_completeness", 0.8)],
    ),
    ("validate Spearman (predicted vs measured ablation effect)¹", "≥ 0.6", [("validate_spearman", 0.6)]),
    ("top-20 features per graph with a specific label", "≥ 0.70", [("top20_specific_share", 0.7)]),
    ("top-20 features denser than 10% of tokens", "0", [("top20_dense_share", None)]),  # target: none
]


@renderer("lens-headline")
def lens_headline(*sets: dict) -> Table:
    """The lens benchmark's headline numbers of each set (lens.json), against the targets; ✅ where met."""

    def who(d: dict) -> str:
        t = d["transcoders"]
        return f"{d['model']} (shipped)" if t.startswith("mechscope/artifacts/") else f"{d['model']} ({t})"

    def cell(v: float, goal: float | None) -> str:
        return f"{v:.2f}" + (" ✅" if (v >= goal if goal is not None else v == 0) else "")

    rows = [
        [label, target] + [" / ".join(cell(d["overall"][k], g) for k, g in keys) for d in sets]
        for label, target, keys in LENS_ROWS
    ]
    return ["", "target", *map(who, sets)], rows


@renderer("busy-threads")
def busy_threads(d: dict) -> Table:
    """bench_busy.py --threads 1 2: median attribution seconds per thread setting and condition, and ratios."""
    med: dict = {}
    for r in d["results"]:
        med[(r["threads"], r["tokens"], r["condition"])] = statistics.median(x["attribution_s"] for x in r["runs"])
    header = ["threads", "prompt", "quiet", "busy1", "busy1 / quiet", "busy2", "busy2 / quiet"]
    rows = []
    for tokens in sorted({k[1] for k in med}):
        for th in sorted({k[0] for k in med}):
            q, b1, b2 = (med[(th, tokens, c)] for c in ("quiet", "busy1", "busy"))
            rows.append(
                [
                    str(th),
                    f"{tokens} tokens",
                    f"{q:.2f} s",
                    f"{b1:.2f} s",
                    f"{b1 / q:.2f}×",
                    f"{b2:.2f} s",
                    f"{b2 / q:.2f}×",
                ]
            )
    return header, rows


FIRST_HOUR_STEPS = {
    "help": "`mechscope --help`",
    "arg-error": "an option error (exit 2)",
    "trace": '`trace "Dallas is in the state of" --out …`',
    "feature": "`feature 13/1744`",
    "search": '`search-features " Texas" --by logit`',
    "swap": '`swap … --donor "Oakland is in the state of" --factor 2`',
    "swap-locate": '`swap … --donor "Berkeley is in the state of" --locate --watch …`',
}


@renderer("first-hour")
def first_hour(d: dict) -> Table:
    """bench_first_hour.py: per step, the range over repeats of the first line, longest silence and wall time."""
    by: dict[str, list[dict]] = {}
    for r in d["rows"]:
        by.setdefault(r["step"], []).append(r)
    rows = []
    for step, rs in by.items():
        silent = all(r["silence_after"] == "(start)" for r in rs)  # nothing printed before the end
        wall = [r["wall_s"] for r in rs]
        rows.append(
            [
                FIRST_HOUR_STEPS.get(step, f"`{step}`"),
                _range([r["first_line_s"] for r in rs], 2),
                "–" if silent else _range([r["longest_silence_s"] for r in rs], 1),
                _range(wall, 2 if max(wall) < 1 else 1),
            ]
        )
    return ["step", "first line", "longest silence", "wall time"], rows


# ---- reading, rendering and checking marked blocks -----------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def render(table: Table) -> list[str]:
    header, rows = table
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def blocks(doc: Path) -> list[dict]:
    """The marked tables of one document: renderer name, sources, first and last line index (0-based) of the body."""
    lines = doc.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        m = TABLE_RE.match(line.strip())
        if not m:
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == TABLE_END), None)
        if end is None:
            raise SystemExit(f"{doc}:{i + 1}: table marker without its closing {TABLE_END}")
        out.append({"name": m["name"], "sources": m["sources"].split(), "begin": i, "end": end})
    return out


def generate(name: str, sources: list[str], root: Path = ROOT) -> list[str]:
    if name not in RENDERERS:
        raise SystemExit(f"unknown table renderer {name!r}; known: {', '.join(sorted(RENDERERS))}")
    data = [json.loads((root / s).read_text()) for s in sources]
    return render(RENDERERS[name](*data))


def _studies(root: Path) -> list[str]:
    from mechscope.studies.summary import collect, table

    return table(collect(root / "reports" / "studies"))


def check(root: Path = ROOT) -> list[str]:
    """One message per table that differs from its JSON (empty: every generated table matches)."""
    from mechscope.studies.summary import BEGIN, END

    problems = []
    for doc in DOCS(root):
        rel = doc.relative_to(root).as_posix()
        lines = doc.read_text().splitlines()
        found = [(b["begin"], b["end"], b["name"], b["sources"]) for b in blocks(doc)]
        if BEGIN in lines and END in lines:
            found.append((lines.index(BEGIN), lines.index(END), "studies", ["reports/studies/*/*/results.json"]))
        for begin, end, name, sources in found:
            want = _studies(root) if name == "studies" else generate(name, sources, root)
            have = lines[begin + 1 : end]
            src = ", ".join(sources)
            if len(have) != len(want):
                problems.append(
                    f"{rel}:{begin + 2}: table {name!r} has {len(have) - 2} rows, {src} gives {len(want) - 2}"
                )
                continue
            header = _cells(want[0])
            for k, (h, w) in enumerate(zip(have, want)):
                if h.strip() == w.strip():
                    continue
                hc, wc = _cells(h), _cells(w)
                j = next((j for j, (a, b) in enumerate(zip(hc, wc)) if a != b), min(len(hc), len(wc)))
                col = header[j] if j < len(header) else f"#{j + 1}"
                problems.append(
                    f"{rel}:{begin + 2 + k}: table {name!r}, row {wc[0]!r}, column {col!r}: the doc says "
                    f"{hc[j] if j < len(hc) else '(nothing)'!r}, {src} gives {wc[j] if j < len(wc) else '(nothing)'!r}"
                )
    return problems


def write(root: Path = ROOT) -> list[str]:
    """Regenerate every marked table in place; the documents changed."""
    from mechscope.studies.summary import BEGIN, END

    changed = []
    for doc in DOCS(root):
        text = doc.read_text()
        lines = text.splitlines()
        for b in reversed(blocks(doc)):
            lines[b["begin"] + 1 : b["end"]] = generate(b["name"], b["sources"], root)
        if BEGIN in lines and END in lines:
            lines[lines.index(BEGIN) + 1 : lines.index(END)] = _studies(root)
        new = "\n".join(lines) + ("\n" if text.endswith("\n") else "")
        if new != text:
            doc.write_text(new)
            changed.append(doc.relative_to(root).as_posix())
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mechscope.docs_tables", description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="regenerate every marked table in README.md and docs/")
    g.add_argument("--check", action="store_true", help="exit 1, naming each difference, when a table is stale")
    a = ap.parse_args(argv)
    if a.write:
        for c in write():
            print(f"wrote {c}")
        return 0
    problems = check()
    for p in problems:
        print(p)
    if not problems:
        print("every generated table matches its JSON")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
