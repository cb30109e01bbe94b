"""The first hour, measured: how soon each step of the README's tour says something, and its longest silence.

Runs the tour's commands (warm model cache) in fresh processes, timestamps every line they print on stdout and
stderr, and prints per command: seconds to the first line, the longest gap between two lines (the targets: first
line ≤ 2 s, no silence > 10 s), and the wall time; plus `mechscope --help` (target ≤ 1 s) and an argument error.
Writes the rows with the machine's load and the commit to `reports/first-hour/bench_first_hour.json`. A benchmark,
not a test: run it on a quiet machine.

    python benchmarks/bench_first_hour.py                 # the tour (~3 min on 2 cores)
    python benchmarks/bench_first_hour.py --repeats 3 --only help trace
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

ROOT = Path(__file__).resolve().parent.parent

TOUR = {
    "help": ["--help"],
    "arg-error": ["trace", "Dallas is in the state of", "--node-threshold", "3"],
    "trace": ["trace", "Dallas is in the state of", "--out", "{tmp}/dallas.json"],
    "feature": ["feature", "13/1744"],
    "search": ["search-features", " Texas", "--by", "logit"],
    "swap": ["swap", "Dallas is in the state of", "--donor", "Oakland is in the state of", "--factor", "2"],
    "swap-locate": [
        "swap",
        "Dallas is in the state of",
        "--donor",
        "Berkeley is in the state of",
        "--locate",
        "--watch",
        " Texas",
        "--watch",
        " California",
    ],
    "study": ["study", "entity-attribute", "--out", "{tmp}/studies"],
}


def run_timed(argv: list[str]) -> dict:
    """Run `mechscope ARGV` and time its lines: first line, longest gap (and the line after which it fell), wall."""
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "mechscope", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
    )
    stamps: list[tuple[float, str]] = []
    assert p.stdout is not None
    for line in p.stdout:
        stamps.append((time.monotonic() - t0, line.rstrip("\n")))
    rc = p.wait()
    wall = time.monotonic() - t0
    times = [0.0] + [t for t, _ in stamps] + [wall]
    gaps = [(b - a, i) for i, (a, b) in enumerate(zip(times, times[1:]))]
    worst, at = max(gaps)
    return {
        "rc": rc,
        "first_line_s": round(stamps[0][0], 2) if stamps else None,
        "longest_silence_s": round(worst, 2),
        "silence_after": stamps[at - 1][1][:120] if at > 0 else "(start)",
        "wall_s": round(wall, 2),
        "lines": len(stamps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(TOUR), default=list(TOUR))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "reports" / "first-hour" / "bench_first_hour.json"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only:
            for r in range(a.repeats):
                argv = [x.format(tmp=tmp) for x in TOUR[name]]
                row = {"step": name, "repeat": r, "argv": argv, "load_1m": round(os.getloadavg()[0], 2)}
                row.update(run_timed(argv))
                rows.append(row)
                print(
                    f"{name:12s} rc {row['rc']}  first line {row['first_line_s']} s  longest silence "
                    f"{row['longest_silence_s']} s  wall {row['wall_s']} s  (load {row['load_1m']})",
                    flush=True,
                )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stamp({"rows": rows}, model="gemma3-270m"), indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
