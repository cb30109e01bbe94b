"""Local backends of trace-many: the driver's own process (one worker), or worker processes on this machine.

A backend has `slots` (prompts in flight at once), `submit(item)` and `next_result()` (blocks until one
prompt finishes, in any order). Worker processes are started with "spawn" (a forked copy of a process that
already runs torch threads can deadlock); each loads the model once in the pool's initializer.

A worker process that dies (killed, out of memory) breaks its whole pool: every prompt in flight is lost with it.
The backend keeps what had finished, starts a fresh pool and traces the lost prompts again, so a run still
records every prompt exactly once. Each worker notes the prompt it holds (a file named by its pid), so the prompt
of the process that died is known: one that was being traced when its worker died twice is recorded as failed
(most likely it needs more memory than a worker has), and the pool's other prompts are never blamed.

>>> b = InlineBackend(WorkerSpec(model="gemma3-270m")); b.start()                        # doctest: +SKIP
>>> b.submit(PromptItem("a", 1, "Dallas is in the state of")); b.next_result().top_logit  # doctest: +SKIP
' Texas'
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import signal
import tempfile
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.many.inputs import PromptItem
from mechscope.many.store import Result
from mechscope.many.worker import Tracer, WorkerSpec, init_process, trace_in_process, worker_ready

MAX_RESTARTS = 3  # pools in a row that die before any prompt finishes: then stop (pending prompts stay pending)
MAX_DEATHS = 2  # a prompt whose worker died this many times while tracing it is recorded as failed


class InlineBackend:
    """Traces in the calling process: one model load, no copies, the baseline of every comparison."""

    slots = 1
    name = "inline"

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self._queue: deque[PromptItem] = deque()
        self._tracer: Tracer | None = None

    def start(self) -> None:
        self._tracer = Tracer(self.spec).load()

    def submit(self, item: PromptItem) -> None:
        self._queue.append(item)

    def next_result(self) -> Result:
        assert self._tracer is not None
        return self._tracer.trace(self._queue.popleft())

    def close(self) -> None:
        self._queue.clear()


class ProcessBackend:
    """`workers` processes, each with its own model copy and `spec.threads` torch threads."""

    name = "processes"

    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        self.spec, self.slots = spec, workers
        self._pool: ProcessPoolExecutor | None = None
        self._running: dict[Future, PromptItem] = {}
        self._lost: list[PromptItem] = []  # taken, but their pool broke before they finished
        self._ready: deque[Result] = deque()  # finished, not yet handed out
        self._deaths: dict[str, int] = {}  # prompt id → workers that died while tracing it
        self._restarts = 0
        self._marks = ""  # directory of "<pid>" files naming the prompt each worker process holds

    def start(self) -> None:
        self._marks = self._marks or tempfile.mkdtemp(prefix="mechscope-workers-")
        self._pool = ProcessPoolExecutor(
            self.slots, mp_context=mp.get_context("spawn"), initializer=init_process, initargs=(self.spec,)
        )
        # every process loads its model before the first prompt (as Ray's actors do): a load failure is one error,
        # and the run's start time is the load, not the first prompts. A ready call holds its process a moment, so
        # the calls spread over all of them.
        seen: set[int] = set()
        for _ in range(3):
            try:
                seen |= set(self._pool.map(worker_ready, [0.3] * self.slots))
            except BrokenProcessPool:
                raise MechscopeError("a worker process could not load the model (out of memory?)") from None
            if len(seen) >= self.slots:
                break

    def submit(self, item: PromptItem) -> None:
        assert self._pool is not None
        try:
            self._running[self._pool.submit(trace_in_process, item, self._marks)] = item
        except BrokenProcessPool:  # a worker died while idle: the pool takes nothing until it is replaced
            self._lost.append(item)

    def next_result(self) -> Result:
        while not self._ready:
            if not self._lost:
                done, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
                for fut in done:
                    item = self._running.pop(fut)
                    try:
                        self._ready.append(fut.result())
                        self._restarts = 0  # the pool makes progress
                    except BrokenProcessPool:
                        self._lost.append(item)
            if self._lost:
                self._recover()
        return self._ready.popleft()

    def _recover(self) -> None:
        """A worker died and broke the pool: keep what finished, blame the dead worker's prompt, start a fresh
        pool and hand it every other lost prompt again."""
        for fut, item in self._running.items():
            # the pool fails all its futures once it is broken; one still unsettled is lost all the same
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._ready.append(fut.result())
            else:
                self._lost.append(item)
        self._running.clear()
        held = self._stop_broken_pool()
        retry = []
        for it in self._lost:
            if it.id in held:
                self._deaths[it.id] = self._deaths.get(it.id, 0) + 1
            if self._deaths.get(it.id, 0) >= MAX_DEATHS:
                msg = f"its worker process died {MAX_DEATHS} times while tracing it (out of memory? killed?)"
                self._ready.append(Result(it.id, error=msg))
            else:
                retry.append(it)
        self._lost = []
        self._restarts += 1
        if self._restarts > MAX_RESTARTS:
            raise MechscopeError(
                f"worker processes died {self._restarts} times in a row; stopping (pending prompts stay pending)"
            )
        self.start()
        for it in retry:
            self.submit(it)

    def _stop_broken_pool(self) -> set[str]:
        """Wait for the broken pool to stop its processes; the ids of the prompts held by those that died on their
        own (their marks). The pool itself ends the others with SIGTERM: those are not blamed."""
        assert self._pool is not None
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        # the pool's manager has stopped and joined every process: exit codes are final once it is joined
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        held = set()
        for p in procs:
            p.join(timeout=10)
            mark = Path(self._marks, str(p.pid))
            if p.exitcode is not None and p.exitcode != -signal.SIGTERM and mark.exists():
                held.add(mark.read_text())
        for mark in Path(self._marks).iterdir():  # the old pool's processes are all gone
            mark.unlink(missing_ok=True)
        return held

    def _stop_pool(self) -> None:
        if self._pool is not None:
            procs = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:  # idle after a finished run; mid-prompt after an interrupt: none is left behind
                if p.is_alive():
                    p.terminate()
                p.join(timeout=10)
            self._pool = None

    def close(self) -> None:
        self._stop_pool()
        self._running.clear()
        if self._marks:
            shutil.rmtree(self._marks, ignore_errors=True)
            self._marks = ""
