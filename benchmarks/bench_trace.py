"""Tracing speed and peak memory on fixed prompts (prints numbers; not a test).

    python benchmarks/bench_trace.py --model gemma3-270m --max-feature-nodes 2048
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch

PROMPTS = [
    "Dallas is in the state of",                                   # short
    "Fact: the capital of the state containing Dallas is Austin, and the capital of California is",  # ~16+
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--max-feature-nodes", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from mechscope.attribution import AttributionConfig, attribute
    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders

    t = time.time()
    m = load_model(a.model)
    ts = load_default_transcoders(m)
    load_s = time.time() - t
    results = []
    for prompt in PROMPTS:
        times = []
        for _ in range(a.repeats):
            t = time.time()
            g = attribute(m, ts, prompt, AttributionConfig(max_feature_nodes=a.max_feature_nodes))
            times.append(time.time() - t)
        results.append({"prompt": prompt, "n_tokens": g.meta["n_pos"], "feature_nodes": g.n_feat,
                        "active_features": g.meta["n_active_features"], "best_s": round(min(times), 2),
                        "mean_s": round(sum(times) / len(times), 2), **{k: round(v, 3) for k, v in g.scores().items()}})
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {"model": a.model, "threads": torch.get_num_threads(), "load_s": round(load_s, 1), "peak_rss_gb": round(peak_gb, 2), "runs": results}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"model {a.model}: load {out['load_s']} s, {out['threads']} threads, peak RSS {out['peak_rss_gb']} GB")
        for r in results:
            print(f"  {r['n_tokens']:>3} tokens, {r['feature_nodes']}/{r['active_features']} feature nodes: "
                  f"best {r['best_s']} s, mean {r['mean_s']} s; replacement {r['replacement_score']}, completeness {r['completeness_score']}")


if __name__ == "__main__":
    main()
