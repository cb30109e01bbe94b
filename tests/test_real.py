"""Checks on the real default model with its shipped transcoders and feature index (skipped when a fresh
checkout lacks them would hide a packaging error, so they fail instead)."""
import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def shipped(gemma):
    from mechscope.transcoders import load_default_transcoders
    return load_default_transcoders(gemma)


def test_shipped_set_fits_and_reconstructs(gemma, shipped):
    assert len(shipped) == gemma.n_layers and shipped.d_model == gemma.d_model
    text = ("The configuration file is read at startup; options given on the command line override it. "
            "Le fichier de configuration est lu au démarrage, et les options de la ligne de commande le remplacent. "
            "Die Konfigurationsdatei wird beim Start gelesen; Optionen auf der Kommandozeile haben Vorrang. "
            "def main():\n    args = parse_args()\n    return run(args)\n")
    ids = gemma.tokenize(text).ids[None]
    cache = gemma.run_with_cache(ids, [f"blocks.{l}.hook_mlp_{k}" for l in range(gemma.n_layers) for k in ("in", "out")], logits=False)
    fvus = []
    for l in range(gemma.n_layers):
        x, y = cache[f"blocks.{l}.hook_mlp_in"][0, 1:], cache[f"blocks.{l}.hook_mlp_out"][0, 1:]
        y_hat = shipped[l](x)
        fvus.append(float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()))
    fvus.sort()
    assert fvus[len(fvus) // 2] < 0.3, fvus   # median layer explains >70% of the MLP output's variance


def test_trace_default_model_cli(tmp_path):
    out = tmp_path / "g.json"
    r = subprocess.run([sys.executable, "-m", "mechscope", "trace", "Dallas is in the state of", "--max-feature-nodes", "256",
                        "--out", str(out), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["top_logits"][0]["token"] == " Texas"
    assert 0 < res["replacement_score"] <= 1 and 0 < res["completeness_score"] <= 1
    from mechscope.attribution import validate_graph_json
    data = json.loads(out.read_text())
    validate_graph_json(data)
    assert any(n["clerp"] for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"), "labels reach the graph"


def test_swap_dallas_to_oakland_moves_texas_toward_california(gemma, shipped):
    """The documented swap (README / entity-attribute study): it does not flip the answer on this model, but it
    must move probability from ' Texas' to ' California'."""
    from mechscope.interventions import swap

    res = swap(gemma, shipped, "Dallas is in the state of", "Oakland is in the state of", factor=1.0, watch=[" Texas", " California"])
    w = {x["token"]: x for x in res["watch"]}
    assert w[" Texas"]["after"] < 0.7 * w[" Texas"]["before"]
    assert w[" California"]["after"] > 3 * w[" California"]["before"]


def test_feature_index_finds_a_language_feature(gemma):
    """A well-known feature kind: a 'French text' feature whose top examples are French.

    (The built-in corpus is documentation and man pages: it holds almost no Texas contexts, so the
    'Texas feature' of the published examples cannot appear in this index.)"""
    from mechscope.features import FeatureIndex
    from mechscope.features.labels import guess_language

    idx = FeatureIndex.for_model("gemma3-270m", gemma.tokenizer)
    hits = idx.search("French text", by="label", limit=20)
    assert hits, "some feature is labelled French text"
    d = idx.feature(hits[0]["layer"], hits[0]["feature"])
    top = [e for e in d["examples"] if e["kind"] == "top"]
    french = sum(guess_language("".join(e["tokens"])) == "French" for e in top)
    assert french >= len(top) / 2, [("".join(e["tokens"])) for e in top]
