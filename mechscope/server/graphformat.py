"""What the page checks a graph file against before it draws it: the graph schema, its version, and how large a
graph the page holds. GET /api/graph-format serves them; the page validates an opened or dropped file itself (the
file never reaches the server), so one line explains a refusal and nothing is drawn half.

>>> fmt = graph_format()
>>> fmt["schema_version"], sorted(fmt["limits"])
(1, ['bytes', 'links', 'nodes'])
"""

from __future__ import annotations

import json

from fastapi import FastAPI

from mechscope.attribution.graph import SCHEMA_PATH, SCHEMA_VERSION

# The page parses a file whole (JSON.parse) and keeps a few typed arrays per edge. Graphs of 300k edges open and
# redraw smoothly (tests/test_page.py); past about a million edges or 100k nodes the tab's memory and the frame
# time give out, and a file that large is mostly something else. Limits, not targets: a graph near them opens slowly.
MAX_BYTES = 256 * 1024 * 1024
MAX_NODES = 100_000
MAX_LINKS = 1_000_000


def graph_format() -> dict:
    """The schema (as written in attribution/graph_schema.json), the version this page reads, the page's limits."""
    return {
        "schema_version": SCHEMA_VERSION,
        "schema": json.loads(SCHEMA_PATH.read_text()),
        "limits": {"bytes": MAX_BYTES, "nodes": MAX_NODES, "links": MAX_LINKS},
    }


def register(app: FastAPI) -> None:
    fmt = graph_format()  # read once: the schema ships with the package

    @app.get("/api/graph-format")
    def graph_format_route() -> dict:
        return fmt
