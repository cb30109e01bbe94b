"""trace-many's driver: read the prompts, open the store, hand the prompts still to do to a backend, record
every result as it arrives.

The driver is the only writer of the store; backends (this process, local worker processes, Ray actors) only
trace. Everything is checked before any model loads: the input, the store's model/set/knobs, the Ray address.

>>> from mechscope.many.run import trace_many
>>> summary = trace_many("prompts.jsonl", "runs/cities", model="gemma3-270m")               # doctest: +SKIP
>>> summary["done"], summary["error"]                                                       # doctest: +SKIP
(100, 0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mechscope.many.config import SHAPING, ManyConfig
from mechscope.many.eta import RunProgress
from mechscope.many.inputs import read_prompts
from mechscope.many.store import ManyStore
from mechscope.many.worker import WorkerSpec
from mechscope.progress import step

log = logging.getLogger("mechscope.progress")


@dataclass
class RunSummary:
    """What one run did (JSON-ready via `asdict`)."""

    store: str
    backend: str
    workers: int
    threads: int
    inputs: int
    new: int
    traced: int = 0
    done: int = 0
    error: int = 0
    malformed: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    start_s: float = 0.0  # of wall_s: starting the workers and loading their models (the rest is tracing)
    counts: dict = field(default_factory=dict)  # the whole store after the run: pending / done / error


def identity(model: str, transcoders: str | None, attribution) -> dict:
    """What a store answers for: the model, the set (a hash of its weight files' checksums) and the knobs that
    shape a graph. Read from config files only (no weights load), so a mismatch is refused at once."""
    from mechscope.models.registry import resolve_model_name
    from mechscope.transcoders.registry import find_transcoders

    name = resolve_model_name(model)
    model_id = name if not Path(name).is_dir() else str(Path(name).resolve())
    set_dir = find_transcoders(model, transcoders)
    try:
        files = json.loads((Path(set_dir) / "config.json").read_text()).get("files") or {}
    except (OSError, ValueError):
        files = {}
    # the same hash as the feature index's fingerprint of a loaded set; a set without checksums: its path
    src = json.dumps(files, sort_keys=True) if files else str(Path(set_dir).resolve())
    set_hash = hashlib.sha256(src.encode()).hexdigest()[:16]
    knobs = {k: _plain(v) for k, v in asdict(attribution).items() if k in SHAPING}
    return {"model": model_id, "set_hash": set_hash, "attribution": knobs, "transcoders": str(set_dir)}


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def trace_many(
    prompts: str | Path,
    store_dir: str | Path,
    model: str = "gemma3-270m",
    transcoders: str | None = None,
    attribution=None,
    cfg: ManyConfig | None = None,
    threads: int = 0,
) -> RunSummary:
    """Trace every prompt of `prompts` not yet done in the store at `store_dir`; returns a RunSummary.

    threads: total torch threads (0: one per core), split evenly between `cfg.workers` workers.
    """
    from mechscope.attribution import AttributionConfig
    from mechscope.threads import resolve_threads

    cfg = cfg or ManyConfig()
    attribution = attribution or AttributionConfig()
    items, bad = read_prompts(prompts)
    ident = identity(model, transcoders, attribution)
    total = resolve_threads(threads)
    per = max(1, total // cfg.workers)
    if cfg.ray is not None:
        from mechscope.many.ray_backend import check_reachable, import_ray

        import_ray()
        check_reachable(cfg.ray)  # before the store is touched: an unreachable cluster starts nothing
    store = ManyStore.open(store_dir, {k: ident[k] for k in ("model", "set_hash", "attribution")})
    try:
        new = store.add(items)
        for msg in bad:  # said once the run is sure to go ahead (a refusal stays one line)
            log.warning("skipped %s", msg)
        todo = store.pending({it.id for it in items}, retry_errors=cfg.retry_errors)
        if cfg.limit:
            todo = todo[: cfg.limit]
        spec = WorkerSpec(model, transcoders, asdict(attribution), per, cfg.adjacency)
        backend = _backend(spec, cfg)
        summary = RunSummary(str(store.root), backend.name, cfg.workers, per * cfg.workers, len(items), new)
        summary.malformed = bad
        if todo:
            _drive(store, backend, todo, cfg, summary)
        summary.counts = store.counts()
        return summary
    finally:
        store.close()


def _backend(spec: WorkerSpec, cfg: ManyConfig):
    if cfg.ray is not None:
        from mechscope.many.ray_backend import RayBackend

        return RayBackend(spec, cfg.workers, cfg.ray, quiet=cfg.quiet)
    from mechscope.many.local import InlineBackend, ProcessBackend

    return InlineBackend(spec) if cfg.workers == 1 else ProcessBackend(spec, cfg.workers)


def _drive(store: ManyStore, backend, todo: list, cfg: ManyConfig, summary: RunSummary) -> None:
    """Keep every backend slot busy; record each result as it arrives (an interrupt loses only what is in flight)."""
    t0 = time.monotonic()
    run = store.start_run(backend.name, summary.workers, summary.threads)
    queue, inflight = deque(todo), 0
    try:
        w = f"{backend.slots} {backend.name} worker{'s' * (backend.slots != 1)}"
        with step(f"loading the model for {len(todo)} prompts ({w})"):
            backend.start()
        summary.start_s = round(time.monotonic() - t0, 3)
        with RunProgress(len(todo), quiet=cfg.quiet) as prog:
            while queue or inflight:
                while queue and inflight < backend.slots:
                    backend.submit(queue.popleft())
                    inflight += 1
                res = backend.next_result()
                inflight -= 1
                store.record(res)
                summary.traced += 1
                summary.done += res.error is None
                summary.error += res.error is not None
                prog.advance(res.error is None, f"{res.id}: {res.error}" if res.error else "")
    finally:
        backend.close()
        summary.wall_s = round(time.monotonic() - t0, 3)
        store.finish_run(run, summary.done, summary.error, summary.wall_s)
