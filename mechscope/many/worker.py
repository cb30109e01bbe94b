"""One worker: loads the model and transcoder set once, then traces prompt after prompt into `Result`s.

The same class runs in the driver's own process (`--workers 1`), in each local worker process and inside each
Ray actor, so every backend produces byte-identical graph files. A prompt that fails becomes a Result with its
one-line error; only an interrupt (Ctrl-C) or the process dying stops a worker.

>>> w = Tracer(WorkerSpec(model="gemma3-270m"))                                          # doctest: +SKIP
>>> w.trace(PromptItem("dallas", 1, "Dallas is in the state of")).top_logit              # doctest: +SKIP
' Texas'
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechscope.errors import MechscopeError
from mechscope.many.inputs import PromptItem
from mechscope.many.store import Result


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to load its own copy: model, set, attribution knobs (as a dict), threads, outputs."""

    model: str
    transcoders: str | None = None
    attribution: dict = field(default_factory=dict)  # AttributionConfig fields; targets come per prompt
    threads: int = 0  # torch threads in this worker (0: leave as configured)
    adjacency: bool = False


class Tracer:
    """A loaded Session that turns PromptItems into Results (graph JSON text + catalogue fields)."""

    def __init__(self, spec: WorkerSpec) -> None:
        from mechscope.attribution import AttributionConfig
        from mechscope.session import Session
        from mechscope.threads import apply_threads

        if spec.threads:
            apply_threads(spec.threads)
        self.spec = spec
        self.cfg = AttributionConfig(**spec.attribution)
        self.session = Session(spec.model, spec.transcoders)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._labels: dict[str, str] | None = None

    def load(self) -> "Tracer":
        """Load model, set and labels now (a worker pays this once, before its first prompt)."""
        _ = self.session.model, self.session.transcoders
        self._labels = self.session.labels()
        return self

    def trace(self, item: PromptItem) -> Result:
        """Trace one prompt; any failure but an interrupt becomes a Result with a one-line error."""
        from mechscope.attribution.attribute import attribute

        t0 = time.perf_counter()
        try:
            if self._labels is None:
                self.load()
            cfg = dataclasses.replace(self.cfg, targets=list(item.targets)) if item.targets else self.cfg
            # the Session's model and set, but attribute() itself: Session.trace announces every slow step, and a
            # run of thousands of prompts reports per prompt instead (mechscope.many.eta)
            g = attribute(self.session.model, self.session.transcoders, item.prompt, cfg)
            data = g.to_json(slug=item.id, labels=self._labels)
            res = _summary(item.id, data, g.meta)
            res.graph_json = json.dumps(data)
            if self.spec.adjacency:
                res.adjacency = _adjacency_bytes(g)
        except MechscopeError as e:
            res = Result(item.id, error=one_line(str(e)))
        except Exception as e:  # noqa: BLE001 - a failing prompt must not stop the other prompts
            res = Result(item.id, error=one_line(f"{type(e).__name__}: {e}"))
        res.wall_s = round(time.perf_counter() - t0, 3)
        res.worker = self.name
        return res


def _summary(pid: str, data: dict, meta: dict) -> Result:
    info = data["metadata"]["info"]
    top = (meta.get("top_logits") or [{}])[0]
    return Result(
        pid,
        top_logit=top.get("token"),
        top_prob=top.get("prob"),
        n_nodes=len(data["nodes"]),
        n_edges=len(data["links"]),
        replacement_score=info.get("replacement_score"),
        completeness_score=info.get(
            "input_completeness_score", info.get("completeness_score")
        ),  # Graph.scores' input completeness (older graphs: completeness_score)
        attribution_s=meta.get("elapsed_s"),
    )


def _adjacency_bytes(g: Any) -> bytes:
    # the Graph writes its binary form to a path; a worker on another machine must send bytes to the driver
    with tempfile.TemporaryDirectory(prefix="mechscope-adj-") as d:
        p = Path(d) / "g.adjacency.safetensors"
        g.save_binary(p)
        return p.read_bytes()


def one_line(msg: str, limit: int = 300) -> str:
    """The first line of an error message, at most `limit` characters (the catalogue keeps one line per error).

    >>> one_line("boom\\n  at frame 1")
    'boom'
    """
    s = (msg.strip().splitlines() or [""])[0].strip() or "error without a message"
    return s if len(s) <= limit else s[: limit - 1] + "…"


# ---- local worker processes (concurrent.futures): one Tracer per process, made by the pool's initializer ----
_TRACER: Tracer | None = None


def init_process(spec: WorkerSpec) -> None:
    """Pool initializer: set threads before torch loads, then load this process's copy of the model."""
    global _TRACER
    if spec.threads:
        os.environ["OMP_NUM_THREADS"] = str(spec.threads)
    _TRACER = Tracer(spec).load()


def worker_ready(hold_s: float) -> int:
    """This process's id, once its model is loaded (the initializer ran); held `hold_s` so calls spread out."""
    time.sleep(hold_s)
    return os.getpid()


def trace_in_process(item: PromptItem, marks: str = "") -> Result:
    """Trace `item` in this pool process. marks: a directory where the process names the prompt it holds (a file
    named by its pid), so the driver knows which prompt a process that dies was tracing."""
    assert _TRACER is not None, "init_process did not run"
    mark = Path(marks, str(os.getpid())) if marks else None
    if mark is not None:
        mark.write_text(item.id)
    res = _TRACER.trace(item)  # never raises but for an interrupt; the process dying leaves the mark behind
    if mark is not None:
        mark.unlink(missing_ok=True)
    return res
