"""The web microscope: API safety (names, sizes, failures, queue) and an end-to-end run in headless Chromium."""
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def scope(tiny, tiny_dir, tiny_tc, tiny_tc_dir, tmp_path_factory):
    """A Microscope over the tiny model with its own transcoders, feature index and graph store."""
    from mechscope.features import IndexConfig, build_index
    from mechscope.server.app import Microscope

    root = tmp_path_factory.mktemp("srv")
    build_index(tiny, tiny_tc, root / "idx.sqlite", IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=512, seq_len=32, batch_size=4), progress=False)
    return Microscope(str(tiny_dir), root / "graphs", transcoders=str(tiny_tc_dir), index=str(root / "idx.sqlite"))


@pytest.fixture(scope="module")
def client(scope):
    from fastapi.testclient import TestClient

    from mechscope.server.app import create_app
    return TestClient(create_app(scope))


def _wait(client, job):
    for _ in range(300):
        if job["status"] in ("done", "error"):
            return job
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    raise AssertionError("job did not finish")


def test_api_trace_open_and_safety(client):
    assert client.get("/api/info").json()["n_layers"] == 3
    job = _wait(client, client.post("/api/trace", json={"prompt": "Dallas is in the state of", "max_feature_nodes": 32}).json())
    assert job["status"] == "done", job
    name = job["result"]
    g = client.get(f"/api/graphs/{name}").json()
    assert g["metadata"]["prompt"] == "Dallas is in the state of" and g["nodes"]
    assert any(x["name"] == name for x in client.get("/api/graphs").json())
    # path traversal and odd names are refused
    assert client.get("/api/graphs/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)
    assert client.get("/api/graphs/.hidden").status_code == 400
    # oversized bodies are refused
    assert client.post("/api/trace", content=b"x" * 300_000, headers={"content-type": "application/json"}).status_code == 413
    # a failing trace reports its error and the server keeps serving
    assert client.post("/api/trace", json={"prompt": "  "}).status_code == 400
    bad = _wait(client, client.post("/api/trace", json={"prompt": "one two " * 400}).json())
    assert bad["status"] == "error" and "at most" in bad["error"]
    assert client.get("/api/info").status_code == 200
    # subgraph state round-trips into the graph file
    assert client.post(f"/api/graphs/{name}/qparams", json={"pinnedIds": [g["nodes"][0]["node_id"]], "supernodes": [["x", g["nodes"][0]["node_id"]]]}).json()["ok"]
    assert client.get(f"/api/graphs/{name}").json()["qParams"]["supernodes"] == [["x", g["nodes"][0]["node_id"]]]
    assert isinstance(client.get(f"/api/graphs/{name}/suggest").json()["supernodes"], list)


def test_queue_runs_one_at_a_time(client):
    jobs = [client.post("/api/trace", json={"prompt": f"The capital of Texas is {i}", "max_feature_nodes": 16}).json() for i in range(3)]
    assert [j["position"] for j in jobs] == sorted(j["position"] for j in jobs)
    assert max(j["position"] for j in jobs) >= 1
    assert all(_wait(client, j)["status"] == "done" for j in jobs)


def test_suggest_groups_clusters_shared_labels():
    from mechscope.server.app import suggest_groups

    nodes = [{"node_id": f"{l}_{f}_3", "feature": f, "layer": str(l), "ctx_idx": 3, "feature_type": "cross layer transcoder",
              "clerp": lab} for l, f, lab in ((1, 1, '"Texas"'), (2, 5, '"Texas" → say "Austin"'), (7, 9, "French text"))]
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
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                                                     "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(live_server)
        page.fill("#prompt", "Dallas is in the state of")
        page.fill("#max-nodes", "64")
        page.click("#trace-btn")
        page.wait_for_function("document.querySelector('#graph-title').textContent.includes('Dallas')", timeout=60_000)
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
            raise AssertionError(f"no feature panel; clicked {ids[0]} at {pos}; panel: {page.inner_text('#tab-feature')!r}; "
                                 f"status: {page.inner_text('#status')!r}")
        assert "“" in page.inner_text("#feature-label")
        assert page.locator("#tab-feature .ex").count() > 0
        page.click("#pin-btn")
        page.click(f"#node-list li[data-node='{ids[1]}']")
        page.wait_for_selector("#pin-btn")
        page.click("#pin-btn")
        page.click("#tabs button[data-tab=subgraph]")
        page.check(f"input[data-pin='{ids[0]}']")
        page.check(f"input[data-pin='{ids[1]}']")
        page.once("dialog", lambda d: d.accept("my concept"))
        page.click("#group-btn")
        page.wait_for_selector("li[data-supernode='my concept']")
        assert page.locator("#flow-svg rect").count() >= 1
        page.screenshot(path=str(tmp_path / "subgraph.png"))
        page.click("#tabs button[data-tab=intervene]")
        page.select_option("#iv-target", "sn:my concept")
        page.select_option("#iv-mode", "ablate")
        page.fill("#iv-gen", "3")
        page.click("#iv-run")
        page.wait_for_selector("#iv-after table", timeout=60_000)
        assert page.locator("#iv-before tr").count() == 5 and page.locator("#iv-after tr").count() == 5
        page.click("#save-btn") if page.is_visible("#save-btn") else None
        browser.close()
