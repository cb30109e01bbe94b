"""The README's first command, run as written on a fresh machine: a clean folder, a new virtual environment,
empty caches (pip's, the model cache, the converted model), the clone taken from this checkout instead of the
network. It must finish with the trace's answer, and no step after mechscope starts may stay silent > 10 s.

Slow (a few minutes: the install, the one-time conversion, a trace); run it alone with
`python -m pytest -q tests/test_fresh_machine.py`.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
URL = "https://github.com/mechscope/mechscope.git"
MAX_SILENCE_S = 10.0


def _first_command() -> str:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)[0]


def _fresh_env(home: Path) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR", "PIP_CONFIG_FILE", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:  # this test may itself run inside the README's venv: the fresh one must not inherit it
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(venv))
    env.update(
        HOME=str(home), PIP_CACHE_DIR=str(home / "pip-cache"), PYTHONUNBUFFERED="1", DEBIAN_FRONTEND="noninteractive"
    )
    return env


def test_readme_first_command_on_a_fresh_machine(tmp_path):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.fail("the fresh-machine test clones this checkout: it must be a git repository with a commit")
    cmd = _first_command()
    assert URL in cmd, "the README's clone URL changed: update URL here"
    cmd = cmd.replace(URL, f"file://{REPO}")  # the committed tree, as a clone of the repository would give
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    p = subprocess.Popen(
        ["bash", "-c", "set -o pipefail; " + cmd],
        cwd=work,
        env=_fresh_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    assert p.stdout is not None
    for line in p.stdout:
        lines.append((time.monotonic(), line.rstrip("\n")))
    rc = p.wait(timeout=60)
    log = "\n".join(ln for _, ln in lines)
    assert rc == 0, log[-4000:]
    assert re.search(r"top logits: ' Texas' 0\.\d+", log), log[-4000:]
    assert (home / ".cache" / "mechscope" / "models" / "gemma3-270m").is_dir(), "the model was not converted afresh"
    # no silent stretch once mechscope runs (pip's own output before it is not ours to judge)
    start = next(i for i, (_, ln) in enumerate(lines) if ln.startswith("mechscope:"))
    stamps = [t for t, _ in lines[start:]]
    gaps = [(b - a, lines[start + i][1]) for i, (a, b) in enumerate(zip(stamps, stamps[1:]))]
    worst = max(gaps, default=(0.0, ""))
    assert worst[0] <= MAX_SILENCE_S, f"{worst[0]:.1f} s of silence after: {worst[1]!r}"
