"""The JSON API under malformed, hostile and random requests: never a 5xx, always a one-line JSON error without
absolute paths; other web pages cannot drive it (Host, Origin, token); bodies are bounded however framed."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time

import pytest
from extras import require

require("fastapi")
hypothesis = require("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from server_helpers import client_for, live, make_scope, one_line_error  # noqa: E402


@pytest.fixture(scope="module")
def app(tiny, tiny_dir, tiny_tc, tiny_tc_dir, tmp_path_factory):
    from mechscope.server.app import create_app

    scope = make_scope(tiny, tiny_dir, tiny_tc, tiny_tc_dir, tmp_path_factory.mktemp("fuzz"))
    name = scope.trace("Dallas is in the state of", False, 16, [])
    app = create_app(scope, max_pending=4, per_client=4)
    app.state.graph_name = name
    yield app
    app.state.worker.close(timeout=30)


@pytest.fixture(scope="module")
def client(app):
    return client_for(app)


def _drain(app) -> None:
    """Cancel whatever the fuzz queued, so the next case starts with an empty queue."""
    w = app.state.worker
    for j in list(w.jobs.values()):
        w.cancel(j.id)
    for j in list(w.jobs.values()):
        if j.status in ("queued", "running"):
            w.wait(j.id, 30)


def _check(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        one_line_error(r)


# the malformed requests the hardening issue listed (each gave a 500 before)
MALFORMED = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'"a string"', "JSON object"),
    (b"5", "JSON object"),
    (b"null", ""),
    (b"", ""),
    (b'{"prompt": "Dallas is", "max_feature_nodes": "5"}', "max_feature_nodes"),
    (b'{"prompt": "Dallas is", "max_feature_nodes": 1e400}', "max_feature_nodes"),
    (b'{"prompt": "Dallas is", "max_feature_nodes": NaN}', "max_feature_nodes"),
    (b'{"prompt": "Dallas is", "max_feature_nodes": 99999}', "max_feature_nodes"),
    (b'{"prompt": "Dallas is", "targets": 5}', "targets"),
    (b'{"prompt": "Dallas is", "targets": [5]}', "targets"),
    (b'{"prompt": "Dallas is", "targets": [" Texas Austin Dallas"]}', "single token"),
    (b'{"prompt": 5}', "prompt"),
    (b'{"prompt": "Dallas is", "chat": "yes"}', "chat"),
]


def test_specific_malformed_trace_requests(app, client):
    n = len(app.state.worker.jobs)
    for raw, msg in MALFORMED:
        r = client.post("/api/trace", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
        assert msg in one_line_error(r), (raw, r.text)
    assert len(app.state.worker.jobs) == n  # nothing was queued


@pytest.mark.parametrize(
    "body, msg",
    [
        ({"prompt": "Dallas is", "edits": [{"mode": "set", "value": 1}]}, "feature"),  # an edit without feature
        ({"prompt": "Dallas is", "edits": [{"feature": "0/100000000000000000000000"}]}, "feature"),
        ({"prompt": "Dallas is", "edits": [{"feature": "0/5", "value": 1e400}]}, "value"),
        ({"prompt": "Dallas is", "edits": [{"feature": "0/5", "value": "2"}]}, "value"),
        ({"prompt": "Dallas is", "edits": [{"feature": "0/5", "mode": "explode"}]}, "mode"),
        ({"prompt": "Dallas is", "edits": [{"feature": "9/5"}]}, "out of range"),
        ({"prompt": "Dallas is", "edits": [{"feature": "0/99999"}]}, "out of range"),
        ({"prompt": "Dallas is", "edits": [{"feature": "0/5@40"}]}, "out of range"),
        ({"prompt": "Dallas is", "edits": []}, "edits"),
        ({"prompt": "Dallas is", "edits": 5}, "edits"),
        ({"prompt": "Dallas is", "edits": [{"feature": "0/5"}], "generate": 10**6}, "generate"),
        ({"prompt": "", "edits": [{"feature": "0/5"}]}, "empty prompt"),
    ],
)
def test_malformed_intervene(client, body, msg):
    r = client.post("/api/intervene", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400 and msg in one_line_error(r), (body, r.text)


def test_malformed_qparams_and_features(app, client):
    name = app.state.graph_name
    for body in (
        {"pinnedIds": 5},
        {"pinnedIds": [1, 2]},
        {"supernodes": "x"},
        {"supernodes": [[1]]},
        {"clickedId": 5},
        [1],
    ):
        r = client.post(f"/api/graphs/{name}/qparams", json=body)
        assert r.status_code == 400, (body, r.text)
        one_line_error(r)
    assert client.get(f"/api/graphs/{name}").json()["qParams"].get("pinnedIds", []) == []  # nothing rewritten
    for path in (
        "/api/features/0/100000000000000000000000",
        "/api/features/-1/0",
        "/api/features/x/0",
        "/api/features/99/0",
        "/api/features/0/99999",
        "/api/graphs/nope",
        "/api/jobs/nope",
        "/api/nope",
        f"/api/graphs/{name}/flowchart?max_boxes=1e400",
        f"/api/graphs/{name}/flowchart?n_features=NaN",
    ):
        r = client.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        one_line_error(r)
    assert client.get("/api/features/0/1").status_code == 200
    assert client.delete("/api/jobs/nope").status_code == 404
    assert client.put("/api/trace", json={}).status_code == 405


def test_damaged_graph_file_is_a_4xx(app, client):
    (app.state.scope.graph_dir / "broken.json").write_text('{"nodes": [')
    for path in ("/api/graphs/broken", "/api/graphs/broken/suggest", "/api/graphs/broken/flowchart"):
        r = client.get(path)
        assert r.status_code == 400 and "damaged" in one_line_error(r), (path, r.text)
    assert client.post("/api/graphs/broken/qparams", json={}).status_code == 400
    assert "broken" not in [g["name"] for g in client.get("/api/graphs").json()]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["0/5", "0/5@1", "2/95@-1", "Dallas", " Texas", "ablate", "scale"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "/api/trace": ["prompt", "chat", "max_feature_nodes", "targets"],
    "/api/intervene": ["prompt", "edits", "freeze_attention", "generate", "chat"],
    "/api/probe": ["text", "token", "pos", "limit"],
    "/api/attend": ["graph", "layer", "head", "query", "key", "top"],
    "qparams": ["pinnedIds", "supernodes", "clickedId"],
}
EDIT = st.fixed_dictionaries({}, optional={"feature": json_values, "mode": json_values, "value": json_values})


def _bodies(fields: list[str]):
    special = {"edits": st.lists(EDIT, max_size=3) | json_values}
    obj = st.fixed_dictionaries({}, optional={f: special.get(f, json_values) for f in fields})
    return (
        obj.map(json.dumps).map(str.encode) | json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=64)
    )


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.mark.parametrize("endpoint", sorted(FIELDS))
def test_fuzz_post_endpoints(app, client, endpoint):
    path = f"/api/graphs/{app.state.graph_name}/qparams" if endpoint == "qparams" else endpoint

    @FUZZ
    @given(body=_bodies(FIELDS[endpoint]))
    def run(body: bytes) -> None:
        _check(client.post(path, content=body, headers={"content-type": "application/json"}))
        _drain(app)

    run()


@FUZZ
@given(
    seg=st.lists(
        st.text(
            alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%\\"),
            min_size=1,
            max_size=12,
        )
        | st.integers(-(10**25), 10**25).map(str),
        min_size=1,
        max_size=3,
    ),
    query=st.dictionaries(
        st.sampled_from(["n_features", "max_boxes"]), st.text(max_size=6) | st.integers(-(10**20), 10**20).map(str)
    ),
)
def test_fuzz_get_endpoints(app, client, seg, query):
    name = app.state.graph_name
    for base in ("/api/features", "/api/graphs", f"/api/graphs/{name}", "/api/jobs"):
        _check(client.get(base + "/" + "/".join(seg), params=query))
    _check(client.get(f"/api/graphs/{name}/flowchart", params=query))
    _check(client.delete("/api/jobs/" + seg[0]))
    for a, b in ((name, seg[0]), (seg[0], name)):  # the compare view's diff, with odd names and numbers
        knobs = {"min_change": query.get("n_features", "0"), "max_edges": query.get("max_boxes", "1"), "by": seg[-1]}
        _check(client.get("/api/diff", params={"a": a, "b": b, **knobs}))


# ---- other web pages cannot drive the server -----------------------------------------------------------------
def test_cross_site_requests_are_refused(app):
    name = app.state.graph_name
    n = len(app.state.worker.jobs)
    bare = client_for(app, token=False)
    simple = {"content-type": "text/plain"}  # a "simple" cross-site request: no CORS preflight
    body = json.dumps({"prompt": "Dallas is in the state of", "max_feature_nodes": 8})
    cases = [
        bare.post("/api/trace", content=body, headers={**simple, "origin": "https://evil.example"}),
        bare.post("/api/trace", content=body, headers=simple),  # no token
        bare.post(f"/api/graphs/{name}/qparams", content=json.dumps({"pinnedIds": ["x"]}), headers=simple),
        client_for(app).post("/api/trace", content=body, headers={"origin": "https://evil.example"}),  # foreign origin
        client_for(app).post("/api/trace", content=body, headers={"origin": "null"}),
        client_for(app).post("/api/trace", json={"prompt": "x"}, headers={"x-mechscope-token": "guess"}),
    ]
    for r in cases:
        assert r.status_code == 403, r.text
        one_line_error(r)
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, so the browser sends its own Host
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example", ""):
        r = client_for(app).get("/api/graphs", headers={"host": host})
        assert r.status_code in (400, 421), (host, r.status_code)
        one_line_error(r)
    assert len(app.state.worker.jobs) == n
    assert client_for(app).get(f"/api/graphs/{name}").json()["qParams"].get("pinnedIds", []) == []
    # the same-origin page with its token is served
    ok = client_for(app).post("/api/probe", json={"text": "the cat"}, headers={"origin": "http://127.0.0.1"})
    assert ok.status_code == 200, ok.text
    _drain(app)
    assert client_for(app).get("/api/info", headers={"host": "localhost:9999"}).status_code == 200


def test_page_carries_the_token_and_security_headers(app):
    c = client_for(app, token=False)
    r = c.get("/")
    meta = re.search(r'<meta name="mechscope-token" content="([^"]+)">', r.text)
    assert meta and meta.group(1) == app.state.token
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text), "inline scripts would need 'unsafe-inline'"
    assert "secure-fetch.js" in r.text
    for resp in (
        r,
        c.get("/static/secure-fetch.js"),
        c.get("/api/info"),
        c.get("/api/nope"),
        c.post("/api/trace", json={}),
    ):
        h = resp.headers
        assert (
            "script-src 'self';" in h["content-security-policy"]
            and "frame-ancestors 'none'" in h["content-security-policy"]
        )
        assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer"
        assert "access-control-allow-origin" not in h


def test_tokens_differ_per_server(app):
    from mechscope.server.app import create_app

    other = create_app(_Stub(), max_pending=1)
    assert other.state.token != app.state.token and len(other.state.token) >= 32
    other.state.worker.close()


class _Stub:
    pass


def test_chunked_body_is_refused_without_reading_it(app):
    """A 50 MB chunked body gets a 413 after the limit; the server stops reading long before 50 MB."""
    from mechscope.server.app import create_app

    app = create_app(app.state.scope)  # its own app: the live server's shutdown closes the app's queue
    with live(app) as url:
        port = int(url.rsplit(":", 1)[1])
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(
            f"POST /api/trace HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-Mechscope-Token: {app.state.token}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"x" * 65536
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        sent, reply = 0, b""
        s.settimeout(10)
        while sent < 50 * 2**20:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        try:
            while b'"error"' not in reply:
                part = s.recv(65536)
                if not part:
                    break
                reply += part
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
    assert sent < 20 * 2**20, f"sent {sent} bytes before the server answered"
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"error"' in reply


def test_big_content_length_is_refused_at_once(client):
    r = client.post("/api/trace", content=b"{" + b" " * 300_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413
    one_line_error(r)


# ---- queue: bounds and cancel ----------------------------------------------------------------------------------
def test_queue_bounds_and_cancel(app, client):
    from mechscope.cancel import checkpoint

    w = app.state.worker
    release, started = threading.Event(), threading.Event()

    def slow() -> str:  # a "running job" that checks for cancellation like the library loops do
        started.set()
        while not release.is_set():
            checkpoint()
            time.sleep(0.01)
        return "finished"

    running = w.submit("block", slow, client="testclient")
    assert started.wait(10)
    queued = client.post("/api/probe", json={"text": "the cat sat"}).json()
    assert queued["status"] == "queued" and queued["position"] == 1
    # per-client limit: this client has 4 slots; the 4 that fit are accepted, the next is a one-line 429
    extra = [client.post("/api/probe", json={"text": "the cat sat"}) for _ in range(3)]
    assert [r.status_code for r in extra] == [200, 200, 429]
    assert "jobs waiting" in one_line_error(extra[-1]) or "queue is full" in one_line_error(extra[-1])
    # cancel a queued job: removed at once, never runs
    r = client.delete(f"/api/jobs/{queued['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.get(f"/api/jobs/{queued['id']}").json()["status"] == "cancelled"
    # cancel the running job: it stops at its next checkpoint
    assert client.delete(f"/api/jobs/{running.id}").json()["status"] == "running"
    assert w.wait(running.id, 10).status == "cancelled"
    _drain(app)
    assert {j.status for j in w.jobs.values()} <= {"done", "error", "cancelled"}


def test_finished_jobs_are_evicted():
    from mechscope.server.jobs import Worker

    w = Worker(max_pending=8, max_done=5, keep_s=3600)
    try:
        ids = []
        for i in range(20):
            j = w.submit("n", lambda i=i: i)
            w.wait(j.id, 10)
            ids.append(j.id)
        w.submit("n", lambda: 0)
        assert len(w.jobs) <= 7 and ids[-1] in w.jobs and ids[0] not in w.jobs
    finally:
        w.close()


def test_cancel_reaches_the_attribution_loop(tiny, tiny_tc):
    from mechscope.attribution import AttributionConfig, attribute
    from mechscope.cancel import Cancelled, cancel_scope

    stop = threading.Event()
    stop.set()
    with cancel_scope(stop), pytest.raises(Cancelled):
        attribute(tiny, tiny_tc, "Dallas is in the state of", AttributionConfig(max_feature_nodes=8))
    attribute(tiny, tiny_tc, "Dallas is in the state of", AttributionConfig(max_feature_nodes=8))  # outside: runs


def test_serve_refuses_a_public_address_unless_asked():
    from mechscope.errors import MechscopeError
    from mechscope.server.app import serve

    with pytest.raises(MechscopeError, match="allow-remote"):
        serve("no-such-model-needed", host="0.0.0.0")
