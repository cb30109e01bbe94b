"""Tracing speed on a quiet and on a busy machine (issue #22): prints numbers; not a test.

For each prompt length (7, 16, 32 tokens on gemma3-270m) and feature-row budget (512, 2,048, all active
features), runs `mechscope trace` end to end in a fresh process (interpreter start, imports, model and transcoder
load, attribution, JSON writing: what a user waits for with a warm model cache) and prints
  attribution seconds (the graph's own elapsed_s), wall seconds end to end, the process's peak RSS,
and the 1-minute load average beside every number. Then it starts a competing CPU-bound process itself and
measures again: condition `busy` is a 2-thread PyTorch matmul loop with OpenMP's default spin-waiting (a program
that takes the whole 2-core machine), `busy1` the same loop on one thread (one CPU-bound program: a build, a
script, a browser tab). `--threads` takes several values, so thread settings are compared in one run. Run it on an
otherwise idle machine:

    python benchmarks/bench_busy.py                     # the whole table (~15 min on 2 cores)
    python benchmarks/bench_busy.py --tokens 7 --rows 512 --repeats 3 --threads 1 2 --conditions quiet busy1 busy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from mechscope.provenance import stamp

PROMPTS = {  # token counts on gemma3-270m, BOS included
    7: "Dallas is in the state of",
    16: "The capital of the state containing Dallas is Austin, the capital of Ohio is",
    32: "In 1905 Albert Einstein, who was born in the German city of Ulm, published four papers; "
    "the most famous introduced the theory of special",
}
ALL_ROWS = 1_000_000  # more than any prompt's active features: every feature gets a row
COMPETITOR_THREADS = {"quiet": 0, "busy1": 1, "busy": 2}  # condition -> threads of the competing process

# The child: run the CLI, then report on stderr's last line its peak RSS and its peak private (anonymous) memory,
# sampled every 10 ms. RSS also counts the memory-mapped model and transcoder files (~1.1 GiB for gemma3-270m):
# clean file pages, shared with the page cache and with any other process reading the same files.
CHILD = (
    "import json, resource, sys, threading, time\n"
    "anon = [0]\n"
    "def sample():\n"
    "    while True:\n"
    "        try:\n"
    "            lines = open('/proc/self/status').readlines()\n"
    "        except OSError:\n"
    "            return  # not Linux: private_peak_gb stays 0\n"
    "        for line in lines:\n"
    "            if line.startswith('RssAnon'):\n"
    "                anon[0] = max(anon[0], int(line.split()[1]))\n"
    "        time.sleep(0.01)\n"
    "threading.Thread(target=sample, daemon=True).start()\n"
    "from mechscope.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20\n"
    "print(json.dumps({'peak_gb': peak, 'private_peak_gb': anon[0] / 2**20}), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)
COMPETITOR = (  # {threads} is filled in per condition
    "import torch\n"
    "torch.set_num_threads({threads})\n"
    "a = torch.randn(512, 512)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a.T / 512)\n"
)


def trace_once(model: str, prompt: str, rows: int, threads: int, tmp: Path) -> dict:
    out_file = tmp / f"g{len(list(tmp.iterdir()))}.json"  # a new file each run
    args = ["trace", prompt, "--model", model, "--max-feature-nodes", str(rows), "--json", "--out", str(out_file)]
    if threads:
        args += ["--threads", str(threads)]
    t = time.time()
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.time() - t
    if p.returncode != 0:
        raise SystemExit(f"trace failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    mem = json.loads(p.stderr.strip().splitlines()[-1])
    return {
        "attribution_s": out["elapsed_s"],
        "wall_s": round(wall, 2),
        "peak_gb": round(mem["peak_gb"], 2),  # GiB, as ru_maxrss counts it (mapped files included)
        "private_peak_gb": round(mem["private_peak_gb"], 2),  # GiB of anonymous memory
        "load": round(os.getloadavg()[0], 2),
        "n_tokens": len(out["prompt_tokens"]),
        "feature_nodes": out["n_nodes_full"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--tokens", type=int, nargs="+", default=sorted(PROMPTS), choices=sorted(PROMPTS))
    ap.add_argument(
        "--rows", nargs="+", default=["512", "2048", "all"], help="feature-row budgets ('all': every feature)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--threads", type=int, nargs="+", default=[0], help="--threads for mechscope (0: its default); several compare"
    )
    ap.add_argument("--conditions", nargs="+", default=["quiet", "busy"], choices=sorted(COMPETITOR_THREADS))
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    rows = [ALL_ROWS if r == "all" else int(r) for r in a.rows]
    results = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        trace_once(a.model, PROMPTS[7], 64, a.threads[0], tmp)  # warm the model cache and the page cache
        for cond in a.conditions:
            comp = None
            if COMPETITOR_THREADS[cond]:
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                code = COMPETITOR.format(threads=COMPETITOR_THREADS[cond])
                comp = subprocess.Popen([sys.executable, "-c", code], env=env)
                time.sleep(5)
            try:
                for n in a.tokens:
                    for r in rows:
                        for th in a.threads:  # thread settings side by side, under the same competitor
                            runs = [trace_once(a.model, PROMPTS[n], r, th, tmp) for _ in range(a.repeats)]
                            row = {
                                "condition": cond,
                                "competitor_threads": COMPETITOR_THREADS[cond],
                                "threads": th,
                                "tokens": runs[0]["n_tokens"],
                                "rows": "all" if r == ALL_ROWS else r,
                                "runs": runs,
                            }
                            results.append(row)
                            print(
                                f"{cond:5s} threads {th} {row['tokens']:>3} tokens {str(row['rows']):>5} rows "
                                f"({runs[0]['feature_nodes']} nodes): "
                                + "; ".join(
                                    f"attribution {x['attribution_s']:.2f} s, wall {x['wall_s']:.2f} s, "
                                    f"peak {x['peak_gb']:.2f} GiB (private {x['private_peak_gb']:.2f}), "
                                    f"load {x['load']:.2f}"
                                    for x in runs
                                ),
                                flush=True,
                            )
            finally:
                if comp:
                    comp.kill()
                    comp.wait()
    if a.json:
        Path(a.json).write_text(json.dumps(stamp({"threads": a.threads, "results": results}, model=a.model), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
