"""SVG drawing of a Flowchart: inputs at the bottom, feature rows by layer, outputs on top; arrow width ∝ weight
(relative to the strongest arrow into the same box), blue = excitatory, red = inhibitory. Self-contained SVG
(no scripts, no external resources).
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from mechscope.attribution.clustering import CONTROL_TOKENS
from mechscope.attribution.flowchart import Box, Flowchart, layer_range, main_pos, plural, box_row


# ---------------------------------------------------------------------------------------- SVG
_BLUE, _RED = "#1a5fb4", "#c01c28"
_FILL = {"input": "#e3f2e1", "features": "#fff4d6", "output": "#fde3cf"}
_BOX_H, _ROW_H, _GAP, _MARGIN = 38, 78, 16, 14


def _clean(s: str) -> str:
    return CONTROL_TOKENS.sub("", s)


def render_svg(fc: Flowchart) -> str:
    # rows by kind/layer (outputs on top), columns by token position, so a token's boxes stack above it
    row_keys = sorted({box_row(b) for b in fc.boxes}, reverse=True)
    row_of = {b.id: row_keys.index(box_row(b)) for b in fc.boxes}
    col_keys = sorted({main_pos(b) for b in fc.boxes})
    width_of = {b.id: _box_width(b) for b in fc.boxes}
    cells: dict[tuple[int, int], list[Box]] = {}
    for b in sorted(fc.boxes, key=lambda b: (min(b.positions or [0]), b.id)):
        cells.setdefault((row_of[b.id], main_pos(b)), []).append(b)
    cell_w = {k: sum(width_of[b.id] for b in v) + _GAP * (len(v) - 1) for k, v in cells.items()}
    col_w = {c: max(w for (r, cc), w in cell_w.items() if cc == c) for c in col_keys}
    col_x, x = {}, float(_MARGIN)
    for c in col_keys:
        col_x[c] = x
        x += col_w[c] + _GAP
    W = max(360.0, x - _GAP + _MARGIN)
    H = 2 * _MARGIN + 18 + max(1, len(row_keys)) * _ROW_H
    geo: dict[str, tuple[float, float, float]] = {}  # id -> (x, y, w)
    for (r, c), bs in cells.items():
        x = col_x[c] + (col_w[c] - cell_w[(r, c)]) / 2
        y = _MARGIN + 18 + r * _ROW_H + (_ROW_H - _BOX_H) / 2
        for b in bs:
            geo[b.id] = (x, y, width_of[b.id])
            x += width_of[b.id] + _GAP
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="mechscope-flowchart" viewBox="0 0 {W:.0f} {H:.0f}" '
        f'width="{W:.0f}" height="{H:.0f}" font-family="system-ui, sans-serif">',
        f"<title>{escape(_clean('flowchart: ' + fc.prompt))}</title>",
        "<defs>"
        f'<marker id="msfc-pos" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto">'
        f'<path d="M0,0 L10,5 L0,10 z" fill="{_BLUE}"/></marker>'
        f'<marker id="msfc-neg" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto">'
        f'<path d="M0,0 L10,5 L0,10 z" fill="{_RED}"/></marker></defs>',
        f'<rect x="0" y="0" width="{W:.0f}" height="{H:.0f}" fill="#ffffff"/>',
        f'<text x="{_MARGIN}" y="{_MARGIN + 8}" font-size="11" fill="#556">{escape(_clean(_trunc(fc.prompt, 90)))}</text>',
    ]
    strongest: dict[str, float] = {}
    for a in fc.arrows:
        strongest[a.dst] = max(strongest.get(a.dst, 0.0), abs(a.weight))
    names = {b.id: b.name for b in fc.boxes}
    for a in fc.arrows:
        (sx, sy, sw), (dx, dy, dw) = geo[a.src], geo[a.dst]
        if sy > dy:  # upwards: top of the source to the bottom of the target
            x1, y1, x2, y2 = sx + sw / 2, sy, dx + dw / 2, dy + _BOX_H
            # an arrow that skips rows bows sideways, so it does not seem to pass through the boxes between
            cols = {main_pos(fc.box(a.src)), main_pos(fc.box(a.dst))}
            hidden = any((r, c) in cells for r in range(row_of[a.dst] + 1, row_of[a.src]) for c in cols)
            bow = min(120.0, 45.0 * (row_of[a.src] - row_of[a.dst] - 1)) if hidden and abs(x1 - x2) < 40 else 0.0
            c1, c2 = (x1 + bow, y1 - 25 - bow / 2), (x2 + bow, y2 + 25 + bow / 2)
        elif sy < dy:  # downwards (a wide box feeding one it overlaps in layers)
            x1, y1, x2, y2 = sx + sw / 2, sy + _BOX_H, dx + dw / 2, dy
            c1, c2 = (x1, y1 + 25), (x2, y2 - 25)
        else:  # same row: side to side, bowed above the row
            left = sx < dx
            x1, y1 = (sx + sw, sy + _BOX_H / 3) if left else (sx, sy + _BOX_H / 3)
            x2, y2 = (dx, dy + _BOX_H / 3) if left else (dx + dw, dy + _BOX_H / 3)
            c1, c2 = (x1, y1 - 30), (x2, y2 - 30)
        colour, marker = (_BLUE, "msfc-pos") if a.weight >= 0 else (_RED, "msfc-neg")
        width = 1 + 4 * abs(a.weight) / (strongest[a.dst] or 1.0)
        title = escape(_clean(f"{names[a.src]} → {names[a.dst]}: {a.weight:+.4g}"))
        out.append(
            f'<path d="M{x1:.1f},{y1:.1f} C{c1[0]:.1f},{c1[1]:.1f} {c2[0]:.1f},{c2[1]:.1f} {x2:.1f},{y2:.1f}" '
            f'fill="none" stroke="{colour}" stroke-opacity="0.8" stroke-width="{width:.2f}" '
            f'marker-end="url(#{marker})" data-src={quoteattr(a.src)} data-dst={quoteattr(a.dst)}>'
            f"<title>{title}</title></path>"
        )
    for b in fc.boxes:
        x, y, w = geo[b.id]
        if b.kind == "features":
            sub = f"{layer_range(b.layers)} · {plural(len(b.members), 'feature')}"
        elif b.kind == "output":
            sub = f"output · p={b.influence:.3f}"
        else:
            sub = f"input · position {b.positions[0]}"
        tip = (
            f"{b.name} ({b.kind}; {plural(len(b.members), 'node')}: {' '.join(b.members[:12])}"
            f"{' …' if len(b.members) > 12 else ''})"
        )
        out.append(
            f'<g class="box {b.kind}" data-box={quoteattr(b.id)}><title>{escape(_clean(tip))}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{_BOX_H}" rx="6" fill="{_FILL[b.kind]}" '
            f'stroke="#667"/>'
            f'<text x="{x + w / 2:.1f}" y="{y + 16:.1f}" font-size="12" text-anchor="middle" fill="#1d2330">'
            f"{escape(_clean(_trunc(b.name, 34)))}</text>"
            f'<text x="{x + w / 2:.1f}" y="{y + 30:.1f}" font-size="9" text-anchor="middle" fill="#667">'
            f"{escape(_clean(sub))}</text></g>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _trunc(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _box_width(b: Box) -> float:
    return float(min(240, max(92, 7 * len(_trunc(b.name, 34)) + 18)))
