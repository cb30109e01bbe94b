"""Serving helpers of the web app: graph files sent gzip-compressed, and a stand-in while the model loads."""

from __future__ import annotations

import gzip
import json
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from starlette.responses import Response

from mechscope.errors import MechscopeError


class CompressedFiles:
    """JSON files sent gzip-compressed, compressed once per file version and revalidated by ETag.

    Graphs reach tens of MB; level 1 compresses 3x faster than level 6 for a 30% larger answer.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.cache: dict[Path, tuple[tuple[int, int], bytes]] = {}
        self.max_entries = max_entries

    def response(
        self, p: Path, headers: Mapping[str, str], edit: Callable[[dict], Iterable[str]] | None = None
    ) -> Response:
        """`p` as a (gzip) JSON answer. `edit(parsed)`, when given, changes the parsed file in place and returns the
        top-level keys it changed: only those are written anew, the rest (a graph's links) are sent as they were.
        """
        st = p.stat()
        key = (st.st_mtime_ns, st.st_size)
        etag = f'"{key[0]:x}-{key[1]:x}{"-e" if edit else ""}"'
        out = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=out)
        hit = self.cache.get(p)
        if hit is None or hit[0] != key:
            raw = p.read_bytes()
            try:  # parsed once per file version: a damaged graph is a 400, never a truncated download
                data, spans = parse_top(raw.decode())
            except (ValueError, UnicodeDecodeError):
                raise MechscopeError(f"graph {p.stem} is damaged (not readable JSON)") from None
            changed = set(edit(data)) if edit is not None and isinstance(data, dict) else set()
            if changed:
                text = raw.decode()

                def piece(k: str, v: Any) -> str:
                    if k in changed or k not in spans:
                        return json.dumps(v, separators=(",", ":"))
                    return text[spans[k][0] : spans[k][1]]

                raw = ("{" + ",".join(f"{json.dumps(k)}:{piece(k, v)}" for k, v in data.items()) + "}").encode()
            hit = (key, gzip.compress(raw, compresslevel=1))
            if len(self.cache) >= self.max_entries:
                self.cache.pop(next(iter(self.cache)))
            self.cache[p] = hit
        if "gzip" not in headers.get("accept-encoding", ""):
            return Response(gzip.decompress(hit[1]), media_type="application/json", headers=out)
        return Response(hit[1], media_type="application/json", headers={**out, "Content-Encoding": "gzip"})


_WS = re.compile(r"[ \t\n\r]*")


def parse_top(text: str) -> tuple[Any, dict[str, tuple[int, int]]]:
    """`text` parsed as JSON, and for a top-level object where each value lies in `text` ({key: (start, end)}), so
    an unchanged value can be copied instead of serialised again. Raises ValueError for text that is not JSON.

    >>> parse_top('{"a": [1, 2], "b": "x"}')
    ({'a': [1, 2], 'b': 'x'}, {'a': (6, 12), 'b': (19, 22)})
    """
    dec = json.JSONDecoder()
    i = _WS.match(text, 0).end()
    if not text.startswith("{", i):
        return json.loads(text), {}
    obj: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    i = _WS.match(text, i + 1).end()
    if text.startswith("}", i):
        i += 1
    else:
        while True:
            k, i = dec.raw_decode(text, i)
            i = _WS.match(text, i).end()
            if not isinstance(k, str) or not text.startswith(":", i):
                raise ValueError("bad object key")
            i = _WS.match(text, i + 1).end()
            v, end = dec.raw_decode(text, i)
            obj[k], spans[k] = v, (i, end)
            i = _WS.match(text, end).end()
            if text.startswith(",", i):
                i = _WS.match(text, i + 1).end()
                continue
            if text.startswith("}", i):
                i += 1
                break
            raise ValueError("expected , or }")
    if _WS.match(text, i).end() != len(text):
        raise ValueError("extra data")
    return obj, spans


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
