"""Say what a slow step is doing: a line on stderr (logger "mechscope.progress") once it has run ~2 s.

Quick steps stay silent, so a refused command still prints exactly one line; slow ones (model conversion and
loading, unpacking a feature index, attribution rounds) announce themselves and their duration, so a first run
on a fresh machine never looks hung.

>>> with step("loading transcoders"):
...     pass                       # under 2 s: prints nothing
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("mechscope.progress")
AFTER_S = 2.0


@contextmanager
def step(message: str, after_s: float = AFTER_S) -> Iterator[None]:
    """Log `message…` if the block is still running after `after_s` seconds, and `message: done in N s` at its end."""
    said = threading.Event()

    def announce() -> None:
        said.set()
        log.info("%s…", message)

    timer = threading.Timer(after_s, announce)
    timer.daemon = True
    t0 = time.monotonic()
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if said.is_set():
            log.info("%s: done in %.1f s", message, time.monotonic() - t0)
