"""The page's trace with the model already loaded: from the click (POST /api/trace) to the graph's JSON in hand.

    python benchmarks/bench_page_trace.py [--model gemma3-270m] [--repeats 3] [--threads 0]

Starts the app in-process with the real model (loaded once, as `mechscope serve` does), then for a 7- and a 16-token
prompt at the page's node budget (the "interactive" preset) times: the trace job (attribution, pruning, labels,
writing the graph file), fetching the graph as the page does (GET /api/graphs/NAME, gzip), and both together, with
the 1-minute load average beside each. Run it on a quiet machine; numbers swing 3-8x beside other busy programs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = {
    7: "Dallas is in the state of",
    16: "The capital of the state containing Dallas is Austin, and the capital of France is",
}


def _finish(c, job: dict) -> dict:
    """Poll a submitted job until it leaves the queue; its final view."""
    while job["status"] in ("queued", "running"):
        time.sleep(0.02)
        job = c.get(f"/api/jobs/{job['id']}").json()
    return job


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()

    from fastapi.testclient import TestClient

    from mechscope.server.app import create_app
    from mechscope.server.scope import Microscope
    from mechscope.threads import apply_threads

    apply_threads(a.threads)
    t0 = time.time()
    scope = Microscope(a.model, Path(tempfile.mkdtemp()) / "graphs")
    print(f"model, transcoders and index loaded in {time.time() - t0:.1f} s (not counted below)")
    app = create_app(scope)
    with TestClient(app, base_url="http://127.0.0.1", headers={"X-Mechscope-Token": app.state.token}) as c:
        # first forward pays one-off costs; wait for it, or the first timed job queues behind it
        _finish(c, c.post("/api/trace", json={"prompt": "Warm up"}).json())
        for want, prompt in PROMPTS.items():
            n = scope.model.tokenize(prompt).ids.shape[0]
            job_s, fetch_s, total_s = [], [], []
            for _ in range(a.repeats):
                t = time.time()
                job = _finish(c, c.post("/api/trace", json={"prompt": prompt}).json())
                t_job = time.time()
                assert job["status"] == "done", job
                r = c.get(f"/api/graphs/{job['result']}", headers={"Accept-Encoding": "gzip"})
                r.raise_for_status()
                size = len(r.content)
                t_end = time.time()
                job_s.append(t_job - t)
                fetch_s.append(t_end - t_job)
                total_s.append(t_end - t)
            load = os.getloadavg()[0]
            print(
                f"{n} tokens ({want} wanted): trace job {statistics.median(job_s):.2f} s, fetch "
                f"{statistics.median(fetch_s):.2f} s ({size / 1e6:.1f} MB JSON), click to graph "
                f"{statistics.median(total_s):.2f} s (min {min(total_s):.2f}) [load {load:.2f}]",
                flush=True,
            )


if __name__ == "__main__":
    main()
