"""Transcoder training throughput and peak memory (prints numbers; not a test).

    python benchmarks/bench_train.py --model gemma3-270m --tokens 20000 [--device cuda] [--auxk]
    python benchmarks/bench_train.py --model gemma3-270m --tokens 16256 --cache-gb 0.25 --cache-epochs 4 --compare
    python benchmarks/bench_train.py --tiny --tokens 20000 --cache-gb 0.001 --cache-epochs 4 --compare --json

Runs a short training (all layers, default features/k) on the built-in corpus (or --corpus) and reports
tokens/s measured after the least-squares initialisation (training tokens, replays included, and the distinct
tokens the model produced per second), and the process's peak RSS (and GPU peak memory). `--compare` runs the
same training without the cache first, on the same loaded model. `--tiny` trains on a random 3-layer model made
on the spot (tests/conftest.py's), so the trainer's own cost shows without the model's. The JSON carries the
commit and the load average before and after each run: on a shared machine, compare only runs side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from mechscope.provenance import stamp


def _run(a, model, corpus: str, device: str, cache_gb: float, epochs: int) -> dict:
    from mechscope.training.train import TrainConfig, train_transcoders

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(
            model=a.model,
            corpus=corpus,
            tokens=a.tokens,
            features=a.features,
            k=a.k,
            out=f"{d}/set",
            device=device,
            skip_init_tokens=a.skip_init_tokens,
            checkpoint_every=0,
            dead_after_tokens=1 if a.auxk else TrainConfig.dead_after_tokens,
            cache_gb=cache_gb,
            cache_epochs=epochs,
        )
        s = train_transcoders(cfg, model=model, progress=False)
    distinct_per_s = s["distinct_tokens"] / max(s["elapsed_s"], 1e-9)
    return {
        "cache_gb": cache_gb,
        "cache_epochs": epochs,
        "tokens": s["tokens_trained"],
        "distinct_tokens": s["distinct_tokens"],
        "elapsed_s": s["elapsed_s"],
        "tokens_per_s": s["tokens_per_s"],
        "distinct_tokens_per_s": round(distinct_per_s, 1),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def _tiny_model(tmp: str) -> tuple[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import make_tiny

    with contextlib.redirect_stdout(sys.stderr):  # stdout stays the result (one JSON line with --json)
        path = make_tiny(Path(tmp) / "tiny", "llama")
    return str(path), str(path / "corpus.txt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--tiny", action="store_true", help="a random 3-layer model made on the spot (its own corpus)")
    ap.add_argument("--corpus", default="builtin")
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--skip-init-tokens", type=int, default=4096)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--cache-gb", type=float, default=0.0)
    ap.add_argument("--cache-epochs", type=int, default=1)
    ap.add_argument("--compare", action="store_true", help="also run without the cache, first, on the same model")
    ap.add_argument(
        "--auxk",
        action="store_true",
        help="count every latent silent for one step as dead, so the AuxK loss runs on every step "
        "(the cost a run with many dead latents pays)",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from mechscope.models import load_model
    from mechscope.models.loading import resolve_device

    device = resolve_device(a.device).type
    tmp = tempfile.TemporaryDirectory()
    corpus = a.corpus
    if a.tiny:
        a.model, corpus = _tiny_model(tmp.name)
    t = time.time()
    model = load_model(a.model, device=device)
    load_s = time.time() - t
    runs = []
    if a.compare and a.cache_gb > 0:
        runs.append(_run(a, model, corpus, device, 0.0, 1))
    runs.append(_run(a, model, corpus, device, a.cache_gb, a.cache_epochs))
    out = {
        "model": "tiny (random, 3 layers, d 48)" if a.tiny else a.model,
        "device": device,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "features": a.features,
        "k": a.k,
        "auxk": a.auxk,
        "load_s": round(load_s, 1),
        "runs": runs,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if device == "cuda":
        out["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if a.json:
        print(json.dumps(stamp(out)))
        return
    for r in runs:
        cache = f"cache {r['cache_gb']} GiB × {r['cache_epochs']}" if r["cache_gb"] else "no cache"
        print(
            f"{out['model']} on {device} ({out['threads']} threads{', AuxK every step' if a.auxk else ''}, {cache}): "
            f"{r['tokens_per_s']} tokens/s over {r['tokens']} tokens ({r['distinct_tokens_per_s']} distinct/s), "
            f"load {r['load_before']} -> {r['load_after']}"
        )
    print(
        f"commit {out['commit']}, peak RSS {out['peak_rss_gb']} GB"
        + (f", GPU peak {out['gpu_peak_gb']} GB" if "gpu_peak_gb" in out else "")
    )


if __name__ == "__main__":
    main()
