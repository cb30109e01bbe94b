"""Cooperative cancellation: long library loops call `checkpoint()`; a runner that wants to stop them sets an event.

The event lives in a context variable, so library code needs no extra argument and a call outside any scope
(the CLI, a notebook) costs one lookup and never raises.

>>> import threading
>>> stop = threading.Event()
>>> with cancel_scope(stop):
...     checkpoint()                     # returns: not cancelled yet
>>> stop.set()
>>> with cancel_scope(stop):
...     checkpoint()                     # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
Cancelled: cancelled
"""

from __future__ import annotations

import contextvars
import threading
from contextlib import contextmanager
from typing import Iterator

_EVENT: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("mechscope_cancel", default=None)


class Cancelled(Exception):
    """Raised at a checkpoint after the surrounding `cancel_scope`'s event was set (not a user error)."""


@contextmanager
def cancel_scope(event: threading.Event) -> Iterator[None]:
    token = _EVENT.set(event)
    try:
        yield
    finally:
        _EVENT.reset(token)


def checkpoint() -> None:
    """Raise `Cancelled` if the current scope's event is set; a no-op outside any scope."""
    ev = _EVENT.get()
    if ev is not None and ev.is_set():
        raise Cancelled("cancelled")
