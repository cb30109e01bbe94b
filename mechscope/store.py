"""SQLite storage: the feature index (features, examples, labels) with a versioned schema.

One database per (model, transcoder set). WAL mode lets many readers (CLI, web server) read while one
writer builds; the index is built into a temporary file and renamed into place, so readers never see a
half-built index.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mechscope.errors import MechscopeError

SCHEMA_VERSION = 3
# Readable schemas: 2 (the shipped indexes until their rebuild) lacks the tables `dashboards` and `token_features`;
# readers treat what is missing as empty.
READABLE_SCHEMAS = (2, 3)
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS features (
    layer INTEGER NOT NULL, feature INTEGER NOT NULL,
    density REAL NOT NULL, max_act REAL NOT NULL, mean_act REAL NOT NULL,
    hist TEXT NOT NULL,              -- JSON counts of non-zero activations per log bin (edges in meta.hist_edges)
    top_logits TEXT NOT NULL,        -- JSON [[token, value], ...] direct effect through the unembedding
    bottom_logits TEXT NOT NULL,
    top_tokens TEXT NOT NULL,        -- JSON [[token, count], ...] tokens at the max position of top examples
    label TEXT NOT NULL DEFAULT '', label_confidence REAL NOT NULL DEFAULT 0, label_method TEXT NOT NULL DEFAULT '',
    label_score REAL,                -- held-out score of the label (see features/labels.py)
    PRIMARY KEY (layer, feature)
);
CREATE TABLE IF NOT EXISTS examples (
    layer INTEGER NOT NULL, feature INTEGER NOT NULL, kind TEXT NOT NULL, rank INTEGER NOT NULL,
    activation REAL NOT NULL, tokens BLOB NOT NULL, acts BLOB NOT NULL, max_pos INTEGER NOT NULL,
    PRIMARY KEY (layer, feature, kind, rank)
);
CREATE INDEX IF NOT EXISTS features_label ON features(label);
CREATE TABLE IF NOT EXISTS dashboards (   -- schema 3: the two-sided label, quantile bands, tokens it fires on
    layer INTEGER NOT NULL, feature INTEGER NOT NULL, data TEXT NOT NULL,  -- JSON, see features/dashboard.py
    PRIMARY KEY (layer, feature)
);
CREATE TABLE IF NOT EXISTS token_features (  -- schema 3: search by token (key: the token as norm_token writes it)
    key TEXT NOT NULL, layer INTEGER NOT NULL, feature INTEGER NOT NULL, token TEXT NOT NULL,
    n INTEGER NOT NULL,              -- firings of the feature on the token (all index text)
    precision REAL NOT NULL,         -- n / the feature's firings
    recall REAL NOT NULL,            -- n / the token's occurrences
    PRIMARY KEY (key, layer, feature)
);
"""


def damaged(path: Path, e: Exception) -> MechscopeError:
    """One line for a database SQLite cannot read (truncated, overwritten, not SQLite at all). A copy in the
    cache (an unpacked shipped index) is removed, so the next run unpacks it again."""
    from mechscope.paths import cache_dir

    try:
        Path(path).resolve().relative_to(cache_dir().resolve())
        Path(path).unlink(missing_ok=True)
        return MechscopeError(
            f"the cached feature index {Path(path).name} was damaged ({e}); it was removed and is "
            "unpacked again on the next run"
        )
    except (ValueError, OSError):
        return MechscopeError(
            f"feature index {Path(path).name} is damaged ({e}); rebuild it with: mechscope index-features"
        )


def connect(path: str | Path, write: bool = False) -> sqlite3.Connection:
    path = Path(path)
    if not write and not path.exists():
        raise MechscopeError(f"no feature index at {path}; build it with: mechscope index-features")
    try:
        return _connect(path, write)
    except sqlite3.DatabaseError as e:
        if write:
            raise MechscopeError(f"cannot write feature index {path}: {e}") from None
        raise damaged(path, e) from None


def _connect(path: Path, write: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'rwc' if write else 'ro'}"
    con = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
    con.row_factory = sqlite3.Row
    if write:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(SCHEMA)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    else:
        row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None or int(row[0]) not in READABLE_SCHEMAS:
            raise MechscopeError(
                f"feature index {path} has schema {row[0] if row else '?'}, expected one of "
                f"{', '.join(map(str, READABLE_SCHEMAS))}; rebuild it with: mechscope index-features"
            )
    return con


@contextmanager
def reader(path: str | Path) -> Iterator[sqlite3.Connection]:
    con = connect(path)
    try:
        yield con
    except sqlite3.DatabaseError as e:  # "database disk image is malformed" mid-query: one line, not a traceback
        raise damaged(Path(path), e) from None
    finally:
        con.close()


def get_meta(con: sqlite3.Connection) -> dict:
    return {
        r["key"]: json.loads(r["value"]) if r["key"] != "schema_version" else int(r["value"])
        for r in con.execute("SELECT key, value FROM meta")
    }
