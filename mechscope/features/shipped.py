"""Where a model's feature index is: a user-built one, else the shipped one, unpacked once into the cache.

Shipped indexes are committed compressed (`.sqlite.xz`, or `.sqlite.gz` for older ones; xz is half gzip's size
on these files, which matters because every replacement stays in git history) and unpacked once into the cache
(temp file + rename, keyed by the archive's size and mtime), with a progress bar in compressed bytes.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
from pathlib import Path
from typing import BinaryIO

from mechscope.paths import cache_dir, cached_file, data_dir

SHIPPED = Path(__file__).resolve().parent.parent / "artifacts" / "features"


def _safe(model: str) -> str:
    return model.strip("/").replace("/", "__")


def user_index_path(model: str) -> Path:
    """Where `index-features` writes a model's index by default (it takes precedence over the shipped one)."""
    return data_dir() / "features" / f"{_safe(model)}.sqlite"


class _Counted:
    """A read-only file whose reads advance a progress bar (compressed bytes: the only size known up front)."""

    def __init__(self, f: BinaryIO, bar) -> None:
        self.f, self.bar = f, bar

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.bar.update(len(b))
        return b

    def readinto(self, buf) -> int:
        n = self.f.readinto(buf)
        self.bar.update(n or 0)
        return n

    def __getattr__(self, name: str):
        return getattr(self.f, name)


def index_path(model: str) -> Path:
    """The index a model uses: a user-built one if present, else the shipped one (unpacked on first use).

    >>> index_path("gemma3-270m").suffix
    '.sqlite'
    """
    user = user_index_path(model)
    if user.exists():
        return user
    safe = _safe(model)
    plain = SHIPPED / f"{safe}.sqlite"
    packed = [(SHIPPED / f"{safe}.sqlite{ext}", opener) for ext, opener in ((".xz", lzma.open), (".gz", gzip.open))]
    packed = [(f, opener) for f, opener in packed if f.exists()]
    if plain.exists() or not packed:
        return plain
    src_path, opener = packed[0]
    st = src_path.stat()
    out = cache_dir() / "features" / f"{safe}-{st.st_size}-{int(st.st_mtime)}.sqlite"

    def unpack(tmp: Path) -> None:
        from mechscope.progress import Progress

        with Progress(f"unpacking the shipped feature index of {model} (one time)", st.st_size, "B") as bar:
            with open(src_path, "rb") as raw, opener(_Counted(raw, bar), "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

    # size + SHA-256 recorded on unpacking and verified on opening: a truncated or altered copy is unpacked again
    return cached_file(out, unpack, f"feature index of {model}")
