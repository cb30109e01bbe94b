"""The page's reading tools, in real Chromium over synthetic graphs (tests/pagestub.py, no model): live scores of
the pinned subgraph, the graph's prediction beside every intervention (flagged where it disagrees), opening a graph
file (picker and drop) checked against the graph schema, and a trace form whose defaults and ranges are the CLI's.
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
from pagestub import TOKEN, LiveServer, StubScope, chromium_browser, js, recording_page  # noqa: E402

TOKENS = ["<bos>", "Dallas", " is", " in", " the", " state", " of"]
X, Y = "12_4001_6", "14_4002_6"  # X inhibits " Texas" directly and excites it through Y


def planted_graph() -> dict:
    """A random graph plus X → " Texas" (−2), X → Y (+1), Y → " Texas" (+1); activations a_X = 3, a_Y = 2."""
    g = make_graph(3000, n_features=240, tokens=TOKENS, seed=3)
    feat = next(n for n in g["nodes"] if n["feature_type"] == "cross layer transcoder")
    for nid, act in ((X, 3.0), (Y, 2.0)):
        layer, f, pos = (int(v) for v in nid.split("_"))
        g["nodes"].append({**feat, "node_id": nid, "layer": str(layer), "feature": f, "ctx_idx": pos, "clerp": nid,
                           "influence": 0.01, "activation": act})  # fmt: skip
    texas = next(n for n in g["nodes"] if n["feature_type"] == "logit" and '" Texas"' in n["clerp"])
    for s, t, w in ((X, texas["node_id"], -2.0), (X, Y, 1.0), (Y, texas["node_id"], 1.0)):
        g["links"].append({"source": s, "target": t, "weight": w})
    return g


def small_graph():
    """A hand-made Graph (2 tokens, 2 layers, 3 features, 2 logits) whose pruned JSON keeps every node and edge."""
    import torch

    from mechscope.attribution.graph import Graph

    def node(nid, kind, layer, feature, pos, act=None, prob=0.0):
        return {"node_id": nid, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": kind,
                "jsNodeId": nid, "clerp": nid, "activation": act, "token_prob": prob}  # fmt: skip

    nodes = [
        node("0_7_1", "cross layer transcoder", "0", 7, 1, 2.0),
        node("1_8_1", "cross layer transcoder", "1", 8, 1, 1.5),
        node("1_9_0", "cross layer transcoder", "1", 9, 0, 0.5),
        *(node(f"err_{lay}_{p}", "mlp reconstruction error", str(lay), -1, p) for lay in (0, 1) for p in (0, 1)),
        node("E_5_0", "embedding", "E", 5, 0),
        node("E_6_1", "embedding", "E", 6, 1),
        node("3_20_1", "logit", "3", 20, 1, prob=0.6),
        node("3_21_1", "logit", "3", 21, 1, prob=0.2),
    ]
    ix = {n["node_id"]: i for i, n in enumerate(nodes)}
    A = torch.zeros(len(nodes), len(nodes))
    for s, t, w in [
        ("E_6_1", "0_7_1", 1.0), ("err_0_1", "0_7_1", 0.5), ("E_5_0", "1_9_0", 0.8), ("err_0_0", "1_9_0", 0.3),
        ("0_7_1", "1_8_1", 1.2), ("1_9_0", "1_8_1", -0.4), ("err_1_1", "1_8_1", 0.2), ("E_6_1", "1_8_1", 0.1),
        ("1_8_1", "3_20_1", 2.0), ("0_7_1", "3_20_1", -0.5), ("err_1_1", "3_20_1", 0.7), ("err_1_0", "3_21_1", 0.4),
        ("1_9_0", "3_21_1", 0.9), ("E_6_1", "3_21_1", 0.2),
    ]:  # fmt: skip
        A[ix[t], ix[s]] = w
    w = torch.zeros(len(nodes))
    w[-2:] = torch.tensor([0.75, 0.25])  # the logits' probabilities (0.6, 0.2), normalised
    meta = {"node_threshold": 1.0, "edge_threshold": 1.0, "scan": "t", "prompt_tokens": ["a", "b"], "prompt": "ab",
            "model": "t", "n_active_features": 3, "top_logits": [], "n_layers": 2}  # fmt: skip
    z = torch.zeros(len(nodes))
    return Graph(meta, nodes, A, w, z, z, z, n_feat=3, n_err=4, n_tok=2, n_logit=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("toolgraphs")
    g = planted_graph()
    for name in ("a-plant", "a-open", "a-trace"):
        (d / f"{name}.json").write_text(json.dumps(g))
    (d / "small.json").write_text(json.dumps(small_graph().to_json(slug="small")))
    v2 = json.loads((d / "a-open.json").read_text())
    v2["metadata"]["schema_version"] = 2
    (d / "v2.json").write_text(json.dumps(v2))
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
    with recording_page(browser, ignore_console="status of 4") as pg:
        yield pg


def open_graph(page, url: str, query: str) -> None:
    page.goto(f"{url}/?{query}")
    page.wait_for_function("window.mechscope && window.mechscope.state.openMs", timeout=90_000)
    page.wait_for_selector("#trace-form[data-ready='1']")


def post(url: str, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}{path}", method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-Mechscope-Token": TOKEN})  # fmt: skip
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def status_line(page) -> str:
    s = page.inner_text("#status")
    assert s and "\n" not in s, s
    return s


# ---------------------------------------------------------------------------------------------- subgraph scores
def reference_scores(g: dict, pinned: set[str]) -> tuple[float, float]:
    """The formula of docs/how-it-works.md in numpy, from the JSON alone: what the page must compute."""
    import numpy as np

    ids = [n["node_id"] for n in g["nodes"]]
    ix = {k: i for i, k in enumerate(ids)}
    N = len(ids)
    A = np.zeros((N, N))
    for lk in g["links"]:
        A[ix[lk["target"]], ix[lk["source"]]] = abs(lk["weight"])
    tot = A.sum(1, keepdims=True)
    An = np.divide(A, tot, out=np.zeros_like(A), where=tot > 0)
    kind = [n["feature_type"] for n in g["nodes"]]
    pin = np.array([k == "cross layer transcoder" and i in pinned for k, i in zip(kind, ids)])
    tok = np.array([k == "embedding" for k in kind])
    logit = np.array([k == "logit" for k in kind])
    w = np.array([n.get("token_prob", 0.0) if logit[i] else 0.0 for i, n in enumerate(g["nodes"])])
    w = w / w.sum()
    carry = pin | logit
    P = An * carry[:, None]  # influence flows back only through pinned features and logits
    infl, x = np.zeros(N), w.copy()
    for _ in range(100):
        x = x @ P
        infl += x
    lost = infl[~(pin | tok | logit)].sum()
    repl = infl[tok].sum() / (infl[tok].sum() + lost)
    out = infl + w
    rows = carry & (tot[:, 0] > 0)
    share = (An[:, pin | tok]).sum(1)
    comp = (share * out)[rows].sum() / out[rows].sum()
    return float(repl), float(comp)


def page_scores(page, ids: list[str]) -> dict:
    return page.evaluate(
        "async (ids) => (await import('/static/subscores.js')).subgraphScores(ids)", ids
    )  # the page's own module instance: same state


def test_pinned_subgraph_scores_are_live_and_are_the_graphs_scores_when_all_is_pinned(page, url, store):
    g = small_graph()
    full = g.scores()
    feats = ["0_7_1", "1_8_1", "1_9_0"]
    open_graph(page, url, f"slug=small&pinnedIds={','.join(feats)}")
    text = page.inner_text("#sg-scores")
    # every feature pinned: circuit-tracer's scores of the graph (graph.py), here over every edge
    assert f"replacement {full['replacement_score']:.3f}" in text and f"completeness {full['input_completeness_score']:.3f}" in text, (text, full)  # fmt: skip
    s = page_scores(page, feats)
    assert s["replacement"] == pytest.approx(full["replacement_score"], abs=1e-6)
    assert s["completeness"] == pytest.approx(full["input_completeness_score"], abs=1e-6)
    data = json.loads((store / "small.json").read_text())
    for pinned in (["0_7_1"], ["1_8_1"], ["1_9_0", "1_8_1"], []):
        got = page_scores(page, pinned)
        want = reference_scores(data, set(pinned))
        assert (got["replacement"], got["completeness"]) == pytest.approx(want, abs=1e-6), pinned
    # live: unpinning a feature changes the pane's line at once, and the Subgraph tab says the same
    page.evaluate("window.mechscope.state.pinned.length")
    page.evaluate("(async () => (await import('/static/subgraph.js')).togglePin('1_8_1'))()")
    want = reference_scores(data, {"0_7_1", "1_9_0"})
    line = page.inner_text("#sg-scores")
    assert f"replacement {want[0]:.3f}" in line and "(2 features)" in line, line
    assert page.inner_text("#sg-scores-tab") == line
    page.evaluate(
        "(async () => { const m = await import('/static/subgraph.js'); m.togglePin('0_7_1'); m.togglePin('1_9_0'); })()"
    )
    assert page.inner_text("#sg-scores") == ""  # nothing pinned: no line
    assert not page.errors, page.errors


# ---------------------------------------------------------------------------------- the graph's prediction
def test_intervention_shows_the_graphs_prediction_and_flags_disagreement(page, url, stub):
    open_graph(page, url, "slug=a-plant")
    page.evaluate(f"window.mechscope.select({json.dumps(X)})")
    page.click("#tabs button[data-tab=intervene]")
    page.select_option("#iv-mode", "ablate")
    logit_ids = js(page, "S.nodes.filter((n) => n.feature_type === 'logit').map((n) => n.feature)")
    texas = js(page, "S.nodes.find((n) => n.feature_type === 'logit' && n.clerp.includes('\" Texas\"')).feature")
    austin = js(page, "S.nodes.find((n) => n.feature_type === 'logit' && n.clerp.includes('\" Austin\"')).feature")
    stub.logit_change.update({austin: 0.02, texas: -0.5})  # Austin hardly moves (as predicted); Texas falls
    page.click("#iv-run")
    page.wait_for_selector("#iv-predict-table")
    assert sorted(stub.calls[-1]["logit_ids"]) == sorted(logit_ids)  # the run asks for the graph's outputs' logits
    # ablating X (a = 3): directly −2·(−3)/3 = +2, through Y: 1·(−3)/3 = −1 into Y (a = 2), then 1·(−1)/2 = −0.5
    row = page.locator(f"#iv-predict-table tr[data-token-id='{texas}']")
    cells = row.locator("td").all_inner_texts()
    assert cells[1] == "-0.500" and cells[2] == "+1.500" and "sign" in cells[3], cells
    assert row.get_attribute("data-flag") == "sign"
    assert page.locator(f"#iv-predict-table tr[data-token-id='{austin}']").get_attribute("data-flag") == "agree"
    # an output the graph gives no path from X, but that moved: the sizes disagree
    other = next(i for i in logit_ids if i not in (texas, austin))
    assert page.locator(f"#iv-predict-table tr[data-token-id='{other}']").get_attribute("data-flag") == "size"
    assert "disagrees with the model on" in page.inner_text("#iv-predict-summary")
    assert "graph disagrees on" in page.inner_text("#iv-history li[data-run='1']")
    # another prompt: the graph predicts nothing, and says why
    page.fill("#iv-prompt", "Houston is in the state of")
    page.click("#iv-run")
    page.wait_for_selector("#iv-predict-none")
    assert "prompt differs" in page.inner_text("#iv-predict-none") and "logit_ids" not in json.dumps(stub.calls[-1]["logit_ids"] or [])  # fmt: skip
    assert not page.errors, page.errors


def test_the_pages_prediction_is_the_graphs_total_effect(page, url):
    from mechscope.attribution.validate import total_effects

    g = small_graph()
    T = total_effects(g)
    open_graph(page, url, "slug=small")
    logits = {g.nodes[i]["feature"]: i for i in range(g.N - g.n_logit, g.N)}
    for k, nid in enumerate(("0_7_1", "1_8_1", "1_9_0")):
        layer, f, pos = nid.split("_")
        for mode, value, delta in (("ablate", None, -1.0), ("scale", 3.0, 2.0), ("set", 0.0, -1.0)):
            edit = {"feature": f"{layer}/{f}@{pos}", "mode": mode, **({"value": value} if value is not None else {})}
            got = page.evaluate("async (e) => [...(await import('/static/predict.js')).predict([e], 'ab').byId]", edit)
            # validate.py's prediction for ablating feature k is −T[logit, k]; scaling by 3 moves it by 2a, not −a
            for tok, p in got:
                assert p == pytest.approx(delta * float(T[logits[tok], k]), abs=1e-5), (nid, mode, tok)
    none = page.evaluate(
        "async () => (await import('/static/predict.js')).predict([{feature: '0/7@1', mode: 'ablate'}], 'x')"
    )
    assert "prompt differs" in none["why"]
    assert not page.errors, page.errors


# ------------------------------------------------------------------------------------------ opening files
def set_file(page, name: str, data: bytes) -> None:
    page.set_input_files("#open-file", files=[{"name": name, "mimeType": "application/json", "buffer": data}])


def drop_file(page, name: str, text: str) -> None:
    page.evaluate(
        """([name, text]) => { const dt = new DataTransfer(); dt.items.add(new File([text], name, { type: "application/json" }));
           document.querySelector("#graph").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true })); }""",
        [name, text],
    )  # fmt: skip


def test_open_a_graph_file_by_picker_and_by_drop(page, url, store):
    open_graph(page, url, "slug=small")
    g = planted_graph()
    g["metadata"]["prompt"] = "from a file"
    set_file(page, "mine.json", json.dumps(g).encode())
    page.wait_for_function("window.mechscope.state.fromFile === 'mine.json'")
    assert "(from mine.json)" in page.inner_text("#graph-title") and js(page, "S.nodes.length") == len(g["nodes"])
    assert "slug=" not in page.url  # a file has no link
    page.click("#tabs button[data-tab=subgraph]")
    for btn in ("#save-btn", "#suggest-btn", "#auto-flow-btn"):  # what needs the graph on the server says so
        page.evaluate("document.querySelector('#status').className = ''")
        page.click(btn)
        page.wait_for_function("document.querySelector('#status').className === 'error'")
        assert "opened from a file" in status_line(page), btn
    page.click("#tabs button[data-tab=compare]")
    page.click("#cmp-run")
    assert "opened from a file" in page.inner_text("#cmp-error")
    # circuit-tracer's graphs carry no schema version: they open too
    del g["metadata"]["schema_version"]
    g["metadata"]["prompt"] = "dropped"
    drop_file(page, "dropped.json", json.dumps(g))
    page.wait_for_function("window.mechscope.state.fromFile === 'dropped.json'")
    assert js(page, "S.graph.metadata.prompt") == "dropped"
    # a server graph afterwards is an ordinary stored graph again
    page.click("#graph-list li[data-name='small']")
    page.wait_for_function("window.mechscope.state.name === 'small' && !window.mechscope.state.fromFile")
    assert "slug=small" in page.url
    assert not page.errors, page.errors


def bad_graphs() -> list[tuple[str, str, str]]:
    """(file name, text, what the page's one line must say)."""
    good = make_graph(200, n_features=30, seed=5)

    def variant(fn):
        g = json.loads(json.dumps(good))
        fn(g)
        return json.dumps(g)

    return [
        ("notes.txt", "Dallas is in Texas", "not JSON"),
        ("list.json", "[1, 2, 3]", "not a graph"),
        ("config.json", json.dumps({"model": "x", "layers": 3}), "not a graph"),
        (
            "v2.json",
            variant(lambda g: g["metadata"].update(schema_version=2)),
            "schema version 2; this page reads version 1",
        ),  # fmt: skip
        ("noq.json", variant(lambda g: g.pop("qParams")), 'lacks "qParams"'),
        ("ctx.json", variant(lambda g: g["nodes"][3].update(ctx_idx=-1)), "nodes[3].ctx_idx: should be at least 0"),
        ("kind.json", variant(lambda g: g["nodes"][0].update(feature_type="attention")), "nodes[0].feature_type"),
        ("w.json", variant(lambda g: g["links"][7].update(weight="0.5")), "links[7].weight: should be number"),
        ("dup.json", variant(lambda g: g["nodes"].append(dict(g["nodes"][12]))), "appears twice"),
        ("pos.json", variant(lambda g: g["nodes"][20].update(ctx_idx=99)), "past the prompt"),
    ]


def test_a_file_that_is_not_a_graph_is_one_line_and_nothing_is_drawn(page, url):
    import jsonschema

    from mechscope.attribution.graph import validate_graph_json

    open_graph(page, url, "slug=small")
    page.evaluate("window.mechscope.state.graph.mark = 'before'")
    drawn = js(page, "m.render.drawn")
    for k, (name, text, says) in enumerate(bad_graphs()):
        (set_file if k % 2 else drop_file)(page, name, text.encode() if k % 2 else text)
        page.wait_for_function("document.querySelector('#status').className === 'error'")
        line = status_line(page)
        assert line.startswith(name) and says in line, (name, line)
        assert js(page, "S.graph.mark") == "before" and js(page, "S.name") == "small" and not js(page, "S.fromFile")
        assert js(page, "m.render.drawn") == drawn and page.inner_text("#graph-title") == "ab"
        page.evaluate("document.querySelector('#status').className = ''")
        # the server's validator refuses what the page's schema check refuses
        if "schema" in line and "version" not in line:
            with pytest.raises(jsonschema.ValidationError):
                validate_graph_json(json.loads(text))
    validate_graph_json(make_graph(200, n_features=30, seed=5))  # and accepts the graph they were made from
    assert not page.errors, page.errors


def test_graphs_larger_than_the_page_holds_are_refused_whole(page, url):
    fmt = json.loads(urllib.request.urlopen(f"{url}/api/graph-format").read())
    from mechscope.attribution.graph import SCHEMA_PATH, SCHEMA_VERSION

    assert fmt["schema"] == json.loads(SCHEMA_PATH.read_text()) and fmt["schema_version"] == SCHEMA_VERSION
    assert fmt["limits"] == {"bytes": 256 * 2**20, "nodes": 100_000, "links": 1_000_000}
    # the page's limits come from the server: a test server with small ones stands for a huge file
    small = {**fmt, "limits": {"bytes": 400_000, "nodes": 1000, "links": 2500}}
    page.route("**/api/graph-format", lambda route: route.fulfill(json=small))
    open_graph(page, url, "slug=small")
    page.evaluate("window.mechscope.state.graph.mark = 'before'")
    big = json.dumps(make_graph(3000, n_features=200, seed=2))
    set_file(page, "many.json", big.encode())
    page.wait_for_function("document.querySelector('#status').className === 'error'")
    assert "3,000 links: larger than the page holds (1,000 nodes, 2,500 links)" in status_line(page)
    page.evaluate("document.querySelector('#status').className = ''")
    drop_file(page, "huge.json", big + " " * 400_000)
    page.wait_for_function("document.querySelector('#status').className === 'error'")
    assert status_line(page).startswith("huge.json is ") and "larger than the page holds" in status_line(page)
    assert js(page, "S.graph.mark") == "before"
    assert not page.errors, page.errors


def test_a_stored_graph_of_another_schema_version_is_one_line(page, url):
    page.goto(f"{url}/?slug=v2")
    page.wait_for_function("document.querySelector('#status').className === 'error'", timeout=60_000)
    assert status_line(page) == "v2: a graph of schema version 2; this page reads version 1"
    assert js(page, "S.graph") is None and page.inner_text("#node-list") == ""
    assert not page.errors, page.errors


# -------------------------------------------------------------------------------------------- trace form
def test_trace_form_has_the_cli_defaults_and_sends_every_option(page, url, stub):
    from mechscope.attribution.config import AttributionConfig
    from mechscope.server.requests import MAX_NODES

    cli = AttributionConfig()
    opts = json.loads(urllib.request.urlopen(f"{url}/api/trace/options").read())
    assert {f["name"]: f["default"] for f in opts["fields"]} == {
        "max_feature_nodes": cli.max_feature_nodes, "node_threshold": cli.node_threshold,
        "edge_threshold": cli.edge_threshold, "targets": [], "logit_diff": None}  # fmt: skip
    open_graph(page, url, "slug=a-trace")
    assert page.input_value("#max-nodes") == str(cli.max_feature_nodes) == "2048"  # the CLI's budget
    assert page.input_value("#tr-node-thr") == "0.8" and page.input_value("#tr-edge-thr") == "0.98"
    assert page.get_attribute("#max-nodes", "max") == str(MAX_NODES)
    assert "pruning" in page.get_attribute("#tr-node-thr", "title")
    page.fill("#prompt", "Dallas is in the state of")
    page.click("#trace-opts summary")
    page.fill("#tr-targets", 'Austin, "Texas"')
    page.fill("#tr-edge-thr", "0.9")
    n = len(stub.traces)
    page.click("#trace-btn")
    page.wait_for_function(f"window.mechscope.state.name === 'trace-{n + 1}'")
    t = stub.traces[-1]
    assert t["max_feature_nodes"] == 2048 and t["targets"] == [" Austin", "Texas"] and t["logit_diff"] is None
    assert (t["node_threshold"], t["edge_threshold"]) == (0.8, 0.9)
    assert js(page, "document.querySelector('#trace-opts').open") is False  # folded away by the click on Trace
    page.click("#trace-opts summary")
    page.fill("#tr-targets", "")
    page.fill("#tr-diff-a", "Austin")
    page.fill("#tr-diff-b", "Dallas")
    page.click("#trace-btn")
    page.wait_for_function(f"window.mechscope.state.name === 'trace-{n + 2}'")
    assert stub.traces[-1]["logit_diff"] == (" Austin", " Dallas") and stub.traces[-1]["targets"] == []
    assert not page.errors, page.errors


@pytest.mark.parametrize(
    "fill, says",
    [
        ({"#tr-node-thr": "0"}, "node threshold: must lie in (0, 1] (got 0)"),
        ({"#tr-edge-thr": "1.5"}, "edge threshold: must lie in (0, 1] (got 1.5)"),
        ({"#max-nodes": "100.5"}, "nodes: must be a whole number"),
        ({"#max-nodes": "-1"}, "nodes: must lie in [0, 8192] (got -1)"),
        ({"#tr-diff-a": "Austin"}, "logit difference: give both tokens"),
        ({"#tr-diff-a": "Austin", "#tr-diff-b": "Austin"}, "the same token"),
        ({"#tr-diff-a": "Austin", "#tr-diff-b": "Dallas", "#tr-targets": "Texas"}, "not both"),
        ({"#tr-targets": ",".join(f"t{i}" for i in range(11))}, "targets: at most 10 (got 11)"),
    ],
)
def test_trace_form_refuses_options_out_of_range(page, url, fill, says):
    open_graph(page, url, "slug=a-trace")
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/api/trace" in r.url and r.method == "POST" else None)
    page.fill("#prompt", "Dallas is in the state of")
    page.click("#trace-opts summary")
    for sel, v in fill.items():
        page.fill(sel, v)
    page.click("#trace-opts summary")  # closed again: a refusal opens it to show the field
    page.click("#trace-btn")
    page.wait_for_timeout(200)
    assert not sent and says in status_line(page), status_line(page)
    # a refused field inside the closed options is shown: they open
    assert js(page, "document.querySelector('#trace-opts').open") is ("#max-nodes" not in fill)
    assert not page.errors, page.errors


@pytest.mark.parametrize(
    "body, says",
    [
        ({"node_threshold": 0}, "node_threshold: Input should be greater than 0"),
        ({"edge_threshold": 1.01}, "edge_threshold: Input should be less than or equal to 1"),
        ({"max_feature_nodes": -1}, "max_feature_nodes: Input should be greater than or equal to 0"),
        ({"max_feature_nodes": 8193}, "max_feature_nodes: Input should be less than or equal to 8192"),
        ({"logit_diff": [" Austin"]}, "logit_diff: List should have at least 2 items"),
        ({"logit_diff": [" Austin", " Austin"]}, "logit_diff: needs two different tokens"),
        ({"logit_diff": [" Austin", " Dallas"], "targets": [" Texas"]}, "give targets or a logit difference, not both"),
        ({"targets": [f" t{i}" for i in range(11)]}, "targets: List should have at most 10 items"),
        ({"targets": [""]}, "targets.0: String should have at least 1 character"),
    ],
)
def test_server_refuses_trace_options_out_of_range(url, stub, body, says):
    n = len(stub.traces)
    code, data = post(url, "/api/trace", {"prompt": "Dallas is in the state of", **body})
    assert code == 400 and set(data) == {"error"} and data["error"].startswith(says) and "\n" not in data["error"], data
    assert len(stub.traces) == n


def test_server_refuses_bad_logit_ids(url):
    edits = [{"feature": "12/4001@6", "mode": "ablate"}]
    for ids, says in (([-1], "logit_ids.0: Input should be greater than or equal to 0"), (list(range(21)), "logit_ids: List should have at most 20"), (["7"], "logit_ids.0: Input should be a valid integer")):  # fmt: skip
        code, data = post(url, "/api/intervene", {"prompt": "Dallas", "edits": edits, "logit_ids": ids})
        assert code == 400 and data["error"].startswith(says), data
