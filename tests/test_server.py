"""The web microscope: API safety (names, sizes, failures, queue) and an end-to-end run in headless Chromium."""

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from extras import require

fastapi = require("fastapi")


@pytest.fixture(scope="module")
def scope(tiny, tiny_dir, tiny_tc, tiny_tc_dir, tmp_path_factory):
    """A Microscope over the tiny model with its own transcoders, feature index and graph store."""
    from mechscope.features import IndexConfig, build_index
    from mechscope.server.app import Microscope

    root = tmp_path_factory.mktemp("srv")
    build_index(
        tiny,
        tiny_tc,
        root / "idx.sqlite",
        IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=512, seq_len=32, batch_size=4),
        progress=False,
    )
    return Microscope(str(tiny_dir), root / "graphs", transcoders=str(tiny_tc_dir), index=str(root / "idx.sqlite"))


@pytest.fixture(scope="module")
def client(scope):
    from fastapi.testclient import TestClient

    from mechscope.server.app import create_app

    app = create_app(scope)
    # the loopback name and the per-server token, as the served page has them
    return TestClient(app, base_url="http://127.0.0.1", headers={"X-Mechscope-Token": app.state.token})


def _wait(client, job):
    for _ in range(300):
        if job["status"] in ("done", "error", "cancelled"):
            return job
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    raise AssertionError("job did not finish")


def test_api_trace_open_and_safety(client):
    assert client.get("/api/info").json()["n_layers"] == 3
    job = _wait(
        client, client.post("/api/trace", json={"prompt": "Dallas is in the state of", "max_feature_nodes": 32}).json()
    )
    assert job["status"] == "done", job
    name = job["result"]
    g = client.get(f"/api/graphs/{name}").json()
    assert g["metadata"]["prompt"] == "Dallas is in the state of" and g["nodes"]
    assert any(x["name"] == name for x in client.get("/api/graphs").json())
    # path traversal and odd names are refused
    assert client.get("/api/graphs/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)
    assert client.get("/api/graphs/.hidden").status_code == 400
    # oversized bodies are refused
    assert (
        client.post("/api/trace", content=b"x" * 300_000, headers={"content-type": "application/json"}).status_code
        == 413
    )
    # a failing trace reports its error and the server keeps serving
    assert client.post("/api/trace", json={"prompt": "  "}).status_code == 400
    bad = client.post("/api/trace", json={"prompt": "one two " * 400})  # over the context: refused before queueing
    assert bad.status_code == 400 and "at most 256" in bad.json()["error"]
    assert client.get("/api/info").status_code == 200
    # subgraph state round-trips into the graph file
    assert client.post(
        f"/api/graphs/{name}/qparams",
        json={"pinnedIds": [g["nodes"][0]["node_id"]], "supernodes": [["x", g["nodes"][0]["node_id"]]]},
    ).json()["ok"]
    assert client.get(f"/api/graphs/{name}").json()["qParams"]["supernodes"] == [["x", g["nodes"][0]["node_id"]]]
    assert isinstance(client.get(f"/api/graphs/{name}/suggest").json()["supernodes"], list)


def test_queue_runs_one_at_a_time(client):
    release = threading.Event()
    client.app.state.worker.submit("block", lambda: release.wait(30))  # hold the worker so the traces queue up
    try:
        jobs = [
            client.post("/api/trace", json={"prompt": f"The capital of Texas is {i}", "max_feature_nodes": 16}).json()
            for i in range(3)
        ]
    finally:
        release.set()
    assert [j["position"] for j in jobs] == sorted(j["position"] for j in jobs)
    assert max(j["position"] for j in jobs) >= 1
    assert all(_wait(client, j)["status"] == "done" for j in jobs)


def test_api_flowchart(client, scope):
    name = scope.trace("Dallas is in the state of", False, 64, [])
    fc = client.get(f"/api/graphs/{name}/flowchart").json()
    assert fc["svg"].startswith("<svg") and "flowchart:" in fc["text"]
    assert {b["kind"] for b in fc["boxes"]} >= {"output"} and all(
        {"src", "dst", "weight"} == set(a) for a in fc["arrows"]
    )
    ids = {b["id"] for b in fc["boxes"]}
    assert all(a["src"] in ids and a["dst"] in ids for a in fc["arrows"])
    assert fc["qParams"]["supernodes"] == [[b["name"], *b["members"]] for b in fc["boxes"] if b["kind"] == "features"]
    assert client.get(f"/api/graphs/{name}/flowchart").json() == fc  # deterministic
    assert (
        len(
            [
                b
                for b in client.get(f"/api/graphs/{name}/flowchart?max_boxes=1").json()["boxes"]
                if b["kind"] == "features"
            ]
        )
        <= 1
    )
    assert client.get(f"/api/graphs/{name}/flowchart?max_boxes=0").status_code == 400
    assert client.get("/api/graphs/no-such-graph/flowchart").status_code == 404
    assert client.get("/api/graphs/.hidden/flowchart").status_code == 400


PROBE_TEXT = "the cat sat on the mat because the cat was tired"


def test_api_probe_matches_the_library(client, scope):
    from mechscope.features.probe import hits_to_json, probe_features

    assert scope.index is not None  # the fixture's index describes its transcoders, so hits are ranked and labelled
    for body, kw in (
        ({}, {}),
        ({"token": "he", "limit": 5}, {"token": "he", "limit": 5}),
        ({"pos": -3}, {"pos": -3}),
        ({"pos": 0, "limit": 200}, {"pos": 0, "limit": 200}),
    ):
        job = _wait(client, client.post("/api/probe", json={"text": PROBE_TEXT, **body}).json())
        assert job["status"] == "done" and job["kind"] == "probe", job
        want = hits_to_json(
            *probe_features(scope.model, scope.ts, PROBE_TEXT, index=scope.index, **{"limit": 20, **kw})
        )
        assert job["result"] == want
    res = _wait(client, client.post("/api/probe", json={"text": PROBE_TEXT}).json())["result"]
    assert res["features"] and res["position"] == len(res["tokens"]) - 1
    assert any(h["relative"] is not None and h["label"] for h in res["features"])


def test_api_probe_refuses_bad_requests(client):
    long_in_tokens = "one two " * 200  # under the character limit, over the tiny model's 256-token context
    cases = [
        ({"text": "  "}, "empty text"),
        ({}, "empty text"),
        ({"text": 5}, "text: "),
        ({"text": "x" * 2001}, "at most 2000"),
        ({"text": long_in_tokens}, "at most 256"),
        ({"text": PROBE_TEXT, "pos": 999}, "out of range"),
        ({"text": PROBE_TEXT, "pos": -999}, "out of range"),
        ({"text": PROBE_TEXT, "pos": "1"}, "pos: "),
        ({"text": PROBE_TEXT, "pos": 1.5}, "pos: "),
        ({"text": PROBE_TEXT, "pos": True}, "pos: "),
        ({"text": PROBE_TEXT, "token": "zebra"}, "not in the text"),
        ({"text": PROBE_TEXT, "token": ""}, "token: "),
        ({"text": PROBE_TEXT, "token": "he", "pos": 1}, "not both"),
        ({"text": PROBE_TEXT, "limit": 0}, "limit: "),
        ({"text": PROBE_TEXT, "limit": 201}, "limit: "),
        ({"text": PROBE_TEXT, "limit": "5"}, "limit: "),
    ]
    n_jobs = len(client.app.state.worker.jobs)
    for body, msg in cases:
        r = client.post("/api/probe", json=body)
        err = r.json().get("error", "")
        assert r.status_code == 400 and msg in err and "\n" not in err, (body, r.status_code, r.text)
    for raw in (b"[1, 2]", b"{not json"):
        r = client.post("/api/probe", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "body" in r.json()["error"]
    assert len(client.app.state.worker.jobs) == n_jobs  # refused before any model work was queued


def test_api_probe_waits_in_the_model_queue(client):
    worker = client.app.state.worker
    release = threading.Event()
    blocker = worker.submit("block", lambda: release.wait(30))
    try:
        job = client.post("/api/probe", json={"text": PROBE_TEXT}).json()
        time.sleep(0.2)
        job = client.get(f"/api/jobs/{job['id']}").json()
        assert job["status"] == "queued" and job["position"] == 1  # no model work beside another job
    finally:
        release.set()
    assert _wait(client, job)["status"] == "done" and blocker.status == "done"


def test_suggest_groups_clusters_shared_labels():
    from mechscope.server.app import suggest_groups

    nodes = [
        {
            "node_id": f"{l}_{f}_3",
            "feature": f,
            "layer": str(l),
            "ctx_idx": 3,
            "feature_type": "cross layer transcoder",
            "clerp": lab,
        }
        for l, f, lab in ((1, 1, '"Texas"'), (2, 5, '"Texas" → say "Austin"'), (7, 9, "French text"))
    ]
    groups = suggest_groups({"nodes": nodes, "links": []})
    assert groups and set(groups[0][1:]) == {"1_1_3", "2_5_3"} and "texas" in groups[0][0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(scope):
    import uvicorn

    from mechscope.server.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(scope), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(timeout=5)


def test_browser_end_to_end(live_server, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is required for the browser test (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 1366, "height": 768}, bypass_csp=True)  # wait_for_function evals

        page.goto(live_server)
        # the trace form holds the CLI's pruning (0.8/0.98, from /api/trace/options); a random tiny model's graph
        # keeps features only at looser ones, so this test sets those in the form
        page.wait_for_selector("#trace-form[data-ready='1']")
        assert (page.input_value("#tr-node-thr"), page.input_value("#tr-edge-thr")) == ("0.8", "0.98")
        page.click("#trace-opts summary")
        page.fill("#tr-node-thr", "0.95")
        page.fill("#tr-edge-thr", "0.99")
        # pruned as the CLI prunes (0.8 / 0.98), this prompt keeps several feature nodes on both tiny models
        page.fill("#prompt", "Michael Jordan plays basketball. Dallas is in the state of")
        page.fill("#max-nodes", "64")
        page.click("#trace-btn")
        page.wait_for_function("document.querySelector('#graph-title').textContent.includes('Dallas')", timeout=60_000)
        assert page.evaluate("window.mechscope.state.graph.metadata.node_threshold") == 0.95
        page.wait_for_selector("#node-list li")
        assert "replacement" in page.inner_text("#scores")
        # click a feature node on the canvas itself
        ids = page.eval_on_selector_all("#node-list li", "els => els.map(e => e.dataset.node)")
        pos = page.evaluate(f"window.mechscope.nodePosition({json.dumps(ids[0])})")
        page.mouse.click(pos["x"], pos["y"])
        try:
            page.wait_for_selector("#feature-label", timeout=10_000)
        except Exception:
            page.screenshot(path="/tmp/e2e-fail.png")
            raise AssertionError(
                f"no feature panel; clicked {ids[0]} at {pos}; panel: {page.inner_text('#tab-feature')!r}; "
                f"status: {page.inner_text('#status')!r}"
            )
        assert "“" in page.inner_text("#feature-label")
        assert page.locator("#tab-feature .ex").count() > 0
        page.click("#pin-btn")
        # the CLI's pruning (0.8/0.98) can leave a tiny model's graph one feature: group it with an error node then
        if len(ids) < 2:
            ids.append(
                page.evaluate(
                    "window.mechscope.state.nodes.find((n) => n.feature_type === 'mlp reconstruction error').node_id"
                )
            )
        page.evaluate(f"window.mechscope.select({json.dumps(ids[1])})")
        page.wait_for_selector("#pin-btn")
        page.click("#pin-btn")
        page.click("#tabs button[data-tab=subgraph]")
        page.check(f"input[data-pin='{ids[0]}']")
        page.check(f"input[data-pin='{ids[1]}']")
        page.fill("#group-name", "my concept")  # named in the page, no browser pop-up
        page.click("#group-btn")
        page.wait_for_selector("li[data-supernode='my concept']")
        assert page.locator("#flow-svg rect").count() >= 1
        page.screenshot(path=str(tmp_path / "subgraph.png"))
        page.click("#tabs button[data-tab=intervene]")
        page.select_option("#iv-target", "sn:my concept")
        page.select_option("#iv-mode", "ablate")
        page.fill("#iv-gen", "3")
        page.click("#iv-run")
        page.wait_for_selector("#iv-table", timeout=60_000)
        # top 10 before and after, merged: at least 10 token rows, each with a change column
        assert page.locator("#iv-table tr").count() >= 11 and page.locator("#iv-after").count() == 1
        assert page.locator("#iv-history li").count() == 1
        page.click("#save-btn") if page.is_visible("#save-btn") else None
        browser.close()


def test_browser_auto_flowchart(live_server, scope, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is required for the browser test (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    name = scope.trace("Dallas is in the state of", False, 64, [])
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 1366, "height": 768}, bypass_csp=True)  # wait_for_function evals
        page.goto(f"{live_server}/#graph={name}")
        page.wait_for_function("document.querySelector('#graph-title').textContent.includes('Dallas')", timeout=60_000)
        page.click("#tabs button[data-tab=subgraph]")
        page.click("#auto-flow-btn")
        page.wait_for_selector("#auto-flow-svg g[data-box]", timeout=30_000)
        fc = page.evaluate(f"fetch('/api/graphs/{name}/flowchart').then((r) => r.json())")
        assert page.locator("#auto-flow-svg g[data-box]").count() == len(fc["boxes"])
        assert page.locator("#auto-flow-svg path[data-src]").count() == len(fc["arrows"])
        page.click("#auto-flow-apply")
        n_feat = sum(b["kind"] == "features" for b in fc["boxes"])
        assert page.locator("li[data-supernode]").count() == n_feat
        pinned = page.evaluate("window.mechscope.state.pinned")
        assert set(fc["qParams"]["pinnedIds"]) <= set(pinned)
        assert page.locator("#flow-svg rect").count() >= 1  # the subgraph pane draws the applied boxes
        page.screenshot(path=str(tmp_path / "auto-flowchart.png"))
        page.click("#auto-flow-apply")  # applying twice does not duplicate supernodes
        assert page.locator("li[data-supernode]").count() == n_feat
        browser.close()


def test_browser_probe(live_server, scope, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is required for the browser test (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from mechscope.features.probe import hits_to_json, probe_features

    def want(**kw) -> dict:
        return hits_to_json(*probe_features(scope.model, scope.ts, PROBE_TEXT, index=scope.index, limit=30, **kw))

    def hit_ids(page) -> list[str]:
        return page.eval_on_selector_all("#probe-hits tr[data-feature]", "els => els.map((e) => e.dataset.feature)")

    name = scope.trace(PROBE_TEXT, False, 64, [])
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 1366, "height": 768}, bypass_csp=True)  # wait_for_function evals
        page.goto(live_server)
        page.click("#tabs button[data-tab=probe]")
        page.fill("#probe-text", PROBE_TEXT)
        page.fill("#probe-token", "he")
        page.click("#probe-btn")
        page.wait_for_selector("#probe-hits tr[data-feature]", timeout=60_000)
        w = want(token="he")
        assert hit_ids(page) == [h["id"] for h in w["features"]]
        assert page.locator("#probe-tokens .tok").count() == len(w["tokens"])
        assert page.get_attribute("#probe-tokens .tok.max", "data-pos") == str(w["position"])
        assert "%" in page.inner_text("#probe-hits tr[data-feature] >> nth=0")
        page.screenshot(path=str(tmp_path / "probe.png"))
        # a click on a token probes that position of the same text
        page.click("#probe-tokens .tok[data-pos='1']")
        page.wait_for_selector("#probe-tokens .tok.max[data-pos='1']", timeout=60_000)
        w = want(pos=1)
        assert hit_ids(page) == [h["id"] for h in w["features"]]
        # no graph is open: a hit opens the feature's dashboard on its own
        first = w["features"][0]
        page.click("#probe-hits tr[data-feature] >> nth=0")
        page.wait_for_selector("#feature-label", timeout=10_000)
        assert page.is_visible("#tab-feature") and not page.is_visible("#tab-probe")
        assert first["id"] in page.inner_text("#tab-feature") and first["label"] in page.inner_text("#feature-label")
        assert page.locator("#tab-feature .ex").count() > 0
        page.screenshot(path=str(tmp_path / "probe-feature.png"))
        # on the open graph's own text, a hit that is a graph node opens exactly that node's panel
        page.click(f"#graph-list li[data-name='{name}']")
        page.wait_for_function("document.querySelector('#graph-title').textContent.includes('cat')", timeout=60_000)
        page.click("#tabs button[data-tab=probe]")
        page.fill("#probe-token", "")
        page.click("#probe-btn")
        w = want()
        page.wait_for_selector(
            f"#probe-tokens .tok.max[data-pos='{w['position']}']", timeout=60_000
        )  # the last token now
        assert hit_ids(page) == [h["id"] for h in w["features"]]
        nodes = set(page.evaluate("[...window.mechscope.state.byId.keys()]"))
        in_graph = [h for h in w["features"] if f"{h['layer']}_{h['feature']}_{w['position']}" in nodes]
        assert in_graph, "the graph of the same text should hold some of its last token's active features"
        h = in_graph[0]
        page.click(f"#probe-hits tr[data-feature='{h['id']}']")
        page.wait_for_selector("#feature-label", timeout=10_000)
        assert page.evaluate("window.mechscope.state.clicked") == f"{h['layer']}_{h['feature']}_{w['position']}"
        assert page.is_visible("#pin-btn") and "Inputs (" in page.inner_text("#tab-feature")
        browser.close()
