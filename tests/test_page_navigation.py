"""Moving through a graph on the page, in real Chromium over synthetic graphs (tests/pagestub.py, no model).

I and O follow the selected node's strongest input and output (from the token "Dallas" to the answer and back),
one line in the live region per step; edited labels travel in the URL (`clerps`, as Neuronpedia names a
subgraph's labels) and a malformed one is refused whole; Back and Forward move between graphs and panels, not
between hovers or slider moves; the side panels collapse so a 1,000-px window leaves the graph its width, and stay
collapsed on reload.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest
from extras import require

require("fastapi")
playwright = require("playwright.sync_api")

from graphgen import make_graph  # noqa: E402
from pagestub import LiveServer, StubScope, chromium_browser, js, recording_page  # noqa: E402

TOKENS = ["<bos>", "Dallas", " is", " in", " the", " state", " of"]
A, B = "2_1001_1", "9_2002_6"  # the planted path: token "Dallas" → A → B → " Texas", far stronger than the rest
STORED = "Dallas"  # A's label in the stored graph


def path_graph(seed: int = 5) -> dict:
    g = make_graph(4000, n_features=400, tokens=TOKENS, seed=seed)
    feat = next(n for n in g["nodes"] if n["feature_type"] == "cross layer transcoder")
    for nid, clerp, infl in ((A, STORED, 0.002), (B, "Texas", 0.001)):
        layer, f, pos = (int(x) for x in nid.split("_"))
        g["nodes"].append({**feat, "node_id": nid, "layer": str(layer), "feature": f, "ctx_idx": pos,
                           "clerp": clerp, "influence": infl, "activation": 3.0})  # fmt: skip
    outs = [n for n in g["nodes"] if n["feature_type"] == "logit"]
    texas = next(n for n in outs if '" Texas"' in n["clerp"])
    for n in outs:
        n["is_target_logit"] = n is texas
    emb = next(n for n in g["nodes"] if n["feature_type"] == "embedding" and n["clerp"] == "Dallas")
    for s, t in ((emb["node_id"], A), (A, B), (B, texas["node_id"])):
        g["links"].append({"source": s, "target": t, "weight": 40.0})
    return g


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    d = tmp_path_factory.mktemp("navgraphs")
    for name, seed in (("nav", 5), ("nav2", 6)):
        (d / f"{name}.json").write_text(json.dumps(path_graph(seed)))
    with LiveServer(StubScope(d)) as u:
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


def wait_js(page, expr: str) -> None:
    page.wait_for_function(f"(() => {{ const S = window.mechscope.state; return {expr}; }})()", timeout=30_000)


def query(page) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(page.url).query))


def test_keys_follow_the_strongest_input_and_output(page, url):
    open_graph(page, url, "slug=nav")
    emb = js(page, "S.nodes.find((n) => n.feature_type === 'embedding' && n.clerp === 'Dallas').node_id")
    texas = js(page, "S.nodes.find((n) => n.is_target_logit).node_id")
    page.evaluate(f"window.mechscope.select({json.dumps(emb)})")
    page.focus("#graph")
    page.evaluate("""() => { window.said = []; const a = document.getElementById('announce');
        new MutationObserver(() => window.said.push(a.textContent)).observe(a, { childList: true, characterData: true, subtree: true }); }""")

    def press(key: str) -> list[str]:
        page.evaluate("window.said = []")
        page.keyboard.press(key)
        page.wait_for_timeout(150)
        return page.evaluate("window.said")

    # O from the token walks to the answer along the strongest edges, one line per step
    for want in (A, B, texas):
        said = press("o")
        assert js(page, "S.clicked") == want
        assert len(said) == 1 and "strongest output" in said[0] and "weight 40.00" in said[0], said
    said = press("o")  # the answer has no output: the selection stays, and the region says so once
    assert js(page, "S.clicked") == texas and len(said) == 1 and "no output" in said[0], said
    # I walks back the same way
    for want in (B, A, emb):
        said = press("I")
        assert js(page, "S.clicked") == want
        assert len(said) == 1 and "strongest input" in said[0], said
    said = press("i")
    assert js(page, "S.clicked") == emb and len(said) == 1 and "no input" in said[0], said
    assert page.evaluate("document.activeElement.id") == "graph"
    assert page.get_attribute("#announce", "aria-live") == "polite"
    # the keys are in the help
    page.keyboard.press("?")
    legend = page.inner_text("#help-list")
    assert "strongest input" in legend and "strongest output" in legend and "[ / ]" in legend
    page.keyboard.press("Escape")
    assert not page.errors, page.errors


def test_edited_labels_travel_in_the_url_and_a_malformed_one_is_refused_whole(page, url):
    open_graph(page, url, f"slug=nav&clickedId={A}")
    page.wait_for_selector("#label-input")
    label = 'Dallas "the city" & Fort Worth #1, ü'
    page.fill("#label-input", label)
    page.press("#label-input", "Enter")
    assert label in page.inner_text("#node-title")
    page.wait_for_timeout(400)
    assert json.loads(query(page)["clerps"]) == [[A, label]]
    # Escape cancels an edit in progress
    page.fill("#label-input", "something else")
    page.press("#label-input", "Escape")
    assert page.input_value("#label-input") == label and js(page, f"S.byId.get({json.dumps(A)}).clerp") == label
    # a reload, or the link pasted elsewhere, shows the edited label; it is an edit Save would write
    link = page.url
    for how in ("reload", "pasted"):
        if how == "reload":
            page.reload()
        else:
            page.goto("about:blank")
            page.goto(link)
        page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=60_000)
        assert js(page, f"S.byId.get({json.dumps(A)}).clerp") == label, how
        assert js(page, "[...S.dirtyLabels]") == [A]
        page.wait_for_selector("#node-title")
        assert label in page.inner_text("#node-title")
    # labels set back to the stored one are no edit: the link drops them
    page.fill("#label-input", STORED)
    page.press("#label-input", "Enter")
    page.wait_for_timeout(400)
    assert "clerps" not in query(page)
    # malformed or not about this graph: refused whole, with one line, and nothing applied
    good = [A, "applied?"]
    for bad in (
        json.dumps([good, ["no_such_node", "y"]]),
        json.dumps([good, [A]]),
        json.dumps([good, [A, 5]]),
        json.dumps({"x": 1}),
        "[[not json",
        json.dumps([good, [A, "x" * 301]]),
    ):
        open_graph(page, url, "slug=nav&clerps=" + urllib.parse.quote(bad))
        status = page.inner_text("#status")
        assert "clerps" in status and "\n" not in status and page.get_attribute("#status", "class") == "error", status
        assert js(page, f"S.byId.get({json.dumps(A)}).clerp") == STORED and js(page, "Object.keys(S.labels)") == []
        assert "clerps" not in query(page)  # the refused labels do not stay in the link
    assert not page.errors, page.errors


def test_back_and_forward_move_between_graphs_and_panels(page, url):
    open_graph(page, url, "slug=nav")
    start = page.evaluate("history.length")
    # what is not navigation adds no entry: selecting, the sliders, hovering, the arrow keys, editing a label
    page.click(f"#node-list li[data-node='{A}']")
    page.locator("#prune").fill("0.9")
    page.mouse.move(700, 400)
    page.mouse.move(720, 420)
    page.focus("#graph")
    page.keyboard.press("ArrowUp")
    page.evaluate(f"window.mechscope.select({json.dumps(A)})")
    page.fill("#label-input", "north Texas")
    page.press("#label-input", "Enter")
    page.wait_for_timeout(400)
    assert page.evaluate("history.length") == start
    # another graph, then another panel: an entry each
    page.click("#graph-list li[data-name='nav2']")
    wait_js(page, "S.name === 'nav2'")
    page.click("#tabbtn-subgraph")
    assert page.evaluate("history.length") == start + 2 and query(page)["tab"] == "subgraph"
    page.go_back()
    wait_js(page, "S.tab === 'feature'")
    assert js(page, "S.name") == "nav2" and page.is_visible("#tab-feature") and not page.is_visible("#tab-subgraph")
    assert page.get_attribute("#tabbtn-feature", "aria-selected") == "true"
    page.go_back()
    wait_js(page, "S.name === 'nav'")
    # the graph comes back as it was left: selection, slider, edited label
    assert js(page, "[S.clicked, S.prune]") == [A, 0.9]
    assert js(page, f"S.byId.get({json.dumps(A)}).clerp") == "north Texas" and page.input_value("#prune") == "0.9"
    page.go_forward()
    wait_js(page, "S.name === 'nav2'")
    page.go_forward()
    wait_js(page, "S.tab === 'subgraph'")
    assert page.is_visible("#tab-subgraph") and page.get_attribute("#tabbtn-subgraph", "aria-selected") == "true"
    # a panel change within one graph is undone in place (the graph is not shown again)
    opened = js(page, "S.openMs")
    page.go_back()
    wait_js(page, "S.tab === 'feature'")
    assert js(page, "S.openMs") == opened
    # opening the graph afresh (from the list) shows its stored labels; Back brings the edited one again
    page.go_back()
    wait_js(page, "S.name === 'nav'")
    page.click("#graph-list li[data-name='nav']")
    wait_js(page, f"S.byId.get({json.dumps(A)}).clerp === {json.dumps(STORED)}")
    page.go_back()
    wait_js(page, f"S.byId.get({json.dumps(A)}).clerp === 'north Texas'")
    # a graph opened from a file is an entry too; it has no link, so coming Forward to it says so in one line
    f = path_graph(7)
    page.set_input_files(
        "#open-file", files=[{"name": "mine.json", "mimeType": "application/json", "buffer": json.dumps(f).encode()}]
    )
    wait_js(page, "S.fromFile === 'mine.json'")
    page.go_back()
    wait_js(page, "S.name === 'nav' && !S.fromFile")
    page.go_forward()
    page.wait_for_function("document.getElementById('status').textContent.includes('mine.json')")
    assert "open it again" in page.inner_text("#status") and js(page, "S.name") == "nav"
    assert not page.errors, page.errors


def test_side_panels_collapse_to_give_the_graph_the_window(page, url):
    page.set_viewport_size({"width": 1000, "height": 700})
    open_graph(page, url, "slug=nav")
    width = lambda: page.locator("#graph").bounding_box()["width"]  # noqa: E731
    assert width() < 700
    for side in ("left", "right"):
        assert page.get_attribute(f"#{side}-toggle", "aria-expanded") == "true"
        assert page.get_attribute(f"#{side}-toggle", "aria-label")
    # keyboard: Tab reaches the buttons, Enter or Space collapses
    page.focus("#left-toggle")
    page.keyboard.press("Enter")
    page.focus("#right-toggle")
    page.keyboard.press("Space")
    page.wait_for_timeout(300)
    assert [page.get_attribute(f"#{s}-toggle", "aria-expanded") for s in ("left", "right")] == ["false", "false"]
    assert width() >= 900 and not page.is_visible("#graph-list") and not page.is_visible("#tabs")
    assert page.is_visible("#left-toggle") and page.is_visible("#right-toggle")
    # the canvas is drawn at its new size, and a fitted graph fills it
    assert page.evaluate("document.getElementById('graph').width") >= 900
    # remembered in this browser, not in the link
    assert "left" not in page.url
    page.reload()
    page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=60_000)
    assert page.get_attribute("#right-toggle", "aria-expanded") == "false" and width() >= 900
    # [ and ] toggle them too; selecting a node leaves a collapsed panel collapsed
    page.focus("#graph")
    page.keyboard.press("[")
    page.wait_for_timeout(200)
    assert page.get_attribute("#left-toggle", "aria-expanded") == "true" and page.is_visible("#graph-list")
    page.evaluate(f"window.mechscope.select({json.dumps(A)})")
    assert page.get_attribute("#right-toggle", "aria-expanded") == "false"
    page.keyboard.press("]")
    page.wait_for_timeout(200)
    assert page.is_visible("#tabs") and page.is_visible("#node-title")
    assert not page.errors, page.errors


def test_back_leaves_a_comparison_and_forward_returns_to_it(page, url):
    open_graph(page, url, "slug=nav")
    page.click("#tabbtn-compare")
    page.select_option("#cmp-with", "nav2")
    page.click("#cmp-run")
    wait_js(page, "S.compare && S.compare.b === 'nav2'")
    assert query(page)["compare"] == "nav2" and query(page)["tab"] == "compare"
    page.go_back()
    wait_js(page, "!S.compare && S.name === 'nav'")
    assert js(page, "S.tab") == "compare" and page.is_visible("#tab-compare")
    page.go_forward()
    wait_js(page, "S.compare && S.compare.b === 'nav2'")
    page.click("#cmp-exit")  # Back to A: a navigation too
    wait_js(page, "!S.compare")
    page.go_back()
    wait_js(page, "S.compare && S.compare.b === 'nav2'")
    assert not page.errors, page.errors
