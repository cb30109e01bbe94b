"""Make this folder's fixture once: a graph computed by circuit-tracer itself, which
tests/test_circuit_tracer_graph.py compares with mechscope's edge by edge.

    python tests/data/circuit_tracer/make_fixture.py --ct-python ~/ctvenv/bin/python

circuit-tracer 0.5.0 pins transformers < 5 (mechscope needs 5), so it runs in its own environment, which shares
this one's torch:

    python -m venv --system-site-packages ~/ctvenv && ~/ctvenv/bin/pip install transformers==4.57.3 \
        nnsight==0.6.3 cloudpickle==3.1.1 circuit-tracer==0.5.0   # 0.5.0 imports what nnsight 0.7 removed

What it writes here (JSON and safetensors only):
  model/             the tiny Gemma 3 test model (tests/conftest.py `make_tiny`: 2 layers, d_model 32, random
                     weights, a BPE tokenizer with BOS), saved by transformers 5;
  ct-set/            a transcoder set trained on it by mechscope (batchtopk: saved as JumpReLU with calibrated
                     thresholds, which circuit-tracer's loader reads), in circuit-tracer's layout
                     (`export_circuit_tracer`);
  graph.safetensors  circuit-tracer's `attribute` on PROMPT with every active feature given a row (NNSight backend,
                     the model directory read by transformers 4): the adjacency (rows: targets, columns: sources;
                     nodes in its order: selected features, errors by layer then position, tokens, logits), the
                     active features (layer, position, feature), the selected ones, their activations, the input
                     tokens, the logit targets and their probabilities, and the model's last-position logits;
  ct_side.json       versions, node counts and circuit-tracer's graph scores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "The capital of Texas is Austin. Dallas is in"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct-python", required=True, help="an interpreter with circuit-tracer 0.5.0 (see above)")
    ap.add_argument("--out", default=str(HERE))
    a = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))  # tests/, for conftest.make_tiny
    from conftest import make_tiny

    from mechscope.models import load_model
    from mechscope.training.train import TrainConfig, train_transcoders
    from mechscope.transcoders import export_circuit_tracer, load_transcoders

    out = Path(a.out)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model_dir = make_tiny(tmp / "model", "gemma3", n_layers=2, d_model=32, seed=0)
        shutil.move(model_dir / "corpus.txt", tmp / "corpus.txt")
        model = load_model(str(model_dir))
        cfg = TrainConfig(
            model=str(model_dir),
            corpus=str(tmp / "corpus.txt"),
            tokens=4000,
            features=64,
            k=4,
            activation="batchtopk",
            seq_len=32,
            batch_size=4,
            skip_init_tokens=400,
            out=str(tmp / "set"),
            save_dtype="float32",
        )
        train_transcoders(cfg, model=model, progress=False)
        ts = load_transcoders(tmp / "set")
        for sub in ("model", "ct-set"):
            shutil.rmtree(out / sub, ignore_errors=True)
        shutil.copytree(model_dir, out / "model")
        # transformers 5 names its own tokenizer class, which transformers 4 does not know; both read this one
        tok_cfg = json.loads((out / "model" / "tokenizer_config.json").read_text())
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        (out / "model" / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1) + "\n")
        export_circuit_tracer(ts, out / "ct-set", model_name="mechscope-tiny-gemma3")
        ids = model.tokenize(PROMPT).ids.tolist()
        r = subprocess.run(
            [a.ct_python, str(HERE / "ct_side.py"), str(out / "model"), str(out / "ct-set"), str(model.n_layers)]
            + [json.dumps(ids), str(out)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise SystemExit(f"circuit-tracer's side failed ({r.returncode}):\n{r.stderr[-3000:]}")
        meta = json.loads((out / "ct_side.json").read_text())
        meta["prompt"] = PROMPT
        meta["input_ids"] = ids
        (out / "ct_side.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
