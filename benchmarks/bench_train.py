"""Transcoder training throughput and peak memory (prints numbers; not a test).

    python benchmarks/bench_train.py --model gemma3-270m --tokens 20000 [--device cuda] [--auxk]

Runs a short training (all layers, default features/k) on the built-in corpus (or --corpus) and reports
tokens/s measured after the least-squares initialisation, and the process's peak RSS (and GPU peak memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--corpus", default="builtin")
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
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
    from mechscope.training.train import TrainConfig, train_transcoders

    device = resolve_device(a.device).type
    t = time.time()
    model = load_model(a.model, device=device)
    load_s = time.time() - t
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(
            model=a.model,
            corpus=a.corpus,
            tokens=a.tokens,
            features=a.features,
            k=a.k,
            out=f"{d}/set",
            device=device,
            skip_init_tokens=4096,
            checkpoint_every=0,
            dead_after_tokens=1 if a.auxk else TrainConfig.dead_after_tokens,
        )
        summary = train_transcoders(cfg, model=model, progress=False)
    out = {
        "model": a.model,
        "device": device,
        "threads": torch.get_num_threads(),
        "features": a.features,
        "k": a.k,
        "auxk": a.auxk,
        "load_s": round(load_s, 1),
        "tokens": summary["tokens_trained"],
        "tokens_per_s": summary["tokens_per_s"],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if device == "cuda":
        out["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(
        json.dumps(out)
        if a.json
        else f"{a.model} on {device} ({out['threads']} threads{', AuxK every step' if a.auxk else ''}): {out['tokens_per_s']} tokens/s over {out['tokens']} tokens, "
        f"peak RSS {out['peak_rss_gb']} GB" + (f", GPU peak {out['gpu_peak_gb']} GB" if "gpu_peak_gb" in out else "")
    )


if __name__ == "__main__":
    main()
