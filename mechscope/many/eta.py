"""Progress of a many-prompt run: prompts done / failed / left and the time left, on stderr.

A counted step of `mechscope.progress` (a tqdm bar on a terminal, else a line every few seconds; silent under
the CLI's --quiet, JSON under --json). A failed prompt is said at once, with its one-line error.

>>> with RunProgress(total=3, quiet=True) as p:
...     p.advance(ok=True)
>>> p.done, p.failed
(1, 0)
"""

from __future__ import annotations

import logging

from mechscope.progress import counter

log = logging.getLogger("mechscope.progress")


class RunProgress:
    """Counts finished prompts and reports them through `mechscope.progress.counter`."""

    def __init__(self, total: int, quiet: bool = False, what: str = "tracing prompts") -> None:
        self.total, self.what, self.quiet = total, what, quiet
        self.done = self.failed = 0
        self._bar = counter(what, total, "prompts", enabled=not quiet)

    def __enter__(self) -> "RunProgress":
        self._bar.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._bar.__exit__(exc_type, exc, tb)

    def advance(self, ok: bool, note: str = "") -> None:
        """One more prompt finished (ok or failed); `note` (an error line) is said at once."""
        self.done += ok
        self.failed += not ok
        if self.quiet:
            return
        if note:
            log.warning("%s", note)  # the progress logger's filter drops it under --quiet
        self._bar.detail = f"{self.failed} failed" if self.failed else ""
        self._bar.update(1)
