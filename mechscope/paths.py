"""Where mechscope keeps its caches and stores (XDG defaults, overridable by environment variables)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cache_dir() -> Path:
    """Converted models and other rebuildable data: $MECHSCOPE_CACHE or $XDG_CACHE_HOME/mechscope."""
    env = os.environ.get("MECHSCOPE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mechscope"


def data_dir() -> Path:
    """User data (graph store, trained sets): $MECHSCOPE_HOME or $XDG_DATA_HOME/mechscope."""
    env = os.environ.get("MECHSCOPE_HOME")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "mechscope"


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to `final` only if the block succeeds.

    A kill mid-way leaves at most a `.tmp-*` directory, never a half-written `final`.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file via temp file + rename so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def portable_path(path: str | Path) -> str:
    """A path inside the installed package as "mechscope/...", so committed metadata (an index's set, an eval's
    set) does not record the directory it happened to be made in; other paths as given.

    >>> portable_path(Path(__file__).parent / "artifacts" / "transcoders" / "gemma3-270m")
    'mechscope/artifacts/transcoders/gemma3-270m'
    """
    if not str(path):
        return str(path)
    root = Path(__file__).resolve().parent.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def check_writable(path: str | Path, kind: str = "file") -> Path:
    """Refuse an output path that cannot be written, before any heavy work (raises MechscopeError).

    kind "file": `path` must not be a directory; kind "dir": it must not be a file. Either way its nearest
    existing ancestor must be a directory where a file can be created (this catches a parent that is a file,
    /proc, a read-only mount and missing permissions; nothing is left behind).

    >>> check_writable("/proc/graph.json")
    Traceback (most recent call last):
    mechscope.errors.MechscopeError: cannot write /proc/graph.json: /proc is not writable
    """
    from mechscope.errors import MechscopeError

    p = Path(path).expanduser()
    if str(p) == "":
        raise MechscopeError("empty output path")
    if kind == "file" and p.is_dir():
        raise MechscopeError(f"{p} is a directory; give a file path")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise MechscopeError(f"{p} is a file; give a directory")
    anc = p.absolute()
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise MechscopeError(f"cannot write {p}: {anc} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=anc, prefix=".mechscope-write-test-"):
            pass
    except OSError:
        raise MechscopeError(f"cannot write {p}: {anc} is not writable") from None
    return p
