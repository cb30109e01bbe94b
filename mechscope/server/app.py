"""The web microscope: FastAPI app serving the graph explorer and a JSON API.

One model computation runs at a time: traces, interventions and probes go into a bounded FIFO queue served by
one worker thread (server/jobs.py); the page polls a job for its queue position, then its result or error, and
may cancel it (DELETE /api/jobs/{id}). Request bodies are typed pydantic models (server/requests.py) and every
refusal is a 4xx with a one-line JSON `{"error": ...}`. Host/Origin checks, the per-server token, the body limit
and security headers live in server/security.py. The compare view's diff of two stored graphs (server/compare.py)
and the attention panel's QK attribution (server/attend.py) add their routes here.
"""

from __future__ import annotations

import json
import logging
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mechscope.attribution.supernodes import flowchart, suggest_groups  # noqa: F401  (suggest_groups: re-exported)
from mechscope.errors import MechscopeError
from mechscope.server.serving import CompressedFiles, LoadingScope
from mechscope.server.jobs import Job, QueueFull, Worker
from mechscope.server import attend, compare, graphformat
from mechscope.server.scope import NAME_RE, Microscope, NotFound  # noqa: F401  (NAME_RE, Microscope: re-exported)
from mechscope.server.requests import (
    MAX_ID,
    InterveneRequest,
    LabelsRequest,
    ProbeRequest,
    QParamsRequest,
    TraceRequest,
    one_line,
    trace_options,
)
from mechscope.server.security import LOOPBACK, Guard, host_name, scrub

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
MAX_BODY = 256 * 1024
TOKEN_META = '<meta name="mechscope-token" content="">'


def _err(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": scrub(message)}, status_code=status)


def _check_trace(scope: Microscope, req: TraceRequest):
    """Tokenizer-only checks before queueing: context, memory estimate, single-token targets and logit difference."""
    from mechscope.attribution.attribute import check_trace

    n = scope.model.tokenize(req.prompt, chat=req.chat).ids.shape[0]
    check_trace(scope.model, scope.ts, n, req.config())
    for t in [*req.targets, *(req.logit_diff or [])]:
        scope.model.token_id(t)


def _check_intervene(scope: Microscope, req: InterveneRequest) -> None:
    from mechscope.guards import check_forward
    from mechscope.interventions import Edit, check_edits, parse_ref

    n = scope.model.tokenize(req.prompt, chat=req.chat).ids.shape[0]
    check_forward(scope.model, scope.ts, n, generate=req.generate, what=f"intervening on {n} tokens")
    check_edits(scope.model, scope.ts, [Edit(parse_ref(e.feature), e.mode, e.value) for e in req.edits], n)
    bad = [i for i in req.logit_ids if i >= scope.model.vocab_size]
    if bad:
        raise MechscopeError(f"logit_ids: {bad[0]} is not a token id (the vocabulary has {scope.model.vocab_size})")


def create_app(
    scope: "Microscope | LoadingScope",
    token: str | None = None,
    allowed_hosts: set[str] | frozenset[str] = LOOPBACK,
    max_pending: int = 32,
    per_client: int = 8,
) -> FastAPI:
    """The app around `scope`. `app.state.token` is the value state-changing requests send as X-Mechscope-Token.

    >>> app = create_app(scope)                                      # doctest: +SKIP
    >>> TestClient(app, base_url="http://127.0.0.1", headers={"X-Mechscope-Token": app.state.token})  # doctest: +SKIP
    """
    worker = Worker(max_pending=max_pending, per_client=per_client)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.close()  # drop queued jobs, stop the running one at its next checkpoint, join the thread

    app = FastAPI(title="mechscope", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.worker = worker
    app.state.scope = scope
    app.state.token = token or secrets.token_urlsafe(32)
    # static files and API answers; graphs come precompressed (below) and the middleware leaves them alone.
    # Guard is added last, so it is the outermost layer: refused requests cost nothing more
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=6)
    gz_graphs = CompressedFiles()
    app.add_middleware(Guard, token=app.state.token, max_body=MAX_BODY, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def while_loading(request: Request, call_next):
        if (
            getattr(scope, "loading", False)
            and request.url.path.startswith("/api/")
            and request.url.path != "/api/info"
        ):
            return JSONResponse({"error": f"the server is still loading: {scope.message}"}, status_code=503)
        return await call_next(request)

    @app.exception_handler(MechscopeError)
    async def user_error(request: Request, exc: MechscopeError):
        return _err(429 if isinstance(exc, QueueFull) else 404 if isinstance(exc, NotFound) else 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return _err(400, one_line(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def bad_value(request: Request, exc: ValidationError):
        return _err(400, one_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _err(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return _err(500, f"internal error ({type(exc).__name__}); see the server log")

    page = (STATIC / "index.html").read_text()
    meta = TOKEN_META.replace('content=""', f'content="{app.state.token}"')
    page = page.replace(TOKEN_META, meta) if TOKEN_META in page else page.replace("<head>", f"<head>\n{meta}", 1)

    @app.get("/")
    def index():
        # the token reaches only this page: other origins cannot read the response (no CORS headers)
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/info")
    def info():
        if getattr(scope, "loading", False):
            return {"loading": True, "message": scope.message, "error": scope.error}
        m = scope.model
        d = TraceRequest.model_validate({"prompt": "-"}).config()  # a bare trace request's settings: the CLI's
        return {
            "model": m.name,
            "n_layers": m.n_layers,
            "vocab_size": getattr(
                m, "vocab_size", None
            ),  # token ids below it name a token; a logit difference's do not
            "d_transcoder": scope.ts.d_transcoder,
            # "clt": a feature writes to every layer in its write_layers (the feature endpoint gives them)
            "transcoder_kind": getattr(scope.ts, "kind", "plt"),
            "has_index": scope.index is not None,
            "chat_template": bool(getattr(m.tokenizer, "chat_template", None)),
            "node_threshold": d.node_threshold,
            "edge_threshold": d.edge_threshold,
            "max_feature_nodes": d.max_feature_nodes,
        }

    @app.get("/api/trace/options")
    def trace_form():
        """The trace form's fields: defaults, ranges and help from AttributionConfig (the CLI's), the server's caps."""
        return trace_options()

    @app.get("/api/graphs")
    def graphs():
        return scope.list_graphs()

    @app.get("/api/graphs/{name}")
    def graph(name: str, request: Request):
        # graphs reach tens of MB: sent gzip-compressed once per file version, revalidated by ETag
        p = scope.graph_path(name)
        if not p.exists():
            raise HTTPException(404, f"no graph {name}")
        # each feature node gains its density from the feature index (the page's density filter)
        return gz_graphs.response(p, request.headers, edit=scope.add_density)

    @app.post("/api/graphs/{name}/qparams")
    def save_qparams(name: str, body: QParamsRequest):
        from mechscope.paths import atomic_write_text

        data = scope.read_graph(name)
        q = {
            "pinnedIds": body.pinnedIds,
            "supernodes": body.supernodes,
            "linkType": "both",
            "clickedId": body.clickedId,
            "sg_pos": "",
            "hiddenIds": body.hiddenIds,
        }
        if body.densityThreshold is not None:
            q["densityThreshold"] = body.densityThreshold
        data["qParams"] = {**(data.get("qParams") if isinstance(data.get("qParams"), dict) else {}), **q}
        atomic_write_text(scope.graph_path(name), json.dumps(data))
        return {"ok": True}

    @app.post("/api/graphs/{name}/labels")
    def save_labels(name: str, body: LabelsRequest):
        """Node labels edited in the page, written into the graph's nodes (their `clerp`)."""
        from mechscope.paths import atomic_write_text

        data = scope.read_graph(name)
        n = 0
        for node in data.get("nodes", []):
            if (
                isinstance(node, dict)
                and node.get("node_id") in body.labels
                and node.get("feature_type") == "cross layer transcoder"
            ):
                node["clerp"], n = body.labels[node["node_id"]], n + 1
        atomic_write_text(scope.graph_path(name), json.dumps(data))
        return {"ok": True, "updated": n}

    @app.get("/api/graphs/{name}/suggest")
    def suggest(name: str):
        return {"supernodes": suggest_groups(scope.read_graph(name), scope.labels)}

    @app.get("/api/graphs/{name}/flowchart")
    def auto_flowchart(name: str, n_features: int = 40, max_boxes: int = 10):
        data = scope.read_graph(name)
        if not (1 <= n_features <= 500 and 1 <= max_boxes <= 40):
            raise MechscopeError("n_features must lie in 1..500 and max_boxes in 1..40")
        fc = flowchart(data, scope.labels, n_features=n_features, max_boxes=max_boxes)
        return {**fc.to_json(), "text": fc.to_text(), "svg": fc.to_svg()}

    @app.get("/api/features/{layer}/{feature}")
    def feature(layer: int = PathParam(ge=0, le=MAX_ID), feature: int = PathParam(ge=0, le=MAX_ID)):
        if layer >= scope.model.n_layers or feature >= scope.ts.d_transcoder:
            raise HTTPException(
                404,
                f"no feature {layer}/{feature} (layers 0..{scope.model.n_layers - 1}, "
                f"features 0..{scope.ts.d_transcoder - 1})",
            )
        writes = {}
        if getattr(scope.ts, "kind", "plt") == "clt":  # first and last layer a cross-layer feature writes to
            w = scope.ts.write_layers(layer)
            writes = {"write_layers": [w.start, w.stop - 1]}
        if scope.index is None:
            return {
                **writes,
                "id": f"{layer}/{feature}",
                "label": "",
                "missing_index": True,
                "examples": [],
                "top_logits": [],
                "bottom_logits": [],
                "hist": {"edges": [], "counts": []},
                "density": None,
            }
        return {**scope.index.feature(layer, feature), **writes}

    def _client(request: Request) -> str:
        return request.client.host if request.client else ""

    def _view(job: Job) -> dict:
        v = worker.view(job)
        return {**v, "error": scrub(v["error"])} if v["error"] else v  # no absolute paths in job errors either

    @app.post("/api/trace")
    def trace(body: TraceRequest, request: Request):
        _check_trace(scope, body)
        cfg = body.config()
        job = worker.submit(
            "trace",
            lambda: scope.trace(
                body.prompt,
                body.chat,
                cfg.max_feature_nodes,
                list(cfg.targets),
                node_threshold=cfg.node_threshold,
                edge_threshold=cfg.edge_threshold,
                heads=cfg.heads,
                logit_diff=cfg.logit_diff,
            ),
            client=_client(request),
        )
        return _view(job)

    @app.post("/api/intervene")
    def intervene(body: InterveneRequest, request: Request):
        _check_intervene(scope, body)
        edits = [e.model_dump(exclude_unset=True) for e in body.edits]  # as sent: an ablation carries no value
        job = worker.submit(
            "intervene",
            lambda: scope.intervene(
                body.prompt,
                edits,
                body.freeze_attention,
                body.generate,
                body.chat,
                list(body.watch),
                body.top_k,
                logit_ids=list(body.logit_ids),
            ),
            client=_client(request),
        )
        return _view(job)

    @app.post("/api/probe")
    def probe(body: ProbeRequest, request: Request):
        from mechscope.guards import check_forward

        if body.token is not None and body.pos is not None:
            raise MechscopeError("give token or pos, not both")
        scope.check_probe(body.text, body.token, body.pos)  # tokenizer only: refused at once, not after a wait
        check_forward(scope.model, scope.ts, scope.model.tokenize(body.text).ids.shape[0], what="probing this text")
        job = worker.submit(
            "probe", lambda: scope.probe(body.text, body.token, body.pos, body.limit), client=_client(request)
        )
        return _view(job)

    def _submit(kind: str, fn, request: Request) -> dict:
        return _view(worker.submit(kind, fn, client=_client(request)))

    compare.register(app, scope)  # GET /api/diff: two stored graphs compared
    graphformat.register(app)  # GET /api/graph-format: what the page checks an opened graph file against
    attend.register(app, scope, _submit)  # POST /api/attend: why a head looks where it looks (QK attribution)

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        j = worker.get(job_id)
        if j is None:
            raise HTTPException(404, "no such job (finished jobs are forgotten after a while)")
        return _view(j)

    @app.delete("/api/jobs/{job_id}")
    def cancel_job(job_id: str):
        j = worker.cancel(job_id)
        if j is None:
            raise HTTPException(404, "no such job")
        return _view(j)

    return app


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    graph_dir: Path | None = None,
    transcoders: str | None = None,
    index: str | None = None,
    allow_remote: bool = False,
    max_memory_gb: float | None = None,
) -> None:
    """Run the server. A non-loopback `host` needs `allow_remote=True` (anyone who can reach it can read graphs)."""
    import os

    import uvicorn

    from mechscope.attribution import graph_store
    from mechscope.guards import ENV, validate_limit
    from mechscope.paths import writable_dir

    allowed = set(LOOPBACK)
    if host_name(host.lower()) not in LOOPBACK:
        if not allow_remote:
            raise MechscopeError(
                f"--host {host} is not a loopback address; other machines could use this server. "
                "Pass --allow-remote to do it anyway"
            )
        log.warning(
            "serving on %s: any machine that can reach it can read your graphs; writes still need the page's token",
            host,
        )
        allowed |= {host.lower(), "*"} if host in ("0.0.0.0", "::") else {host.lower()}
    if max_memory_gb is not None:
        os.environ[ENV] = str(validate_limit(max_memory_gb))  # the default of every AttributionConfig and guard
    logging.basicConfig(level=logging.INFO, format="mechscope: %(message)s")
    gdir = writable_dir(graph_dir or graph_store())
    # the page is up at once and says what the server is doing while the model loads (or converts) behind it
    print(
        f"mechscope: serving {model} at http://{host}:{port}/ (Ctrl-C to stop); the page shows the loading progress",
        flush=True,
    )
    scope = LoadingScope(lambda progress: Microscope(model, gdir, transcoders, index, progress=progress))
    app = create_app(scope, allowed_hosts=allowed)
    uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=64, timeout_graceful_shutdown=30)
