"""Stand-ins for a trace-many worker process's model (tests/test_many.py): imported by spawned pool processes, so they
live in a module of their own. A prompt "crash" kills the process tracing it, as the out-of-memory killer would."""

from __future__ import annotations

import os
import signal
import time


class FakeTracer:
    def trace(self, item):
        from mechscope.many.store import Result

        if item.prompt == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.05)
        return Result(item.id, graph_json="{}", worker=f"fake:{os.getpid()}")


def init_fake(spec) -> None:
    """Pool initializer: no model, a FakeTracer where the real one would be."""
    from mechscope.many import worker

    worker._TRACER = FakeTracer()
