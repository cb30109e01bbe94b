"""The web microscope: FastAPI app serving the graph explorer and a JSON API.

One model computation runs at a time: traces, interventions and probes go into a FIFO queue served by one worker
thread; the page polls a job for its queue position, then its result or error. The server keeps running
when a job fails. Graph names are validated (no path traversal) and request bodies are size-limited.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from mechscope.attribution.attribute import PRESETS
from mechscope.attribution.supernodes import flowchart, suggest_groups  # noqa: F401  (suggest_groups: re-exported)
from mechscope.errors import MechscopeError
from mechscope.server.serving import CompressedFiles, LoadingScope

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
MAX_BODY = 256 * 1024
MAX_PROBE_CHARS = 2000      # the page's text boxes allow as much; the model's context is checked on top
MAX_PROBE_LIMIT = 200


@dataclass
class Job:
    id: str
    kind: str
    status: str = "queued"          # queued | running | done | error | cancelled
    result: Any = None
    error: str = ""
    created: float = field(default_factory=time.time)


class Worker:
    """A single thread that runs model computations in submission order."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()
        self.jobs: dict[str, Job] = {}
        self.order: list[str] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def submit(self, kind: str, fn: Callable[[], Any]) -> Job:
        job = Job(uuid.uuid4().hex[:12], kind)
        with self.lock:
            self.jobs[job.id] = job
            self.order.append(job.id)
        self.q.put((job, fn))
        return job

    def position(self, job: Job) -> int:
        with self.lock:
            waiting = [j for j in self.order if self.jobs[j].status in ("queued", "running")]
        return waiting.index(job.id) if job.id in waiting else -1

    def _run(self) -> None:
        while True:
            job, fn = self.q.get()
            if job.status == "cancelled":
                continue
            job.status = "running"
            try:
                result = fn()
                if job.status != "cancelled":      # cancelled while running: the result is dropped
                    job.result, job.status = result, "done"
            except MechscopeError as e:
                if job.status != "cancelled":
                    job.error, job.status = str(e), "error"
            except Exception as e:  # the server must survive any failed computation
                log.exception("job %s failed", job.id)
                if job.status != "cancelled":
                    job.error, job.status = f"{type(e).__name__}: {e}", "error"

    def cancel(self, job: Job) -> None:
        """Minimal cancel: a queued job never runs; a running one finishes but its result is dropped."""
        with self.lock:
            if job.status in ("queued", "running"):
                job.status = "cancelled"


class Microscope:
    """Model, transcoders, feature index and graph store behind the API."""

    def __init__(self, model_name: str, graph_dir: Path, transcoders: str | None = None, index: str | None = None,
                 progress: Callable[[str], None] = lambda msg: None) -> None:
        from mechscope.session import Session

        # one Session holds model, set and index (the same loading as the CLI); loaded now, not on the first request,
        # each step announced so the page can say what the server is doing
        self.session = Session(model_name, transcoders, index=index)
        progress(f"loading model {model_name} (the first run converts it, which can take minutes)")
        self.model = self.session.model
        progress("loading transcoders")
        self.ts = self.session.transcoders
        self.graph_dir = graph_dir
        graph_dir.mkdir(parents=True, exist_ok=True)
        progress("opening the feature index")
        self.index = self.session.index
        self.labels = self.session.labels()

    def graph_path(self, name: str) -> Path:
        if not NAME_RE.match(name) or ".." in name:
            raise MechscopeError(f"bad graph name {name!r}")
        return self.graph_dir / f"{name}.json"

    def list_graphs(self) -> list[dict]:
        out = []
        # parsing a 20 MB graph for its metadata takes seconds: remember it per file version
        cache = self.__dict__.setdefault("_meta_cache", {})
        for p in sorted(self.graph_dir.glob("*.json"), key=lambda p: -p.stat().st_mtime):
            try:
                st = p.stat()
                key = (p.name, st.st_mtime_ns, st.st_size)
                if key not in cache:
                    cache[key] = json.loads(p.read_text())["metadata"]
                meta = cache[key]
            except (ValueError, KeyError, OSError):
                continue
            info = meta.get("info", {})
            out.append({"name": p.stem, "prompt": meta.get("prompt", ""), "model": info.get("model", ""),
                        "replacement_score": info.get("replacement_score"), "completeness_score": info.get("completeness_score")})
        return out

    def trace(self, prompt: str, chat: bool, max_feature_nodes: int, targets: list[str],
              node_threshold: float | None = None, edge_threshold: float | None = None) -> str:
        from dataclasses import replace

        # the page prunes like the CLI (the same config defaults) unless it asks otherwise; only the node budget is
        # its own preset
        base = PRESETS["interactive"]
        cfg = replace(base, max_feature_nodes=max_feature_nodes, targets=targets,
                      node_threshold=node_threshold or base.node_threshold,
                      edge_threshold=edge_threshold or base.edge_threshold)
        g = self.session.trace(prompt, cfg, chat=chat)
        name = f"{g.slug()}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        g.save(self.graph_path(name), labels=self.labels)
        return name

    def intervene(self, prompt: str, edits: list[dict], freeze_attention: bool, generate: int, chat: bool,
                  watch: list[str] | None = None, top_k: int = 5) -> dict:
        from mechscope.interventions import Edit, parse_ref

        parsed = []
        for e in edits:
            mode = e.get("mode", "set")
            if mode not in ("set", "scale", "ablate"):
                raise MechscopeError(f"bad edit mode {mode!r}")
            parsed.append(Edit(parse_ref(str(e["feature"])), mode, float(e.get("value", 0.0))))
        if not parsed:
            raise MechscopeError("no features chosen")
        return self.session.intervene(prompt, parsed, generate=generate, freeze_attention=freeze_attention, chat=chat,
                                      watch=watch or None, top_k=top_k)

    def check_probe(self, text: str, token: str | None, pos: int | None) -> int:
        """The position a probe will read; raises MechscopeError for text the model cannot take or a missing position.

        Only the tokenizer runs (no model), so bad requests are refused at once instead of after a wait in the queue.
        """
        from mechscope.features.probe import probe_position

        return probe_position(self.model.tokenize(text).strs, token, pos)

    def probe(self, text: str, token: str | None, pos: int | None, limit: int) -> dict:
        # the session's index is None when it describes other transcoders: then hits rank by raw activation, unlabelled
        return self.session.probe(text, token=token, pos=pos, limit=limit)


def create_app(scope: Microscope | LoadingScope) -> FastAPI:
    app = FastAPI(title="mechscope", docs_url=None, redoc_url=None)
    # static files and API answers; graphs come precompressed (below) and the middleware leaves them alone
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=6)
    worker = Worker()
    gz_graphs = CompressedFiles()
    app.state.worker = worker

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size and int(size) > MAX_BODY:
            return JSONResponse({"error": f"request body over {MAX_BODY} bytes"}, status_code=413)
        return await call_next(request)

    @app.middleware("http")
    async def while_loading(request: Request, call_next):
        if getattr(scope, "loading", False) and request.url.path.startswith("/api/") and request.url.path != "/api/info":
            return JSONResponse({"error": f"the server is still loading: {scope.message}"}, status_code=503)
        return await call_next(request)

    @app.exception_handler(MechscopeError)
    async def user_error(request: Request, exc: MechscopeError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/info")
    def info():
        from mechscope.attribution import AttributionConfig

        if getattr(scope, "loading", False):
            return {"loading": True, "message": scope.message, "error": scope.error}
        m = scope.model
        d = AttributionConfig()
        return {"model": m.name, "n_layers": m.n_layers, "d_transcoder": scope.ts.d_transcoder,
                "has_index": scope.index is not None, "chat_template": bool(getattr(m.tokenizer, "chat_template", None)),
                "node_threshold": d.node_threshold, "edge_threshold": d.edge_threshold,
                "max_feature_nodes": d.max_feature_nodes}

    @app.get("/api/graphs")
    def graphs():
        return scope.list_graphs()

    @app.get("/api/graphs/{name}")
    def graph(name: str, request: Request):
        # graphs reach tens of MB: sent gzip-compressed once per file version, revalidated by ETag
        p = scope.graph_path(name)
        if not p.exists():
            raise HTTPException(404, f"no graph {name}")
        return gz_graphs.response(p, request.headers)

    @app.post("/api/graphs/{name}/qparams")
    async def save_qparams(name: str, request: Request):
        from mechscope.paths import atomic_write_text

        p = scope.graph_path(name)
        if not p.exists():
            raise HTTPException(404, f"no graph {name}")
        body = await request.json()
        q = {"pinnedIds": [str(x) for x in body.get("pinnedIds", [])][:2000],
             "supernodes": [[str(x) for x in sn][:500] for sn in body.get("supernodes", [])][:200],
             "linkType": "both", "clickedId": str(body.get("clickedId", "")), "sg_pos": ""}
        data = json.loads(p.read_text())
        data["qParams"] = {**data.get("qParams", {}), **q}
        atomic_write_text(p, json.dumps(data))
        return {"ok": True}

    @app.post("/api/graphs/{name}/labels")
    async def save_labels(name: str, request: Request):
        """Node labels edited in the page, written into the graph's nodes (their `clerp`)."""
        from mechscope.paths import atomic_write_text

        p = scope.graph_path(name)
        if not p.exists():
            raise HTTPException(404, f"no graph {name}")
        body = await request.json()
        labels = body.get("labels") if isinstance(body, dict) else None
        if not isinstance(labels, dict) or not all(isinstance(v, str) and len(v) <= 300 for v in labels.values()):
            raise MechscopeError("labels must map node ids to strings of at most 300 characters")
        data = json.loads(p.read_text())
        n = 0
        for node in data["nodes"]:
            if node["node_id"] in labels and node.get("feature_type") == "cross layer transcoder":
                node["clerp"], n = labels[node["node_id"]], n + 1
        atomic_write_text(p, json.dumps(data))
        return {"ok": True, "updated": n}

    @app.get("/api/graphs/{name}/suggest")
    def suggest(name: str):
        p = scope.graph_path(name)
        if not p.exists():
            raise HTTPException(404, f"no graph {name}")
        return {"supernodes": suggest_groups(json.loads(p.read_text()), scope.labels)}

    @app.get("/api/graphs/{name}/flowchart")
    def auto_flowchart(name: str, n_features: int = 40, max_boxes: int = 10):
        p = scope.graph_path(name)
        if not p.exists():
            raise HTTPException(404, f"no graph {name}")
        if not (1 <= n_features <= 500 and 1 <= max_boxes <= 40):
            raise MechscopeError("n_features must lie in 1..500 and max_boxes in 1..40")
        fc = flowchart(json.loads(p.read_text()), scope.labels, n_features=n_features, max_boxes=max_boxes)
        return {**fc.to_json(), "text": fc.to_text(), "svg": fc.to_svg()}

    @app.get("/api/features/{layer}/{feature}")
    def feature(layer: int, feature: int):
        if scope.index is None:
            return {"id": f"{layer}/{feature}", "label": "", "missing_index": True, "examples": [], "top_logits": [],
                    "bottom_logits": [], "hist": {"edges": [], "counts": []}, "density": None}
        return scope.index.feature(layer, feature)

    def _job_view(job: Job) -> dict:
        return {"id": job.id, "kind": job.kind, "status": job.status, "position": worker.position(job),
                "result": job.result, "error": job.error}

    @app.post("/api/trace")
    async def trace(request: Request):
        body = await request.json()
        prompt = str(body.get("prompt", ""))
        if not prompt.strip():
            raise MechscopeError("empty prompt")
        n = int(body.get("max_feature_nodes", PRESETS["interactive"].max_feature_nodes))
        if not 0 <= n <= 8192:
            raise MechscopeError("max_feature_nodes must lie in 0..8192")
        targets = [str(t) for t in body.get("targets", [])][:10]
        thr = {}
        for k in ("node_threshold", "edge_threshold"):
            v = body.get(k)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                    raise MechscopeError(f"{k} must lie in (0, 1]")
                thr[k] = float(v)
        job = worker.submit("trace", lambda: scope.trace(prompt, bool(body.get("chat")), n, targets, **thr))
        return _job_view(job)

    @app.post("/api/intervene")
    async def intervene(request: Request):
        body = await request.json()
        prompt = str(body.get("prompt", ""))
        gen = int(body.get("generate", 0))
        if not 0 <= gen <= 64:
            raise MechscopeError("generate must lie in 0..64")
        edits = list(body.get("edits", []))[:200]
        watch = [str(t) for t in body.get("watch", []) if str(t)][:20]
        top_k = int(body.get("top_k", 5))
        if not 1 <= top_k <= 50:
            raise MechscopeError("top_k must lie in 1..50")
        job = worker.submit("intervene", lambda: scope.intervene(prompt, edits, bool(body.get("freeze_attention", True)), gen,
                                                                 bool(body.get("chat")), watch, top_k))
        return _job_view(job)

    @app.post("/api/probe")
    async def probe(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise MechscopeError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise MechscopeError("the request body must be a JSON object")
        text = body.get("text", "")
        if not isinstance(text, str) or not text.strip():
            raise MechscopeError("empty text")
        if len(text) > MAX_PROBE_CHARS:
            raise MechscopeError(f"text has {len(text)} characters; at most {MAX_PROBE_CHARS}")
        token, pos, limit = body.get("token"), body.get("pos"), body.get("limit", 20)
        if token is not None and (not isinstance(token, str) or not token):
            raise MechscopeError("token must be a non-empty string")
        # bool is an int subclass: `true` must not mean position 1
        if pos is not None and (not isinstance(pos, int) or isinstance(pos, bool)):
            raise MechscopeError("pos must be an integer (negative counts from the end)")
        if token is not None and pos is not None:
            raise MechscopeError("give token or pos, not both")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PROBE_LIMIT:
            raise MechscopeError(f"limit must be an integer in 1..{MAX_PROBE_LIMIT}")
        scope.check_probe(text, token, pos)
        job = worker.submit("probe", lambda: scope.probe(text, token, pos, limit))
        return _job_view(job)

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        j = worker.jobs.get(job_id)
        if j is None:
            raise HTTPException(404, "no such job")
        return _job_view(j)

    @app.delete("/api/jobs/{job_id}")
    def cancel_job(job_id: str):
        j = worker.jobs.get(job_id)
        if j is None:
            raise HTTPException(404, "no such job")
        worker.cancel(j)
        return _job_view(j)

    return app


def serve(model: str, host: str = "127.0.0.1", port: int = 8765, graph_dir: Path | None = None,
          transcoders: str | None = None, index: str | None = None) -> None:
    import uvicorn

    from mechscope.attribution import graph_store

    # the page is up at once and says what the server is doing while the model loads (or converts) behind it
    print(f"mechscope: serving {model} at http://{host}:{port}/ (Ctrl-C to stop); the page shows the loading progress", flush=True)
    scope = LoadingScope(lambda progress: Microscope(model, graph_dir or graph_store(), transcoders, index, progress=progress))
    app = create_app(scope)
    uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=64)
