"""Many prompts (issue #34): trace-many against back-to-back traces, local processes against Ray, diff and
aggregate speed, aggregate memory. Prints one line per measurement and, with --json, writes them all.

    python benchmarks/bench_many.py trace [--prompts 12] [--rows 512] [--threads 2]     # needs the model
    python benchmarks/bench_many.py diff [--graphs DIR]        # two 2,048-row graphs (a store's, or synthetic)
    python benchmarks/bench_many.py aggregate [--graphs 1000]  # synthetic graphs sized like real ones

trace: every configuration runs in its own process with the same total threads and the same prompts:
  baseline   one process, the model loaded once, attribute → JSON → file, prompt after prompt
  inline     trace-many --workers 1 (the same, plus the store)
  processes  trace-many --workers 2 (threads split between them)
  ray        trace-many --workers 2 --ray (a private cluster on 127.0.0.1)
and reports seconds to start (load models / start the cluster) and to trace, and prompts per second of each.
aggregate: N graph files (distinct graphs remapped from synthetic ones, hard-linked to save disk) in a store;
`mechscope aggregate` runs as a child process; its wall time and the peak RSS of its largest process are printed
for several N, so memory that grows with N shows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mechscope.provenance import stamp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
CITIES = ["Dallas", "Oakland", "Miami", "Chicago", "Seattle", "Boston", "Denver", "Phoenix", "Atlanta", "Reno"]
TEMPLATES = ["{} is in the state of", "The city of {} is located in the state of"]

BASELINE = """
import json, sys, time
from pathlib import Path
t0 = time.monotonic()
from mechscope.attribution.attribute import AttributionConfig, attribute
from mechscope.paths import atomic_write_text
from mechscope.session import Session
from mechscope.threads import apply_threads
apply_threads(int(sys.argv[3]))
s = Session(sys.argv[1]); m, ts = s.model, s.transcoders; labels = s.labels()
t1 = time.monotonic()
cfg = AttributionConfig(max_feature_nodes=int(sys.argv[2]))
out = Path(sys.argv[4]); out.mkdir(parents=True, exist_ok=True)
prompts = [l for l in Path(sys.argv[5]).read_text().splitlines() if l]
for i, p in enumerate(prompts, 1):
    atomic_write_text(out / f"{i}.json", json.dumps(attribute(m, ts, p, cfg).to_json(labels=labels)))
print(json.dumps({"start_s": t1 - t0, "wall_s": time.monotonic() - t0}))
"""


PEAK = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.write(r.stdout.decode() + "\\n" + f"{u.ru_maxrss} {u.ru_utime + u.ru_stime}" + "\\n")
sys.exit(r.returncode)
"""


def load() -> float:
    return os.getloadavg()[0]


def bench_trace(a) -> list[dict]:
    prompts = [t.format(c) for c in CITIES for t in TEMPLATES][: a.prompts]
    tmp = Path(tempfile.mkdtemp(prefix="bench-many-"))
    src = tmp / "prompts.txt"
    src.write_text("\n".join(prompts) + "\n")
    common = ["--model", a.model, "--max-feature-nodes", str(a.rows), "--threads", str(a.threads), "--json"]
    configs = {
        "baseline": None,
        "inline": ["--workers", "1"],
        "processes": ["--workers", "2"],
        "ray": ["--workers", "2", "--ray"],
    }
    rows = []
    for k, name in enumerate(a.configs):  # a name may repeat (A B A B: interleaved runs average out drift)
        t0 = time.monotonic()
        if configs[name] is None:
            cmd = [
                sys.executable,
                "-c",
                BASELINE,
                a.model,
                str(a.rows),
                str(a.threads),
                str(tmp / f"{k}-{name}"),
                str(src),
            ]
        else:
            cmd = [sys.executable, "-m", "mechscope", "trace-many", str(src), "--store", str(tmp / f"{k}-{name}")]
            cmd += common + configs[name]
        la = load()
        out = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if out.returncode not in (0,):
            print(f"{name}: failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
            continue
        s = json.loads(out.stdout.strip().splitlines()[-1])
        start, traced = s["start_s"], s["wall_s"] - s["start_s"]
        row = {
            "config": name,
            "prompts": len(prompts),
            "process_wall_s": round(wall, 2),
            "start_s": round(start, 2),
            "trace_s": round(traced, 2),
            "prompts_per_s": round(len(prompts) / traced, 4),
            "load_avg": round(la, 2),
        }
        rows.append(row)
        print(
            f"{name:<10} start {start:6.1f} s  trace {traced:6.1f} s  {row['prompts_per_s']:.3f} prompts/s  "
            f"(process {wall:.1f} s; load {la:.2f})"
        )
    by: dict[str, dict] = {}
    for r in rows:  # repeated configurations: their summed prompts over their summed seconds
        b = by.setdefault(r["config"], {"n": 0, "trace_s": 0.0, "wall": 0.0})
        b["n"] += r["prompts"]
        b["trace_s"] += r["trace_s"]
        b["wall"] += r["process_wall_s"]
    for b in by.values():
        b["prompts_per_s"] = b["n"] / b["trace_s"]
        b["process_wall_s"] = b["wall"]
    if "baseline" in by and "inline" in by:
        print(
            f"trace-many / back-to-back throughput: {by['inline']['prompts_per_s'] / by['baseline']['prompts_per_s']:.1%}"
        )
    if "processes" in by and "ray" in by:
        ov = by["processes"]["prompts_per_s"] / by["ray"]["prompts_per_s"] - 1
        ov_all = by["ray"]["process_wall_s"] / by["processes"]["process_wall_s"] - 1
        print(f"Ray overhead vs local processes: {ov:+.1%} tracing, {ov_all:+.1%} end to end (cluster start included)")
    return rows


def bench_diff(a) -> list[dict]:
    from mechscope.compare.diff import diff_graphs
    from mechscope.compare.keys import load_graph
    from mechscope.many.render import diff_text

    if a.graphs_dir:
        files = sorted(Path(a.graphs_dir).glob("*.json"))[:2]
    else:
        from graphgen import make_graph

        tmp = Path(tempfile.mkdtemp(prefix="bench-diff-"))
        files = []
        for seed in (1, 2):
            p = tmp / f"{seed}.json"
            p.write_text(json.dumps(make_graph(34000, n_features=430, seed=seed)))
            files.append(p)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        d = diff_graphs(load_graph(files[0]), load_graph(files[1]))
        diff_text(d)
        times.append(time.perf_counter() - t0)
    sizes = [len(load_graph(f)["links"]) for f in files]
    med = sorted(times)[len(times) // 2]
    print(f"diff of two graphs ({sizes[0]:,} and {sizes[1]:,} links), load + diff + text: median {med:.3f} s "
          f"(min {min(times):.3f}; load {load():.2f})")  # fmt: skip
    return [{"what": "diff", "links": sizes, "median_s": round(med, 3), "min_s": round(min(times), 3)}]


def _synthetic_store(root: Path, n: int, distinct: int) -> None:
    """`n` graph files in a store: `distinct` graphs with features remapped at random into 18 × 2,048, linked."""
    from graphgen import make_graph

    from mechscope.many.inputs import PromptItem
    from mechscope.many.store import ManyStore

    st = ManyStore.open(root, {"model": "synthetic", "set_hash": "0", "attribution": {}})
    st.add([PromptItem(str(i), i, f"prompt {i}") for i in range(1, n + 1)])
    base = make_graph(34000, n_features=430, seed=0)
    pool = root / "pool"
    pool.mkdir(exist_ok=True)
    rng = random.Random(0)
    for k in range(distinct):
        remap = {}
        for nd in base["nodes"]:
            if nd["feature_type"] == "cross layer transcoder":
                remap[nd["node_id"]] = f"{nd['layer']}_{rng.randrange(2048)}_{nd['ctx_idx']}"
        g = json.loads(json.dumps(base))
        for nd in g["nodes"]:
            if nd["node_id"] in remap:
                nd["node_id"] = remap[nd["node_id"]]
                nd["feature"] = int(nd["node_id"].split("_")[1])
        for link in g["links"]:
            link["source"] = remap.get(link["source"], link["source"])
            link["target"] = remap.get(link["target"], link["target"])
        (pool / f"{k}.json").write_text(json.dumps(g))
    for i in range(1, n + 1):
        dst = st.graph_path(str(i))
        if not dst.exists():
            os.link(pool / f"{(i - 1) % distinct}.json", dst)
    st.con.execute("UPDATE prompts SET status='done'")
    st.close()


def bench_aggregate(a) -> list[dict]:
    rows = []
    for n in a.graphs:
        root = Path(tempfile.mkdtemp(prefix=f"bench-agg-{n}-"))
        _synthetic_store(root, n, min(n, a.distinct))
        t0 = time.monotonic()
        la = load()
        cmd = [sys.executable, "-m", "mechscope", "aggregate", str(root), "--json", "--jobs", str(a.jobs)]
        # a fresh parent per run, so the peak RSS is this run's (its own process and its reading processes)
        out = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True)
        wall = time.monotonic() - t0
        if out.returncode:
            print(f"aggregate of {n}: failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        *body, peak_line = out.stdout.strip().splitlines()
        peak, cpu = int(peak_line.split()[0]), float(peak_line.split()[1])
        agg = json.loads("\n".join(body))
        row = {"what": "aggregate", "graphs": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 1),
               "peak_rss_mb": round(peak / 1024, 1),
               "jobs": a.jobs, "features": len(agg["features"]), "load_avg": round(la, 2)}  # fmt: skip
        rows.append(row)
        note = ""
        print(f"aggregate of {n:>5} graphs: {wall:6.1f} s ({cpu:.0f} CPU s in all its processes), peak RSS of its largest process {peak / 1024:.0f} MB{note} "
              f"(jobs {a.jobs}; load {la:.2f})")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["trace", "diff", "aggregate"])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--rows", type=int, default=512, help="--max-feature-nodes of every trace")
    ap.add_argument("--threads", type=int, default=2, help="total threads of every configuration")
    ap.add_argument("--configs", nargs="+", default=["baseline", "inline", "processes", "ray"])
    ap.add_argument("--graphs-dir", help="diff: two graphs from this folder (default: synthetic)")
    ap.add_argument("--graphs", type=int, nargs="+", default=[100, 300, 1000], help="aggregate: store sizes")
    ap.add_argument("--distinct", type=int, default=100, help="aggregate: distinct graphs among the files")
    ap.add_argument("--jobs", type=int, default=0, help="aggregate --jobs (0: automatic)")
    ap.add_argument("--json", help="also write the measurements here")
    a = ap.parse_args(argv)
    rows = {"trace": bench_trace, "diff": bench_diff, "aggregate": bench_aggregate}[a.what](a)
    if a.json:
        Path(a.json).write_text(json.dumps(stamp({"what": a.what, "rows": rows}, model=a.model), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
