"""Serving helpers of the web app: graph files sent gzip-compressed, and a stand-in while the model loads."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from starlette.responses import Response

from mechscope.errors import MechscopeError


class CompressedFiles:
    """JSON files sent gzip-compressed, compressed once per file version and revalidated by ETag.

    Graphs reach tens of MB; level 1 compresses 3x faster than level 6 for a 30% larger answer.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.cache: dict[Path, tuple[tuple[int, int], bytes]] = {}
        self.max_entries = max_entries

    def response(self, p: Path, headers: Mapping[str, str]) -> Response:
        st = p.stat()
        key = (st.st_mtime_ns, st.st_size)
        etag = f'"{key[0]:x}-{key[1]:x}"'
        out = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=out)
        hit = self.cache.get(p)
        if hit is None or hit[0] != key:
            raw = p.read_bytes()
            try:  # parsed once per file version: a damaged graph is a 400, never a truncated download
                json.loads(raw)
            except ValueError:
                raise MechscopeError(f"graph {p.stem} is damaged (not readable JSON)") from None
            hit = (key, gzip.compress(raw, compresslevel=1))
            if len(self.cache) >= self.max_entries:
                self.cache.pop(next(iter(self.cache)))
            self.cache[p] = hit
        if "gzip" not in headers.get("accept-encoding", ""):
            return Response(gzip.decompress(hit[1]), media_type="application/json", headers=out)
        return Response(hit[1], media_type="application/json", headers={**out, "Content-Encoding": "gzip"})


class LoadingScope:
    """Stands in for the Microscope while it loads in a thread, so the page can say what the server is doing.

    Until it is loaded, /api/info answers {"loading": true, "message": ...} and the other API calls a 503;
    afterwards every attribute comes from the loaded Microscope.
    """

    def __init__(self, load: Callable[[Callable[[str], None]], Any]) -> None:
        self.loading, self.message, self.error, self._scope = True, "starting", "", None

        def run() -> None:
            try:
                self._scope = load(self._progress)
                self.loading = False
                self._progress("ready")
            except Exception as e:  # reported by /api/info and on stdout; the process stays up to say so
                self.error = f"{type(e).__name__}: {e}"
                self._progress(f"failed to load: {self.error}")

        threading.Thread(target=run, daemon=True).start()

    def _progress(self, msg: str) -> None:
        self.message = msg
        print(f"mechscope: {msg}", flush=True)

    def __getattr__(self, name: str) -> Any:
        scope = self.__dict__.get("_scope")
        if scope is None:
            raise MechscopeError("the server is still loading the model")
        return getattr(scope, name)
