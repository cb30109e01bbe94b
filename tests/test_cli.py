"""A smoke test through the CLI for every command (tiny models), and the CLI's one-line refusals."""

from __future__ import annotations

import json
import time

import yaml

from mechscope.cli import build_parser, main
from mechscope.cli._common import COMMANDS

PROMPT = "Dallas is in the state of"
SMOKED = {
    "models",
    "generate",
    "serve",
    "bench",
    "train-transcoders",
    "eval-transcoders",
    "fit-sinks",
    "export-transcoders",
    "trace",
    "index-features",
    "feature",
    "search-features",
    "intervene",
    "swap",
    "study",
    "eval-lens",
    "probe-lens",
    "trace-many",
    "diff",
    "aggregate",
    "attend",
    "build-corpus",
    "fold-dense",
    "sample-text",
}  # eval-lens: tests/test_lens.py::test_cli_runs_and_writes_json; trace-many, diff, aggregate: tests/test_many.py;
# attend: tests/test_attention_qk.py::test_cli_attend_json_and_refusals; build-corpus: tests/test_corpus_build.py;
# probe-lens: tests/test_lens_probes.py; fold-dense: tests/test_training_dense.py


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _refused(capsys, *argv: str, match: str) -> None:
    rc, _, err = _run(capsys, *argv)
    assert rc == 2, err
    assert err.strip().count("\n") == 0 and match in err and "Traceback" not in err, err


def test_every_command_has_a_smoke_test():
    build_parser()
    assert set(COMMANDS) == SMOKED  # a new command needs its smoke test below


def test_help_lists_studies_and_models(capsys):
    rc, out, _ = _run(capsys, "study", "--help")
    assert rc == 0 and "entity-attribute" in out and "addition" in out
    rc, out, _ = _run(capsys, "trace", "--help")
    assert rc == 0 and "gemma3-270m" in out and "smollm2-135m" in out and "(default: 2048)" in out


def test_models_and_generate(capsys, tiny_dir):
    rc, out, _ = _run(capsys, "models", "--json")
    assert rc == 0 and {m["name"] for m in json.loads(out)["models"]} >= {"gemma3-270m", "smollm2-135m"}
    rc, out, _ = _run(capsys, "generate", "Dallas is", "--model", tiny_dir, "--max-new-tokens", "2", "--json")
    assert rc == 0 and len(json.loads(out)["tokens"]) <= 2
    _refused(capsys, "generate", "Dallas is", "--model", tiny_dir, "--max-new-tokens", "0", match="--max-new-tokens")


def test_trace_and_refusals_before_loading(capsys, tiny_dir, tiny_tc_dir, tmp_path):
    base = ["trace", PROMPT, "--model", tiny_dir, "--transcoders", tiny_tc_dir, "--max-feature-nodes", "16"]
    rc, out, _ = _run(
        capsys, *base, "--out", tmp_path / "g.json", "--flowchart", tmp_path / "f.svg", "--validate", "3", "--json"
    )
    res = json.loads(out)
    assert rc == 0 and (tmp_path / "g.json").exists() and (tmp_path / "f.svg").read_text().startswith("<svg")
    assert res["validation"]["n"] == 3 and res["flowchart_svg"] == str(tmp_path / "f.svg")
    _refused(capsys, *base, "--logit-diff", " A", " A", match="two different tokens")
    _refused(capsys, *base, "--validate", "-1", match="--validate")
    _refused(capsys, *base, "--node-threshold", "1.5", match="--node-threshold")
    _refused(capsys, *base, "--no-such-flag", match="unrecognized")
    (tmp_path / "afile").write_text("x")
    _refused(capsys, *base, "--out", tmp_path, match="is a directory")
    _refused(capsys, *base, "--out", tmp_path / "afile" / "g.json", match="is a file")
    _refused(capsys, *base, "--out", "/proc/g.json", match="not writable")
    _refused(capsys, *base, "--flowchart", tmp_path, match=".svg")
    _refused(capsys, *base, "--flowchart", tmp_path / "afile" / "f.svg", match="is a file")
    rc, out, _ = _run(capsys, *base, "--max-memory-gb", "0.000001", "--out", tmp_path / "big.json")
    assert rc == 2 and not (tmp_path / "big.json").exists()


def test_intervene_and_swap(capsys, tiny_dir, tiny_tc_dir, tiny, tiny_tc):
    from mechscope.interventions import active_features

    l, f, _ = active_features(tiny, tiny_tc, tiny.tokenize(PROMPT).ids, 2)[0]
    common = ["--model", tiny_dir, "--transcoders", tiny_tc_dir]
    rc, out, _ = _run(capsys, "intervene", PROMPT, *common, "--ablate", f"{l}/{f}@2", "--generate", "2", "--json")
    assert rc == 0 and json.loads(out)["edits"][0]["feature"] == f"{l}/{f}@2"
    _refused(
        capsys,
        "intervene",
        PROMPT,
        *common,
        "--ablate",
        f"{l}/{f}",
        "--generate",
        str(tiny.max_context),
        match="exceeds the context",
    )
    rc, out, _ = _run(capsys, "swap", PROMPT, *common, "--donor", "Oakland is in the state of", "--json")
    assert rc == 0 and json.loads(out)["injected"]
    rc, out, _ = _run(
        capsys, "swap", PROMPT, *common, "--donor", "Oakland is in the state of", "--locate", "--watch", " is"
    )
    assert rc == 0 and "component" in out
    _refused(capsys, "swap", PROMPT, *common, "--donor", "Oakland", "--locate", match="--watch")


def test_index_feature_search(capsys, tiny_dir, tiny_tc_dir, tmp_path):
    idx = tmp_path / "idx.sqlite"
    rc, out, _ = _run(
        capsys,
        "index-features",
        "--model",
        tiny_dir,
        "--transcoders",
        tiny_tc_dir,
        "--corpus",
        tiny_dir / "corpus.txt",
        "--tokens",
        "512",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--out",
        idx,
        "--json",
    )
    assert rc == 0 and json.loads(out)["tokens"] >= 512 and idx.exists()
    _refused(capsys, "index-features", "--model", tiny_dir, "--tokens", "10", match="--tokens")
    rc, out, _ = _run(capsys, "feature", "0/1", "--model", tiny_dir, "--index", idx, "--json")
    assert rc == 0 and json.loads(out)["id"] == "0/1"
    rc, out, _ = _run(capsys, "search-features", " the", "--model", tiny_dir, "--index", idx, "--by", "token", "--json")
    assert rc == 0 and isinstance(json.loads(out), list)
    rc, out, _ = _run(
        capsys,
        "search-features",
        "the cat sat",
        "--model",
        tiny_dir,
        "--transcoders",
        tiny_tc_dir,
        "--index",
        idx,
        "--by",
        "prompt",
    )
    assert rc == 0 and "features at position" in out
    assert "% of max" not in out or all(
        int(x.split("%")[0].split()[-1]) <= 100 for x in out.splitlines() if "% of max" in x
    )


def test_train_eval_export_fit_sinks(capsys, tiny_dir, tmp_path):
    out = tmp_path / "set"
    corpus = tiny_dir / "corpus.txt"
    rc, o, _ = _run(
        capsys,
        "train-transcoders",
        "--model",
        tiny_dir,
        "--corpus",
        corpus,
        "--tokens",
        "600",
        "--features",
        "32",
        "--k",
        "4",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--skip-init-tokens",
        "200",
        "--out",
        out,
        "--json",
    )
    assert rc == 0 and json.loads(o)["out"] == str(out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "int8"  # like the shipped sets
    _refused(
        capsys, "train-transcoders", "--model", tiny_dir, "--k", "64", "--features", "32", "--out", out, match="--k"
    )
    _refused(capsys, "train-transcoders", "--model", tiny_dir, "--out", "/proc/x", match="not writable")
    rc, o, _ = _run(
        capsys,
        "eval-transcoders",
        "--model",
        tiny_dir,
        "--transcoders",
        out,
        "--corpus",
        corpus,
        "--tokens",
        "64",
        "--layer-tokens",
        "0",
        "--dead-tokens",
        "0",
        "--seq-len",
        "32",
        "--out",
        tmp_path / "e.json",
        "--json",
    )
    assert rc == 0 and json.loads(o)["tokens"] >= 64 and (tmp_path / "e.json").exists()
    rc, o, _ = _run(capsys, "export-transcoders", "--model", tiny_dir, "--transcoders", out, tmp_path / "ct")
    assert rc == 0 and (tmp_path / "ct" / "config.yaml").exists()
    rc, o, _ = _run(
        capsys,
        "fit-sinks",
        "--model",
        tiny_dir,
        "--transcoders",
        out,
        "--out",
        tmp_path / "s",
        "--corpus",
        corpus,
        "--tokens",
        "128",
        "--seq-len",
        "32",
        "--json",
    )
    assert rc == 0 and json.loads(o) == []


def test_bench(capsys, tiny_dir, tiny_tc_dir):
    rc, out, _ = _run(
        capsys,
        "bench",
        "--model",
        tiny_dir,
        "--transcoders",
        tiny_tc_dir,
        "--max-feature-nodes",
        "8",
        "--repeats",
        "1",
        "--json",
    )
    res = json.loads(out)
    assert rc == 0 and len(res["runs"]) == 2 and all(r["best_s"] >= 0 and r["feature_nodes"] <= 8 for r in res["runs"])


def test_study(capsys, tiny_dir, tiny_tc_dir, tmp_path):
    spec = {
        "name": "tiny-cli",
        "title": "Tiny",
        "hypothesis": "h",
        "experiments": [
            {"kind": "trace", "prompt": PROMPT},
            {
                "kind": "swap",
                "prompt": PROMPT,
                "donor": "Oakland is in the state of",
                "expect_top": " Texas",
                "factors": [1],
            },
        ],
    }
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    rc, out, _ = _run(
        capsys,
        "study",
        f,
        "--model",
        tiny_dir,
        "--transcoders",
        tiny_tc_dir,
        "--out",
        tmp_path / "o",
        "--max-feature-nodes",
        "16",
        "--json",
    )
    assert rc == 0 and json.loads(out)[0]["name"] == "tiny-cli"
    res = json.loads((tmp_path / "o" / "tiny-cli" / "results.json").read_text())
    assert not [e for e in res["experiments"] if e["summary"].startswith("could not run")]
    (tmp_path / "empty.yaml").write_text("")
    _refused(capsys, "study", tmp_path / "empty.yaml", "--model", tiny_dir, match="is empty")
    (tmp_path / "afile").write_text("x")
    _refused(capsys, "study", f, "--model", tiny_dir, "--out", tmp_path / "afile", match="is a file")


def test_serve(capsys, tiny_dir, tiny_tc_dir, tmp_path, monkeypatch):
    """serve builds the app for the model (uvicorn.run is replaced, so no port is bound) and answers /api/info."""
    import uvicorn
    from fastapi.testclient import TestClient

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert _run(capsys, "serve", "--help")[0] == 0
    rc, out, _ = _run(
        capsys, "serve", "--model", tiny_dir, "--transcoders", tiny_tc_dir, "--graphs", tmp_path / "g", "--port", "8799"
    )
    assert rc == 0 and seen["port"] == 8799 and "serving" in out
    client = TestClient(seen["app"], base_url="http://127.0.0.1")  # the server answers loopback hosts only
    info = client.get("/api/info").json()
    for _ in range(600):  # the page is up while the model loads behind it
        if not info.get("loading"):
            break
        time.sleep(0.1)
        info = client.get("/api/info").json()
    assert info["n_layers"] == 3, info
    _refused(capsys, "serve", "--model", tiny_dir, "--port", "0", match="--port")


def test_options_come_from_the_config_dataclasses():
    """Spellings kept from the hand-written parser map onto the config fields, with the configs' defaults."""
    from mechscope.cli._build import build
    from mechscope.cli.transcoders import EvalArgs, TrainArgs
    from mechscope.transcoders.evaluate import EvalConfig
    from mechscope.training.train import TrainConfig

    ap = build_parser()
    a = build(TrainArgs, ap.parse_args(["train-transcoders", "--no-skip", "--k", "8", "--features", "64"]))
    assert a.train == TrainConfig(skip=False, k=8, features=64)
    a = build(TrainArgs, ap.parse_args(["train-transcoders"]))
    assert a.train == TrainConfig() and a.train.save_dtype == "int8"
    e = build(EvalArgs, ap.parse_args(["eval-transcoders", "--layer-tokens", "7"]))
    assert e.eval == EvalConfig(ce_layer_tokens=7) and e.eval.dead_tokens == 65536
    from mechscope.cli.trace import TraceArgs

    t = build(TraceArgs, ap.parse_args(["trace", "p", "--target", " A", "--target", " B", "--logit-diff", " A", " B"]))
    assert t.attribution.targets == [" A", " B"] and t.attribution.logit_diff == (" A", " B")
    t2 = build(TraceArgs, ap.parse_args(["trace", "p"]))
    assert t2.attribution.targets == [] and t2.attribution is not t.attribution  # no default shared between runs


def test_sample_text_writes_the_sampled_corpus_and_refuses_bad_options(capsys, tiny_dir, tmp_path):
    out = tmp_path / "heldout.jsonl"
    argv = ["sample-text", "--model", tiny_dir, "--chars", "200", "--max-new-tokens", "8", "--batch-size", "4"]
    rc, stdout, err = _run(capsys, *argv, "--budget-s", "20", "--out", out, "--json")
    assert rc == 0, err
    stats = json.loads(stdout)
    assert stats["config"]["max_new_tokens"] == 8 and out.exists()
    assert sum(1 for _ in out.open()) == stats["documents"]
    _refused(capsys, "sample-text", "--ship", "sampled", match="expected SOURCE=SHARE")
    _refused(capsys, "sample-text", "--temperature", "9", match="temperature must lie in (0, 5]")
    _refused(capsys, "sample-text", "--out", tmp_path / "x.txt", match="--out must end in .jsonl")
