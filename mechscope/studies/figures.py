"""Small dependency-free figures for study reports: SVG graph sketches, line plots, PNG heatmaps."""

from __future__ import annotations

import base64
import html
import struct
import zlib


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def graph_svg(graph: dict, top_n: int = 14, width: int = 760) -> str:
    """A layered sketch of the most influential features of a pruned graph: x = position, y = layer."""
    nodes = graph["nodes"]
    feats = sorted(
        (n for n in nodes if n["feature_type"] == "cross layer transcoder"), key=lambda n: n.get("influence") or 1
    )[:top_n]
    logits = [n for n in nodes if n["feature_type"] == "logit"][:3]
    keep = {n["node_id"] for n in feats + logits}
    toks = graph["metadata"]["prompt_tokens"]
    used_pos = sorted({n["ctx_idx"] for n in feats} | {len(toks) - 1})
    L = max([int(n["layer"]) for n in feats] + [1])
    colw = width / max(1, len(used_pos))
    height = 60 + 28 * (L + 2)
    xy = {}
    per_cell: dict[tuple, int] = {}
    for n in feats + logits:
        row = L + 1 if n["feature_type"] == "logit" else int(n["layer"])
        cell = (row, n["ctx_idx"])
        k = per_cell.get(cell, 0)
        per_cell[cell] = k + 1
        x = colw * used_pos.index(n["ctx_idx"]) + 12 + (k % 3) * (colw / 3.2)
        y = height - 40 - row * 28 - (k // 3) * 10
        xy[n["node_id"]] = (x, y)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="10">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    wmax = max([abs(l["weight"]) for l in graph["links"] if l["source"] in keep and l["target"] in keep] + [1e-9])
    for l in graph["links"]:
        if l["source"] in keep and l["target"] in keep:
            (x1, y1), (x2, y2) = xy[l["source"]], xy[l["target"]]
            c = "#1a5fb4" if l["weight"] > 0 else "#c01c28"
            parts.append(
                f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{c}" stroke-opacity="0.5" '
                f'stroke-width="{0.5 + 3 * abs(l["weight"]) / wmax:.2f}"/>'
            )
    for n in feats + logits:
        x, y = xy[n["node_id"]]
        fill = "#e66100" if n["feature_type"] == "logit" else "#62a0ea"
        label = n.get("clerp") or f"{n['layer']}/{n['feature']}"
        label = label if n["feature_type"] == "logit" else f"{n['layer']}/{n['feature']} {label}"
        parts.append(f'<circle cx="{x:.0f}" cy="{y:.0f}" r="5" fill="{fill}"><title>{_esc(label)}</title></circle>')
        parts.append(f'<text x="{x + 7:.0f}" y="{y + 3:.0f}">{_esc(label[:28])}</text>')
    for i, p in enumerate(used_pos):
        parts.append(
            f'<text x="{colw * i + 10:.0f}" y="{height - 8}" fill="#555">{_esc(repr(toks[p])[1:-1][:16])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def line_svg(series: dict[str, list[float]], xlabel: str, ylabel: str, width: int = 520, height: int = 260) -> str:
    """Lines over an integer x axis (e.g. layers)."""
    colors = ["#1a5fb4", "#e66100", "#26a269", "#c01c28", "#613583", "#986a44"]
    n = max((len(v) for v in series.values()), default=1)
    ymax = max([max(v) for v in series.values() if v] + [1e-9])
    L, B, R, T = 45, 30, 10, 10
    sx = lambda i: L + (width - L - R) * i / max(1, n - 1)
    sy = lambda v: height - B - (height - B - T) * v / ymax
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="10">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<line x1="{L}" y1="{height - B}" x2="{width - R}" y2="{height - B}" stroke="#333"/>',
        f'<line x1="{L}" y1="{T}" x2="{L}" y2="{height - B}" stroke="#333"/>',
        f'<text x="{width / 2:.0f}" y="{height - 4}" text-anchor="middle">{_esc(xlabel)}</text>',
        f'<text x="10" y="{height / 2:.0f}" transform="rotate(-90 10 {height / 2:.0f})" text-anchor="middle">{_esc(ylabel)}</text>',
        f'<text x="{L - 4}" y="{T + 8}" text-anchor="end">{ymax:.2f}</text>',
        f'<text x="{L - 4}" y="{height - B}" text-anchor="end">0</text>',
    ]
    for i in range(0, n, max(1, n // 10)):
        parts.append(f'<text x="{sx(i):.0f}" y="{height - B + 12}" text-anchor="middle">{i}</text>')
    for k, (name, vals) in enumerate(series.items()):
        c = colors[k % len(colors)]
        pts = " ".join(f"{sx(i):.1f},{sy(v):.1f}" for i, v in enumerate(vals))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        parts.append(
            f'<text x="{width - R - 4}" y="{T + 12 + 12 * k}" text-anchor="end" fill="{c}">{_esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def heatmap_png(grid: list[list[float]], scale: int = 3) -> bytes:
    """Greyscale PNG of a 2-D grid (rows = first operand), normalised to its max; no imaging library needed."""
    h, w = len(grid), len(grid[0]) if grid else 0
    mx = max([max(r) for r in grid] + [1e-9])
    rows = []
    for r in grid:
        line = bytes(255 - int(255 * max(0.0, v) / mx) for v in r for _ in range(scale))
        rows += [b"\x00" + line] * scale
    raw = b"".join(rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w * scale, h * scale, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
