"""Where mechscope keeps its caches and stores (XDG defaults, overridable by environment variables)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mechscope.errors import MechscopeError


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


def _write_error(path: Path, e: OSError) -> MechscopeError:
    """One line for a place we cannot write (read-only home, a file where a directory should be, /proc, full disk)."""
    where = ""
    for env, root in (("MECHSCOPE_HOME", data_dir()), ("MECHSCOPE_CACHE", cache_dir())):
        try:
            Path(path).resolve().relative_to(root.resolve())
            where = f" (set {env} to a writable directory)"
            break
        except (ValueError, OSError):
            continue
    return MechscopeError(f"cannot write {path}: {e.strerror or type(e).__name__}{where}")


def writable_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and check that files can be created in it; one-line error otherwise.

    >>> writable_dir(Path(tempfile.gettempdir())).is_dir()
    True
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-probe-", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise _write_error(path, e) from None
    return path


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to `final` only if the block succeeds.

    A kill mid-way leaves at most a `.tmp-*` directory, never a half-written `final`.
    """
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    except OSError as e:
        raise _write_error(final, e) from None
    try:
        yield tmp
        try:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as e:
            raise _write_error(final, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file via temp file + rename so readers never see a partial file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, e) from None
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
    # a file is created in its parent (an existing file is replaced: re-running with the same --out works)
    anc = p.absolute() if kind == "dir" else p.absolute().parent
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


# ---- verified cache files --------------------------------------------------------------------------------------
_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) whose checksum matched in this process


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".check.json")


def cache_entry_ok(path: Path) -> bool:
    """Whether a cache file matches the size and SHA-256 recorded when it was written.

    The size is compared on every call; the checksum on the first call per process, and again whenever
    the file's size or mtime changed since (so a long-running server re-checks a file that was touched).
    """
    import json

    rec = _record_path(path)
    try:
        meta = json.loads(rec.read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or st.st_size != meta.get("size"):
        return False
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return True
    if file_sha256(path) != meta.get("sha256"):
        return False
    _VERIFIED.add(key)
    return True


def cached_file(path: Path, build, what: str) -> Path:
    """Return `path`, (re)building it with `build(tmp_path)` when it is missing or damaged.

    The file is built under a temporary name and renamed into place; its size and SHA-256 are recorded beside
    it (`NAME.check.json`), so a truncated or altered entry is found and rebuilt with a one-line notice.

    >>> p = cached_file(Path(tempfile.mkdtemp()) / "x.bin", lambda tmp: tmp.write_bytes(b"data"), "demo")
    >>> p.read_bytes()
    b'data'
    """
    import json
    import logging

    if path.exists() and cache_entry_ok(path):
        return path
    if path.exists():
        log = logging.getLogger(__name__)
        if _record_path(path).exists():
            log.warning("mechscope: the cached %s (%s) is damaged; rebuilding it", what, path.name)
        else:  # written by an older version, before records existed
            log.info("mechscope: the cached %s (%s) has no checksum record; rebuilding it", what, path.name)
    rec = _record_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from None
    tmp = Path(tmp_name)
    try:
        build(tmp)
        meta = {"size": tmp.stat().st_size, "sha256": file_sha256(tmp)}
        rec.unlink(missing_ok=True)  # never a record that vouches for the old file
        os.replace(tmp, path)
        atomic_write_text(rec, json.dumps(meta))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    st = path.stat()
    _VERIFIED.add((str(path), st.st_size, st.st_mtime_ns))
    return path
