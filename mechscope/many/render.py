"""Plain-text views of a diff and an aggregate (the CLI prints them; `--json` prints the dicts instead).

>>> print(diff_text(d, top=5))                                                            # doctest: +SKIP
"""

from __future__ import annotations


def _key(k) -> str:
    return " → ".join(k) if isinstance(k, list) else str(k)


def _rows(title: str, rows: list[dict], top: int, fmt) -> list[str]:
    if not rows:
        return []
    more = f" (top {top} of {len(rows)})" if len(rows) > top else ""
    return [f"{title}{more}:"] + ["  " + fmt(r) for r in rows[:top]]


def diff_text(d: dict, top: int = 20) -> str:
    """A diff (`mechscope.compare.diff.diff_graphs`) as readable text: logits, features, supernodes, edges."""
    s = d["summary"]
    lines = [
        f"A: {d['a']['prompt']!r}",
        f"B: {d['b']['prompt']!r}",
        f"model {d['a']['model']}; aligned by {d['aligned_by']}{' and position' if d['positions'] else ''}; "
        f"features A {s['features_a']}, B {s['features_b']}, shared {s['shared']} "
        f"(influence overlap {s['influence_overlap']:.2f}); {s['appear']} appear, {s['disappear']} disappear, "
        f"{s['change']} change",
    ]
    if s["unaligned_a"] or s["unaligned_b"]:
        lines.append(f"unlabelled features left out: A {s['unaligned_a']}, B {s['unaligned_b']}")
    lg = d["logits"]
    lines += _rows("output probabilities", lg["change"] + lg["appear"] + lg["disappear"], top, _pfmt)
    f = d["features"]
    ffmt = lambda r: (
        f"{r['key']:<14} {r['a']:.4f} → {r['b']:.4f} ({r['delta']:+.4f})"
        + (f"  “{r['label']}”" if r.get("label") else "")
    )
    lines += _rows("features that appear in B", f["appear"], top, ffmt)
    lines += _rows("features that disappear from A", f["disappear"], top, ffmt)
    lines += _rows("features that change influence", f["change"], top, ffmt)
    if d["aligned_by"] == "id":
        sn = d["supernodes"]
        snfmt = lambda r: f"{r['key']:<28} {r['a']:.4f} → {r['b']:.4f} ({r['delta']:+.4f})"
        lines += _rows("supernodes (by label) that change", sn["appear"] + sn["disappear"] + sn["change"], top, snfmt)
    e = d["edges"]
    efmt = lambda r: f"{_key(r['key'])}: {r['a']:+.4g} → {r['b']:+.4g}"
    lines += _rows(
        "edges that change most", sorted(e["appear"] + e["disappear"] + e["change"], key=_by_delta), top, efmt
    )
    return "\n".join(lines)


def _pfmt(r: dict) -> str:
    return f"{r['key']:<20} {r['a']:.3f} → {r['b']:.3f}"


def _by_delta(r: dict):
    return (-abs(r["delta"]), str(r["key"]))


def aggregate_text(agg: dict, top: int = 20) -> str:
    """An aggregate (`mechscope.many.aggregate`) as readable text; a contrast shows both groups side by side."""
    if "contrast" in agg:
        return _contrast_text(agg, top)
    lines = [
        f"{agg['n_graphs']} graphs"
        + (f" of group {agg['group']}" if agg.get("group") else "")
        + f" in {agg['store']}; "
        f"model {agg['model']}",
        "top answers: " + ", ".join(f"{t!r} ×{n}" for t, n in agg["top_logits"][:5]),
    ]
    ffmt = lambda r: (
        f"{r['key']:<14} in {r['frequency']:.0%} of graphs, mean influence {r['mean_share']:.4f}"
        + (f" (where present {r['share_present']:.4f})" if r["frequency"] < 1 else "")
        + (f"  “{r['label']}”" if r.get("label") else "")
    )
    lines += _rows("recurring features", agg["features"], top, ffmt)
    sfmt = lambda r: f"{r['key']:<28} in {r['frequency']:.0%}, mean influence {r['mean_share']:.4f}"
    lines += _rows("recurring supernodes (the graphs' own, and feature labels)", agg["supernodes"], top, sfmt)
    efmt = lambda r: f"{_key(r['key'])}: in {r['frequency']:.0%}, mean weight {r['mean_weight']:+.4g}"
    lines += _rows("recurring edges", agg["edges"], top, efmt)
    if agg.get("edges_dropped"):
        lines.append(
            f"({agg['edges_dropped']} rare edges dropped while streaming; counts of kept ones may be low by ≤ {agg['edge_error']})"
        )
    if agg.get("flowchart_text"):
        lines += ["consensus " + agg["flowchart_text"]]
    return "\n".join(lines)


def _contrast_text(c: dict, top: int) -> str:
    g1, g2 = c["contrast"]
    lines = [f"contrast {g1} ({c['n_graphs'][0]} graphs) vs {g2} ({c['n_graphs'][1]} graphs) in {c['store']}"]
    fmt = lambda r: (
        f"{r['key']:<14} freq {r['frequency'][0]:.0%} vs {r['frequency'][1]:.0%}, mean influence "
        f"{r['mean_share'][0]:.4f} vs {r['mean_share'][1]:.4f} ({r['delta']:+.4f})"
        + (f"  “{r['label']}”" if r.get("label") else "")
    )
    lines += _rows(f"features that differ most ({g2} − {g1})", c["features"], top, fmt)
    lines += _rows("supernodes that differ most", c["supernodes"], top, fmt)
    return "\n".join(lines)
