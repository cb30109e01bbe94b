"""circuit-tracer's side of make_fixture.py, run by it with an interpreter that has circuit-tracer 0.5.0.

Imports nothing from mechscope (circuit-tracer pins transformers < 5, mechscope needs 5). Loads the tiny model
directory with circuit-tracer's NNSight backend and the exported set with its own loader, runs `attribute` on the
given token ids (every active feature gets a row) and writes what it returned: the adjacency and its node
bookkeeping to graph.safetensors, the scalars to a JSON file.

    CT_PYTHON ct_side.py MODEL_DIR CT_SET_DIR N_LAYERS '[2, 101, ...]' OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    model_dir, ct_dir, n_layers, ids_json, out = sys.argv[1:6]
    import torch
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from safetensors.torch import save_file

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    paths = {layer: f"{ct_dir}/layer_{layer}.safetensors" for layer in range(int(n_layers))}
    ts = load_transcoder_set(
        paths,
        scan="mechscope-fixture",
        feature_input_hook="mlp.hook_in",
        feature_output_hook="hook_mlp_out",
        device=cpu,
    )
    model = ReplacementModel.from_pretrained_and_transcoders(model_dir, ts, backend="nnsight", device=cpu)
    ids = torch.tensor(json.loads(ids_json))
    g = attribute(ids, model, max_feature_nodes=None, batch_size=64)
    from transformers import AutoModelForCausalLM

    with torch.no_grad():  # the same directory read by transformers 4: the logits mechscope must reproduce
        logits = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)(ids[None]).logits[0, -1]
    replacement, completeness = compute_graph_scores(g)
    tensors = {
        "adjacency": g.adjacency_matrix.float().contiguous(),
        "active_features": g.active_features.long().contiguous(),
        "selected_features": g.selected_features.long().contiguous(),
        "activation_values": g.activation_values.float().contiguous(),
        "input_tokens": g.input_tokens.long().contiguous(),
        "logit_tokens": torch.tensor([int(t.vocab_idx) for t in g.logit_targets]),
        "logit_probabilities": g.logit_probabilities.float().contiguous(),
        "last_logits": logits.float().contiguous(),
    }
    save_file(tensors, f"{out}/graph.safetensors")
    meta = {
        "circuit_tracer": version("circuit-tracer"),
        "transformers": version("transformers"),
        "nnsight": version("nnsight"),
        "torch": torch.__version__,
        "backend": "nnsight",
        "n_pos": int(g.n_pos),
        "n_layers": int(n_layers),
        "n_selected_features": int(len(g.selected_features)),
        "n_logits": len(g.logit_targets),
        "ct_replacement_score": replacement,
        "ct_completeness_score": completeness,
    }
    with open(f"{out}/ct_side.json", "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
