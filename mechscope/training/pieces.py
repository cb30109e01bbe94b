"""Files moved in pieces: a tar stream of named files cut into numbered pieces of at most N bytes, each with its
SHA-256 in a manifest, and put back together (every piece and every file checked) on the other side.

The device tool that lends a GPU carries at most 64 MiB of files into a call and brings at most 8 files of 16 MiB
back, so a model's weights go over in several calls and trained sets come back in several.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "a.txt").write_text("x" * 5000)
>>> m = write_pieces({"a.txt": d / "a.txt"}, d / "p", "payload", piece_bytes=4096)
>>> [p["name"] for p in m["pieces"]], missing(m, d / "p")
(['payload.000', 'payload.001', 'payload.002'], [])
>>> [str(p.relative_to(d)) for p in read_pieces(m, d / "p", d / "out")]
['out/a.txt']
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.paths import file_sha256

MIB = 2**20


class _Roller(io.RawIOBase):
    """A write-only stream that fills dest/prefix.000, .001, … with at most `size` bytes each, hashing as it goes."""

    def __init__(self, dest: Path, prefix: str, size: int) -> None:
        self.dest, self.prefix, self.size = dest, prefix, size
        self.pieces: list[dict] = []
        self._f = None
        self._h = hashlib.sha256()
        self._n = 0

    def writable(self) -> bool:
        return True

    def _roll(self) -> None:
        self._finish()
        name = f"{self.prefix}.{len(self.pieces):03d}"
        self.pieces.append({"name": name})
        self._f = (self.dest / name).open("wb")
        self._h, self._n = hashlib.sha256(), 0

    def _finish(self) -> None:
        if self._f is not None:
            self._f.close()
            self.pieces[-1].update(size=self._n, sha256=self._h.hexdigest())
            self._f = None

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            if self._f is None or self._n >= self.size:
                self._roll()
            part = view[done : done + self.size - self._n]
            self._f.write(part)  # type: ignore[union-attr]
            self._h.update(part)
            self._n += len(part)
            done += len(part)
        return done

    def close(self) -> None:
        self._finish()
        super().close()


def write_pieces(files: dict[str, Path], dest: Path, prefix: str, piece_bytes: int) -> dict:
    """Tar `files` (name in the archive → source path) into pieces dest/prefix.NNN of at most `piece_bytes`; returns
    the manifest: the pieces' and the files' names, sizes and SHA-256."""
    if piece_bytes < 1024:
        raise MechscopeError("pieces must hold at least 1 KiB")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{prefix}.*"):
        old.unlink()  # pieces of an earlier packing would be mistaken for this one's
    roller = _Roller(dest, prefix, piece_bytes)
    entries = []
    with tarfile.open(fileobj=roller, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, src in files.items():
            tar.add(str(src), arcname=name, recursive=False)
            entries.append({"name": name, "size": src.stat().st_size, "sha256": file_sha256(src)})
    roller.close()
    return {"prefix": prefix, "piece_bytes": piece_bytes, "pieces": roller.pieces, "files": entries}


def missing(manifest: dict, src: Path) -> list[str]:
    """The manifest's pieces that are absent from `src` or differ from their recorded size and SHA-256."""
    bad = []
    for p in manifest["pieces"]:
        f = src / p["name"]
        if not f.is_file() or f.stat().st_size != p["size"] or file_sha256(f) != p["sha256"]:
            bad.append(p["name"])
    return bad


class _Joined(io.RawIOBase):
    """The pieces read back as one stream, in order."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self._f = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            if self._f is None:
                if not self.paths:
                    return 0
                self._f = self.paths.pop(0).open("rb")
            n = self._f.readinto(b)
            if n:
                return n
            self._f.close()
            self._f = None


def read_pieces(manifest: dict, src: Path, dest: Path) -> list[Path]:
    """Check every piece, untar them into `dest` and check every file; returns the files written. A missing or
    damaged piece, or a file that does not match, is one line naming it."""
    bad = missing(manifest, src)
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise MechscopeError(f"{len(bad)} of {len(manifest['pieces'])} pieces in {src} are missing or damaged: {shown}")
    dest.mkdir(parents=True, exist_ok=True)
    stream = io.BufferedReader(_Joined([src / p["name"] for p in manifest["pieces"]]), buffer_size=MIB)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        tar.extractall(dest, filter="data")  # names, links and modes checked: pieces that came back are data
    out = []
    for e in manifest["files"]:
        f = dest / e["name"]
        if not f.is_file() or file_sha256(f) != e["sha256"]:
            raise MechscopeError(f"{f} does not match its SHA-256 in the manifest")
        out.append(f)
    return out
