"""What keeps other web pages and oversized requests away from the loopback server (one ASGI middleware).

* Host: only the loopback names (and a host the user explicitly allowed) — a DNS-rebinding page reaches the
  server under its own name and is refused.
* Origin: a request that carries one must come from the served origin itself (scheme://Host).
* Token: every state-changing request (anything but GET/HEAD/OPTIONS) must send `X-Mechscope-Token`, a random
  per-server value that only the served page knows (injected into its HTML); a cross-site form or
  `text/plain` fetch cannot set the header, and a custom header forces a CORS preflight we never grant.
* Body size: counted while the body streams in (chunked or not); over the limit → 413 before reading more.
* Security headers (CSP without inline script, nosniff, no referrer) on every response.

>>> guard = Guard(app=None, token="t", max_body=1024)
>>> guard.host_ok(b"127.0.0.1:8765"), guard.host_ok(b"evil.example:8765")
(True, False)
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)
TOKEN_HEADER = "x-mechscope-token"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ABS_PATH = re.compile(r"(?<![\w.:/~-])(?:~|/)(?:[^\s'\"`,;:()\[\]{}<>/]+/)+([^\s'\"`,;:()\[\]{}<>/]*)")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def scrub(message: str) -> str:
    """One line, with absolute paths cut to their last component (clients need not learn the server's layout).

    >>> scrub("no feature index at /home/u/.cache/mechscope/features/x.sqlite; rebuild\\nmore")
    'no feature index at x.sqlite; rebuild'
    """
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else "error"
    return _ABS_PATH.sub(lambda m: m.group(1) or "…", first)[:500]


def host_name(host: str) -> str:
    """'127.0.0.1:8765' → '127.0.0.1', '[::1]:80' → '[::1]'."""
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def send_json(send: Send, status: int, payload: dict, extra: list | None = None) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *SECURITY_HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: Host/Origin/token checks, a streamed body limit, security headers."""

    def __init__(self, app, token: str, max_body: int, allowed_hosts: set[str] | frozenset[str] = LOOPBACK) -> None:
        self.app, self.token, self.max_body = app, token, max_body
        self.allowed = frozenset(h.lower() for h in allowed_hosts)

    def host_ok(self, host: bytes | None) -> bool:
        if not host:
            return False
        if "*" in self.allowed:  # serve --allow-remote on 0.0.0.0: any name (the token still guards writes)
            return True
        try:
            return host_name(host.decode("latin-1").strip().lower()) in self.allowed
        except ValueError:
            return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = headers.get(b"host")
        if not self.host_ok(host):
            await send_json(send, 421 if host else 400, {"error": "this server answers only to its loopback address"})
            return
        origin = headers.get(b"origin")
        scheme = scope.get("scheme", "http")
        if origin is not None and origin.decode("latin-1") != f"{scheme}://{host.decode('latin-1')}":
            await send_json(send, 403, {"error": "requests from other web pages are refused"})
            return
        if scope["method"] not in SAFE_METHODS:
            sent = headers.get(TOKEN_HEADER.encode(), b"").decode("latin-1")
            if not hmac.compare_digest(sent.encode(), self.token.encode()):
                await send_json(send, 403, {"error": f"missing or wrong {TOKEN_HEADER} header (reload the page)"})
                return
            # read the whole (bounded) body first, so an oversized one is refused however it is framed
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    if int(length) > self.max_body:
                        await send_json(send, 413, {"error": f"request body over {self.max_body} bytes"})
                        return
                except ValueError:
                    await send_json(send, 400, {"error": "bad Content-Length"})
                    return
            chunks, size = [], 0
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    await send_json(send, 413, {"error": f"request body over {self.max_body} bytes"})
                    return
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def receive_buffered() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            receive = receive_buffered

        async def send_with_headers(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                have = {k.lower() for k, _ in msg.get("headers", [])}
                msg = {**msg, "headers": [*msg.get("headers", []), *(h for h in SECURITY_HEADERS if h[0] not in have)]}
            await send(msg)

        await self.app(scope, receive, send_with_headers)
