"""Attention speed and memory on gemma3-270m: QK attribution and head loadings. Prints numbers and writes JSON;
not a test.

1. QK attribution (one head, one query, one key) on a 16-token prompt, after a warm-up call, `--repeats` times per
   layer (a higher layer's backward passes cross more layers): median and best seconds (target ≤ 1 s), exactness,
   peak memory growth during the call.
2. With `--trace`: a default trace without and with head loadings (`trace --heads`), alternated `--repeats` times
   in this one process, so both see the same machine: the median of the per-pair ratios of wall time and of CPU
   time (target: loadings add ≤ 20%), the loadings' own seconds, exactness (Σ parts + heads_rest vs the link's
   weight) and each run's peak memory growth over its start (target: ≤ 0.5 GB more than a plain trace).

The 1-minute load average is recorded with every number: on a shared machine, compare ratios, not seconds.

    python benchmarks/bench_attention.py [--layers 3 9 17] [--repeats 3] [--trace] [--json reports/attention/bench_attention.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path
from mechscope.provenance import stamp

PROMPT = "The capital of the state containing Dallas is Austin, the capital of Ohio is"  # 16 tokens with BOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9, 17])
    ap.add_argument("--head", type=int, default=0)
    ap.add_argument("--key", type=int, default=None, help="key position (default: the most attended after BOS)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="also time a default trace with and without head loadings")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    a = ap.parse_args()

    import torch

    from mechscope.attribution.qk import qk_attribution
    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders

    m = load_model(a.model)
    ts = load_default_transcoders(m)
    n = m.tokenize(PROMPT).ids.shape[0]
    out: dict = {
        "model": a.model,
        "prompt": PROMPT,
        "tokens": n,
        "threads": torch.get_num_threads(),
    }
    print(f"{a.model}: {n} tokens, torch threads {out['threads']}, load {_load():.2f}")
    qk_attribution(m, ts, PROMPT, a.layers[0], a.head)  # warm-up (first-call allocations, lazy weights)
    out["qk"] = []
    for layer in a.layers:
        times, peaks = [], []
        for _ in range(a.repeats):
            with PeakRSS() as peak:
                t0 = time.perf_counter()
                res = qk_attribution(m, ts, PROMPT, layer, a.head, key=a.key)
                times.append(time.perf_counter() - t0)
            peaks.append(peak.mib)
        row = {
            "layer": layer, "head": a.head, "query": res.query, "key": res.key, "median_s": round(statistics.median(times), 3),
            "best_s": round(min(times), 3), "rel_error": res.rel_error(), "pairs": [res.q_vecs.shape[0], res.k_vecs.shape[0]],
            "peak_mib": round(max(peaks)), "load": _load(),
        }  # fmt: skip
        out["qk"].append(row)
        print(
            f"QK layer {layer:2d} head {a.head} query {res.query} key {res.key}: median {row['median_s']:.3f} s, "
            f"best {row['best_s']:.3f} s; rel error {row['rel_error']:.1e}; {row['pairs'][0]}×{row['pairs'][1]} "
            f"pairs; peak +{row['peak_mib']} MiB; load {row['load']:.2f}"
        )
    if a.trace:
        out["trace"] = trace_heads(m, ts, a.repeats)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(stamp(out, model=a.model), indent=1) + "\n")
        print(f"wrote {a.json}")


def trace_heads(m, ts, repeats: int) -> dict:
    """A default trace without, then with, head loadings, alternated: seconds, CPU seconds, peak memory growth,
    the loadings' own seconds and exactness (Σ parts + heads_rest vs the weight, over the largest link weight)."""
    from mechscope.attribution import AttributionConfig, attribute

    attribute(m, ts, PROMPT, AttributionConfig(max_feature_nodes=256, heads=True))  # warm-up
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(repeats):
        for heads in (False, True):
            with PeakRSS() as peak:
                t0, c0 = time.perf_counter(), time.process_time()
                g = attribute(m, ts, PROMPT, AttributionConfig(heads=heads))
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs[heads].append(
                {"s": round(wall, 3), "cpu_s": round(cpu, 3), "heads_s": g.meta.get("heads_s", 0.0),
                 "peak_mib": round(peak.mib), "load": _load()}
            )  # fmt: skip
            print(f"trace heads={heads}: {wall:.2f} s (CPU {cpu:.2f} s, loadings {g.meta.get('heads_s', 0)} s), "
                  f"peak +{peak.mib:.0f} MiB, load {_load():.2f}")  # fmt: skip
    links = g.to_json()["links"]
    cross = [lk for lk in links if "heads" in lk]
    top = max(abs(lk["weight"]) for lk in links)
    err = max(
        (abs(sum(w for *_, w in lk["heads"]) + lk.get("heads_rest", 0) - lk["weight"]) for lk in cross), default=0
    )
    pairs = list(zip(runs[False], runs[True]))
    res = {
        "runs": {"plain": runs[False], "heads": runs[True]},
        "median_wall_ratio": round(statistics.median(h["s"] / p["s"] for p, h in pairs), 3),
        "median_cpu_ratio": round(statistics.median(h["cpu_s"] / p["cpu_s"] for p, h in pairs), 3),
        "median_extra_peak_mib": round(statistics.median(h["peak_mib"] - p["peak_mib"] for p, h in pairs)),
        "links": len(links), "cross_links": len(cross), "max_error_over_max_weight": err / top,
    }  # fmt: skip
    print(
        f"trace --heads / trace: wall ×{res['median_wall_ratio']}, CPU ×{res['median_cpu_ratio']} (median of "
        f"{repeats} alternated pairs); extra peak {res['median_extra_peak_mib']} MiB; {len(cross)} of {len(links)} "
        f"links with heads; max |parts + rest − weight| / max |weight| {res['max_error_over_max_weight']:.1e}"
    )
    return res


class PeakRSS:
    """Peak resident memory growth over the enclosed block (MiB), sampled every 5 ms from /proc/self/statm."""

    def __init__(self) -> None:
        self.mib = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self._start = self._peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.mib = (max(self._peak, self._rss()) - self._start) / 2**20


def _load() -> float:
    return round(os.getloadavg()[0], 2)


if __name__ == "__main__":
    main()
