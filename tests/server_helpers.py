"""Shared by the server fuzz and load tests: a Microscope over the tiny model, a token-carrying client, a live server."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def make_scope(tiny, tiny_dir: Path, tiny_tc, tiny_tc_dir: Path, root: Path):
    from mechscope.features import IndexConfig, build_index
    from mechscope.server.app import Microscope

    build_index(
        tiny,
        tiny_tc,
        root / "idx.sqlite",
        IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=256, seq_len=32, batch_size=4),
        progress=False,
    )
    return Microscope(str(tiny_dir), root / "graphs", transcoders=str(tiny_tc_dir), index=str(root / "idx.sqlite"))


def client_for(app, token: bool = True):
    from fastapi.testclient import TestClient

    headers = {"X-Mechscope-Token": app.state.token} if token else {}
    return TestClient(app, base_url="http://127.0.0.1", headers=headers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live(app) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", limit_concurrency=512)
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=10)


def one_line_error(r) -> str:
    """The response's error message; asserts the one-line JSON shape and that no absolute path leaks."""
    data = r.json()
    assert set(data) == {"error"}, data
    err = data["error"]
    assert isinstance(err, str) and err and "\n" not in err, err
    assert "Traceback" not in err and "/tmp/" not in err and "/root/" not in err and "/home/" not in err, err
    return err
