"""Is this index whole, and was it built for this transcoder set? Both answered in one line, before any use.

An index of another set would attach wrong labels, dashboards and maxima to every feature; a half-written one
would answer some features and not others. Sets are identified by the SHA-256 of their weight files (the
`files` map of the set's config.json), so the check needs no torch and no weights.

>>> fingerprint_files({"layer_0.safetensors": "ab12"})
'93656dff037771c5'
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from mechscope.errors import MechscopeError


def fingerprint_files(files: dict[str, str]) -> str:
    """The set's identity: a hash of its weight files' SHA-256 map ("" when it records none)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16] if files else ""


def set_fingerprint(set_dir: str | Path) -> str:
    """The fingerprint of the set in `set_dir`, from its config.json alone ("" when unreadable)."""
    try:
        return fingerprint_files(json.loads((Path(set_dir) / "config.json").read_text()).get("files") or {})
    except (OSError, ValueError):
        return ""


def check_complete(path: Path, meta: dict, con: sqlite3.Connection) -> None:
    """Refuse an index whose build did not finish: `built` is written last, with the expected row count."""
    if "built" not in meta:
        raise MechscopeError(
            f"feature index {path} is incomplete (its build did not finish); rebuild it with: mechscope index-features"
        )
    want = meta.get("n_features")
    if want is not None:
        have = con.execute("SELECT COUNT(*) FROM features").fetchone()[0]
        if have != want:
            raise MechscopeError(
                f"feature index {path} is incomplete ({have} of {want} features); rebuild it with: "
                "mechscope index-features"
            )


def check_matches(path: Path, meta: dict, set_name: str, fp: str) -> None:
    """Refuse an index built for another set, naming both (an unrecorded fingerprint on either side passes)."""
    have = meta.get("transcoder_fingerprint") or ""
    if have and fp and have != fp:
        raise MechscopeError(
            f"feature index {path} was built for transcoder set {meta.get('transcoders') or '?'} ({have}), not "
            f"for {set_name} ({fp}); rebuild it with: mechscope index-features --transcoders {set_name}"
        )
