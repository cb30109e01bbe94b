"""The web app over a graph store with no model behind it: for browser tests and the page benchmark.

`StubScope` answers /api/info and serves graphs like a Microscope; interventions return a made-up result after an
optional wait (so a test can cancel a job), computed from the request so the page's table has something to show.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from types import SimpleNamespace

from mechscope.server.app import Microscope, create_app


TOKEN = "stub-token"  # the page reads it from its <meta>; tests calling the API directly send it


def fake_density(layer: int, feature: int) -> float:
    """One feature in ten is dense (fires on 60% of tokens), the rest sparse: the page's density filter has work."""
    return 0.6 if feature % 10 == 3 else 0.001


class FakeIndex:
    """Feature dashboards made up from the feature's id, in the index's answer format."""

    def densities(self, keys=None) -> dict:
        return {(int(layer), int(f)): fake_density(int(layer), int(f)) for layer, f in keys or []}

    def feature(self, layer: int, feature: int) -> dict:
        edges = [round(10 ** (-3 + 0.2 * i), 6) for i in range(31)]
        counts = [0] * 8 + [int(1000 * 0.7 ** abs(i - 14)) for i in range(8, 32)]
        toks = ["The", " capital", " of", " Texas", " is", " Austin"]
        ex = [
            {"kind": "top", "activation": 4.0 - k, "tokens": toks, "acts": [0.0, 0.1, 0.0, 1.0, 0.3, 0.5], "max_pos": 3}
            for k in range(3)
        ]
        return {
            "id": f"{layer}/{feature}",
            "label": f"label {layer}/{feature}",
            "label_confidence": 0.8,
            "density": fake_density(layer, feature),
            "max_act": 7.5,
            "examples": ex,
            "top_logits": [[" Austin", 1.2], [" TX", 0.9]],
            "bottom_logits": [[" Paris", -1.0], [" the", -0.4]],
            "hist": {"edges": edges, "counts": counts},
        }


class StubScope(Microscope):
    def __init__(self, graph_dir: Path, n_layers: int = 18) -> None:  # no model, no transcoders
        self.model = SimpleNamespace(name="stub-model", n_layers=n_layers, tokenizer=None, vocab_size=1000)
        self.ts = SimpleNamespace(d_transcoder=16384)
        self.index, self.labels, self.graph_dir = FakeIndex(), {}, Path(graph_dir)
        self.graph_dir.mkdir(parents=True, exist_ok=True)
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[dict] = []
        self.traces: list[dict] = []
        self.logit_change: dict[int, float] = {}  # measured change of a token's centred logit (default -0.5)

    def trace(self, prompt, chat, max_feature_nodes, targets, **kw) -> str:
        """Records the request and answers with a copy of the store's first graph (named trace-N)."""
        self.traces.append(
            {"prompt": prompt, "chat": chat, "max_feature_nodes": max_feature_nodes, "targets": targets, **kw}
        )
        name = f"trace-{len(self.traces)}"
        first = sorted(self.graph_dir.glob("*.json"))[0]
        shutil.copy(first, self.graph_dir / f"{name}.json")
        return name

    def intervene(self, prompt, edits, freeze_attention, generate, chat, watch=None, top_k=5, logit_ids=None):
        self.calls.append({"prompt": prompt, "edits": edits, "watch": watch, "top_k": top_k, "logit_ids": logit_ids})
        self.gate.wait(60)
        scale = 1.0 / (1 + len(self.calls))
        before = [{"token": t, "prob": p} for t, p in ((" Austin", 0.5), (" Texas", 0.2), (" the", 0.1))]
        after = [{"token": t, "prob": p * scale * 2} for t, p in ((" Texas", 0.4), (" Austin", 0.3), (" a", 0.1))]
        res = {"prompt": prompt, "edits": edits, "before": before, "after": after}
        if watch:
            res["watch"] = [{"token": w, "before": 0.01, "after": 0.02 * len(self.calls)} for w in watch]
        if generate:
            res["generation_before"], res["generation_after"] = " Austin, the capital", " Texas, which is"
        if logit_ids:
            res["logits"] = [
                {"id": i, "token": f"t{i}", "before": 1.0, "after": 1.0 + self.logit_change.get(i, -0.5)}
                for i in logit_ids
            ]
        return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn in a thread: `with LiveServer(scope) as url:`."""

    def __init__(self, scope) -> None:
        import uvicorn

        import mechscope.server.app as appmod

        self.port = free_port()
        # the stub has no tokenizer: its requests skip the tokenizer-based checks (tests/test_fuzz_http.py covers them);
        # restored on exit so later tests see the real ones
        self._saved = (appmod._check_trace, appmod._check_intervene)
        if isinstance(scope, StubScope):
            appmod._check_trace = appmod._check_intervene = lambda scope, req: None
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(scope, token=TOKEN), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        import mechscope.server.app as appmod

        appmod._check_trace, appmod._check_intervene = self._saved
        self.server.should_exit = True
        self.thread.join(timeout=5)


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
]


@contextmanager
def chromium_browser() -> Iterator:
    """Debian's Chromium driven by Playwright (never `playwright install`); a missing browser fails the test."""
    import playwright.sync_api as playwright
    import pytest

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is required for the browser tests (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@contextmanager
def recording_page(browser, ignore_console: str | None = None, **context: object) -> Iterator:
    """A page in a fresh 1366×768 context (CSP bypassed for the test's scripts) whose uncaught errors and console
    errors collect in `page.errors`; console lines containing `ignore_console` are left out (expected 4xx)."""
    ctx = browser.new_context(viewport={"width": 1366, "height": 768}, bypass_csp=True, **context)
    pg = ctx.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))

    def on_console(m) -> None:
        if m.type == "error" and not (ignore_console and ignore_console in m.text):
            pg.errors.append(m.text)

    pg.on("console", on_console)
    try:
        yield pg
    finally:
        ctx.close()


def js(page, expr: str):
    """Evaluate `expr` in the page with `m` = window.mechscope and `S` = its state in scope."""
    return page.evaluate(f"(() => {{ const m = window.mechscope, S = m.state; return {expr}; }})()")
