"""Local backends of trace-many: the driver's own process (one worker), or worker processes on this machine.

A backend has `slots` (prompts in flight at once), `submit(item)` and `next_result()` (blocks until one
prompt finishes, in any order). Worker processes are started with "spawn" (a forked copy of a process that
already runs torch threads can deadlock); each loads the model once in the pool's initializer.

>>> b = InlineBackend(WorkerSpec(model="gemma3-270m")); b.start()                        # doctest: +SKIP
>>> b.submit(PromptItem("a", 1, "Dallas is in the state of")); b.next_result().top_logit  # doctest: +SKIP
' Texas'
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from mechscope.errors import MechscopeError
from mechscope.many.inputs import PromptItem
from mechscope.many.store import Result
from mechscope.many.worker import Tracer, WorkerSpec, init_process, trace_in_process, worker_ready

MAX_RESTARTS = 3  # a pool whose workers keep dying (out of memory at load) is refused, not restarted forever


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
        self._restarts = 0

    def start(self) -> None:
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
        self._running[self._pool.submit(trace_in_process, item)] = item

    def next_result(self) -> Result:
        done, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
        fut = next(iter(done))
        item = self._running.pop(fut)
        try:
            return fut.result()
        except BrokenProcessPool:
            # a worker died (killed, out of memory, a crash in native code): the pool is gone, so the prompts it
            # held are recorded as failed and a fresh pool takes the rest
            self._restart()
            return Result(item.id, error="a worker process died while tracing this prompt (out of memory? killed?)")

    def _restart(self) -> None:
        self._restarts += 1
        lost = list(self._running.values())
        self._running.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._restarts > MAX_RESTARTS:
            raise MechscopeError(
                f"worker processes died {self._restarts} times; stopping (pending prompts stay pending)"
            )
        self.start()
        for it in lost:  # not their fault: they shared the broken pool
            self.submit(it)

    def close(self) -> None:
        if self._pool is not None:
            procs = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:  # idle after a finished run; mid-prompt after an interrupt: none is left behind
                if p.is_alive():
                    p.terminate()
                p.join(timeout=10)
            self._pool = None
        self._running.clear()
