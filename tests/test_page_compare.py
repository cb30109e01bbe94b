"""The page's compare view and edges with attention heads, in real Chromium over synthetic graphs (no model).

Compare: two graphs whose differences are known by construction (B drops 5 features of A and adds 7) — the diff
endpoint, the counts and lists the Compare tab shows, the overlay's colours, the URL, the JSON download, and the
refusals (unknown graph 404, another model 400, one line each). Heads: hovering an edge of a graph traced with
head loadings shows its heads; clicking it lists them all, summing to the weight; graphs without heads still work.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from extras import require

require("fastapi")
playwright = require("playwright.sync_api")

from graphgen import make_graph  # noqa: E402
from pagestub import LiveServer, StubScope, chromium_browser  # noqa: E402
from server_helpers import one_line_error  # noqa: E402

DROPPED, ADDED = 5, 7


def _changed(a: dict) -> tuple[dict, set[str], set[str]]:
    """B: A without 5 features (ids that occur once in A) and with 7 new ones; the keys that go and come."""
    b = copy.deepcopy(a)
    feats = [n for n in b["nodes"] if n["feature_type"] == "cross layer transcoder"]
    count: dict[str, int] = {}
    for n in feats:
        count[f"{n['layer']}/{n['feature']}"] = count.get(f"{n['layer']}/{n['feature']}", 0) + 1
    gone = [n for n in feats if count[f"{n['layer']}/{n['feature']}"] == 1][10 : 10 + DROPPED]
    gone_ids = {n["node_id"] for n in gone}
    b["nodes"] = [n for n in b["nodes"] if n["node_id"] not in gone_ids]
    b["links"] = [lk for lk in b["links"] if lk["source"] not in gone_ids and lk["target"] not in gone_ids]
    out = next(n for n in b["nodes"] if n["feature_type"] == "logit")
    added = set()
    for k in range(ADDED):
        layer, f, p = 2 + k, 20_000 + k, len(b["metadata"]["prompt_tokens"]) - 1  # ids no graph of graphgen has
        nid = f"{layer}_{f}_{p}"
        b["nodes"].append({**feats[0], "node_id": nid, "layer": str(layer), "feature": f, "ctx_idx": p,
                           "influence": 0.05 * (k + 1), "clerp": f"new concept {k}"})  # fmt: skip
        b["links"].append({"source": nid, "target": out["node_id"], "weight": 0.3 + 0.01 * k})
        added.add(f"{layer}/{f}")
    return b, {f"{n['layer']}/{n['feature']}" for n in gone}, added


def _with_heads(g: dict) -> dict:
    """Only links between positions, each split into two or three heads (and a rest) that sum to its weight."""
    pos = {n["node_id"]: n["ctx_idx"] for n in g["nodes"]}
    links = []
    for i, lk in enumerate(g["links"]):
        if pos[lk["source"]] == pos[lk["target"]]:
            continue
        w = lk["weight"]
        heads = [[i % 5, 1, round(0.6 * w, 6)], [(i + 2) % 5, 3, round(0.3 * w, 6)]]
        lk = {**lk, "heads": heads, "heads_rest": w - heads[0][2] - heads[1][2], "multi_hop": round(0.1 * w, 6)}
        links.append(lk)
    return {**g, "links": links}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmpgraphs")
    a = make_graph(3000, n_features=240, seed=3)
    b, gone, added = _changed(a)
    other = copy.deepcopy(a)
    other["metadata"]["info"]["model"] = "another-model"
    for name, g in (("base", a), ("next", b), ("other", other)):
        (d / f"{name}.json").write_text(json.dumps(g))
    (d / "heads.json").write_text(json.dumps(_with_heads(make_graph(300, n_features=40, seed=5))))
    (d / "plain.json").write_text(json.dumps(make_graph(300, n_features=40, seed=6)))
    return SimpleNamespace(dir=d, gone=gone, added=added)


@pytest.fixture(scope="module")
def url(store):
    with LiveServer(StubScope(store.dir)) as u:
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
    yield pg
    ctx.close()


def _open(page, url: str, query: str) -> None:
    page.goto(f"{url}/?{query}")
    page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=60_000)
    page.wait_for_timeout(100)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_diff_endpoint_and_refusals(url, store):
    from mechscope.compare.diff import diff_graphs

    status, d = _get(f"{url}/api/diff?a=base&b=next")
    assert status == 200 and d["summary"]["appear"] == ADDED and d["summary"]["disappear"] == DROPPED
    assert {r["key"] for r in d["features"]["appear"]} == store.added
    assert {r["key"] for r in d["features"]["disappear"]} == store.gone
    lib = diff_graphs(*(json.loads((store.dir / f"{n}.json").read_text()) for n in ("base", "next")))
    assert d["features"] == lib["features"] and d["summary"] == lib["summary"]  # the library's answer, as is
    assert set(d["node_keys"]["a"]) == {n["node_id"] for n in json.loads((store.dir / "base.json").read_text())["nodes"]
                                        if n["feature_type"] == "cross layer transcoder"}  # fmt: skip

    class R:  # one_line_error reads .json()
        def __init__(self, body):
            self.body = body

        def json(self):
            return self.body

    for query, code, words in (
        ("a=base&b=nope", 404, "no graph nope"),
        ("a=base&b=other", 400, "different models"),
        ("a=base&b=..%2Fetc", 400, "bad graph name"),
        ("a=base", 400, "b:"),
        ("a=base&b=next&by=colour", 400, "by:"),
        ("a=base&b=next&min_change=nan", 400, "min_change"),
        ("a=base&b=next&max_edges=0", 400, "max_edges"),
    ):
        status, body = _get(f"{url}/api/diff?{query}")
        assert status == code and words in one_line_error(R(body)), (query, status, body)


def test_compare_view_shows_what_appears_and_disappears(page, url, store):
    _open(page, url, "slug=base")
    page.click("#tabs button[data-tab=compare]")
    page.select_option("#cmp-with", "next")
    page.click("#cmp-run")
    page.wait_for_selector("#cmp-summary")
    summary = page.locator("#cmp-summary")
    assert summary.get_attribute("data-appear") == str(ADDED)
    assert summary.get_attribute("data-disappear") == str(DROPPED)
    assert f"+{ADDED} appear" in summary.inner_text() and f"−{DROPPED} disappear" in summary.inner_text()
    keys = lambda status: set(
        page.eval_on_selector_all(f"#cmp-{status} tr.cmp-row", "els => els.map(e => e.dataset.key)")
    )  # noqa: E731
    assert keys("appear") == store.added and keys("disappear") == store.gone
    # the overlay: each added feature is one green node, each dropped one red; their edges coloured likewise
    st = page.evaluate("""() => { const S = window.mechscope.state, c = {};
        S.nodes.forEach((n) => { if (n.feature_type === 'cross layer transcoder') c[n.diff.status] = (c[n.diff.status] || 0) + 1; });
        const e = [0, 0, 0, 0]; for (let i = 0; i < S.E; i++) e[S.estat[i]]++; return { c, e, compare: S.compare.b }; }""")
    assert st["c"]["appear"] == ADDED and st["c"]["disappear"] == DROPPED and st["compare"] == "next"
    assert st["e"][0] >= ADDED and st["e"][1] > 0  # edges of the added features appear, the dropped ones' disappear
    assert "compare=next" in page.url and "appear" in page.inner_text("#legend")
    # a row of the list selects its node in the overlay, whose panel says what the diff says
    key = sorted(store.added)[0]
    page.click(f"#cmp-appear tr.cmp-row[data-key='{key}']")
    page.wait_for_selector("#node-diff")
    assert page.get_attribute("#node-diff", "data-status") == "appear" and key in page.inner_text("#node-diff")
    # the link reproduces the comparison; JSON downloads the diff itself
    page.reload()
    page.wait_for_function("window.mechscope && window.mechscope.state.openMs && window.mechscope.state.compare")
    page.click("#tabs button[data-tab=compare]")
    assert page.get_attribute("#cmp-summary", "data-appear") == str(ADDED)
    with page.expect_download() as dl:
        page.click("#json-btn")
    got = json.loads(Path(dl.value.path()).read_bytes())  # as `mechscope diff A B --json` prints it
    assert got["summary"]["disappear"] == DROPPED and "node_keys" not in got
    # back to A alone: its own colours and no comparison in the URL
    page.click("#cmp-exit")
    page.wait_for_function("window.mechscope.state.compare === null")
    assert "compare=" not in page.url and not page.is_visible(".diff-legend")
    assert not page.errors, page.errors


def test_compare_refuses_another_model_in_one_line(page, url):
    _open(page, url, "slug=base")
    page.click("#tabs button[data-tab=compare]")
    page.select_option("#cmp-with", "other")
    page.click("#cmp-run")
    page.wait_for_selector("#cmp-error")
    assert (
        "different models" in page.inner_text("#cmp-error") and page.evaluate("window.mechscope.state.compare") is None
    )
    page.goto(f"{url}/?slug=base&compare=nope")
    page.wait_for_function("document.querySelector('#status').textContent.includes('no graph nope')")
    assert not page.errors, page.errors


def _hover_strongest_edge(page) -> tuple[int, float, float]:
    """Moves the mouse onto the strongest drawn edge at a point no node is near (a node wins over an edge);
    (the edge the page says is hovered, x, y)."""
    x, y = page.evaluate("""() => { const m = window.mechscope, S = m.state;
        const at = (i) => m.nodePosition(S.nodes[i].node_id), drawn = m.drawnEdges().sort((a, b) => Math.abs(S.w[b]) - Math.abs(S.w[a]));
        for (const e of drawn) {
          const a = at(S.src[e]), b = at(S.tgt[e]);
          if (!S.vis[S.src[e]] || !S.vis[S.tgt[e]]) continue;
          for (let t = 0.15; t <= 0.85; t += 0.05) {
            const x = a.x + t * (b.x - a.x), y = a.y + t * (b.y - a.y);
            let free = true;
            for (let i = 0; i < S.nodes.length && free; i++) if (S.vis[i]) { const p = at(i); free = Math.hypot(p.x - x, p.y - y) > 16; }
            if (free) return [x, y];
          } } }""")
    page.mouse.move(x, y)
    page.wait_for_function("window.mechscope.state.hoverEdge !== null", timeout=5000)
    return page.evaluate("window.mechscope.state.hoverEdge"), x, y


def test_hovering_and_clicking_an_edge_shows_its_heads(page, url):
    _open(page, url, "slug=heads")
    e, x, y = _hover_strongest_edge(page)
    link = page.evaluate(f"(() => {{ const S = window.mechscope.state; return S.graph.links[S.linkIdx[{e}]]; }})()")
    tip = page.inner_text("#tooltip")
    assert page.is_visible("#tooltip") and "attention heads" in tip
    for layer, head, _ in link["heads"]:
        assert f"head {layer}.{head}" in tip, (tip, link)
    # a click opens the edge: every head with its part, the rest, and a sum equal to the weight
    page.mouse.click(x, y)
    page.wait_for_selector("#edge-heads")
    assert page.evaluate("window.mechscope.state.clickedEdge") == e
    rows = page.eval_on_selector_all(
        "#edge-heads tr.head-row", "els => els.map(r => [+r.dataset.layer, +r.dataset.head, +r.dataset.part])"
    )
    assert rows == [[h[0], h[1], pytest.approx(h[2])] for h in link["heads"]]
    parts = sum(r[2] for r in rows) + float(page.get_attribute("#edge-heads tr.head-rest", "data-part"))
    assert parts == pytest.approx(link["weight"], abs=1e-6)
    assert page.locator("#edge-heads .why-btn").count() == len(rows)
    # the node panel's edge tables name each link's strongest head; hovering the cell lists all of them
    page.click("text=open target")
    page.wait_for_selector("#edges-in td.heads-cell")
    assert "head " in page.get_attribute("#edges-in td.heads-cell >> nth=0", "title")
    page.click("#edges-in td.heads-cell >> nth=0")
    page.wait_for_selector("#edge-heads")
    assert not page.errors, page.errors


def test_graphs_without_heads_still_show_edges(page, url):
    _open(page, url, "slug=plain")
    _hover_strongest_edge(page)
    tip = page.inner_text("#tooltip")
    assert "weight" in tip and "head" not in tip
    page.evaluate("window.mechscope.selectEdge(window.mechscope.state.hoverEdge)")
    page.wait_for_selector("#edge-weight")
    assert page.locator("#edge-heads").count() == 0 and page.locator("#edge-no-heads").count() == 1
    nid = page.evaluate(
        "window.mechscope.state.nodes[window.mechscope.state.tgt[window.mechscope.state.order[0]]].node_id"
    )
    page.evaluate(f"window.mechscope.select({json.dumps(nid)})")
    page.wait_for_selector("#edges-in")
    assert (
        page.locator("#edges-in td.heads-cell").count() == 0
        and page.locator("#edges-in th", has_text="head").count() == 0
    )
    assert not page.errors, page.errors
