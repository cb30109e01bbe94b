"""The model queue: one worker thread runs computations in submission order, with bounds, cancel and shutdown.

Bounds keep a flood of requests from growing memory without limit: at most `max_pending` jobs wait or run
(per client at most `per_client`), and finished jobs are kept for `keep_s` seconds, at most `max_done` of them.
A queued job is cancelled by removing it; a running one by setting its event, which library loops poll at
their checkpoints (mechscope.cancel) — between attribution rounds and positions, between generated tokens.

>>> w = Worker(max_pending=2)
>>> j = w.submit("demo", lambda: 1 + 1)
>>> w.wait(j.id, 5).status
'done'
>>> w.close()
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from mechscope.cancel import Cancelled, cancel_scope
from mechscope.errors import MechscopeError

log = logging.getLogger(__name__)
STATUSES = ("queued", "running", "done", "error", "cancelled")


class QueueFull(MechscopeError):
    """The queue (or this client's share of it) is full: the server answers 429."""


@dataclass
class Job:
    id: str
    kind: str
    client: str = ""
    status: str = "queued"  # queued | running | done | error | cancelled
    result: Any = None
    error: str = ""
    created: float = field(default_factory=time.time)
    finished: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    fn: Callable[[], Any] | None = field(default=None, repr=False)

    def view(self, position: int) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "position": position,
            "result": self.result,
            "error": self.error,
        }


class Worker:
    """A single thread that runs model computations in submission order."""

    def __init__(self, max_pending: int = 32, per_client: int = 8, max_done: int = 256, keep_s: float = 900.0) -> None:
        self.max_pending, self.per_client, self.max_done, self.keep_s = max_pending, per_client, max_done, keep_s
        self.jobs: dict[str, Job] = {}
        self.pending: collections.deque[Job] = collections.deque()  # queued, in order
        self.running: Job | None = None
        self.lock = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="mechscope-worker", daemon=True)
        self.thread.start()
        # A daemon thread killed inside torch's C++ code at interpreter exit aborts the process
        # ("terminate called without an active exception"): stop it first, whatever way the process ends.
        ref = weakref.ref(self)
        atexit.register(lambda: (w := ref()) is not None and w.close())

    # -- submission -----------------------------------------------------------------------------------------
    def submit(self, kind: str, fn: Callable[[], Any], client: str = "") -> Job:
        with self.lock:
            if self.closed:
                raise QueueFull("the server is shutting down")
            self._evict()
            active = list(self.pending) + ([self.running] if self.running else [])
            if len(active) >= self.max_pending:
                raise QueueFull(f"the queue is full ({self.max_pending} jobs); try again when one has finished")
            if client and sum(j.client == client for j in active) >= self.per_client:
                raise QueueFull(f"you have {self.per_client} jobs waiting or running; wait for one or cancel it")
            job = Job(uuid.uuid4().hex[:12], kind, client, fn=fn)
            self.jobs[job.id] = job
            self.pending.append(job)
            self.lock.notify_all()
        return job

    def position(self, job: Job) -> int:
        """0 while running, i ≥ 1 for the i-th queued job behind the running one, -1 once finished."""
        with self.lock:
            if job is self.running:
                return 0
            try:
                return list(self.pending).index(job) + (1 if self.running else 0)
            except ValueError:
                return -1

    def view(self, job: Job) -> dict:
        return job.view(self.position(job))

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a queued one at once, a running one at its next checkpoint. None if unknown."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job.status == "queued":
                self.pending.remove(job)
                self._finish(job, "cancelled", error="cancelled before it started")
            elif job.status == "running":
                job.cancel.set()
            return job

    def wait(self, job_id: str, timeout: float) -> Job:
        """Block until the job has finished (tests, scripts)."""
        end = time.time() + timeout
        with self.lock:
            job = self.jobs[job_id]
            while job.status in ("queued", "running") and time.time() < end:
                self.lock.wait(min(0.1, max(0.0, end - time.time())))
            return job

    # -- the worker thread ----------------------------------------------------------------------------------
    def _finish(self, job: Job, status: str, result: Any = None, error: str = "") -> None:
        job.status, job.result, job.error, job.finished, job.fn = status, result, error, time.time(), None
        self.lock.notify_all()

    def _evict(self) -> None:
        """Forget finished jobs older than keep_s, and the oldest beyond max_done (called under the lock)."""
        now = time.time()
        done = [j for j in self.jobs.values() if j.status not in ("queued", "running")]
        done.sort(key=lambda j: j.finished)
        drop = [j for j in done if now - j.finished > self.keep_s]
        drop += done[len(drop) : max(len(drop), len(done) - self.max_done)]
        for j in drop:
            self.jobs.pop(j.id, None)

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.pending and not self.closed:
                    self.lock.wait()
                if self.closed:
                    return
                job = self.pending.popleft()
                job.status, self.running = "running", job
                fn = job.fn
            status, result, error = "done", None, ""
            try:
                with cancel_scope(job.cancel):
                    result = fn()
            except Cancelled:
                status, error = "cancelled", "cancelled while running"
            except MechscopeError as e:
                status, error = "error", str(e).splitlines()[0] if str(e) else type(e).__name__
            except Exception as e:  # the server must survive any failed computation
                log.exception("job %s failed", job.id)
                status, error = "error", f"internal error ({type(e).__name__}); see the server log"
            if job.cancel.is_set() and status == "done":
                status, result, error = "cancelled", None, "cancelled while running"
            with self.lock:
                self.running = None
                self._finish(job, status, result, error)
                self._evict()

    def close(self, timeout: float = 30.0) -> None:
        """Drop queued jobs, ask the running one to stop, and wait (up to `timeout` s) for the thread to end."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            while self.pending:
                self._finish(self.pending.popleft(), "cancelled", error="the server shut down")
            if self.running is not None:
                log.info("shutting down: cancelling running job %s", self.running.id)
                self.running.cancel.set()
            self.lock.notify_all()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.warning("the running job did not stop within %.0f s", timeout)
