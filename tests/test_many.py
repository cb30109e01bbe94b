"""trace-many, diff and aggregate: inputs, the store's crash safety, backends (in-process, processes, Ray on
loopback), refusals, and the diff/aggregate arithmetic on synthetic graphs."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import llama_only
from extras import require

from mechscope.cli import main
from mechscope.errors import MechscopeError
from mechscope.many.inputs import read_prompts

PROMPTS = ["Dallas is in the state of", "Oakland is in the state of", "The capital of Texas is"]


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _refused(capsys, *argv, match: str) -> None:
    rc, _, err = _run(capsys, *argv)
    assert rc == 2, err
    assert err.strip().count("\n") == 0 and match in err and "Traceback" not in err, err


def _rows(store) -> dict[str, sqlite3.Row]:
    con = sqlite3.connect(store / "catalogue.sqlite")
    con.row_factory = sqlite3.Row
    return {r["id"]: r for r in con.execute("SELECT * FROM prompts")}


# ---- inputs ------------------------------------------------------------------------------------------------
def test_inputs_txt_jsonl_csv(tmp_path):
    t = tmp_path / "p.txt"
    t.write_text("Dallas is in the state of\r\n\n  \nThe capital of Texas is\n")
    items, bad = read_prompts(t)
    assert [(i.id, i.line, i.prompt) for i in items] == [
        ("1", 1, "Dallas is in the state of"),
        ("4", 4, "The capital of Texas is"),
    ] and bad == []
    j = tmp_path / "p.jsonl"
    j.write_text(
        '{"id": "d", "prompt": "Dallas is", "targets": [" Texas"], "group": "tx", "expect": " Texas"}\n'
        "{not json\n"
        '{"prompt": "x", "colour": 1}\n'
        '{"id": "bad/id", "prompt": "x"}\n'
        '{"prompt": "Oakland is", "targets": " California| CA"}\n'
    )
    items, bad = read_prompts(j)
    assert [(i.id, i.targets, i.group, i.expect) for i in items] == [
        ("d", (" Texas",), "tx", " Texas"),
        ("5", (" California", " CA"), "", None),
    ]
    assert [b.split(":")[0] for b in bad] == ["line 2", "line 3", "line 4"] and "colour" in bad[1]
    c = tmp_path / "p.csv"
    c.write_text('id,prompt,group\na,"Dallas, Texas is",g1\nb,Oakland is,g2,extra\n,,\nc,Austin is,g1\n')
    items, bad = read_prompts(c)
    assert [(i.id, i.prompt, i.group) for i in items] == [("a", "Dallas, Texas is", "g1"), ("c", "Austin is", "g1")]
    assert bad and bad[0].startswith("line 3:")


def test_inputs_refusals(tmp_path):
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(MechscopeError, match="no prompts"):
        read_prompts(tmp_path / "e.txt")
    (tmp_path / "d.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(MechscopeError, match=r"duplicate id 'a'.*lines 1 and 2"):
        read_prompts(tmp_path / "d.jsonl")
    (tmp_path / "n.csv").write_text("text\nhello\n")
    with pytest.raises(MechscopeError, match="'prompt' column"):
        read_prompts(tmp_path / "n.csv")
    with pytest.raises(MechscopeError, match="no prompt file"):
        read_prompts(tmp_path / "missing.txt")


# ---- trace-many on a tiny model ----------------------------------------------------------------------------
def _input(tmp_path, extra: str = "") -> object:
    p = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps({"id": f"p{i}", "prompt": t, "group": "state" if "state" in t else "capital"})
        for i, t in enumerate(PROMPTS)
    ]
    p.write_text("\n".join(lines) + "\n" + extra)
    return p


def _base(tiny_dir, tiny_tc_dir) -> list:
    return ["--model", tiny_dir, "--transcoders", tiny_tc_dir, "--max-feature-nodes", "16", "--threads", "1"]


def test_trace_many_records_resumes_and_refuses(capsys, tmp_path, tiny_dir, tiny_tc_dir, monkeypatch):
    # a multi-token target fails that prompt alone (one line in the catalogue); a malformed line is reported
    bad = json.dumps({"id": "multi", "prompt": "Dallas is", "targets": ["Dallas Texas Austin"]}) + "\n{oops\n"
    src = _input(tmp_path, bad)
    store = tmp_path / "store"
    base = ["trace-many", src, "--store", store, *_base(tiny_dir, tiny_tc_dir)]
    # interrupted after the first graph: that one is done, the rest pending, nothing half-written
    from mechscope.many import local

    real = local.InlineBackend.next_result
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(local.InlineBackend, "next_result", flaky)
    rc, _, err = _run(capsys, *base)
    assert rc == 130 and "interrupted" in err
    rows = _rows(store)
    assert [r["status"] for r in rows.values()] == ["done", "pending", "pending", "pending"]
    assert sorted(p.name for p in (store / "graphs").iterdir()) == ["p0.json"]
    monkeypatch.setattr(local.InlineBackend, "next_result", real)

    rc, out, err = _run(capsys, *base, "--json")
    s = json.loads(out)
    assert rc == 1 and s["traced"] == 3 and s["done"] == 2 and s["error"] == 1, (out, err)
    assert s["malformed"] and s["malformed"][0].startswith("line 5:") and "line 5" in err
    rows = _rows(store)
    assert rows["multi"]["status"] == "error" and "\n" not in rows["multi"]["error"] and rows["multi"]["error"]
    for pid in ("p0", "p1", "p2"):
        r = rows[pid]
        g = json.loads((store / "graphs" / f"{pid}.json").read_text())
        assert r["status"] == "done" and r["top_logit"] == g["metadata"]["info"]["top_logits"][0]["token"]
        assert g["metadata"]["prompt"] == r["prompt"] and r["n_nodes"] == len(g["nodes"]) and r["attribution_s"] > 0
    assert not list((store / "graphs").glob(".tmp-*"))

    # a rerun has nothing left to do (the failed prompt is retried only when asked)
    rc, out, _ = _run(capsys, *base, "--json")
    assert json.loads(out)["traced"] == 0 and json.loads(out)["counts"] == {"pending": 0, "done": 3, "error": 1}
    rc, out, _ = _run(capsys, *base, "--json", "--retry-errors")
    assert json.loads(out)["traced"] == 1
    # the same store with other knobs, another set, another prompt under a known id: one line, exit 2
    _refused(capsys, *base[:-2], "--threads", "1", "--max-feature-nodes", "8", match="max_feature_nodes")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "p0", "prompt": "something else"}) + "\n")
    _refused(capsys, "trace-many", other, "--store", store, *_base(tiny_dir, tiny_tc_dir), match="already in store")
    (tmp_path / "empty.txt").write_text("")
    _refused(
        capsys,
        "trace-many",
        tmp_path / "empty.txt",
        "--store",
        tmp_path / "s2",
        *_base(tiny_dir, tiny_tc_dir),
        match="no prompts",
    )
    assert not (tmp_path / "s2").exists()


def test_store_refuses_another_model_and_a_second_writer(tmp_path):
    from mechscope.many.store import ManyStore

    ident = {"model": "a", "set_hash": "1", "attribution": {"max_feature_nodes": 16}}
    st = ManyStore.open(tmp_path, ident)
    with pytest.raises(MechscopeError, match="in use by another"):
        ManyStore.open(tmp_path, ident)
    st.close()
    with pytest.raises(MechscopeError, match="made with set_hash 1, this run has 2"):
        ManyStore.open(tmp_path, {**ident, "set_hash": "2"})
    with pytest.raises(MechscopeError, match="made with model a"):
        ManyStore.open(tmp_path, {**ident, "model": "b"})
    ManyStore.open(tmp_path, ident).close()  # the refusals released the lock


def _graphs(store) -> dict[str, dict]:
    out = {}
    for p in sorted((store / "graphs").glob("*.json")):
        g = json.loads(p.read_text())
        out[p.stem] = (g["nodes"], g["links"], g["metadata"]["prompt_tokens"])
    return out


# backends move prompts and results, not model internals: one family is enough, and each start costs seconds
@llama_only
def test_worker_processes_match_in_process(capsys, tmp_path, tiny_dir, tiny_tc_dir):
    src = _input(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    base = _base(tiny_dir, tiny_tc_dir)[:-2]
    assert _run(capsys, "trace-many", src, "--store", a, *base, "--threads", "1")[0] == 0
    rc, out, err = _run(capsys, "trace-many", src, "--store", b, *base, "--threads", "2", "--workers", "2", "--json")
    s = json.loads(out)
    assert rc == 0 and s["backend"] == "processes" and s["done"] == 3 and s["threads"] == 2, err
    assert _graphs(a) == _graphs(b)
    workers = {r["worker"] for r in _rows(b).values()}
    assert len(workers) >= 1 and all(":" in w for w in workers)


def test_unreachable_ray_address_starts_nothing(capsys, tmp_path, tiny_dir, tiny_tc_dir):
    require("ray")
    src = _input(tmp_path)
    store = tmp_path / "store"
    _refused(
        capsys,
        "trace-many",
        src,
        "--store",
        store,
        *_base(tiny_dir, tiny_tc_dir),
        "--ray",
        "127.0.0.1:9",
        match="cannot reach a Ray cluster at 127.0.0.1:9",
    )
    assert not store.exists()


@llama_only
def test_ray_on_loopback_matches_in_process(capsys, tmp_path, tiny_dir, tiny_tc_dir):
    ray = require("ray")
    src = _input(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    base = _base(tiny_dir, tiny_tc_dir)[:-2]
    assert _run(capsys, "trace-many", src, "--store", a, *base, "--threads", "1")[0] == 0
    rc, out, err = _run(
        capsys, "trace-many", src, "--store", b, *base, "--threads", "2", "--workers", "2", "--ray", "--json"
    )
    assert rc == 0, err
    s = json.loads(out)
    assert s["backend"] == "ray" and s["done"] == 3 and not ray.is_initialized()  # the private cluster is gone
    assert _graphs(a) == _graphs(b)
    # an address check that knows a Ray head (gRPC) from any other service that happens to listen there
    import socket
    import threading

    from mechscope.many.ray_backend import check_reachable, start_ray

    assert start_ray("local", 1, quiet=True)
    try:
        check_reachable(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
    web = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        con, _ = web.accept()
        con.recv(100), con.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"), con.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(MechscopeError, match="not as a Ray cluster"):
        check_reachable(f"127.0.0.1:{web.getsockname()[1]}")
    web.close()


# ---- diff and aggregate on hand-made graphs (no model) ----------------------------------------------------
def _g(feats: dict[str, tuple[float, str]], links: list[tuple[str, str, float]], model="m", scan="s", top=" Texas"):
    """A graph JSON with feature nodes `{L}_{F}_{pos}` → (own influence share, label), tokens A B C and one logit."""
    toks = ["<bos>", "A", "B", "C"]
    nodes = [
        {"node_id": f"E_{i}_{i}", "feature": i, "layer": "E", "ctx_idx": i, "feature_type": "embedding", "clerp": t}
        for i, t in enumerate(toks)
    ]
    cum = 0.0
    for nid, (share, lab) in sorted(feats.items(), key=lambda kv: -kv[1][0]):
        cum += share
        l, f, p = nid.split("_")
        nodes.append(
            {
                "node_id": nid,
                "feature": int(f),
                "layer": l,
                "ctx_idx": int(p),
                "feature_type": "cross layer transcoder",
                "clerp": lab,
                "influence": cum,
                "activation": 1.0,
            }
        )
    nodes.append(
        {
            "node_id": "9_1_3",
            "feature": 1,
            "layer": "9",
            "ctx_idx": 3,
            "feature_type": "logit",
            "clerp": f'Output "{top}" (p=0.900)',
            "token_prob": 0.9,
        }
    )
    return {
        "metadata": {"prompt": "A B C", "prompt_tokens": toks, "scan": scan, "info": {"model": model}},
        "qParams": {"supernodes": []},
        "nodes": nodes,
        "links": [{"source": s, "target": t, "weight": w} for s, t, w in links],
    }


def test_diff_ranks_what_appears_disappears_and_changes(tmp_path, capsys):
    from mechscope.compare.diff import diff_graphs

    a = _g(
        {"1_5_2": (0.30, "Texas"), "2_7_3": (0.10, "say a state"), "3_8_3": (0.05, "")},
        [("E_1_1", "1_5_2", 1.0), ("1_5_2", "9_1_3", 2.0)],
    )
    b = _g(
        {"1_5_1": (0.10, "Texas"), "2_7_3": (0.12, "say a state"), "4_4_3": (0.20, "California")},
        [("E_1_1", "1_5_1", 1.0), ("1_5_1", "9_1_3", 0.5), ("4_4_3", "9_1_3", 3.0)],
    )
    d = diff_graphs(a, b)
    f = d["features"]
    assert d["aligned_by"] == "id"
    assert [(r["key"], r["delta"]) for r in f["appear"]] == [("4/4", 0.2)]
    assert [(r["key"], r["delta"]) for r in f["disappear"]] == [("3/8", -0.05)]
    assert [(r["key"], r["delta"]) for r in f["change"]] == [("1/5", -0.2), ("2/7", 0.02)]  # by |change|
    assert f["appear"][0]["label"] == "California"
    edges = {tuple(r["key"]): r["delta"] for part in d["edges"].values() for r in part}
    assert edges[("1/5", "out ' Texas'")] == -1.5 and edges[("4/4", "out ' Texas'")] == 3.0
    assert ("tok 'A'", "1/5") not in edges  # unchanged edges are not listed
    # with positions the same feature at another position is another key
    from mechscope.compare.config import DiffConfig

    dp = diff_graphs(a, b, DiffConfig(positions=True))
    assert {r["key"] for r in dp["features"]["appear"]} == {"1/5@-3", "4/4@-1"}
    # identical graphs: nothing changes, full overlap
    same = diff_graphs(a, a)
    assert same["summary"]["influence_overlap"] == 1.0 and not any(same["features"].values())
    # another set (scan): aligned by label, so "Texas" under two ids is one row
    c = _g({"7_70_2": (0.25, "Texas"), "8_80_3": (0.1, "")}, [], scan="other")
    dl = diff_graphs(a, c)
    assert dl["aligned_by"] == "label" and [r["key"] for r in dl["features"]["change"]] == ["«Texas»"]
    assert dl["summary"]["unaligned_a"] == 1 and dl["summary"]["unaligned_b"] == 1
    # the CLI: text, --json, and graphs of two models refused in one line
    pa, pb, pm = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    pa.write_text(json.dumps(a)), pb.write_text(json.dumps(b)), pm.write_text(json.dumps(_g({}, [], model="other")))
    rc, out, _ = _run(capsys, "diff", pa, pb)
    assert rc == 0 and "features that appear in B" in out and "4/4" in out
    rc, out, _ = _run(capsys, "diff", pa, pb, "--json")
    assert json.loads(out)["summary"]["appear"] == 1
    _refused(capsys, "diff", pa, pm, match="different models")
    _refused(capsys, "diff", pa, tmp_path / "none.json", match="no graph file")


def _store(tmp_path, graphs: dict[str, tuple[str, str | None, dict]]):
    """A store holding the given graphs: id → (group, expect, graph JSON)."""
    from mechscope.many.inputs import PromptItem
    from mechscope.many.store import ManyStore, Result

    st = ManyStore.open(tmp_path / "store", {"model": "m", "set_hash": "1", "attribution": {}})
    st.add(
        [PromptItem(pid, i + 1, f"prompt {pid}", (), grp, exp) for i, (pid, (grp, exp, _)) in enumerate(graphs.items())]
    )
    for pid, (_, _, g) in graphs.items():
        st.record(Result(pid, graph_json=json.dumps(g), top_logit=g["nodes"][-1]["clerp"].split('"')[1]))
    st.close()
    return tmp_path / "store"


def test_aggregate_frequency_influence_contrast_and_groups(tmp_path, capsys):
    from mechscope.many.aggregate import aggregate_store
    from mechscope.many.config import AggregateConfig

    common = {"1_5_2": (0.30, "Texas"), "2_7_3": (0.10, "say a state")}
    link = [("E_2_2", "1_5_2", 2.0), ("1_5_2", "2_7_3", 1.0), ("2_7_3", "9_1_3", 4.0)]
    graphs = {
        "t1": ("texas", " Texas", _g(common, link)),
        "t2": ("texas", " Texas", _g({**common, "3_3_3": (0.2, "")}, link)),
        "t3": ("texas", " Texas", _g(common, link[:1], top=" the")),
        "c1": (
            "cal",
            " California",
            _g({"4_4_2": (0.5, "California"), "2_7_3": (0.1, "say a state")}, [], top=" California"),
        ),
    }
    store = _store(tmp_path, graphs)
    agg = aggregate_store(store, AggregateConfig(group="texas", min_frequency=0.5))
    assert agg["n_graphs"] == 3 and agg["top_logits"][0] == [" Texas", 2]
    feats = {r["key"]: r for r in agg["features"]}
    assert set(feats) == {"1/5", "2/7"}  # 3/3 is in one graph of three
    assert feats["1/5"]["frequency"] == 1.0 and feats["1/5"]["mean_share"] == pytest.approx(0.3)
    assert feats["1/5"]["label"] == "Texas" and feats["1/5"]["position"] == -2
    edges = {tuple(r["key"]): r for r in agg["edges"]}
    assert edges[("tok@-2", "1/5")]["frequency"] == 1.0 and edges[("tok@-2", "1/5")]["mean_weight"] == pytest.approx(
        2.0
    )
    assert edges[("2/7", "out#1")]["graphs"] == 2 and edges[("2/7", "out#1")]["frequency"] == pytest.approx(
        2 / 3, abs=1e-4
    )
    assert {r["key"] for r in agg["supernodes"]} == {"Texas", "say a state"}
    assert agg["flowchart"] and any("1_5_" in m for b in agg["flowchart"]["boxes"] for m in b["members"])
    # groups: by glob, by id, by answer
    assert aggregate_store(store, AggregateConfig(group="id:t*"))["n_graphs"] == 3
    assert aggregate_store(store, AggregateConfig(group="answer:wrong"))["n_graphs"] == 1
    assert aggregate_store(store, AggregateConfig(group="answer:right"))["n_graphs"] == 3
    c = aggregate_store(store, AggregateConfig(contrast=("texas", "cal")))
    assert c["n_graphs"] == [3, 1] and c["features"][0]["key"] == "4/4" and c["features"][0]["delta"] == 0.5
    # the CLI: text with a consensus flowchart, an SVG, and refusals
    rc, out, _ = _run(capsys, "aggregate", store, "--group", "texas", "--flowchart", tmp_path / "c.svg")
    assert rc == 0 and "recurring features" in out and "consensus flowchart" in out
    assert (tmp_path / "c.svg").read_text().startswith("<svg")
    rc, out, _ = _run(capsys, "aggregate", store, "--contrast", "texas", "cal", "--json")
    assert rc == 0 and json.loads(out)["contrast"] == ["texas", "cal"]
    _refused(capsys, "aggregate", store, "--group", "nope", match="no traced graphs in group 'nope'")
    _refused(capsys, "aggregate", tmp_path, match="not a trace-many store")


def test_tally_memory_stays_bounded(tmp_path):
    import random

    from mechscope.many.aggregate import Tally

    rng = random.Random(0)
    t = Tally(max_keys=1000)
    fixed = [("E_1_1", "1_5_2", 1.0)]
    for i in range(60):  # 60 graphs × 100 random edges: 6,000 distinct edges through a 1,000-entry table
        feats = {f"{l}_{rng.randrange(5000)}_3": (0.001, "") for l in range(1, 9)} | {"1_5_2": (0.5, "")}
        ids = sorted(feats)
        links = fixed + [(rng.choice(ids), rng.choice(ids), 0.1) for _ in range(100)]
        t.add(_g(feats, links))
        assert len(t.edges) <= 1000
    assert t.n == 60 and t.edges_dropped > 0 and t.edge_error >= 1
    row = {tuple(r["key"]): r for r in t.edge_rows()}[("tok@-3", "1/5")]
    assert row["frequency"] == 1.0  # an edge in every graph is never dropped


@llama_only
def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, tiny_dir, tiny_tc_dir):
    """A real kill (SIGKILL, no clean-up at all) mid-run: the next run traces only what was not done."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "p.txt"
    n = 30  # enough that the run cannot finish between two looks at the catalogue
    src.write_text("\n".join(f"{t} {i}" for i in range(n // 3) for t in PROMPTS) + "\n")
    store = tmp_path / "store"
    argv = [sys.executable, "-m", "mechscope", "trace-many", src, "--store", store, *_base(tiny_dir, tiny_tc_dir)]
    argv = [str(a) for a in argv]
    env = {**os.environ, "MECHSCOPE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if sum(r["status"] == "done" for r in _rows(store).values()) >= 1:
                    break
            except sqlite3.Error:  # not made yet, or its tables not yet
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {k: r["status"] for k, r in _rows(store).items()}
    n_done = sum(s == "done" for s in before.values())
    assert 1 <= n_done < n and set(before.values()) <= {"done", "pending"}, before
    done_files = {pid: (store / "graphs" / f"{pid}.json").read_bytes() for pid, s in before.items() if s == "done"}
    out = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=300)
    s = json.loads(out.stdout)
    assert out.returncode == 0 and s["traced"] == n - n_done and s["counts"]["done"] == n, out.stderr
    assert sorted(p.name for p in (store / "graphs").iterdir()) == sorted(f"{i}.json" for i in range(1, n + 1))
    for pid, data in done_files.items():  # what was done before the kill was not traced again
        assert (store / "graphs" / f"{pid}.json").read_bytes() == data


@llama_only
def test_a_killed_worker_process_loses_and_repeats_nothing(tmp_path, tiny_dir, tiny_tc_dir, monkeypatch):
    """SIGKILL one of two worker processes mid-run: the prompts its pool held are traced again in a fresh pool,
    and the run ends with every prompt done, recorded once and written once (no rerun needed)."""
    import multiprocessing as mp
    import os
    import signal
    import threading
    import time
    from collections import Counter

    from mechscope.attribution import AttributionConfig
    from mechscope.many.config import ManyConfig
    from mechscope.many.run import trace_many
    from mechscope.many.store import ManyStore

    n = 24  # enough that the run is still going when the first result is in
    src = tmp_path / "p.txt"
    src.write_text("\n".join(f"{t} {i}" for i in range(n // 3) for t in PROMPTS) + "\n")
    store = tmp_path / "store"
    recorded: Counter = Counter()
    real = ManyStore.record

    def counting(self, res):
        recorded[res.id] += 1
        return real(self, res)

    monkeypatch.setattr(ManyStore, "record", counting)
    out: dict = {}

    def run() -> None:
        try:
            cfg = AttributionConfig(max_feature_nodes=16)
            out["s"] = trace_many(
                src, store, str(tiny_dir), str(tiny_tc_dir), cfg, ManyConfig(workers=2, quiet=True), 2
            )
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 300
    while not recorded and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = mp.active_children()  # the pool's two spawned processes
    assert t.is_alive() and len(workers) == 2 and sum(recorded.values()) < n, "the run ended before the kill"
    before = {r["worker"] for r in _rows(store).values() if r["worker"]}
    os.kill(workers[0].pid, signal.SIGKILL)
    t.join(timeout=600)
    assert not t.is_alive() and "error" not in out, out
    s = out["s"]
    assert (s.traced, s.done, s.error) == (n, n, 0), s
    assert set(recorded) == {str(i) for i in range(1, n + 1)} and set(recorded.values()) == {1}, recorded
    rows = _rows(store)
    assert {r["status"] for r in rows.values()} == {"done"}
    assert sorted(p.name for p in (store / "graphs").iterdir()) == sorted(f"{i}.json" for i in range(1, n + 1))
    after = {r["worker"] for r in rows.values()}
    assert after - before, "no prompt was traced by a fresh pool's process"  # the pool was replaced
    assert not mp.active_children()  # and none of its processes is left behind


def test_a_prompt_that_kills_its_worker_fails_alone(monkeypatch):
    """A prompt whose worker process dies each time it is traced is recorded as failed after two deaths; the
    prompts that shared the broken pools are traced again and never blamed (each comes back once, done)."""
    from workerfakes import init_fake

    from mechscope.many import local
    from mechscope.many.inputs import PromptItem

    monkeypatch.setattr(local, "init_process", init_fake)  # no model: a stand-in that dies on "crash"
    items = [PromptItem(str(i), i, "crash" if i == 3 else f"prompt {i}") for i in range(1, 9)]
    backend = local.ProcessBackend(local.WorkerSpec(model="none"), workers=2)
    backend.start()
    results, queue, inflight = [], list(items), 0
    try:
        while queue or inflight:
            while queue and inflight < backend.slots:
                backend.submit(queue.pop(0))
                inflight += 1
            results.append(backend.next_result())
            inflight -= 1
    finally:
        backend.close()
    by_id = {r.id: r for r in results}
    assert len(results) == len(items) == len(by_id)
    assert "died 2 times" in by_id["3"].error and all(by_id[i.id].error is None for i in items if i.id != "3")


def test_parallel_aggregation_equals_one_pass(tmp_path, monkeypatch):
    from mechscope.many import aggregate as agg

    paths = []
    for i in range(6):
        feats = {"1_5_2": (0.3, "Texas"), f"2_{i % 3}_3": (0.1 * (i + 1), ""), "3_9_1": (0.05, "say")}
        links = [("E_2_2", "1_5_2", 1.0 + i), ("1_5_2", f"2_{i % 3}_3", 0.5), (f"2_{i % 3}_3", "9_1_3", -1.0)]
        p = tmp_path / f"{i}.json"
        p.write_text(json.dumps(_g(feats, links, top=" Texas" if i % 2 else " the")))
        paths.append(p)
    one = agg.tally_files(paths, False, 1000)
    monkeypatch.setattr(agg, "MIN_PER_JOB", 1)
    two = agg.tally_group(paths, False, 1000, jobs=2)
    assert two.n == one.n == 6 and two.top == one.top and two.tokens == one.tokens
    for rows in ("features", "supernodes", "edge_rows"):
        a, b = getattr(one, rows)(), getattr(two, rows)()
        assert [r["key"] for r in a] == [r["key"] for r in b]
        for x, y in zip(a, b):  # numbers close, everything else equal (labels may be merged in another order)
            assert x.keys() == y.keys()
            for k in x:
                if isinstance(x[k], float):
                    assert x[k] == pytest.approx(y[k]), k
                elif k != "label":
                    assert x[k] == y[k], k
