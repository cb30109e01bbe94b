"""Checks on the real default model with its shipped transcoders and feature index (skipped when a fresh
checkout lacks them would hide a packaging error, so they fail instead)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real
# SmolLM2 set v3 (fine-tuned on entity-rich text, stop 19): median FVU 0.32 on MIXED_TEXT, 0.37 on ENTITY_TEXT
# (v2, documentation only: 0.22 and 0.59): the bar holds both kinds of text to "explains well over half"
SMOL_MEDIAN_FVU_BAR = 0.4
# Scores of a traced graph against the committed numbers: the lens record beside each shipped set (lens.json, written
# by `mechscope eval-lens` with that set: "Dallas is in the state of", 256 feature rows, unpruned graph). Measured
# within 1e-7 of them on 2026-12-07 (2 CPU threads); the tolerance leaves room for float32 sums on other CPUs and
# thread counts. The candidate sets in reports/lens-pilots/ differ from each other by 0.015 or more on this prompt.
SCORE_TOL = 1e-3


def lens_scores(model: str, prompt_id: str = "dallas") -> dict:
    """The committed lens row of one prompt for a model's shipped set, and the node budget it was traced with."""
    import mechscope

    lens = json.loads((Path(mechscope.__file__).parent / "artifacts" / "transcoders" / model / "lens.json").read_text())
    row = next(p for p in lens["prompts"] if p["id"] == prompt_id)
    return {**row, "max_feature_nodes": lens["config"]["max_feature_nodes"]}


@pytest.fixture(scope="module")
def shipped(gemma):
    from mechscope.transcoders import load_default_transcoders

    return load_default_transcoders(gemma)


MIXED_TEXT = (
    "The configuration file is read at startup; options given on the command line override it. "
    "Le fichier de configuration est lu au démarrage, et les options de la ligne de commande le remplacent. "
    "Die Konfigurationsdatei wird beim Start gelesen; Optionen auf der Kommandozeile haben Vorrang. "
    "def main():\n    args = parse_args()\n    return run(args)\n"
)
ENTITY_TEXT = (
    "Dallas is a city in Texas, and Austin is its capital. Michael Jordan played basketball for the Chicago Bulls. "
    "Paris is the capital of France; Berlin is the capital of Germany. The Eiffel Tower stands in Paris, "
    "and Serena Williams won many tennis titles. The opposite of hot is cold, and 12 plus 35 is 47."
)


def _layer_fvus(model, ts, text: str = MIXED_TEXT) -> list[float]:
    ids = model.tokenize(text).ids[None]
    cache = model.run_with_cache(
        ids, [f"blocks.{l}.hook_mlp_{k}" for l in range(model.n_layers) for k in ("in", "out")], logits=False
    )
    fvus = []
    for l in range(model.n_layers):
        x, y = cache[f"blocks.{l}.hook_mlp_in"][0, 1:], cache[f"blocks.{l}.hook_mlp_out"][0, 1:]
        y_hat = ts[l](x).detach()
        fvus.append(float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()))
    return sorted(fvus)


def test_shipped_set_fits_and_reconstructs(gemma, shipped):
    assert len(shipped) == gemma.n_layers and shipped.d_model == gemma.d_model
    fvus = _layer_fvus(gemma, shipped)
    assert fvus[len(fvus) // 2] < 0.3, fvus  # median layer explains >70% of the MLP output's variance


def test_smollm2_shipped_set_reconstructs_and_traces():
    from mechscope.attribution import AttributionConfig, attribute
    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders

    smol = load_model("smollm2-135m")
    ts = load_default_transcoders(smol)
    assert len(ts) == smol.n_layers == 30
    for text in (MIXED_TEXT, ENTITY_TEXT):
        fvus = _layer_fvus(smol, ts, text)
        assert fvus[len(fvus) // 2] < SMOL_MEDIAN_FVU_BAR, (text[:20], fvus)
    # position 0 is an attention sink: layers 11 and 28 write a massive output there, which the sink latents reproduce
    ids = smol.tokenize("The opposite of small is").ids[None]
    cache = smol.run_with_cache(
        ids, [f"blocks.{l}.hook_mlp_{k}" for l in (11, 28) for k in ("in", "out")], logits=False
    )
    for l in (11, 28):
        x, y = cache[f"blocks.{l}.hook_mlp_in"][0], cache[f"blocks.{l}.hook_mlp_out"][0]
        assert y[0].norm() > 50 * y[1:].norm(dim=-1).median()
        rel = float((y[0] - ts[l](x[:1])[0].detach()).pow(2).sum() / y[0].pow(2).sum())
        assert rel < 0.05, (l, rel)
    assert {r["layer"] for r in ts.meta["sink_latents"]["layers"] if r["fitted"]} == {11, 28}
    want = lens_scores("smollm2-135m")
    g = attribute(smol, ts, want["prompt"], AttributionConfig(max_feature_nodes=want["max_feature_nodes"]))
    assert g.n_feat == want["n_feature_nodes"] == 256
    assert g.scores()["replacement_score"] == pytest.approx(want["replacement"], abs=SCORE_TOL)
    assert g.scores()["input_completeness_score"] == pytest.approx(want["completeness"], abs=SCORE_TOL)


def test_trace_default_model_cli(tmp_path):
    out = tmp_path / "g.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechscope",
            "trace",
            "Dallas is in the state of",
            "--max-feature-nodes",
            "256",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["top_logits"][0]["token"] == " Texas"
    want = lens_scores("gemma3-270m")
    assert want["prompt"] == "Dallas is in the state of" and want["max_feature_nodes"] == 256  # as traced above
    assert res["replacement_score"] == pytest.approx(want["replacement"], abs=SCORE_TOL)
    assert res["input_completeness_score"] == pytest.approx(want["completeness"], abs=SCORE_TOL)
    from mechscope.attribution import validate_graph_json

    data = json.loads(out.read_text())
    validate_graph_json(data)
    assert any(n["clerp"] for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"), (
        "labels reach the graph"
    )
    # the automatic flowchart: named feature boxes between the prompt's tokens and ' Texas'
    fc = res["flowchart"]
    kinds = [b["kind"] for b in fc["boxes"]]
    assert kinds.count("features") >= 3 and "input" in kinds
    outs = [b for b in fc["boxes"] if b["kind"] == "output"]
    assert "Texas" in outs[0]["name"]
    names = [b["name"] for b in fc["boxes"]]
    assert len(set(names)) == len(names)
    assert any(a["dst"] == outs[0]["id"] for a in fc["arrows"])


def test_swap_dallas_to_oakland_features_pull_away_from_texas(gemma, shipped):
    """The documented features-only swap (README / entity-attribute study) does not flip the answer on this model
    (the state lives in the skip term, see locate), but at ×2 it must take most of the probability off ' Texas'."""
    from mechscope.interventions import swap

    res = swap(
        gemma,
        shipped,
        "Dallas is in the state of",
        "Oakland is in the state of",
        factor=2.0,
        watch=[" Texas", " California"],
    )
    w = {x["token"]: x for x in res["watch"]}
    assert w[" Texas"]["after"] < 0.5 * w[" Texas"]["before"]


def test_swap_dallas_to_berkeley_with_skip_says_california(gemma, shipped):
    """The entity lives in the skip term (see locate): transplanting features and skip from the city to the end flips it."""
    from mechscope.interventions import swap

    res = swap(
        gemma,
        shipped,
        "Dallas is in the state of",
        "Berkeley is in the state of",
        factor=1.0,
        span="rest",
        with_skip=True,
    )
    assert res["before"][0]["token"] == " Texas"
    assert res["after"][0]["token"] == " California"


def test_smollm2_swap_dallas_to_oakland_says_california():
    """On SmolLM2 the documented swap works: Oakland's features (×4) at the city token make ' California' the answer."""
    from mechscope.interventions import swap
    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders

    smol = load_model("smollm2-135m")
    res = swap(
        smol, load_default_transcoders(smol), "Dallas is in the state of", "Oakland is in the state of", factor=4.0
    )
    assert res["before"][0]["token"] == " Texas"
    assert res["after"][0]["token"] == " California"


def test_locate_dallas_texas_lives_outside_the_features(gemma, shipped):
    """Why the Dallas swap fails: patching the MLP outputs flips Texas → California, the features' part does not."""
    from mechscope.interventions import locate_concept

    p = locate_concept(
        gemma, shipped, "Dallas is in the state of", "Berkeley is in the state of", [" Texas", " California"]
    )["probs"]
    assert p["mlp_out"][1] > p["mlp_out"][0]  # the MLPs carry the state
    assert p["features"][0] > p["features"][1]  # the features alone do not


def test_feature_index_finds_a_language_feature(gemma):
    """A well-known feature kind: a 'French text' feature whose top examples are French.

    (The shipped index reads the shipped held-out text: WordNet glosses and entity sentences, and text sampled
    from the model in five languages. It mentions Texas four times, so the published examples' 'Texas feature'
    cannot show in its top examples.)"""
    from mechscope.features import FeatureIndex
    from mechscope.features.labels import guess_language

    idx = FeatureIndex.for_model("gemma3-270m", gemma.tokenizer)
    hits = idx.search("French text", by="label", limit=20)
    assert hits, "some feature is labelled French text"
    d = idx.feature(hits[0]["layer"], hits[0]["feature"])
    top = [e for e in d["examples"] if e["kind"] == "top"]
    french = sum(guess_language("".join(e["tokens"])) == "French" for e in top)
    assert french >= len(top) / 2, [("".join(e["tokens"])) for e in top]


def test_validation_as_published_on_dallas(gemma, shipped):
    """The graph's total effects predict ablations in the frozen local replacement model (measured: Spearman 0.92
    over 20 features, 0.998 with features' on/off frozen too); the old prediction without 1/activation gave 0.01."""
    from mechscope.attribution import AttributionConfig, attribute
    from mechscope.interventions import validate_graph

    g = attribute(gemma, shipped, "Dallas is in the state of", AttributionConfig())
    v = validate_graph(gemma, shipped, g, top_n=12)
    assert v["spearman_linear"] > 0.97 and v["spearman"] > 0.7, v
    assert v["spearman"] > v["spearman_unfrozen"] - 0.05  # the frozen check is the tighter one


def test_swap_of_names_of_different_lengths_moves_every_token(gemma, shipped):
    from mechscope.interventions import swap

    r, d = "Tiger Woods played professional", "Serena Williams played professional"
    res = swap(gemma, shipped, r, d)
    rs, ds = gemma.tokenize(r).strs, gemma.tokenize(d).strs
    n_r, n_d = len(rs) - 2, len(ds) - 2  # minus "played professional"
    assert {p for p, _ in res["pairs"]} == set(range(1, n_r))
    assert {q for _, q in res["pairs"] if q is not None} == set(range(1, n_d))
