"""A flood of 200 parallel submissions to a live server: every one is accepted and finishes, or is refused with a
one-line 429; memory returns near its level afterwards; shutdown mid-job ends cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from extras import require

require("fastapi")
httpx = require("httpx")

from server_helpers import live, make_scope, one_line_error  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def scope(tiny, tiny_dir, tiny_tc, tiny_tc_dir, tmp_path_factory):
    return make_scope(tiny, tiny_dir, tiny_tc, tiny_tc_dir, tmp_path_factory.mktemp("load"))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS read from /proc")
def test_200_parallel_jobs(scope):
    from mechscope.server.app import create_app

    app = create_app(scope, max_pending=48, per_client=48)
    headers = {"X-Mechscope-Token": app.state.token}
    bodies = [
        ("/api/probe", {"text": f"the cat sat on the mat {i}", "limit": 5})
        if i % 4
        else ("/api/trace", {"prompt": f"Dallas is in the state of {i}", "max_feature_nodes": 8})
        for i in range(200)
    ]
    with live(app) as url, httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        for path, body in bodies[:8]:  # warm up: allocator pools, tokenizer caches, graphs on disk
            j = c.post(path, json=body).json()
            app.state.worker.wait(j["id"], 60)
        base = _rss_mb()

        def submit(pb):
            return c.post(pb[0], json=pb[1])

        with ThreadPoolExecutor(32) as ex:
            replies = list(ex.map(submit, bodies))
        accepted = [r.json() for r in replies if r.status_code == 200]
        refused = [r for r in replies if r.status_code != 200]
        assert accepted, "nothing was accepted"
        for r in refused:
            assert r.status_code == 429, r.text
            assert "queue is full" in one_line_error(r) or "jobs waiting" in one_line_error(r)
        assert len(accepted) + len(refused) == 200
        assert len(accepted) <= 48 + 200 // 2  # bounded (jobs finish while others are submitted)
        for j in accepted:
            app.state.worker.wait(j["id"], 120)
            final = c.get(f"/api/jobs/{j['id']}").json()
            assert final["status"] == "done", final
        peak_jobs = len(app.state.worker.jobs)
        after = _rss_mb()
    assert peak_jobs <= 256 + 48
    print(
        f"load: {len(accepted)} accepted, {len(refused)} refused (429); RSS {base:.0f} → {after:.0f} MB (machine shared)"
    )
    assert after - base < 300, f"RSS grew {after - base:.0f} MB under the load"


SHUTDOWN = r"""
import sys, threading, time, logging
sys.path.insert(0, sys.argv[1])
from mechscope.server.jobs import Worker
import torch

w = Worker()
started = threading.Event()

def busy():
    from mechscope.cancel import checkpoint
    started.set()
    x = torch.randn(256, 256)
    for _ in range(10_000):
        checkpoint()
        x = torch.tanh(x @ x) / 16      # torch C++ code running when the interpreter exits
    return "finished"

j = w.submit("busy", busy)
for _ in range(5):
    w.submit("queued", lambda: time.sleep(10))
started.wait(10)
print("exiting", flush=True)
sys.exit(0)                             # no explicit close: atexit must stop the worker first
"""


def test_shutdown_mid_job_is_clean():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", SHUTDOWN, repo], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "terminate called" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "exiting" in p.stdout and time.time() - t0 < 60
