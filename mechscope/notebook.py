"""Self-contained HTML views for Jupyter: an attribution graph and a feature dashboard, no server, no CDN.

`GraphView` inlines the web page's own CSS and JavaScript (read from mechscope/server/static at render time, so
the notebook and the server show the same page) and the graph's JSON into one document shown in an iframe;
`FeatureView` renders one feature's dashboard (examples, logit effects, histogram) as plain HTML.

>>> from mechscope.notebook import GraphView, FeatureView            # doctest: +SKIP
>>> GraphView(graph)             # in a notebook cell: the interactive graph   # doctest: +SKIP
>>> FeatureView(index.feature(3, 1234))                                        # doctest: +SKIP

This module reads static files but imports nothing from mechscope.server, so it needs no web framework.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

STATIC = Path(__file__).with_name("server") / "static"
# dependency order: a module comes after every module it imports
MODULES = [
    "util.js",
    "graph.js",
    "focus.js",
    "labels.js",
    "render.js",
    "urlstate.js",
    "reading.js",
    "edges.js",
    "diff.js",
    "panels.js",
    "subscores.js",
    "subgraph.js",
    "predict.js",
    "intervene.js",
    "attend.js",
    "comparepanel.js",
    "filters.js",
    "hovercard.js",
    "search.js",
    "textview.js",
    "keys.js",
    "exports.js",
    "schema.js",
    "openfile.js",
    "traceform.js",
    "app.js",
]
_IMPORT = re.compile(r"^import\s.*?from\s+\"\./[a-z-]+\.js\";\s*$", re.M)
_EXPORT = re.compile(r"^export\s+(?=(async\s+)?function|const|let|class)", re.M)


def bundle_js() -> str:
    """The page's ES modules as one classic script: imports dropped, `export` keywords removed, in one scope.

    The modules share no top-level names, so concatenating them in dependency order is equivalent.
    """
    parts = []
    for name in MODULES:
        src = (STATIC / name).read_text(encoding="utf-8")
        src = _EXPORT.sub("", _IMPORT.sub("", src))
        if re.search(r"^\s*(import|export)\s", src, re.M):
            raise RuntimeError(f"{name}: an import/export the notebook bundler does not understand")
        parts.append(f"// ---- {name}\n{src}")
    return '(() => {\n"use strict";\n' + "\n".join(parts) + "\n})();\n"


def _script_json(data: Any) -> str:
    # inside <script type="application/json">, only "</" could end the element early
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def _graph_json(graph: Any) -> dict:
    if isinstance(graph, dict):
        return graph
    if isinstance(graph, (str, Path)):
        return json.loads(Path(graph).read_text(encoding="utf-8"))
    if hasattr(graph, "to_json"):
        return graph.to_json()
    raise TypeError("graph must be a graph JSON dict, a path to one, or an attribution Graph")


def _with_density(graph: dict, index: Any) -> dict:
    """A copy of `graph` whose feature nodes carry their `density` from `index` (the page hides dense features)."""
    feats = [n for n in graph.get("nodes", []) if n.get("feature_type") == "cross layer transcoder"]
    dens = index.densities([(int(n["layer"]), int(n["feature"])) for n in feats])
    nodes = [
        {**n, "density": dens[(int(n["layer"]), int(n["feature"]))]}
        if n.get("feature_type") == "cross layer transcoder" and (int(n["layer"]), int(n["feature"])) in dens
        else n
        for n in graph.get("nodes", [])
    ]
    return {**graph, "nodes": nodes}


class GraphView:
    """An interactive attribution graph for a notebook cell (the server's page, fed from embedded data).

    graph: a graph JSON dict, a path to one, or an attribution `Graph`; features: optional {"layer/feature":
    dashboard dict} (or a FeatureIndex, from which the graph's most influential features are read).

    >>> v = GraphView({"metadata": {"prompt": "hi", "prompt_tokens": ["hi"]}, "qParams": {}, "nodes": [], "links": []})
    >>> "<iframe" in v._repr_html_()
    True
    """

    def __init__(
        self, graph: Any, features: Any = None, height: int = 680, name: str = "graph", max_features: int = 300
    ) -> None:
        self.graph = _graph_json(graph)
        if features is not None and hasattr(features, "densities"):  # a FeatureIndex: the density filter's data too
            self.graph = _with_density(self.graph, features)
        self.height = height
        self.name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.graph.get("metadata", {}).get("slug") or name) or "graph"
        self.features = self._features(features, max_features)

    def _features(self, features: Any, limit: int) -> dict:
        if features is None or isinstance(features, dict):
            return features or {}
        feats = [n for n in self.graph["nodes"] if n.get("feature_type") == "cross layer transcoder"]
        feats.sort(key=lambda n: n.get("influence") if n.get("influence") is not None else 1.0)
        out = {}
        for n in feats[:limit]:
            key = f"{n['layer']}/{n['feature']}"
            if key not in out:
                out[key] = features.feature(int(n["layer"]), int(n["feature"]))
        return out

    def info(self) -> dict:
        layers = [
            int(n["layer"])
            for n in self.graph["nodes"]
            if n.get("feature_type") in ("cross layer transcoder", "mlp reconstruction error")
        ]
        meta = self.graph.get("metadata", {})
        return {
            "model": meta.get("info", {}).get("model", meta.get("scan", "")),
            "n_layers": (max(layers) + 1) if layers else 1,
            "d_transcoder": "–",
            "has_index": bool(self.features),
            "static": True,
        }

    def html(self) -> str:
        """The whole page as one standalone HTML document (also a file you can open in a browser)."""
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        css = (STATIC / "app.css").read_text(encoding="utf-8")
        page = re.sub(r"<script\b[^>]*\bsrc=[^>]*>\s*</script>\s*", "", page)  # the server's scripts
        page = re.sub(r"<link[^>]*rel=\"icon\"[^>]*>\s*", "", page)
        page = re.sub(r"<meta name=\"mechscope-token\"[^>]*>\s*", "", page)
        page = re.sub(r"<link[^>]*href=\"/static/app.css\"[^>]*>", lambda _: f"<style>\n{css}\n</style>", page)
        embed = {"name": self.name, "graph": self.graph, "features": self.features, "info": self.info()}
        tail = (
            f'<script type="application/json" id="mechscope-embed">{_script_json(embed)}</script>\n'
            f"<script>\n{bundle_js()}</script>\n</body>"
        )
        return page.replace("</body>", tail, 1)

    def save(self, path: str | Path) -> Path:
        """Write html() to `path`."""
        from mechscope.paths import atomic_write_text

        atomic_write_text(Path(path), self.html())
        return Path(path)

    def _repr_html_(self) -> str:
        # an iframe keeps the page's ids, styles and key bindings apart from the notebook's
        return (
            f'<iframe srcdoc="{html.escape(self.html(), quote=True)}" style="width:100%;height:{int(self.height)}px;border:1px solid #ddd" '
            f'sandbox="allow-scripts allow-downloads" title="mechscope attribution graph"></iframe>'
        )


class FeatureView:
    """One feature's dashboard as static HTML: label, density, top examples (hover a token: its activation),
    logit effects and the activation histogram with axes.

    d: the dict `FeatureIndex.feature(layer, feature)` returns (also served at /api/features/{layer}/{feature}).

    >>> FeatureView({"id": "3/7", "label": "x", "examples": [], "top_logits": [], "bottom_logits": [],
    ...              "hist": {"edges": [], "counts": []}})._repr_html_().startswith("<div")
    True
    """

    def __init__(self, d: dict, own_activation: float | None = None) -> None:
        self.d, self.own = d, own_activation

    def _hist_svg(self) -> str:
        edges, counts = self.d.get("hist", {}).get("edges", []), self.d.get("hist", {}).get("counts", [])
        if not counts or not edges:
            return ""
        W, H, ml, mb, mt, pw = 350, 120, 40, 30, 8, 302
        ph = H - mt - mb
        mx = max(max(counts), 1)
        bw = pw / len(counts)
        lo, hi = math.log10(edges[0]), math.log10(edges[-1])
        x_of = lambda v: ml + bw + (math.log10(max(v, 1e-12)) - lo) / (hi - lo) * (pw - 2 * bw)  # noqa: E731
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-size="10" font-family="system-ui, sans-serif">'
        ]
        for i, c in enumerate(counts):
            hh = math.log10(c + 1) / math.log10(mx + 1) * ph
            out.append(
                f'<rect x="{ml + i * bw:.1f}" y="{mt + ph - hh:.1f}" width="{max(1.0, bw - 1):.1f}" height="{hh:.1f}" fill="#3d7fd9"><title>{c}</title></rect>'
            )
        out.append(
            f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/><line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>'
        )
        for p in range(round(lo), round(hi) + 1):
            x = x_of(10**p)
            out.append(
                f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" stroke="#333"/><text x="{x:.1f}" y="{mt + ph + 15}" text-anchor="middle">{"1" if p == 0 else f"1e{p}"}</text>'
            )
        out.append(
            f'<text x="{ml + pw / 2}" y="{H - 2}" text-anchor="middle">activation (log scale)</text>'
            f'<text x="{ml - 4}" y="{mt + 8}" text-anchor="end">{mx}</text><text x="{ml - 4}" y="{mt + ph}" text-anchor="end">0</text>'
        )
        if self.own:
            x = min(ml + pw, max(ml, x_of(self.own)))
            out.append(
                f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#c45500" stroke-width="2"/>'
                f'<text x="{min(x + 3, W - 60):.1f}" y="{mt + 9}" fill="#8a3c00">this {self.own:.2f}</text>'
            )
        return "".join(out) + "</svg>"

    def _repr_html_(self) -> str:
        d, e = self.d, html.escape
        parts = [
            '<div class="mechscope-feature" style="font:13px/1.35 system-ui,sans-serif;color:#1d2330;max-width:720px">',
            f'<h3 style="margin:4px 0">Feature {e(str(d.get("id", "")))} “{e(d.get("label") or "")}”</h3>',
            f'<div style="color:#5c6370">density {d.get("density", "–")} · max {d.get("max_act", "–")}</div>',
        ]
        if d.get("label_input") or d.get("label_output"):  # the two sides of the label (indexes since issue #31)
            parts.append(
                f'<div class="feature-sides">reads: {e(d.get("label_input") or "–")} · says: {e(d.get("label_output") or "–")}</div>'
            )
        if d.get("fires_on"):
            fires = ", ".join(f"{e(json.dumps(f[0]))}×{f[1]}" for f in d["fires_on"][:8])
            parts.append(f'<div class="feature-fires" style="color:#5c6370">fires on: {fires}</div>')
        hist = self._hist_svg()
        if hist:
            parts.append('<h4 style="margin:8px 0 2px">Activation histogram</h4>' + hist)
        parts.append(
            '<h4 style="margin:8px 0 2px">Examples: top, by activation quantile, random <span style="color:#5c6370;font-weight:normal">(hover a token for its activation)</span></h4>'
        )
        for ex in d.get("examples", []):
            toks = []
            for i, t in enumerate(ex["tokens"]):
                a = ex["acts"][i] * ex["activation"]
                edge = "outline:1px solid #a04000;" if i == ex.get("max_pos") else ""
                toks.append(
                    f'<span title="activation {a:.2f}" style="background:rgba(230,97,0,{ex["acts"][i] * 0.7:.3f});{edge}">{e(t)}</span>'
                )
            kind = ex.get("kind", "top")  # top, q{band} (an activation quantile band), random
            parts.append(
                f'<div style="font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;margin:3px 0">'
                f'<span style="color:#5c6370" title="{e(kind)}">{kind:<6} {ex["activation"]:.2f} </span>{"".join(toks)}</div>'
            )
        rows = "".join(
            f'<tr><td style="color:#1a5fb4">{e(json.dumps(p[0]))}</td><td>{p[1]:.2f}</td><td style="color:#b3141f">{e(json.dumps(n[0]))}</td><td>{n[1]:.2f}</td></tr>'
            for p, n in zip(d.get("top_logits", [])[:8], d.get("bottom_logits", [])[:8])
        )
        if rows:
            parts.append(
                f'<h4 style="margin:8px 0 2px">Logit effects</h4><table><tr><th colspan=2>promotes</th><th colspan=2>suppresses</th></tr>{rows}</table>'
            )
        return "\n".join(parts) + "</div>"
