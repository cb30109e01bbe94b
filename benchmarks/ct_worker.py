"""circuit-tracer's side of bench_circuit_tracer.py; run by that script with an interpreter that has circuit-tracer.

Loads the model once (TransformerLens backend, from mechscope's converted model directory: nothing is fetched) and
a transcoder set exported to circuit-tracer's layout, then runs `circuit_tracer.attribute` for each case read as
JSON from argv and prints one JSON line per case: attribution seconds, the process's peak RSS so far, the graph's
size. Imports nothing from mechscope (circuit-tracer pins transformers < 5, mechscope needs 5).

    ENV/bin/python benchmarks/ct_worker.py MODEL_DIR HF_NAME CT_DIR N_LAYERS THREADS '[{"prompt": ..., "rows": 2048}]'
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    model_dir, hf_name, ct_dir, n_layers, threads, cases = sys.argv[1:7]
    import torch

    torch.set_num_threads(int(threads))
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = time.perf_counter()
    paths = {layer: f"{ct_dir}/layer_{layer}.safetensors" for layer in range(int(n_layers))}
    cpu = torch.device("cpu")
    ts = load_transcoder_set(
        paths, scan="mechscope-export", feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out", device=cpu
    )
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = ReplacementModel.from_pretrained_and_transcoders(
        hf_name, ts, backend="transformerlens", device=cpu, hf_model=hf, tokenizer=tok
    )
    print(json.dumps({"load_s": round(time.perf_counter() - t, 2)}), flush=True)
    for case in json.loads(cases):
        t = time.perf_counter()
        g = attribute(case["prompt"], model, max_feature_nodes=case["rows"])
        print(
            json.dumps(
                {
                    **case,
                    "attribution_s": round(time.perf_counter() - t, 2),
                    "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                    "n_tokens": int(len(g.input_tokens)),
                    "feature_nodes": int(len(g.selected_features)),
                    "nodes": int(g.adjacency_matrix.shape[0]),
                    "load": round(os.getloadavg()[0], 2),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
