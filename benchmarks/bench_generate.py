"""Steer and generate with and without the KV cache (issue #37 part 6): prints numbers and writes JSON; not a test.

`mechscope intervene PROMPT --set L/F=V --generate 8` on gemma3-270m, the model and transcoders loaded, timed
two ways in one process, alternated (old, new, old, new, ...) and repeated, median per thread count:

* old: the path before the cache — `intervene` without generation, then the whole sequence re-run with the
  edits for every generated token, unedited and edited (`old_generate`, the loop as it was);
* new: `intervene(..., generate=8)`: one batched prompt pass (unedited and edited rows) that fills the cache,
  then one position per token for both rows.

Both must give the same texts. The 1-minute load average is recorded beside every run (the seconds swing
several-fold beside other busy programs; the ratio, measured side by side, much less).

    python benchmarks/bench_generate.py [--threads 1 2] [--repeats 3] [--json reports/speed/bench_generate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from mechscope.provenance import stamp

PROMPT = "Dallas is in the state of"
DONOR = "Oakland is in the state of"  # the steered feature: the donor's top feature at LAYER, last position
LAYER = 9
FACTOR = 3.0


def old_generate(model, ts, ids, edits, n):
    """The generation loop before issue #37 (verbatim but for the name): everything recomputed per token."""
    import torch

    from mechscope.cancel import checkpoint
    from mechscope.interventions import run_with_edits

    cur = ids.clone()
    for _ in range(n):
        checkpoint()
        logits = run_with_edits(model, ts, cur, edits)
        nxt = int(logits[-1].argmax())
        cur = torch.cat([cur, torch.tensor([nxt])])
        if nxt == model.tokenizer.eos_token_id:
            break
    return model.tokenizer.decode(cur[ids.shape[0] :].tolist())


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="reports/speed/bench_generate.json")
    a = ap.parse_args(argv)

    import mechscope  # noqa: F401  (before torch: idle OpenMP threads sleep, see mechscope.threads)
    import torch

    from mechscope.interventions import Edit, FeatureRef, active_features, check_edits, intervene
    from mechscope.session import Session

    s = Session(a.model)
    model, ts = s.model, s.transcoders
    donor = model.tokenize(DONOR).ids
    l, f, act = next(x for x in active_features(model, ts, donor, donor.shape[0] - 1) if x[0] == LAYER)
    edits = [Edit(FeatureRef(l, f), "set", FACTOR * act)]  # every position: it also runs at each new token
    ids = model.tokenize(PROMPT).ids

    def old() -> tuple[str, str]:
        intervene(model, ts, PROMPT, edits)
        checked = check_edits(model, ts, edits, ids.shape[0])
        return old_generate(model, ts, ids, [], a.tokens), old_generate(model, ts, ids, checked, a.tokens)

    def new() -> tuple[str, str]:
        res = intervene(model, ts, PROMPT, edits, generate=a.tokens)
        return res["generation_before"], res["generation_after"]

    intervene(model, ts, PROMPT, edits, generate=2)  # one-off costs (first forward, page cache) out of the numbers
    rows = []
    for threads in a.threads:
        torch.set_num_threads(threads)
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        texts = {}
        for _ in range(a.repeats):
            for name, fn in (("old", old), ("new", new)):
                before = load()
                t = time.perf_counter()
                texts[name] = fn()
                runs[name].append({"s": round(time.perf_counter() - t, 3), "load_before": before, "load_after": load()})
                print(f"threads {threads} {name}: {runs[name][-1]}", flush=True)
        if texts["old"] != texts["new"]:
            raise SystemExit(f"the cached generation differs from the recompute: {texts}")
        med = {k: statistics.median(r["s"] for r in v) for k, v in runs.items()}
        rows.append(
            {
                "threads": threads,
                "old_s": round(med["old"], 2),
                "new_s": round(med["new"], 2),
                "speedup": round(med["old"] / med["new"], 1),
                "generation_before": texts["new"][0],
                "generation_after": texts["new"][1],
                "runs": runs,
            }
        )
        print(f"threads {threads}: old {med['old']:.2f} s, new {med['new']:.2f} s ({med['old'] / med['new']:.1f}x)")
    out = {
        "what": f"intervene --set {l}/{f}={FACTOR * act:.3g} (every position) --generate {a.tokens}, model loaded",
        "model": a.model,
        "prompt": PROMPT,
        "tokens": a.tokens,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_1min_end": load(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "results": rows,
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(stamp(out, model=a.model), indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
