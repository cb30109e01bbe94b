"""Attention on the page, over a real (tiny) model: a graph traced with head loadings from the API, its edges'
heads in the page, and the Attention panel ("why does this head look there"): its pairs and node tables sum to
the score the library computes, and bad requests are refused with one line before anything is queued."""

from __future__ import annotations

import json
import time

import pytest
from extras import require

require("fastapi")
playwright = require("playwright.sync_api")

from pagestub import LiveServer, chromium_browser  # noqa: E402
from server_helpers import client_for, one_line_error  # noqa: E402

PROMPT = "Dallas is in the state of Texas. The capital"


@pytest.fixture(scope="module")
def scope(tiny_dir, tiny_tc_dir, tmp_path_factory):
    if "gemma3" in str(tiny_dir):  # the panel moves numbers the library computes (tested on every family there)
        pytest.skip("the attention page is tested on the llama tiny model")
    from mechscope.server.app import Microscope

    return Microscope(str(tiny_dir), tmp_path_factory.mktemp("attend") / "graphs", transcoders=str(tiny_tc_dir))


@pytest.fixture(scope="module")
def client(scope):
    from mechscope.server.app import create_app

    return client_for(create_app(scope))


def _wait(client, job: dict) -> dict:
    for _ in range(1200):
        if job["status"] in ("done", "error", "cancelled"):
            return job
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    raise AssertionError("job did not finish")


@pytest.fixture(scope="module")
def graph(client, scope) -> str:
    """A graph traced from the API with heads (the page's "heads" box), loose pruning so links cross positions."""
    body = {"prompt": PROMPT, "max_feature_nodes": 128, "node_threshold": 0.95, "edge_threshold": 0.99, "heads": True}
    job = _wait(client, client.post("/api/trace", json=body).json())
    assert job["status"] == "done", job
    return job["result"]


def _headed(scope, name: str) -> list[dict]:
    g = json.loads(scope.graph_path(name).read_text())
    return [lk for lk in g["links"] if lk.get("heads")]


def test_trace_with_heads_and_attend_refusals(client, scope, graph, tmp_path):
    links = _headed(scope, graph)
    assert links, "the traced graph has no link between positions"
    for lk in links:  # the loadings sum to each link's weight
        assert abs(sum(h[2] for h in lk["heads"]) + lk.get("heads_rest", 0) - lk["weight"]) < 1e-4
    g = json.loads(scope.graph_path(graph).read_text())
    n = len(g["metadata"]["prompt_tokens"])
    other = {**g, "metadata": {**g["metadata"], "info": {**g["metadata"]["info"], "model": "another-model"}}}
    scope.graph_path("other-model").write_text(json.dumps(other))
    ok = {"graph": graph, "layer": 1, "head": 0}
    for body, code, words in (
        ({**ok, "graph": "nope"}, 404, "no graph nope"),
        ({**ok, "graph": "other-model"}, 400, "another-model"),
        ({**ok, "layer": 3}, 400, "--layer must lie in 0..2"),
        ({**ok, "head": 99}, 400, "--head must lie in"),
        ({**ok, "query": n}, 400, "outside the prompt"),
        ({**ok, "query": 2, "key": 4}, 400, "comes after query 2"),
        ({**ok, "layer": "1"}, 400, "layer:"),
        ({"graph": graph, "head": 0}, 400, "layer:"),
        ({**ok, "top": 0}, 400, "top:"),
        ({**ok, "graph": "../x"}, 400, "graph:"),
    ):
        r = client.post("/api/attend", json=body)
        assert r.status_code == code and words in one_line_error(r), (body, r.status_code, r.text)


def test_attend_matches_the_library(client, scope, graph):
    from mechscope.attribution.qk import qk_attribution

    job = _wait(client, client.post("/api/attend", json={"graph": graph, "layer": 2, "head": 1, "key": -3}).json())
    assert job["status"] == "done", job
    r = job["result"]
    lib = qk_attribution(scope.model, scope.ts, PROMPT, 2, 1, key=-3)
    assert (r["query"], r["key"]) == (lib.query, lib.key) and r["score"] == pytest.approx(lib.score, rel=1e-6)
    assert r["tokens"] == json.loads(scope.graph_path(graph).read_text())["metadata"]["prompt_tokens"]
    shown = sum(p["weight"] for p in r["pairs"]) + r["pairs_rest"]
    assert shown == pytest.approx(r["pairs_total"], abs=1e-9) and r["checks"]["rel_error"] < 1e-4


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as b:
        yield b


def _sums(page, table: str) -> tuple[float, float]:
    """(Σ of the rows' weights, Σ of their sizes) of one table of the panel, the rest row included."""
    w = page.eval_on_selector_all(f"{table} tr[data-weight]", "els => els.map(e => +e.dataset.weight)")
    assert w, table
    return sum(w), sum(abs(x) for x in w)


def test_panel_explains_an_edges_head(browser, scope, graph):
    with LiveServer(scope) as url:
        page = browser.new_page(viewport={"width": 1366, "height": 768}, bypass_csp=True)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/?slug={graph}")
        page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=60_000)
        # the strongest edge with heads whose main head sits above layer 0 (more nodes on each side), as a click opens it
        e = page.evaluate("""() => { const S = window.mechscope.state, found = [];
            for (let r = 0; r < S.E; r++) { const e = S.order[r], l = S.graph.links[S.linkIdx[e]]; if (l.heads && l.heads.length) found.push([e, l.heads[0][0]]); }
            return (found.find((f) => f[1] > 0) || found[0])[0]; }""")
        page.evaluate(f"window.mechscope.selectEdge({e})")
        page.wait_for_selector("#edge-heads tr.head-row")
        layer, head = (
            int(page.get_attribute("#edge-heads tr.head-row >> nth=0", a)) for a in ("data-layer", "data-head")
        )
        q, k = page.evaluate(
            f"(() => {{ const S = window.mechscope.state; return [S.nodes[S.tgt[{e}]].ctx_idx, S.nodes[S.src[{e}]].ctx_idx]; }})()"
        )
        page.click("#edge-heads .why-btn >> nth=0")
        page.wait_for_selector("#qk-score", timeout=120_000)
        assert page.is_visible("#tab-attend") and f"head {layer}.{head}" in page.inner_text("#qk-title")
        assert f"query {q} " in page.inner_text("#qk-title") and f"key {k} " in page.inner_text("#qk-title")
        score = float(page.get_attribute("#qk-score", "data-score"))
        from mechscope.attribution.qk import qk_attribution

        lib = qk_attribution(scope.model, scope.ts, PROMPT, layer, head, q, k)
        assert score == pytest.approx(lib.score, rel=1e-6, abs=1e-9)
        tol = 1e-4 * max(abs(score), lib.score_scale)
        for table in ("#qk-pairs", "#qk-query-side", "#qk-key-side"):
            total, size = _sums(page, table)
            assert abs(total - score) <= tol + 1e-6 * size, (table, total, score)
        assert page.locator("#qk-pairs tr.qk-pair").count() == min(20, lib.n_pairs)
        # every query-side node listed (no rest row): the marginals alone sum to the score
        page.fill("#qk-top", "200")
        page.click("#qk-run")  # clears the panel at once, fills it when the job is done
        page.wait_for_selector("#qk-score", timeout=120_000)
        assert page.locator("#qk-pairs tr.qk-pair").count() == min(200, lib.n_pairs)
        assert len(lib.q_nodes) <= 200 and page.locator("#qk-query-side tr.qk-rest").count() == 0
        total, size = _sums(page, "#qk-query-side")
        assert abs(total - score) <= tol + 1e-6 * size
        # a pair's feature node that is in the graph opens it
        link = page.locator("#qk-pairs td.link")
        if link.count():
            link.first.click()
            page.wait_for_selector("#node-title")
        assert not errors, errors
        page.close()
