"""QK attribution speed and memory on gemma3-270m (issue #33): prints numbers; not a test.

One `qk_attribution` (one head, one query, one key) on a 16-token prompt, after a warm-up call, timed `--repeats`
times; prints the median and best seconds (target ≤ 1 s), the exactness of that call, the process's peak RSS
growth over the attribution, and the 1-minute load average (a busy machine slows everything: say so when
reporting). Layers are swept from low to high: a higher layer's backward pass crosses more layers.

    python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --layers 5 9 17 --repeats 5
    python benchmarks/bench_attention.py --trace      # also: a default trace with and without --heads (issue: ≤ +20%)

(qk_attribution runs on one torch thread, as attribute()'s rows do: see mechscope/attribution/qk.py.)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

PROMPT = "The capital of the state containing Dallas is Austin, the capital of Ohio is"  # 16 tokens with BOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9, 17])
    ap.add_argument("--head", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="also time a default trace with and without head loadings")
    a = ap.parse_args()

    import torch

    from mechscope.attribution.qk import qk_attribution
    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders

    m = load_model(a.model)
    ts = load_default_transcoders(m)
    n = m.tokenize(PROMPT).ids.shape[0]
    print(f"{a.model}: {n} tokens, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    qk_attribution(m, ts, PROMPT, a.layers[0], a.head)  # warm-up (first-call allocations, lazy weights)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for layer in a.layers:
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            res = qk_attribution(m, ts, PROMPT, layer, a.head)
            times.append(time.perf_counter() - t0)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"layer {layer:2d} head {a.head} query {res.query} key {res.key}: median {statistics.median(times):.3f} s, "
            f"best {min(times):.3f} s; score {res.score:+.4f}, pairs_total {res.pairs_total:+.4f}, "
            f"rel error {res.rel_error():.1e}; {res.q_vecs.shape[0]}×{res.k_vecs.shape[0]} pairs; "
            f"peak RSS +{rss - rss0:.0f} MiB; load {os.getloadavg()[0]:.2f}"
        )
    if a.trace:
        _trace_heads(m, ts)


def _trace_heads(m, ts) -> None:
    """A default trace without, then with, head loadings: seconds, links, exactness (parts + rest vs weight)."""
    from mechscope.attribution import AttributionConfig, attribute

    for heads in (False, True):
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        g = attribute(m, ts, PROMPT, AttributionConfig(heads=heads))
        el = time.perf_counter() - t0
        links = g.to_json()["links"]
        cross = [lk for lk in links if "heads" in lk]
        top = max(abs(lk["weight"]) for lk in links)
        err = max(
            (abs(sum(w for *_, w in lk["heads"]) + lk.get("heads_rest", 0) - lk["weight"]) for lk in cross), default=0
        )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"trace heads={heads}: {el:.2f} s (loadings {g.meta.get('heads_s', 0)} s); {len(links)} links, "
            f"{len(cross)} with heads; max |parts + rest − weight| / max |weight| {err / top:.1e}; "
            f"peak RSS +{rss - rss0:.0f} MiB; load {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
