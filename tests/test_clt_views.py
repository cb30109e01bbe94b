"""CLTs through the front ends: feature index (logit effects through all decoders), probe, Session, web API,
and the `trace` CLI on a saved CLT directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from extras import require
import torch

from mechscope.transcoders import save_transcoders
from test_clt import PROMPT, random_clt


@pytest.fixture(scope="module")
def clt_dir(tiny, tmp_path_factory):
    return save_transcoders(random_clt(tiny, features=24, k=4), tmp_path_factory.mktemp("cltv") / "clt", "float32")


@pytest.fixture(scope="module")
def clt_index(tiny, tiny_dir, clt_dir, tmp_path_factory):
    from mechscope.features import IndexConfig, build_index
    from mechscope.transcoders import load_transcoders

    path = tmp_path_factory.mktemp("cltidx") / "idx.sqlite"
    cfg = IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=512, seq_len=32, batch_size=4)
    build_index(tiny, load_transcoders(clt_dir), path, cfg, progress=False)
    return path


def test_index_logit_effects_read_every_decoder(tiny, clt_dir, clt_index):
    from mechscope.features import FeatureIndex
    from mechscope.features.logits import relative_logits
    from mechscope.transcoders import load_transcoders

    clt = load_transcoders(clt_dir)
    idx = FeatureIndex(clt_index)
    summed = sum(clt.W_dec[0][:, j] for j in range(clt.W_dec[0].shape[1])).detach()  # all of layer 0's decoders
    decode = lambda i: tiny.tokenizer.decode([int(i)])
    tops, _ = relative_logits(tiny, summed, 3, decode)
    own_only, _ = relative_logits(tiny, clt.W_dec[0][:, 0].detach(), 3, decode)
    differs = 0
    for f in range(clt.d_transcoder):
        try:
            d = idx.feature(0, f)
        except Exception:
            continue  # never active on the indexed text
        want = [t for t, _ in tops[f]]
        assert [t for t, _ in d["top_logits"]][:3] == want[:3]
        differs += [t for t, _ in own_only[f]] != want
    assert differs > 0  # the later layers' decoders change the answer: the test can tell the two apart


def test_session_probe_and_web_api(tiny, tiny_dir, clt_dir, clt_index, tmp_path):
    require("fastapi")
    from fastapi.testclient import TestClient

    from mechscope.server.app import Microscope, create_app

    scope = Microscope(str(tiny_dir), tmp_path / "graphs", transcoders=str(clt_dir), index=str(clt_index))
    assert scope.session.transcoders.kind == "clt"
    probe = scope.session.probe("Dallas is in the state of Texas", token=" Texas")
    assert probe["features"]
    app = create_app(scope)
    client = TestClient(app, base_url="http://127.0.0.1", headers={"X-Mechscope-Token": app.state.token})
    assert client.get("/api/info").json()["transcoder_kind"] == "clt"
    f0 = client.get("/api/features/0/0").json()
    assert f0["write_layers"] == [0, tiny.n_layers - 1]
    assert client.get(f"/api/features/{tiny.n_layers - 1}/0").json()["write_layers"] == [tiny.n_layers - 1] * 2
    g = scope.session.trace(PROMPT)
    assert g.meta["transcoder_kind"] == "clt"
    v = scope.session.validate(g, top_n=4)
    assert v["n"] > 0


def test_cli_trace_with_a_clt_directory(tiny_dir, clt_dir, tmp_path):
    out = tmp_path / "g.json"
    cmd = [sys.executable, "-m", "mechscope", "trace", PROMPT, "--model", str(tiny_dir)]
    cmd += ["--transcoders", str(clt_dir), "--out", str(out), "--max-feature-nodes", "20", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["metadata"]["info"]["transcoder_kind"] == "clt"
    # a CLT made for another model: one line, exit 2
    other = tmp_path / "bad"
    cfg = json.loads((clt_dir / "config.json").read_text())
    import shutil

    shutil.copytree(clt_dir, other)
    (other / "config.json").write_text(json.dumps({**cfg, "d_model": cfg["d_model"] * 2}))
    cmd[cmd.index(str(clt_dir))] = str(other)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "d_model" in r.stderr, r.stderr


def test_cli_export_and_import_a_clt(tiny, tiny_dir, tmp_path, capsys):
    from mechscope.cli import main
    from mechscope.transcoders import load_transcoders

    c = random_clt(tiny, activation="jumprelu", max_write_layers=2)
    src = save_transcoders(c, tmp_path / "ours", "float32")
    assert main(["export-transcoders", str(tmp_path / "ct"), "--model", str(tiny_dir), "--transcoders", str(src)]) == 0
    assert f"config.yaml + {2 * tiny.n_layers} safetensors" in capsys.readouterr().out
    assert (tmp_path / "ct" / "W_dec_0.safetensors").exists()
    args = ["export-transcoders", str(tmp_path / "back"), "--model", str(tiny_dir)]
    assert main(args + ["--from-circuit-tracer", str(tmp_path / "ct"), "--dtype", "float32"]) == 0
    back = load_transcoders(tmp_path / "back")
    assert back.kind == "clt" and back.cfg.max_write_layers == 2
    torch.testing.assert_close(back.W_enc, c.W_enc.detach())
    fit = ["fit-sinks", "--model", str(tiny_dir), "--transcoders", str(src), "--out", str(tmp_path / "s")]
    assert main(fit) == 2
    assert "cross-layer transcoder" in capsys.readouterr().err


def test_every_study_kind_runs_with_a_clt(tiny, clt_dir, tmp_path):
    import yaml

    from mechscope.studies.runner import Context, load_study, run_study
    from mechscope.transcoders import load_transcoders

    ctx = Context(tiny, load_transcoders(clt_dir), None, max_feature_nodes=32)
    a, b = "Dallas is in the state of", "Oakland is in the state of"
    exps = [
        {"kind": "trace", "prompt": a},
        {"kind": "swap", "prompt": a, "donor": b, "expect_top": " Texas", "factors": [1]},
        {"kind": "locate", "prompt": a, "donor": b, "watch": [" is", " of"]},
        {
            "kind": "steer",
            "prompt": "Dallas is in",
            "source": "Oakland is in",
            "against": "Dallas is in",
            "factor": 1.0,
        },
        {"kind": "compare", "prompts": ["Dallas is", "Dallas is in the state"], "token": " of"},
        {"kind": "overlap", "groups": [["The cat", "Le chat"]], "baseline": ["The cat", "One two"]},
        {"kind": "operand_grid", "template": "{a}+{b}=", "range": [0, 9], "step": 3},
    ]
    f = tmp_path / "clt.yaml"
    f.write_text(yaml.safe_dump({"name": "clt", "title": "CLT", "hypothesis": "h", "experiments": exps}))
    res = run_study(load_study(str(f)), ctx, tmp_path / "out")
    failed = [(e["kind"], e["summary"]) for e in res["experiments"] if e["summary"].startswith("could not run")]
    assert not failed, failed
