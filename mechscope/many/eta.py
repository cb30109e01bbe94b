"""Progress of a many-prompt run: prompts done / failed / left and the time left, on stderr.

Uses the counted step of `mechscope.progress` (`Progress`: a tqdm bar on a terminal, else a line every few
seconds; silent under the CLI's --quiet) when it is there, else logs its own lines on "mechscope.progress".
A failed prompt is said at once, with its one-line error.

>>> with RunProgress(total=3, quiet=True) as p:
...     p.advance(ok=True)
>>> p.done, p.failed
(1, 0)
"""

from __future__ import annotations

import logging
import time

from mechscope import progress as _progress

log = logging.getLogger("mechscope.progress")


def quiet_mode() -> bool:
    """Whether the front end asked for no progress lines (the CLI's --quiet)."""
    mode = getattr(_progress, "mode", None)
    return bool(mode and mode() == "quiet")


class RunProgress:
    """Counts finished prompts; reports through `mechscope.progress.Progress` or every `every_s` seconds."""

    def __init__(self, total: int, quiet: bool = False, every_s: float = 5.0, what: str = "tracing prompts") -> None:
        self.total, self.every_s, self.what = total, every_s, what
        self.quiet = quiet or quiet_mode()
        self.done = self.failed = 0
        self.t0 = time.monotonic()
        self._last = -1e9
        self._bar = None

    def __enter__(self) -> "RunProgress":
        make = getattr(_progress, "Progress", None)
        if make is not None and not self.quiet:
            try:
                self._bar = make(self.what, total=self.total, unit="prompts").__enter__()
            except Exception:  # noqa: BLE001 - a progress display must never stop a run; log lines instead
                self._bar = None
        self.t0 = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)

    def advance(self, ok: bool, note: str = "") -> None:
        """One more prompt finished (ok or failed); `note` (an error line) is said at once."""
        self.done += ok
        self.failed += not ok
        if self.quiet:
            return
        if note:
            log.warning("%s", note)
        if self._bar is not None:
            self._bar.detail = f"{self.failed} failed" if self.failed else ""
            self._bar.update(1)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done + self.failed == self.total:
            self._last = now
            log.info("%s", self.line())

    def line(self) -> str:
        n = self.done + self.failed
        dt = time.monotonic() - self.t0
        per = dt / n if n else 0.0
        fail = f", {self.failed} failed" if self.failed else ""
        return f"{self.what}: {n} of {self.total}{fail}; {per:.1f} s each, ETA {_hms(per * (self.total - n))}"


def _hms(s: float) -> str:
    s = int(round(s))
    h, r = divmod(s, 3600)
    m, s = divmod(r, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
