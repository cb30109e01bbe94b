"""Say what a slow step is doing, on stderr: never a silent minute, never "done" for a step that did not finish.

Two tools, both quiet for quick work so a refused command still prints exactly one line:

- `step(message)`: an uncounted step. After `after_s` (2 s) it says `message…`, then every `heartbeat_s`
  (8 s) `message: still working, N s`, and at its end `message: done in N s` — or `interrupted after N s` /
  `failed after N s` when it ended by Ctrl-C or an error.
- `Progress(message, total, unit)`: a counted step (tensors, bytes, tokens, prompts). On a terminal it draws a
  tqdm bar; elsewhere (a log, a pipe) it prints a line every `every_s` (5 s) with the count, the rate and the
  time left.

The output mode is process-wide, set once by the front end (`configure`): "text" (the default, lines through
the logger "mechscope.progress"), "quiet" (nothing), or "json" (one JSON object per line on stderr, for
programs: `{"event": "progress", "step": ..., "done": ..., "total": ..., "eta_s": ...}`).

>>> with step("loading transcoders"):
...     pass                       # under 2 s: prints nothing
>>> with Progress("reading", total=3, unit="files") as bar:
...     for _ in range(3):
...         bar.update()           # under 2 s: prints nothing
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Literal

log = logging.getLogger("mechscope.progress")
AFTER_S = 2.0  # a step quicker than this says nothing
HEARTBEAT_S = 8.0  # an uncounted step says it is still working this often (the target: never 10 s of silence)
EVERY_S = 5.0  # a counted step prints a line this often when there is no terminal for a bar

Mode = Literal["text", "quiet", "json"]
_mode: Mode = "text"
_lock = threading.Lock()
_active: list[object] = []  # open steps and bars, innermost last: only the innermost one heartbeats
_said = threading.Event()  # set once anything was said (the CLI's start-up notice is then not needed)
_last_said = [time.monotonic()]  # when the last line (or bar update) went out: the command watcher's clock


class _ModeFilter(logging.Filter):
    """Lines logged straight onto "mechscope.progress" (not through `emit`) follow the mode too: dropped when
    quiet, JSON when json, and counted as speech by the command watcher."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_emitted", False):
            return True
        if _mode == "quiet":
            return False
        _said.set()
        _last_said[0] = time.monotonic()
        if _mode == "json":
            sys.stderr.write(json.dumps({"event": "log", "message": record.getMessage()}, ensure_ascii=False) + "\n")
            sys.stderr.flush()
            return False
        return True


log.addFilter(_ModeFilter())


def configure(mode: Mode) -> None:
    """Choose how progress is shown for the rest of the process ("text", "quiet" or "json")."""
    global _mode
    if mode not in ("text", "quiet", "json"):
        raise ValueError(f"progress mode must be text, quiet or json, not {mode!r}")
    _mode = mode


def emit(event: str, step_name: str, text: str, **fields: object) -> None:
    """One progress event: a plain line in text mode, a JSON object in json mode, nothing in quiet mode."""
    if _mode == "quiet":
        return
    _said.set()
    _last_said[0] = time.monotonic()
    if _mode == "json":
        obj = {"event": event, "step": step_name, "message": text, **fields}
        sys.stderr.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stderr.flush()
    else:
        log.info("%s", text, extra={"_emitted": True})


def warn(text: str) -> None:
    """A warning about the user's input (a likely typo, a doubtful alignment): shown even with --quiet, which
    silences progress only; a JSON object `{"event": "warning", ...}` in json mode."""
    if _mode == "json":
        sys.stderr.write(json.dumps({"event": "warning", "message": text}, ensure_ascii=False) + "\n")
        sys.stderr.flush()
    else:
        logging.getLogger("mechscope.warnings").warning("%s", text)


def _innermost(obj: object) -> bool:
    with _lock:
        return bool(_active) and _active[-1] is obj


def fmt_seconds(s: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`: how long, readable at a glance."""
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_count(n: float, unit: str) -> str:
    """Counts with their unit; bytes as kB / MB / GB."""
    if unit == "%":
        return f"{n:.0f}%"
    if unit == "B":
        for u, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if n >= k:
                return f"{n / k:.1f} {u}"
        return f"{n:.0f} B"
    return f"{n:,.0f}" + (f" {unit}" if unit else "")


class _Ticker:
    """A daemon thread that calls `tick()` every `period_s` until stopped (no thread per line)."""

    def __init__(self, period_s: float, first_s: float, tick) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s, first_s, tick), daemon=True)
        self._thread.start()

    def _run(self, period_s: float, first_s: float, tick) -> None:
        wait = first_s
        while not self._stop.wait(wait):
            tick()
            wait = period_s

    def stop(self) -> None:
        self._stop.set()


def _ending(exc: BaseException | None, message: str, elapsed: float) -> tuple[str, str]:
    if exc is None:
        return "done", f"{message}: done in {elapsed:.1f} s"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", f"{message}: interrupted after {elapsed:.1f} s"
    return "failed", f"{message}: stopped by an error after {elapsed:.1f} s"


@contextmanager
def step(message: str, after_s: float = AFTER_S, heartbeat_s: float = HEARTBEAT_S) -> Iterator[None]:
    """An uncounted step: `message…` once it has run `after_s`, a heartbeat every `heartbeat_s` while it is the
    innermost open step, and how it ended (done / interrupted / failed) if anything was said."""
    said = threading.Event()
    t0 = time.monotonic()
    me = object()

    def tick() -> None:
        if not _innermost(me):  # an inner step or bar is talking: say nothing over it
            return
        if not said.is_set():
            said.set()
            emit("start", message, f"{message}…")
        else:
            el = time.monotonic() - t0
            emit("working", message, f"{message}: still working, {fmt_seconds(el)}", elapsed_s=round(el, 1))

    with _lock:
        _active.append(me)
    ticker = _Ticker(heartbeat_s, after_s, tick)
    exc: BaseException | None = None
    try:
        yield
    except BaseException as e:  # noqa: B036 — Ctrl-C must not be reported as "done"
        exc = e
        raise
    finally:
        ticker.stop()
        with _lock:
            _active.remove(me)
        if said.is_set():
            el = time.monotonic() - t0
            event, text = _ending(exc, message, el)
            emit(event, message, text, elapsed_s=round(el, 1))


class Progress:
    """A counted step with a rate and the time left: a tqdm bar on a terminal, else a line every `every_s`.

    `total` may be None (unknown); `unit` "B" prints bytes as MB/GB. Use as a context manager so an
    interrupted step says so instead of "done".

    >>> with Progress("unpacking", total=2_000_000, unit="B") as bar:
    ...     bar.update(1_000_000); bar.update(1_000_000)
    """

    def __init__(
        self,
        message: str,
        total: float | None,
        unit: str = "",
        after_s: float = AFTER_S,
        every_s: float = EVERY_S,
        bar: bool | None = None,
    ) -> None:
        self.message, self.total, self.unit = message, total, unit
        self.done = 0.0
        self._base = 0.0  # units done before this run (a resumed job): counted, but not in the rate
        self.after_s, self.every_s = after_s, every_s
        self._bar_wanted = bar
        self._bar = None
        self._t0 = 0.0
        self._said = False
        self._ticker: _Ticker | None = None
        self.detail = ""  # what it is doing now, shown in its lines (e.g. the current phase)

    def __enter__(self) -> "Progress":
        self._t0 = time.monotonic()
        with _lock:
            _active.append(self)
        use_bar = self._bar_wanted if self._bar_wanted is not None else sys.stderr.isatty()
        if _mode == "text" and use_bar:
            from tqdm.auto import tqdm

            scale = self.unit == "B"
            self._bar = tqdm(
                disable=False,  # the CLI sets TQDM_DISABLE for libraries' own bars, not for ours
                total=self.total,
                desc=self.message,
                unit=self.unit or "it",
                unit_scale=scale,
                delay=self.after_s,
                file=sys.stderr,
                leave=True,
            )
        else:
            self._ticker = _Ticker(self.every_s, self.after_s, self._line)
        return self

    def update(self, n: float = 1) -> None:
        """Count `n` more units done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            _last_said[0] = time.monotonic()  # a moving bar is not silence

    def set(self, done: float) -> None:
        """Set the count (for work measured from outside, e.g. a file's size)."""
        self.update(done - self.done)

    def resume(self, done: float) -> None:
        """Start from `done` units a previous run finished: shown as done, left out of the rate and time left."""
        self._base = done
        self.update(done - self.done)

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far, or None before any unit is done or without a total."""
        el = time.monotonic() - self._t0
        if not self.total or self.done - self._base <= 0:
            return None
        return el * (self.total - self.done) / (self.done - self._base)

    def _text(self) -> str:
        el = time.monotonic() - self._t0
        count = fmt_count(self.done, self.unit)
        if self.total and self.unit != "%":
            count += f" of {fmt_count(self.total, self.unit)} ({100 * self.done / self.total:.0f}%)"
        eta = self.eta_s()
        left = f", about {fmt_seconds(eta)} left" if eta is not None else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.message}{detail}: {count}, {fmt_seconds(el)}{left}"

    def _line(self) -> None:
        if not _innermost(self):
            return
        self._said = True
        eta = self.eta_s()
        emit(
            "progress",
            self.message,
            self._text(),
            done=self.done,
            total=self.total,
            unit=self.unit,
            elapsed_s=round(time.monotonic() - self._t0, 1),
            eta_s=None if eta is None else round(eta, 1),
            detail=self.detail,
        )

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        with _lock:
            _active.remove(self)
        el = time.monotonic() - self._t0
        if self._bar is not None:
            self._bar.close()
            if exc is not None and el >= self.after_s:
                event, text = _ending(exc, self.message, el)
                emit(event, self.message, text)
            return
        if self._said:
            event, text = _ending(exc, self.message, el)
            emit(event, self.message, text, done=self.done, total=self.total, elapsed_s=round(el, 1))


class Phases:
    """A step made of phases whose durations are known roughly (measured once): a `Progress` in % of the work,
    moving inside a phase with its elapsed time (scaled by how fast the finished phases went, capped below the
    phase's end), so a step made of library calls that report nothing still shows a bar and a time left.

    >>> with Phases("converting", [("reading the tokenizer", 14.0), ("writing", 2.0)]) as ph:
    ...     ph.next()                 # the tokenizer is read; now writing
    """

    def __init__(
        self, message: str, phases: list[tuple[str, float]], every_s: float = EVERY_S, after_s: float = AFTER_S
    ) -> None:
        self.names = [n for n, _ in phases]
        total = sum(max(1e-3, w) for _, w in phases)
        self.weights = [100 * max(1e-3, w) / total for _, w in phases]  # % of the work per phase
        self.nominal = [max(1e-3, w) for _, w in phases]  # seconds each phase took when measured
        self.bar = Progress(message, total=100, unit="%", every_s=every_s, after_s=after_s)
        self.i = 0
        self._t_phase = 0.0
        self._speed = 1.0  # actual / nominal seconds of the finished phases
        self._spent_actual = self._spent_nominal = 0.0
        self._ticker: _Ticker | None = None

    def _where(self) -> float:
        inside = (time.monotonic() - self._t_phase) / (self.nominal[self.i] * self._speed)
        return sum(self.weights[: self.i]) + self.weights[self.i] * min(0.95, inside)

    def _tick(self) -> None:
        if self.i < len(self.names):
            self.bar.set(self._where())

    def __enter__(self) -> "Phases":
        self.bar.__enter__()
        self._t_phase = time.monotonic()
        self.bar.detail = f"1/{len(self.names)} {self.names[0]}"
        period = min(0.5, self.bar.every_s)
        self._ticker = _Ticker(period, period, self._tick)
        return self

    def next(self) -> None:
        """The current phase is done: count its whole share and start the next one."""
        took = time.monotonic() - self._t_phase
        self._spent_actual += took
        self._spent_nominal += self.nominal[self.i]
        self._speed = max(0.2, self._spent_actual / self._spent_nominal)
        self.i += 1
        self._t_phase = time.monotonic()
        self.bar.set(sum(self.weights[: self.i]))
        if self.i < len(self.names):
            self.bar.detail = f"{self.i + 1}/{len(self.names)} {self.names[self.i]}"

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        if exc is None:
            self.bar.set(100)
        self.bar.__exit__(exc_type, exc, tb)


@contextmanager
def watch_command(name: str, first_s: float = 1.0, quiet_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Keep a command from ever looking hung: `NAME: starting (loading libraries)…` if nothing was said within
    `first_s` (its heavy imports come later), then `NAME: still working, N s` whenever nothing was said for
    `quiet_s` — between steps, or inside code no step wraps. Says nothing once the block has ended.

    >>> with watch_command("trace"):
    ...     pass                       # quick: prints nothing
    """
    over = threading.Event()
    guard = threading.Lock()  # no line after the command's own last one
    t0 = time.monotonic()
    _last_said[0] = t0

    def tick() -> None:
        with guard:
            if over.is_set() or _mode != "text":  # programs reading --json get the steps' own events only
                return
            now = time.monotonic()
            if not _said.is_set():
                if now - t0 >= first_s:
                    emit("start", name, f"{name}: starting (loading libraries)…")
            elif now - _last_said[0] >= quiet_s:
                el = now - t0
                emit("working", name, f"{name}: still working, {fmt_seconds(el)}", elapsed_s=round(el, 1))

    period = min(0.25, first_s / 2, quiet_s / 4)
    ticker = _Ticker(period, period, tick)
    try:
        yield
    finally:
        with guard:
            over.set()
        ticker.stop()


class _Null:
    """A counted step that shows nothing (a library caller that asked for no progress)."""

    detail = ""

    def __enter__(self) -> "_Null":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set(self, done: float) -> None:
        return None

    def resume(self, done: float) -> None:
        return None


def counter(message: str, total: float | None, unit: str = "", enabled: bool = True) -> "Progress | _Null":
    """`Progress(message, total, unit)` when `enabled`, else a silent stand-in with the same methods.

    >>> with counter("indexing", 100, "tokens", enabled=False) as bar:
    ...     bar.update(100)
    """
    return Progress(message, total, unit) if enabled else _Null()
