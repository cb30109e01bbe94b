"""The graph page in real Chromium, over synthetic graphs and a server with no model (tests/pagestub.py).

Covers issue 17: a 300k-edge graph opens and redraws without errors; the URL restores the whole view; keyboard
navigation and help; the subgraph pane and supernode editing; node panels; interventions (history, watched
tokens, inputs by mode, cancel); exports and the notebook view; the page's defaults come from the server.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest
from extras import require

require("fastapi")
playwright = require("playwright.sync_api")

from graphgen import make_graph, write_graph  # noqa: E402
from pagestub import TOKEN  # noqa: E402
from pagestub import LiveServer, StubScope, chromium_browser  # noqa: E402

STATIC = Path(__file__).resolve().parents[1] / "mechscope" / "server" / "static"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("pagegraphs")
    write_graph(d, "big", 300_000)
    write_graph(d, "small", 3000, n_features=240, seed=1)
    for name in ("s-url", "s-sub", "s-panel", "s-keys", "s-iv", "s-exp"):  # one copy per test that may save
        shutil.copy(d / "small.json", d / f"{name}.json")
    clt = json.loads((d / "small.json").read_text())  # the same graph as traced with a cross-layer transcoder
    clt["metadata"]["info"]["transcoder_kind"] = "clt"
    (d / "s-clt.json").write_text(json.dumps(clt))
    return d


@pytest.fixture(scope="module")
def stub(store):
    return StubScope(store)


@pytest.fixture(scope="module")
def url(stub):
    with LiveServer(stub) as u:
        yield u


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as b:
        yield b


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True, bypass_csp=True)
    pg = ctx.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.bad = []
    pg.on("response", lambda r: pg.bad.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    yield pg
    ctx.close()


def open_graph(page, url: str, query: str) -> None:
    page.goto(f"{url}/?{query}")
    page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=90_000)
    page.wait_for_timeout(100)


def state(page, expr: str):
    return page.evaluate(f"(() => {{ const S = window.mechscope.state; return {expr}; }})()")


def test_static_files_have_no_argument_spreads_or_inline_code():
    for f in STATIC.glob("*.js"):
        src = f.read_text()
        assert not re.search(r"Math\.(max|min)\(\s*\.\.\.", src), f"{f.name} spreads an array into Math.max/min"
        assert "eval(" not in src and "new Function" not in src and "prompt(" not in src, f.name
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script> breaks script-src 'self'"
    assert not re.search(r"\son[a-z]+=", html), "inline event handlers break script-src 'self'"
    assert max(len(f.read_text().splitlines()) for f in STATIC.glob("*.js")) < 400


def test_graph_is_served_compressed_and_revalidated(url, stub):
    req = urllib.request.Request(f"{url}/api/graphs/small", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        etag = r.headers["ETag"]
        body = json.loads(gzip.decompress(r.read()))
    # as stored, plus each feature node's density from the feature index (the page's density filter)
    dens = {
        n["node_id"]: n.pop("density", None) for n in body["nodes"] if n["feature_type"] == "cross layer transcoder"
    }
    assert body == json.loads((stub.graph_dir / "small.json").read_text())
    assert dens and all(d in (0.6, 0.001) for d in dens.values())
    req = urllib.request.Request(f"{url}/api/graphs/small", headers={"Accept-Encoding": "gzip", "If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 304
    info = json.loads(urllib.request.urlopen(f"{url}/api/info").read())
    assert (info["node_threshold"], info["edge_threshold"]) == (0.8, 0.98)  # the CLI's defaults, for the page


def test_300k_edge_graph_opens_and_redraws(page, url):
    open_graph(page, url, "slug=big")
    assert state(page, "S.E") == 300_000 and not page.errors
    drawn = page.evaluate("window.mechscope.render.drawn")
    assert 0 < drawn <= 25_000  # level of detail: the strongest edges when zoomed out
    # pan, zoom and hover: no errors, frames keep coming
    box = page.locator("#graph").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(5):
        page.mouse.wheel(0, -200)
    page.mouse.down()
    page.mouse.move(box["x"] + 100, box["y"] + 100, steps=5)
    page.mouse.up()
    page.wait_for_timeout(400)
    assert not page.errors, page.errors
    assert page.evaluate("window.mechscope.render.frameTimes.length") > 3
    # labels: every output and some features, no two overlapping
    page.click("#fit-btn")
    page.wait_for_timeout(300)
    labels = page.evaluate("window.mechscope.render.labels.map((l) => [l.i, l.x, l.y - l.h / 2, l.w, l.h])")
    kinds = page.evaluate("window.mechscope.render.labels.map((l) => window.mechscope.state.nodes[l.i].feature_type)")
    assert kinds.count("logit") == 10 and kinds.count("cross layer transcoder") >= 10
    for a_ in range(len(labels)):
        for b_ in range(a_):
            (_, x1, y1, w1, h1), (_, x2, y2, w2, h2) = labels[a_], labels[b_]
            assert not (x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1), (labels[a_], labels[b_])
    # the edge threshold control: lower it and more edges pass
    shown = lambda: int(page.inner_text("#edge-val").split("·")[1].split()[0].replace(",", ""))  # noqa: E731
    before = shown()
    page.locator("#edge-thr").fill("100")
    assert shown() > before
    page.locator("#edge-thr").fill("1000")
    assert shown() < before
    assert not page.errors and not page.bad, (page.errors, page.bad)  # no favicon 404 either


def pick_features(page, n=3):
    return page.eval_on_selector_all("#node-list li", "els => els.map(e => e.dataset.node)")[:n]


def test_url_restores_the_view_and_save_is_explicit(page, url, stub):
    open_graph(page, url, "slug=s-url")
    a, b, c = pick_features(page)
    page.click(f"#node-list li[data-node='{a}']")
    page.focus("#graph")
    page.keyboard.press("p")  # pin the selected node
    page.click(f"#node-list li[data-node='{b}']")
    page.click("#pin-btn")
    page.click(f"#node-list li[data-node='{c}']")
    page.click("#pin-btn")
    page.click("#tabs button[data-tab=subgraph]")
    page.check(f"input[data-pin='{a}']")
    page.check(f"input[data-pin='{b}']")
    page.fill("#group-name", "capital & state")
    page.click("#group-btn")
    page.wait_for_selector("li[data-supernode='capital & state']")
    page.locator("#prune").fill("0.6")
    page.locator("#edge-thr").fill("700")
    page.focus("#graph")
    page.keyboard.press("+")
    page.keyboard.press("+")
    page.click(f"#node-list li[data-node='{c}']")
    page.wait_for_timeout(400)  # the URL is written after a short pause
    want = state(
        page, "({clicked: S.clicked, pinned: S.pinned, sn: S.supernodes, prune: S.prune, edge: S.edgeThr, k: S.view.k})"
    )
    link = page.url
    assert "slug=s-url" in link and "clickedId=" in link and "supernodes=" in link
    for how in ("reload", "pasted"):
        if how == "reload":
            page.reload()
        else:
            page.goto("about:blank")
            page.goto(link)
        page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=60_000)
        got = state(
            page,
            "({clicked: S.clicked, pinned: S.pinned, sn: S.supernodes, prune: S.prune, edge: S.edgeThr, k: S.view.k})",
        )
        assert got["clicked"] == want["clicked"] and got["pinned"] == want["pinned"] and got["sn"] == want["sn"], how
        assert got["prune"] == want["prune"] and abs(got["edge"] - want["edge"]) < 1e-3 * want["edge"]
        assert abs(got["k"] - want["k"]) < 1e-3 * want["k"]
        assert page.input_value("#prune") == "0.6"
        page.wait_for_selector("#feature-label")  # the restored selection has its panel
    # nothing reached the server's copy until Save
    on_disk = json.loads((stub.graph_dir / "s-url.json").read_text())["qParams"]
    assert on_disk["pinnedIds"] == []
    page.click("#tabs button[data-tab=subgraph]")
    page.click("#save-btn")
    page.wait_for_function("document.querySelector('#status').textContent.includes('saved')")
    on_disk = json.loads((stub.graph_dir / "s-url.json").read_text())["qParams"]
    assert on_disk["pinnedIds"] == want["pinned"] and on_disk["supernodes"] == want["sn"]
    assert not page.errors, page.errors


def test_keyboard_navigation_help_and_accessible_names(page, url):
    open_graph(page, url, "slug=s-keys")
    page.focus("#graph")
    page.keyboard.press("ArrowRight")
    first = state(page, "S.clicked")
    assert first
    row = lambda: state(page, "S.row[S.nodeIdx.get(S.clicked)]")  # noqa: E731
    xs = lambda: state(page, "S.layout.xy[2 * S.nodeIdx.get(S.clicked)]")  # noqa: E731
    r0, x0 = row(), xs()
    page.keyboard.press("ArrowRight")
    assert row() == r0 and xs() >= x0 and state(page, "S.clicked") != first
    page.keyboard.press("ArrowUp")
    assert row() > r0
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert row() < r0 + 1
    assert page.evaluate("document.activeElement.id") == "graph"
    page.keyboard.press("Escape")
    assert state(page, "S.clicked") is None
    page.keyboard.press("?")
    assert (
        page.is_visible("#help") and "arrow" in page.inner_text("#help").lower() or "layer" in page.inner_text("#help")
    )
    page.keyboard.press("Escape")
    assert not page.is_visible("#help")
    # every control has an accessible name, in every tab (hidden ones too)
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, input, select, canvas[tabindex]')].filter((e) => {
        const lab = e.getAttribute('aria-label') || e.title || (e.labels && [...e.labels].map((l) => l.textContent).join('')) || e.textContent;
        return !(lab && lab.trim()); }).map((e) => e.outerHTML.slice(0, 80))""")
    assert unnamed == []
    # secondary text keeps a 4.5:1 contrast on white
    rgb = page.evaluate("getComputedStyle(document.querySelector('#scores')).color")
    r, g, b = (int(v) for v in re.findall(r"\d+", rgb)[:3])
    lum = lambda c: (c / 255) / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4  # noqa: E731
    assert 1.05 / (0.2126 * lum(r) + 0.7152 * lum(g) + 0.0722 * lum(b) + 0.05) >= 4.5
    # a 1,000-px window: panels stay on screen, the graph keeps most of the width left
    page.set_viewport_size({"width": 1000, "height": 700})
    page.wait_for_timeout(200)
    right = page.locator("#right").bounding_box()
    assert right["x"] + right["width"] <= 1001 and page.locator("#graph").bounding_box()["width"] >= 400
    assert not page.errors, page.errors


def test_subgraph_pane_and_supernode_editing(page, url):
    open_graph(page, url, "slug=s-sub")
    ids = pick_features(page, 4)
    for i in ids:
        page.click(f"#node-list li[data-node='{i}']")
        page.click("#pin-btn")
    page.click("#tabs button[data-tab=subgraph]")
    assert page.locator("#flow-svg g[data-item]").count() == 4
    page.check(f"input[data-pin='{ids[0]}']")
    page.check(f"input[data-pin='{ids[1]}']")
    page.click("#group-btn")  # no name: refused in the page, no pop-up
    assert "name" in page.inner_text("#status") and page.locator("li[data-supernode]").count() == 0
    page.fill("#group-name", "texas")
    page.click("#group-btn")
    assert page.locator("#flow-svg g[data-item]").count() == 3
    assert page.evaluate("window.mechscope.state.supernodes") == [["texas", ids[0], ids[1]]]
    # rename in the page
    page.fill("li[data-supernode='texas'] .sn-name", "Texas concept")
    page.press("li[data-supernode='texas'] .sn-name", "Enter")
    page.wait_for_selector("li[data-supernode='Texas concept']")
    # add the selected node, then remove a member
    page.evaluate(f"window.mechscope.select({json.dumps(ids[2])})")
    page.click("#tabs button[data-tab=subgraph]")
    page.click("li[data-supernode='Texas concept'] .sn-add")
    assert page.evaluate("window.mechscope.state.supernodes")[0][1:] == [ids[0], ids[1], ids[2]]
    page.click("li[data-supernode='Texas concept'] button[aria-expanded]")
    page.click(f"li[data-supernode='Texas concept'] .sn-remove[data-member='{ids[0]}']")
    assert page.evaluate("window.mechscope.state.supernodes")[0][1:] == [ids[1], ids[2]]
    # boxes sit by layer: a box of a higher layer is drawn higher up
    boxes = page.evaluate(
        """() => [...document.querySelectorAll('#flow-svg g[data-item]')].map((g) => [g.dataset.item, +g.querySelector('rect').getAttribute('y')])"""
    )
    assert len(boxes) == 3  # the supernode, the removed member (still pinned) and the fourth pin
    rows = page.evaluate(
        "Object.fromEntries(window.mechscope.state.pinned.map((id) => [id, window.mechscope.state.row[window.mechscope.state.nodeIdx.get(id)]]))"
    )
    singles = sorted((rows[k], y) for k, y in boxes if not k.startswith("sn:"))
    if singles[0][0] != singles[1][0]:
        assert singles[0][1] > singles[1][1]  # lower layer, lower on the page
    # the supernode is drawn on the main graph: a box around its members, named
    assert page.evaluate("window.mechscope.supernodeBoxes().map((b) => b.name)") == ["Texas concept"]
    assert not page.errors, page.errors


def test_node_panel_inputs_histogram_labels(page, url, stub):
    open_graph(page, url, "slug=s-panel")
    nid = state(
        page,
        "(() => { let b = null, d = -1; S.nodes.forEach((n, i) => { const k = S.inStart[i + 1] - S.inStart[i]; if (S.isFeat[i] && S.vis[i] && k > d) { d = k; b = n.node_id; } }); return b; })()",
    )
    page.evaluate(f"window.mechscope.select({json.dumps(nid)})")
    page.wait_for_selector("#feature-label")
    n_in = state(
        page, f"(() => {{ const i = S.nodeIdx.get({json.dumps(nid)}); return S.inStart[i + 1] - S.inStart[i]; }})()"
    )
    rows = page.locator("#edges-in tr.edge-row")
    assert rows.count() == min(n_in, 300) and n_in > 1
    shares = [
        float(t.split()[-1].rstrip("%"))
        for t in page.eval_on_selector_all(
            "#edges-in tr.edge-row td:nth-child(2)", "els => els.map(e => e.textContent)"
        )
    ]
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 100) < 0.2 * len(shares)
    first = page.inner_text("#edges-in tr.edge-row >> nth=0").split("\t")[-1]
    page.fill(".edges[data-dir=in] .edge-filter", "zzzz-no-match")
    assert rows.count() == 0
    page.fill(".edges[data-dir=in] .edge-filter", first[:6])
    assert 1 <= rows.count() <= n_in
    assert "transcoder feature (layer" in page.inner_text("#node-type") and "cross" not in page.inner_text("#node-type")
    # the histogram has axes and marks this node's activation
    assert page.locator("#hist-svg line").count() >= 3 and page.locator("#hist-own").count() == 1
    assert "activation" in page.evaluate("document.querySelector('#hist-svg').textContent")
    # examples show each token's activation on hover
    assert page.get_attribute("#feature-detail .ex .tok.max", "title").startswith("activation ")
    # an edited label is kept by Save in the graph file
    page.fill("#label-input", "Texas cities")
    page.click("#label-set")
    page.click("#tabs button[data-tab=subgraph]")
    page.click("#save-btn")
    page.wait_for_function("document.querySelector('#status').textContent.includes('saved')")
    saved = {n["node_id"]: n["clerp"] for n in json.loads((stub.graph_dir / "s-panel.json").read_text())["nodes"]}
    assert saved[nid] == "Texas cities"
    assert not page.errors, page.errors


def test_a_cross_layer_graph_names_its_features(page, url):
    open_graph(page, url, "slug=s-clt")
    nid = state(page, "S.nodes.find((n, i) => S.isFeat[i] && S.vis[i]).node_id")
    page.evaluate(f"window.mechscope.select({json.dumps(nid)})")
    page.wait_for_selector("#node-type")
    assert "cross-layer transcoder feature (layer" in page.inner_text("#node-type")
    assert not page.errors, page.errors


def test_interventions_history_watch_and_cancel(page, url, stub):
    open_graph(page, url, "slug=s-iv")
    nid = pick_features(page, 1)[0]
    page.click(f"#node-list li[data-node='{nid}']")
    page.click("#tabs button[data-tab=intervene]")
    page.select_option("#iv-mode", "ablate")
    assert page.is_disabled("#iv-value")
    page.select_option("#iv-mode", "set")
    assert not page.is_disabled("#iv-value")
    n_calls = len(stub.calls)
    page.fill("#iv-value", "")
    page.click("#iv-run")
    assert "enter a number" in page.inner_text("#iv-result") and len(stub.calls) == n_calls  # refused, not sent as 0
    page.fill("#iv-value", "3")
    page.fill("#iv-watch", " Dallas, Houston")
    page.fill("#iv-gen", "2")
    page.click("#iv-run")
    page.wait_for_selector("#iv-table tr.watched")
    assert stub.calls[-1]["watch"] == [" Dallas", " Houston"] and stub.calls[-1]["edits"][0]["value"] == 3
    assert page.locator("#iv-table tr.watched").count() == 2
    assert page.locator("#iv-table th", has_text="change").count() == 1
    assert re.search(r"[+-]0\.\d{3}", page.inner_text("#iv-table"))
    page.select_option("#iv-mode", "ablate")
    page.click("#iv-run")
    page.wait_for_function("document.querySelectorAll('#iv-history li').length === 2")
    assert "value" not in stub.calls[-1]["edits"][0]  # ablate sends no value
    page.click("#iv-history li[data-run='1']")
    assert "Run 1" in page.inner_text("#iv-result")
    # cancel a job that is running
    stub.gate.clear()
    try:
        page.click("#iv-run")
        page.wait_for_selector("#cancel-btn:not([hidden])")
        page.click("#cancel-btn")
        page.wait_for_function("document.querySelector('#iv-result').textContent.includes('cancelled')", timeout=10_000)
    finally:
        stub.gate.set()
    assert page.is_hidden("#cancel-btn") and page.locator("#iv-history li").count() == 2
    assert not page.errors, page.errors


def test_exports(page, url):
    open_graph(page, url, "slug=s-exp")
    nid = pick_features(page, 1)[0]
    page.click(f"#node-list li[data-node='{nid}']")
    page.click("#pin-btn")
    for btn, check in (
        ("#json-btn", lambda b: json.loads(b)["qParams"]["pinnedIds"] == [nid]),
        ("#svg-btn", lambda b: b.startswith(b"<svg") and b.count(b"<line") > 100 and b.count(b"<circle") > 50),
        ("#png-btn", lambda b: b[:8] == b"\x89PNG\r\n\x1a\n"),
    ):
        with page.expect_download() as d:
            page.click(btn)
        assert check(Path(d.value.path()).read_bytes()), btn


def test_notebook_view_is_self_contained(browser, tmp_path):
    from mechscope.notebook import FeatureView, GraphView
    from pagestub import FakeIndex

    g = make_graph(4000, n_features=300, seed=2)
    html = GraphView(g, features={}).html()
    assert (
        "/static/" not in html
        and "http://" not in html.replace("http://www.w3.org", "")
        and "https://" not in html.replace("https://json-schema", "")
    )
    assert '<script type="module"' not in html
    wrapped = GraphView(g)._repr_html_()
    assert wrapped.startswith("<iframe") and "srcdoc=" in wrapped
    (tmp_path / "view.html").write_text(html)
    ctx = browser.new_context(viewport={"width": 1200, "height": 700}, bypass_csp=True)
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.route(
        "**/*", lambda r: r.abort() if not r.request.url.startswith("file:") else r.continue_()
    )  # no network at all
    pg.goto((tmp_path / "view.html").as_uri())
    pg.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=30_000)
    assert pg.evaluate("window.mechscope.state.E") == 4000 and not errors, errors
    ids = pg.eval_on_selector_all("#node-list li", "els => els.map(e => e.dataset.node)")
    pg.click(f"#node-list li[data-node='{ids[0]}']")
    pg.wait_for_selector("#edges-in")
    ctx.close()
    fv = FeatureView(FakeIndex().feature(3, 7), own_activation=2.0)._repr_html_()
    assert "label 3/7" in fv and "<svg" in fv and 'title="activation 4.00"' in fv


def test_page_says_while_the_server_loads_the_model(browser, store):
    import threading

    from mechscope.server.app import LoadingScope

    go = threading.Event()

    def load(progress):
        progress("converting stub-model")
        go.wait(30)
        return StubScope(store)

    scope = LoadingScope(load)
    with LiveServer(scope) as u:
        assert urllib.request.urlopen(f"{u}/api/info").read().startswith(b'{"loading":true')
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{u}/api/graphs")
        assert e.value.code == 503
        pg = browser.new_page(bypass_csp=True)
        pg.goto(u)
        pg.wait_for_function(
            "document.querySelector('#status').textContent.includes('converting stub-model')", timeout=10_000
        )
        go.set()
        pg.wait_for_selector("#graph-list li[data-name='small']", timeout=15_000)
        assert "stub-model" in pg.inner_text("#model-name")
        pg.close()


def test_cancel_endpoint_drops_a_queued_job(url, stub):
    def call(method, path, body=None):
        req = urllib.request.Request(
            f"{url}{path}",
            method=method,
            data=json.dumps(body).encode() if body else None,
            headers={"Content-Type": "application/json", "X-Mechscope-Token": TOKEN},
        )
        return json.loads(urllib.request.urlopen(req).read())

    edit = {"prompt": "x", "edits": [{"feature": "1/2@3", "mode": "ablate"}]}
    stub.gate.clear()
    try:
        running = call("POST", "/api/intervene", edit)
        queued = call("POST", "/api/intervene", edit)
        assert queued["status"] == "queued"
        assert call("DELETE", f"/api/jobs/{queued['id']}")["status"] == "cancelled"
        n = len(stub.calls)
    finally:
        stub.gate.set()
    import time

    for _ in range(100):
        if call("GET", f"/api/jobs/{running['id']}")["status"] == "done":
            break
        time.sleep(0.05)
    time.sleep(0.2)
    assert len(stub.calls) == n and call("GET", f"/api/jobs/{queued['id']}")["status"] == "cancelled"  # it never ran
    with pytest.raises(urllib.error.HTTPError) as e:
        call("DELETE", "/api/jobs/nope")
    assert e.value.code == 404


def test_hover_highlights_and_selection_dims(page, url):
    open_graph(page, url, "slug=s-keys")
    nid = pick_features(page, 1)[0]
    pos = page.evaluate(f"window.mechscope.nodePosition({json.dumps(nid)})")
    page.mouse.move(pos["x"], pos["y"])
    page.wait_for_function(f"window.mechscope.state.hover === {json.dumps(nid)}")
    assert page.is_visible("#tooltip")

    def mean_alpha_of_cache():
        # average darkness of the cached layer: dimming the rest makes it lighter
        return page.evaluate("""() => { const c = window.mechscope.render.cache, d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let s = 0; for (let i = 3; i < d.length; i += 4) s += d[i]; return s / (d.length / 4); }""")

    page.mouse.move(5, 5)
    page.wait_for_timeout(300)
    before = mean_alpha_of_cache()
    page.mouse.click(pos["x"], pos["y"])
    page.wait_for_function(f"window.mechscope.state.clicked === {json.dumps(nid)}")
    page.wait_for_timeout(300)
    assert mean_alpha_of_cache() < 0.8 * before
    assert not page.errors, page.errors
