"""The compare view's API: the diff of two stored graphs, as `mechscope diff A B --json` gives it.

    GET /api/diff?a=NAME&b=NAME[&by=auto|id|label][&positions=true][&min_change=0.001][&max_edges=1000]

The answer is `mechscope.compare.diff.diff_graphs(A, B)` plus `node_keys` (each feature node's row key, per
graph), so the page colours every node of the overlay exactly as the ranked list says. An unknown graph is a
404, graphs of two models a 400, each with one line.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import FastAPI, Query

from mechscope.compare.config import DiffConfig
from mechscope.server.scope import NotFound

MAX_EDGES = 20_000  # edge rows per kind of change in one answer (all are counted in its summary)


def register(app: FastAPI, scope) -> None:
    """Add GET /api/diff to `app`, over the graph store of `scope` (a Microscope or anything with read_graph)."""
    cache: dict[tuple, dict] = {}  # a re-opened comparison (a reload, a pasted link) costs nothing

    @app.get("/api/diff")
    def diff(
        a: Annotated[str, Query(max_length=200)],
        b: Annotated[str, Query(max_length=200)],
        by: Literal["auto", "id", "label"] = "auto",
        positions: bool = False,
        min_change: Annotated[float, Query(ge=0, le=1, allow_inf_nan=False)] = 0.001,
        max_edges: Annotated[int, Query(ge=1, le=MAX_EDGES)] = 1000,
    ) -> dict:
        cfg = DiffConfig(by=by, positions=positions, min_change=min_change, max_edges=max_edges)
        # keyed by both files' versions: a label saved in the page changes the answer
        key = (_version(scope, a), _version(scope, b), by, positions, min_change, max_edges)
        if key not in cache:
            from mechscope.compare.diff import diff_graphs

            ga, gb = scope.read_graph(a), scope.read_graph(b)  # damaged → 400 (one line)
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = diff_graphs(ga, gb, cfg, node_keys=True)  # two models → 400 (one line)
        return cache[key]


def _version(scope, name: str) -> tuple[str, int, int]:
    """(name, mtime, size) of a stored graph; a bad name is refused, an unknown one is NotFound (404)."""
    p = scope.graph_path(name)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise NotFound(f"no graph {name}") from None
    return name, st.st_mtime_ns, st.st_size
