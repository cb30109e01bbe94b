"""The page as a reading tool, in real Chromium over synthetic graphs (tests/pagestub.py, no model).

The default view draws the answer's paths and the selection's edges (not the strongest thousands), dense features
are hidden and nodes can be hidden one by one (both in the URL), hover cards, node search, labels and tokens that
stay whole at fit, the pruning slider keeps the view centred, the subgraph pane's arrowheads stay off its boxes,
and accessibility: the canvas's text alternative, keyboard-reachable pins, tab semantics, a quiet live region.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from extras import require

require("fastapi")
playwright = require("playwright.sync_api")

from graphgen import make_graph  # noqa: E402
from pagestub import TOKEN, LiveServer, StubScope, chromium_browser, fake_density, js, recording_page  # noqa: E402

TOKENS = ["<bos>", "Dallas", " is", " in", " the", " state", " of"]
# a path planted in the random graph: the token "Dallas" → A → B → " Texas"; D: a dense feature feeding " Texas"
A, B, D = "2_1001_1", "9_2002_6", "5_3003_6"
LONG = "cities of north Texas, Dallas and Fort Worth among them"  # 56 characters: shown whole, never cut


def dallas_graph(n_edges: int = 20_000, n_features: int = 1200, seed: int = 7) -> dict:
    g = make_graph(n_edges, n_features=n_features, tokens=TOKENS, seed=seed)
    taken = {n["node_id"] for n in g["nodes"]}
    assert not {A, B, D} & taken
    feat = next(n for n in g["nodes"] if n["feature_type"] == "cross layer transcoder")
    # the random feature with the most influence gets a long label: it is drawn whole
    top = min((n for n in g["nodes"] if n["feature_type"] == "cross layer transcoder"), key=lambda n: n["influence"])
    top["clerp"] = LONG
    for nid, clerp, infl in ((A, "Dallas", 0.002), (B, "Texas", 0.001), (D, "dense stuff", 0.0005)):
        layer, f, pos = (int(x) for x in nid.split("_"))
        g["nodes"].append({**feat, "node_id": nid, "layer": str(layer), "feature": f, "ctx_idx": pos,
                           "clerp": clerp, "influence": infl, "activation": 3.0})  # fmt: skip
    outs = [n for n in g["nodes"] if n["feature_type"] == "logit"]
    texas = next(n for n in outs if '" Texas"' in n["clerp"])
    for n in outs:
        n["is_target_logit"] = n is texas
    texas["token_prob"] = 0.76
    emb = next(n for n in g["nodes"] if n["feature_type"] == "embedding" and n["clerp"] == "Dallas")
    for s, t, w in ((emb["node_id"], A, 3.0), (A, B, 3.0), (B, texas["node_id"], 3.0), (D, texas["node_id"], 5.0)):
        g["links"].append({"source": s, "target": t, "weight": w})
    return g


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("readgraphs")
    g = dallas_graph()
    for name in ("dallas", "d-filter", "d-search", "d-a11y"):
        (d / f"{name}.json").write_text(json.dumps(g))
    (d / "busy.json").write_text(json.dumps(make_graph(60_000, n_features=4000, seed=11)))
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
    with recording_page(browser) as pg:
        yield pg


def open_graph(page, url: str, query: str) -> None:
    page.goto(f"{url}/?{query}")
    page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=90_000)
    page.wait_for_timeout(300)


def visible(page, nid: str) -> bool:
    return js(page, f"S.vis[S.nodeIdx.get({json.dumps(nid)})] === 1")


def drawn_ids(page) -> set[tuple[str, str]]:
    return {
        tuple(x) for x in js(page, "m.drawnEdges().map((e) => [S.nodes[S.src[e]].node_id, S.nodes[S.tgt[e]].node_id])")
    }


def test_served_graphs_gain_densities_from_the_index(stub):
    nodes = [
        {"node_id": "3_13_0", "feature_type": "cross layer transcoder", "layer": "3", "feature": 13},
        {"node_id": "3_14_0", "feature_type": "cross layer transcoder", "layer": "3", "feature": 14, "density": 0.2},
        {"node_id": "E_5_0", "feature_type": "embedding", "layer": "E", "feature": 5},
        {"node_id": "bad", "feature_type": "cross layer transcoder", "layer": "x", "feature": None},
    ]
    g = {"nodes": [dict(n) for n in nodes], "links": []}
    assert stub.add_density(g) == ["nodes"]
    out = g["nodes"]
    assert out[0]["density"] == fake_density(3, 13) == 0.6  # from the index
    assert out[1]["density"] == 0.2 and "density" not in out[2] and "density" not in out[3]  # kept, not features, bad
    no_index = StubScope(stub.graph_dir)
    no_index.index = None
    assert no_index.add_density({"nodes": [dict(nodes[0])], "links": []}) == []


def test_only_the_edited_part_of_a_graph_is_written_anew(tmp_path):
    import gzip

    from mechscope.server.serving import CompressedFiles, parse_top

    for text in ('{"a": "}{,\\"", "b" :[1, {"c": "ü\\u00e9"}] , "nodes": []}', " [1, 2] ", "{ }", '{"x": 1}\n'):
        data, spans = parse_top(text)
        assert data == json.loads(text) and all(json.loads(text[a:b]) == data[k] for k, (a, b) in spans.items())
    for bad in ('{"a": 1,}', '{"a" 1}', '{"a": 1} x', "", '{"a": [}'):
        with pytest.raises(ValueError):
            parse_top(bad)
    p = tmp_path / "g.json"
    g = {"metadata": {"prompt": "a } b"}, "nodes": [{"node_id": "n"}], "links": [{"source": "n", "weight": 0.5}]}
    p.write_text(json.dumps(g, indent=1))

    def edit(d):
        d["nodes"][0]["density"] = 0.25
        return ["nodes"]

    r = CompressedFiles().response(p, {"accept-encoding": "gzip"}, edit=edit)
    body = gzip.decompress(r.body).decode()
    assert json.loads(body) == {**g, "nodes": [{"node_id": "n", "density": 0.25}]}
    assert json.dumps(g["links"], indent=1).replace("\n", "\n ") in body  # the links copied as they were written


def test_default_view_draws_the_answers_paths_not_a_hairball(page, url):
    open_graph(page, url, "slug=dallas")
    assert js(page, "S.E") > 20_000
    edges = drawn_ids(page)
    assert 0 < len(edges) <= 300 and js(page, "m.render.drawn + m.render.overlayEdges") <= 300
    emb = js(page, "S.nodes.find((n) => n.feature_type === 'embedding' && n.clerp === 'Dallas').node_id")
    texas = js(page, "S.nodes.find((n) => n.is_target_logit).node_id")
    assert {(emb, A), (A, B), (B, texas)} <= edges  # the planted path, without a click
    # the text alternative reads the same path, token first, answer last
    steps = page.eval_on_selector_all("#path-list li", "els => els.map((e) => e.dataset.node)")
    assert steps == [emb, A, B, texas], steps
    assert "Dallas" in page.inner_text("#graph-text-summary") and "Texas" in page.inner_text("#graph-text-summary")
    assert page.get_attribute("#graph", "aria-describedby") == "graph-text-summary"
    # the full edge layer is one toggle away, and the URL says so
    page.click("#all-edges")
    page.wait_for_timeout(300)
    assert js(page, "m.render.drawn") > 1000 and "edges=all" in page.url
    page.focus("#graph")
    page.keyboard.press("e")  # and back
    page.wait_for_timeout(300)
    assert js(page, "m.render.drawn") <= 300 and "edges=all" not in page.url
    # a click draws the node's own edges on top and tints the others by their share
    page.evaluate(f"window.mechscope.select({json.dumps(B)})")
    page.wait_for_timeout(300)
    n_in = js(
        page,
        f"(() => {{ const i = S.nodeIdx.get('{B}'); let k = 0; for (let q = S.inStart[i]; q < S.inStart[i + 1]; q++) if (S.vis[S.src[S.inList[q]]]) k++; for (let q = S.outStart[i]; q < S.outStart[i + 1]; q++) if (S.vis[S.tgt[S.outList[q]]]) k++; return k; }})()",
    )
    assert js(page, "m.render.overlayEdges") == n_in
    want = js(page, f"3.0 / S.inTot[S.nodeIdx.get('{B}')]")  # A's share of B's input
    assert js(page, f"m.shares()[S.nodeIdx.get('{A}')]") == pytest.approx(want, rel=1e-5)
    assert not page.errors, page.errors


def test_hover_card_shows_activation_examples_and_weight_to_the_selection(page, url):
    open_graph(page, url, "slug=dallas")
    page.evaluate(f"window.mechscope.select({json.dumps(B)})")
    page.wait_for_timeout(200)
    pos = page.evaluate(f"window.mechscope.nodePosition({json.dumps(A)})")
    page.mouse.move(pos["x"], pos["y"])
    page.wait_for_function(f"window.mechscope.state.hover === {json.dumps(A)}")
    card = page.locator("#tooltip .node-card")
    assert card.get_attribute("data-node") == A and "activation 3.000" in page.inner_text("#tooltip")
    assert float(page.get_attribute("#card-sel", "data-weight")) == 3.0  # A → the selected B
    assert "of its input" in page.inner_text("#card-sel")
    page.wait_for_selector("#tooltip .card-ex")  # top examples from the index, after a short rest
    assert "Texas" in page.inner_text("#tooltip .card-ex >> nth=0")
    # the card stays inside the graph's frame
    box, wrap = page.locator("#tooltip").bounding_box(), page.locator("#graph-wrap").bounding_box()
    assert box["x"] >= wrap["x"] - 1 and box["x"] + box["width"] <= wrap["x"] + wrap["width"] + 1
    assert not page.errors, page.errors


def test_density_filter_and_hidden_nodes_live_in_the_url(page, url, stub):
    open_graph(page, url, "slug=d-filter")
    assert fake_density(5, 3003) > 0.1
    assert not visible(page, D) and "densityThreshold=0.1" in page.url  # dense: hidden by default
    n_dense = js(page, "S.hiddenCounts.dense")
    assert n_dense > 50 and f"{n_dense} hidden" in page.inner_text("#hidden-info")
    assert D not in page.eval_on_selector_all("#node-list li", "els => els.map((e) => e.dataset.node)")
    page.uncheck("#dense-on")
    page.wait_for_timeout(300)
    assert visible(page, D) and js(page, "S.densityThr") == 1 and "densityThreshold=1" in page.url
    assert D in page.eval_on_selector_all("#node-list li", "els => els.map((e) => e.dataset.node)")
    # hide two nodes one by one: H on the selected node, Hide in its panel
    page.evaluate(f"window.mechscope.select({json.dumps(A)})")
    page.focus("#graph")
    page.keyboard.press("h")
    page.evaluate(f"window.mechscope.select({json.dumps(B)})")
    page.click("#hide-btn")
    page.wait_for_timeout(400)
    assert not visible(page, A) and not visible(page, B) and js(page, "S.clicked") is None
    assert "hiddenIds=" in page.url
    link = page.url
    page.goto("about:blank")
    page.goto(link)
    page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=60_000)
    assert sorted(js(page, "[...S.hidden]")) == sorted([A, B]) and visible(page, D) and not visible(page, A)
    assert not page.is_checked("#dense-on")
    # Save writes them into the graph's qParams, which a plain link then restores
    page.click("#tabbtn-subgraph")
    page.click("#save-btn")
    page.wait_for_function("document.querySelector('#status').textContent.includes('saved')")
    q = json.loads((stub.graph_dir / "d-filter.json").read_text())["qParams"]
    assert sorted(q["hiddenIds"]) == sorted([A, B]) and q["densityThreshold"] == 1
    open_graph(page, url, "slug=d-filter")
    assert sorted(js(page, "[...S.hidden]")) == sorted([A, B]) and js(page, "S.densityThr") == 1
    page.click("#unhide-btn")
    page.wait_for_timeout(300)
    assert visible(page, A) and visible(page, B) and "hiddenIds" not in page.url
    # a threshold of 5% hides D again; an out-of-range one is refused in one line and changes nothing
    page.check("#dense-on")
    page.fill("#dense-thr", "5")
    page.press("#dense-thr", "Enter")
    page.wait_for_timeout(200)
    assert js(page, "S.densityThr") == pytest.approx(0.05) and not visible(page, D)
    page.fill("#dense-thr", "250")
    page.press("#dense-thr", "Enter")
    assert "must lie between" in page.inner_text("#status") and js(page, "S.densityThr") == pytest.approx(0.05)
    assert page.input_value("#dense-thr") == "5"
    # from the URL: out of range is refused in one line, and the graph's saved filter (1, off) used instead
    open_graph(page, url, "slug=d-filter&densityThreshold=7")
    assert "densityThreshold must lie in (0, 1]" in page.inner_text("#status") and js(page, "S.densityThr") == 1
    assert not page.errors, page.errors


def test_search_finds_nodes_by_label_or_id_and_shows_hidden_ones(page, url):
    open_graph(page, url, "slug=d-search")
    page.focus("#graph")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "node-search"
    page.keyboard.type("north texas")
    page.wait_for_selector("#search-results li[data-node]")
    first = page.get_attribute("#search-results li[data-node] >> nth=0", "data-node")
    assert LONG in js(page, f"S.byId.get({json.dumps(first)}).clerp")
    assert page.get_attribute("#node-search", "aria-expanded") == "true"
    page.keyboard.press("Enter")
    page.wait_for_function(f"window.mechscope.state.clicked === {json.dumps(first)}")
    c = page.locator("#graph").bounding_box()
    p = page.evaluate(f"window.mechscope.nodePosition({json.dumps(first)})")
    assert abs(p["x"] - (c["x"] + c["width"] / 2)) < 2 and abs(p["y"] - (c["y"] + c["height"] / 2)) < 2  # centred
    # by id, "L/F@P": the dense D, hidden by the filter, is shown while selected
    assert not visible(page, D)
    page.fill("#node-search", "5/3003@6")
    page.wait_for_selector(f"#search-results li[data-node='{D}']")
    assert "(dense)" in page.inner_text(f"#search-results li[data-node='{D}']")
    page.press("#node-search", "Enter")
    page.wait_for_function(f"window.mechscope.state.clicked === {json.dumps(D)}")
    assert visible(page, D)
    page.fill("#node-search", "zzzz-nothing")
    assert "no node matches" in page.inner_text("#search-results")
    page.press("#node-search", "Escape")
    assert page.is_hidden("#search-results")
    assert not page.errors, page.errors


def test_pruning_slider_keeps_the_view_centred(page, url):
    open_graph(page, url, "slug=busy")

    def extent():  # the visible nodes' box on screen, and the canvas's
        return page.evaluate("""() => { const S = window.mechscope.state, c = document.getElementById('graph').getBoundingClientRect();
            let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
            S.nodes.forEach((n, i) => { if (!S.vis[i]) return; const x = S.layout.xy[2 * i] * S.view.k + S.view.x, y = S.layout.xy[2 * i + 1] * S.view.k + S.view.y;
              x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y); });
            return { x0, y0, x1, y1, w: c.width, h: c.height }; }""")

    before = extent()
    page.locator("#prune").fill("0.3")
    page.wait_for_timeout(300)
    after = extent()
    assert js(page, "S.vis.reduce((a, v) => a + v, 0)") < 0.8 * js(page, "S.nodes.length")
    # still fitted: the graph fills the canvas as before rather than shrinking into the top-left corner
    assert (after["x1"] - after["x0"]) > 0.8 * (before["x1"] - before["x0"]) or (after["y1"] - after["y0"]) > 0.8 * (
        before["y1"] - before["y0"]
    )
    assert abs((after["x0"] + after["x1"]) / 2 - after["w"] / 2) < 0.1 * after["w"]
    # a zoomed view keeps its centre (relative to the graph) and its zoom relative to the fit
    page.locator("#prune").fill("1")
    page.focus("#graph")
    for _ in range(3):
        page.keyboard.press("+")
    page.wait_for_timeout(200)
    rel = "(() => { const c = document.getElementById('graph').getBoundingClientRect(); return [(c.width / 2 - S.view.x) / S.view.k / S.world.w, (c.height / 2 - S.view.y) / S.view.k / S.world.h]; })()"
    r0 = js(page, rel)
    page.locator("#prune").fill("0.4")
    page.wait_for_timeout(200)
    r1 = js(page, rel)
    assert r1 == pytest.approx(r0, abs=0.01)
    assert not page.errors, page.errors


def test_labels_and_tokens_stay_whole_at_fit(page, url):
    g = dallas_graph()
    long_id = next(n["node_id"] for n in g["nodes"] if n.get("clerp") == LONG)
    open_graph(page, url, "slug=dallas")
    labels = js(page, "m.render.labels.map((l) => [S.nodes[l.i].node_id, l.text])")
    assert [long_id, LONG] in labels  # whole, not cut at 26 characters
    toks = js(page, "m.render.tokens")
    assert sorted(t["text"] for t in toks) == sorted(json.dumps(t)[1:-1] for t in TOKENS)  # every token, whole
    open_graph(page, url, "slug=busy")  # 4,000 features: the busy column is hundreds of nodes
    toks = js(page, "m.render.tokens")
    want = {json.dumps(t)[1:-1] for t in make_graph(10, n_features=10)["metadata"]["prompt_tokens"]}
    assert all("…" not in t["text"] and t["text"] in want for t in toks) and len(toks) >= len(want) - 1
    for ln in (0, 1):  # no two tokens overlap on a line
        xs = sorted((t["x"], t["x"] + t["w"]) for t in toks if t["line"] == ln)
        assert all(a[1] <= b[0] for a, b in zip(xs, xs[1:])), xs
    # glyphs shrink to the layout's spacing: a busy column is dots, not a solid bar
    dx_k, scale = js(page, "[16 * S.view.k, m.render.glyphScale]")
    assert 2 * 6 * scale <= max(dx_k, 3.0) + 0.5, (dx_k, scale)
    assert not page.errors, page.errors


def test_subgraph_arrowheads_stay_off_the_boxes(page, url):
    open_graph(page, url, "slug=dallas")
    emb = js(page, "S.nodes.find((n) => n.feature_type === 'embedding' && n.clerp === 'Dallas').node_id")
    texas = js(page, "S.nodes.find((n) => n.is_target_logit).node_id")
    same_row = js(
        page,
        f"S.nodes.find((n, i) => S.isFeat[i] && S.vis[i] && S.row[i] === S.row[S.nodeIdx.get('{B}')] && n.node_id !== '{B}').node_id",
    )
    for nid in (emb, A, B, texas, same_row):
        page.evaluate(f"window.mechscope.select({json.dumps(nid)})")
        page.click("#pin-btn")
    page.wait_for_selector("#flow-svg path[data-src]", state="attached")
    bad = page.evaluate("""() => {
        const svg = document.getElementById('flow-svg'), rects = [...svg.querySelectorAll('g[data-item] rect')].map((r) => r.getBBox()), out = [];
        for (const p of svg.querySelectorAll('path[data-src]')) {
          const L = p.getTotalLength(), end = p.getPointAtLength(L), pre = p.getPointAtLength(L - 1), ah = +p.dataset.head;
          const dx = end.x - pre.x, dy = end.y - pre.y, n = Math.hypot(dx, dy) || 1, tip = { x: end.x + ah * dx / n, y: end.y + ah * dy / n };
          const inside = (q) => rects.some((r) => q.x > r.x + 1 && q.x < r.x + r.width - 1 && q.y > r.y + 1 && q.y < r.y + r.height - 1);
          if (inside(end) || inside(tip) || ah > 10) out.push([p.dataset.src, p.dataset.dst, end, tip, ah]);
        }
        return { out, n: svg.querySelectorAll('path[data-src]').length, units: svg.querySelector('marker').getAttribute('markerUnits') }; }""")
    assert bad["n"] >= 3 and not bad["out"] and bad["units"] == "userSpaceOnUse", bad
    assert not page.errors, page.errors


def test_keyboard_pins_tabs_and_a_quiet_live_region(page, url, stub):
    open_graph(page, url, "slug=d-a11y")
    # tabs: each names its panel, the panel names its tab; one tab in the Tab order; arrows move between them
    tabs = page.evaluate("""() => [...document.querySelectorAll('#tabs [role=tab]')].map((t) => {
        const p = document.getElementById(t.getAttribute('aria-controls'));
        return [t.dataset.tab, !!p && p.getAttribute('role') === 'tabpanel' && p.getAttribute('aria-labelledby') === t.id, t.tabIndex]; })""")
    assert all(ok for _, ok, _ in tabs) and [t for t, _, i in tabs if i == 0] == ["feature"], tabs
    page.focus("#tabbtn-feature")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tabbtn-subgraph" and page.is_visible("#tab-subgraph")
    assert page.get_attribute("#tabbtn-subgraph", "aria-selected") == "true"
    # pinned names are buttons: Tab reaches them, Enter opens the node
    for nid in (A, B):
        page.evaluate(f"window.mechscope.select({json.dumps(nid)})")
        page.click("#pin-btn")
    page.click("#tabbtn-subgraph")
    page.focus(f"input[data-pin='{A}']")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.node") == A
    page.evaluate("window.mechscope.select(null)")
    page.click("#tabbtn-subgraph")
    page.focus(f"#pinned-list .pin-name[data-node='{A}']")
    page.keyboard.press("Enter")
    page.wait_for_function(f"window.mechscope.state.clicked === {json.dumps(A)}")
    # the text view's steps are buttons too
    page.click("#graph-text summary")
    page.focus("#path-list li >> nth=0 >> button")
    page.keyboard.press("Enter")
    assert js(page, "S.clicked") == page.get_attribute("#path-list li >> nth=0", "data-node")
    # the live region says what happens, not a timer: while a job runs for 2 s it changes at most twice
    page.evaluate("""() => { window.liveChanges = 0; new MutationObserver(() => window.liveChanges++).observe(document.getElementById('status'),
        { childList: true, characterData: true, subtree: true }); }""")
    page.evaluate(f"window.mechscope.select({json.dumps(A)})")
    page.click("#tabbtn-intervene")
    page.select_option("#iv-mode", "ablate")
    stub.gate.clear()
    try:
        page.click("#iv-run")
        page.wait_for_timeout(2000)
        changes, timer = page.evaluate("[window.liveChanges, document.getElementById('status-timer').textContent]")
        assert changes <= 2 and timer.strip().endswith("s"), (changes, timer)
        assert page.get_attribute("#status-timer", "aria-hidden") == "true"
    finally:
        stub.gate.set()
    page.wait_for_selector("#iv-table")
    assert not page.errors, page.errors


def test_trace_options_out_of_range_are_refused_by_the_form_and_the_server(page, url):
    open_graph(page, url, "slug=dallas")
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/api/trace" in r.url else None)
    page.fill("#prompt", "Dallas is in the state of")
    page.fill("#max-nodes", "99999")
    page.click("#trace-btn")
    page.wait_for_timeout(300)
    status = page.inner_text("#status")
    assert not sent and status.startswith("nodes") and "8192" in status and "\n" not in status, status
    for body, field in (({"max_feature_nodes": 99999}, "max_feature_nodes"), ({"node_threshold": 2.0}, "node_threshold"),
                        ({"edge_threshold": 0}, "edge_threshold")):  # fmt: skip
        req = urllib.request.Request(f"{url}/api/trace", method="POST", data=json.dumps({"prompt": "x", **body}).encode(),
                                     headers={"Content-Type": "application/json", "X-Mechscope-Token": TOKEN})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        err = json.loads(e.value.read())["error"]
        assert e.value.code == 400 and err.startswith(field) and "\n" not in err, err
    assert not page.errors, page.errors
