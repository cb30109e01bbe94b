"""Tracing speed and peak memory on fixed prompts (prints numbers; not a test). Used by `mechscope bench`
and benchmarks/bench_trace.py.

>>> from mechscope.session import Session
>>> out = bench_trace(Session("gemma3-270m"), max_feature_nodes=512, repeats=1)     # doctest: +SKIP
>>> out["runs"][0]["best_s"]                                                         # doctest: +SKIP
"""

from __future__ import annotations

import resource
import time

import torch

from mechscope.attribution import AttributionConfig
from mechscope.session import Session

PROMPTS = [
    "Dallas is in the state of",  # short
    "Fact: the capital of the state containing Dallas is Austin, and the capital of California is",  # ~16+
]


def bench_trace(
    session: Session,
    max_feature_nodes: int = AttributionConfig().max_feature_nodes,
    repeats: int = 2,
    prompts: list[str] | None = None,
) -> dict:
    """Load the session's model and set (timed), then trace each prompt `repeats` times; best and mean seconds."""
    t = time.time()
    _ = session.transcoders  # loads the model too
    load_s = time.time() - t
    cfg = AttributionConfig(max_feature_nodes=max_feature_nodes)
    results = []
    for prompt in prompts or PROMPTS:
        times = []
        for _ in range(repeats):
            t = time.time()
            g = session.trace(prompt, cfg)
            times.append(time.time() - t)
        results.append(
            {
                "prompt": prompt,
                "n_tokens": g.meta["n_pos"],
                "feature_nodes": g.n_feat,
                "active_features": g.meta["n_active_features"],
                "best_s": round(min(times), 2),
                "mean_s": round(sum(times) / len(times), 2),
                **{k: round(v, 3) for k, v in g.scores().items()},
            }
        )
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "model": session.model_name,
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 1),
        "peak_rss_gb": round(peak_gb, 2),
        "runs": results,
    }


def format_bench(out: dict) -> str:
    lines = [
        f"model {out['model']}: load {out['load_s']} s, {out['threads']} threads, peak RSS {out['peak_rss_gb']} GiB"
    ]
    for r in out["runs"]:
        lines.append(
            f"  {r['n_tokens']:>3} tokens, {r['feature_nodes']}/{r['active_features']} feature nodes: "
            f"best {r['best_s']} s, mean {r['mean_s']} s; replacement {r['replacement_score']}, "
            f"input completeness {r['input_completeness_score']}, circuit-tracer's {r['ct_completeness_score']}"
        )
    return "\n".join(lines)
