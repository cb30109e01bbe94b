"""mechscope against circuit-tracer, side by side (issue #22's "20× circuit-tracer"): prints numbers; not a test.

Same model (mechscope's converted gemma3-270m directory, which circuit-tracer's TransformerLens backend loads as
google/gemma-3-270m), same transcoders (the shipped set exported to circuit-tracer's layout), same prompts and
feature-row budgets, the same thread count, one after the other on an otherwise idle machine. For each case it
prints attribution seconds (circuit-tracer: `attribute()`; mechscope: the graph's own elapsed_s, forward passes
included in both), each process's peak RSS, the selected feature count and the 1-minute load average, then the
ratio. circuit-tracer loads once per thread setting (~60 s); mechscope runs `trace` in a fresh process per case,
as bench_busy.py does.

circuit-tracer pins transformers < 5, so it lives in its own environment, which shares this one's torch:

    python -m venv --system-site-packages ~/ctenv && ~/ctenv/bin/pip install transformers==4.57.3 circuit-tracer==0.5.0
    python benchmarks/bench_circuit_tracer.py --ct-python ~/ctenv/bin/python --json reports/speed/bench_ct.json

The graphs are not compared here (their conventions differ until aligned, see docs); only the work is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_busy import PROMPTS, trace_once
from mechscope.provenance import stamp

HERE = Path(__file__).resolve().parent


def export_set(model: str, out: Path) -> int:
    """The model's default set in circuit-tracer's layout; returns the layer count."""
    from mechscope.models.loading import ensure_converted
    from mechscope.transcoders.registry import find_transcoders
    from mechscope.transcoders.storage import export_circuit_tracer, load_transcoders

    ensure_converted(model)  # circuit-tracer's side loads the converted model directory
    ts = load_transcoders(find_transcoders(model, None))  # as `mechscope export-transcoders` does: no model load
    export_circuit_tracer(ts, out, model_name=model)
    return len(ts)


def run_ct(ct_python: str, model_dir: Path, hf_name: str, ct_dir: Path, n_layers: int, threads: int, cases) -> list:
    args = [ct_python, str(HERE / "ct_worker.py"), str(model_dir), hf_name, str(ct_dir), str(n_layers), str(threads)]
    p = subprocess.run([*args, json.dumps(cases)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"circuit-tracer worker failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    print(f"circuit-tracer, {threads} thread(s): model and transcoders loaded in {lines[0]['load_s']} s", flush=True)
    return lines[1:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct-python", required=True, help="an interpreter with circuit-tracer installed (see above)")
    ap.add_argument("--model", default="gemma3-270m", choices=["gemma3-270m"])
    ap.add_argument("--hf-name", default="google/gemma-3-270m", help="the model's name in TransformerLens")
    ap.add_argument("--tokens", type=int, nargs="+", default=[7, 16], choices=sorted(PROMPTS))
    ap.add_argument("--rows", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2, help="mechscope runs per case (circuit-tracer: 1)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    if not Path(a.ct_python).exists():
        raise SystemExit(f"--ct-python {a.ct_python}: no such interpreter")
    from mechscope.models.loading import converted_dir

    results = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        n_layers = export_set(a.model, tmp / "ct-set")
        (tmp / "graphs").mkdir()
        trace_once(a.model, PROMPTS[7], 64, 1, tmp / "graphs")  # warm the page cache
        cases = [{"prompt": PROMPTS[n], "rows": r} for n in a.tokens for r in a.rows]
        for th in a.threads:
            ct = run_ct(a.ct_python, converted_dir(a.model), a.hf_name, tmp / "ct-set", n_layers, th, cases)
            for case, c in zip(cases, ct, strict=True):
                ms = [trace_once(a.model, case["prompt"], case["rows"], th, tmp / "graphs") for _ in range(a.repeats)]
                best = min(x["attribution_s"] for x in ms)
                row = {"threads": th, "rows": case["rows"], "tokens": c["n_tokens"], "circuit_tracer": c}
                row |= {"mechscope": ms, "speedup": round(c["attribution_s"] / best, 1)}
                results.append(row)
                print(
                    f"{th} thread(s) {c['n_tokens']:>3} tokens {case['rows']:>5} rows: circuit-tracer "
                    f"{c['attribution_s']:.1f} s ({c['nodes']} nodes, peak {c['peak_gb']:.2f} GB, "
                    f"load {c['load']:.2f}); mechscope "
                    + ", ".join(
                        f"{x['attribution_s']:.2f} s ({x['feature_nodes']} nodes, peak {x['peak_gb']:.2f} GB, "
                        f"load {x['load']:.2f})"
                        for x in ms
                    )
                    + f"; {row['speedup']}× faster",
                    flush=True,
                )
    if a.json:
        Path(a.json).write_text(json.dumps(stamp({"results": results}, model=a.model), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
