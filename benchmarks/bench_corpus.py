"""Corpus building speed: tokens per second of `mechscope build-corpus`, end to end and by part.

For each model: a fresh build of --tokens into a temporary directory (wall time, tokens/s, documents/s), the
model's tokenizer alone on the same text (tokens/s; the share of the build that is tokenising), and a resume
(a build stopped after --stop-parts parts, then continued: the seconds a restart spends before its first new
part, which is the sources' fast-forward). The machine's load (`uptime`) is recorded before and after each row:
the build is single-threaded and shares the CPU with whatever else runs.

    MECHSCOPE_THREADS=1 python benchmarks/bench_corpus.py [--models gemma3-270m smollm2-135m] [--tokens 500000]

Writes reports/corpus/bench_corpus.json (rows, commit, cores, load).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import tempfile
import time
from pathlib import Path
from mechscope.provenance import stamp

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reports" / "corpus" / "bench_corpus.json"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_model(model: str, tokens: int, stop_parts: int) -> dict:
    from mechscope.corpus.build import build_corpus, model_token_counter
    from mechscope.corpus.build_config import CorpusBuildConfig

    row: dict = {"model": model, "tokens_target": tokens, "load_before": _uptime()}
    count = model_token_counter(model)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "full.jsonl.xz"
        t0 = time.monotonic()
        cpu0 = time.process_time()
        stats = build_corpus(
            CorpusBuildConfig("index", model=model, tokens=tokens, out=str(out)), count_tokens=count, progress=False
        )
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        row.update(
            wall_s=round(wall, 1),
            cpu_s=round(cpu, 1),
            tokens=stats["tokens"],
            documents=stats["documents"],
            tokens_per_s=round(stats["tokens"] / wall),
            tokens_per_cpu_s=round(stats["tokens"] / cpu),
            mb_xz=round(out.stat().st_size / 1e6, 2),
        )
        texts = [json.loads(x)["text"] for x in lzma.open(out, "rt", encoding="utf-8")]
        t0 = time.monotonic()
        n = sum(count(t) for t in texts)
        tok_s = time.monotonic() - t0
        row.update(
            tokenizer_only_s=round(tok_s, 2),
            tokenizer_tokens_per_s=round(n / tok_s),
            tokenizer_share=round(tok_s / wall, 3),
        )
        # resume: stop after some parts, then time the restart until it has written its first new part
        cut = Path(d) / "cut.jsonl.xz"
        cfg = dict(model=model, tokens=tokens, out=str(cut))
        build_corpus(CorpusBuildConfig("index", stop_after_parts=stop_parts, **cfg), count_tokens=count, progress=False)
        t0 = time.monotonic()
        build_corpus(
            CorpusBuildConfig("index", resume=True, stop_after_parts=1, **cfg), count_tokens=count, progress=False
        )
        row["resume_to_first_new_part_s"] = round(time.monotonic() - t0, 1)
        build_corpus(CorpusBuildConfig("index", resume=True, **cfg), count_tokens=count, progress=False)
        row["resumed_equals_uninterrupted"] = cut.read_bytes() == out.read_bytes()
    row["load_after"] = _uptime()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"])
    ap.add_argument("--tokens", type=int, default=500_000)
    ap.add_argument("--stop-parts", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    rows = []
    for m in a.models:
        row = bench_model(m, a.tokens, a.stop_parts)
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = {"threads": os.environ.get("MECHSCOPE_THREADS", "")}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stamp({"meta": meta, "rows": rows}), indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
