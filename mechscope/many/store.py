"""A store of many graphs: a folder with `graphs/<id>.json` and a SQLite catalogue (`catalogue.sqlite`).

The catalogue has one row per prompt (id, input line, prompt, targets, group, expected answer, status
pending | done | error, the error's one line, top logit, sizes, scores, timings) and a `meta` table naming the
model, the transcoder set (hash) and the attribution knobs that shape a graph. A store answers for one model and
set: opening it with another is refused, so graphs in one store are always comparable.

Crash safety, in this order: a graph file is written under a temporary name and renamed; only then is its row
marked done, in one transaction. A run killed at any point leaves rows either done (with their file) or not
done (traced again next time, the file overwritten by rename); nothing is lost or counted twice.

>>> import tempfile
>>> st = ManyStore.open(tempfile.mkdtemp(), {"model": "m", "set_hash": "abc", "attribution": {}})
>>> st.add([PromptItem("a", 1, "Dallas is in the state of")])   # how many were new
1
>>> st.pending()[0].id
'a'
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mechscope.errors import MechscopeError
from mechscope.many.inputs import PromptItem
from mechscope.paths import atomic_write_bytes, writable_dir

SCHEMA_VERSION = 1
CATALOGUE = "catalogue.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    id TEXT PRIMARY KEY, line INTEGER NOT NULL, prompt TEXT NOT NULL,
    targets TEXT NOT NULL DEFAULT '[]',          -- JSON list of target tokens ([]: the top logits)
    grp TEXT NOT NULL DEFAULT '', expect TEXT,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'error')),
    error TEXT,                                  -- one line, for status 'error'
    top_logit TEXT, top_prob REAL,
    correct INTEGER,                             -- 1/0 when `expect` is given: top logit (stripped) == expect
    n_nodes INTEGER, n_edges INTEGER, replacement_score REAL, completeness_score REAL,
    attribution_s REAL, wall_s REAL, graph_bytes INTEGER, worker TEXT, finished_at TEXT
);
CREATE INDEX IF NOT EXISTS prompts_status ON prompts(status);
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT NOT NULL, finished TEXT, backend TEXT NOT NULL,
    workers INTEGER NOT NULL, threads INTEGER NOT NULL, n_done INTEGER NOT NULL DEFAULT 0,
    n_error INTEGER NOT NULL DEFAULT 0, wall_s REAL
);
"""
#: meta keys that must agree between a store and a run (anything else, e.g. `created`, is informational)
IDENTITY = ("model", "set_hash", "attribution")


@dataclass
class Result:
    """What a worker sends back for one prompt: the graph JSON text (None on error) and its catalogue fields."""

    id: str
    graph_json: str | None = None
    adjacency: bytes | None = None
    error: str | None = None
    top_logit: str | None = None
    top_prob: float | None = None
    n_nodes: int | None = None
    n_edges: int | None = None
    replacement_score: float | None = None
    completeness_score: float | None = None
    attribution_s: float | None = None
    wall_s: float | None = None
    worker: str = ""


class ManyStore:
    """The catalogue and graph folder of one store directory (one writer: the driver of a run)."""

    def __init__(self, root: Path, con: sqlite3.Connection) -> None:
        self.root = root
        self.graphs = root / "graphs"
        self.con = con

    # ---- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, identity: dict | None = None) -> "ManyStore":
        """Open (or, with `identity`, create) the store at `root`; refuse one made for another model/set/knobs."""
        root = Path(root)
        db = root / CATALOGUE
        if identity is None and not db.exists():
            raise MechscopeError(
                f"{root} is not a trace-many store (no {CATALOGUE}); make one with: mechscope trace-many"
            )
        lock = None
        if identity is not None:
            writable_dir(root / "graphs")
            lock = _lock(root)
        try:
            con = sqlite3.connect(str(db), timeout=30, isolation_level=None)  # autocommit; transactions explicit
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise MechscopeError(f"the catalogue {db} is damaged or not SQLite ({e})") from None
        st = cls(root, con)
        st._lock = lock
        if identity is not None:
            try:
                st._claim(identity)
            except BaseException:
                st.close()
                raise
            for tmp in st.graphs.glob(".tmp-*"):  # a file a killed run was writing: its row is not done
                tmp.unlink(missing_ok=True)
        return st

    def meta(self) -> dict:
        return {r["key"]: json.loads(r["value"]) for r in self.con.execute("SELECT key, value FROM meta")}

    def _claim(self, identity: dict) -> None:
        have = self.meta()
        if not have:
            with self._tx():
                rows = {"schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **identity}
                self.con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in rows.items()])
            return
        if have.get("schema_version") != SCHEMA_VERSION:
            raise MechscopeError(
                f"store {self.root} has schema {have.get('schema_version')}, expected {SCHEMA_VERSION}"
            )
        for key in IDENTITY:
            old, new = have.get(key), identity.get(key, have.get(key))
            if old == new:
                continue
            if isinstance(old, dict) and isinstance(new, dict):  # name the knob that differs, not the whole dict
                k = sorted(x for x in old.keys() | new.keys() if old.get(x) != new.get(x))[0]
                key, old, new = k, old.get(k), new.get(k)
            raise MechscopeError(
                f"store {self.root} was made with {key} {_short(old)}, this run has {_short(new)}; use another --store"
            )

    # ---- prompts ---------------------------------------------------------------------------------
    def add(self, items: list[PromptItem]) -> int:
        """Insert new prompts as pending (returns how many were new). An id already stored with another prompt,
        targets or group is refused: its graph would not answer the new line."""
        known = {
            r["id"]: (r["prompt"], r["targets"], r["grp"], r["expect"])
            for r in self.con.execute("SELECT id, prompt, targets, grp, expect FROM prompts")
        }
        new = []
        for it in items:
            row = (it.prompt, json.dumps(list(it.targets)), it.group, it.expect)
            if it.id in known and known[it.id][:3] != row[:3]:
                raise MechscopeError(
                    f"id {it.id!r} (line {it.line}) is already in store {self.root} with another prompt, targets or "
                    "group; give it a new id or use another --store"
                )
            if it.id not in known:
                new.append((it.id, it.line, *row))
        with self._tx():
            self.con.executemany(
                "INSERT INTO prompts (id, line, prompt, targets, grp, expect) VALUES (?,?,?,?,?,?)", new
            )
        return len(new)

    def pending(self, ids: set[str] | None = None, retry_errors: bool = False) -> list[PromptItem]:
        """Prompts still to trace, in input order: pending ones, done ones whose file went missing, and errors
        when `retry_errors`; restricted to `ids` (this run's input) when given."""
        out = []
        for r in self.con.execute("SELECT * FROM prompts ORDER BY line, id"):
            if ids is not None and r["id"] not in ids:
                continue
            todo = r["status"] == "pending" or (r["status"] == "error" and retry_errors)
            if r["status"] == "done" and not self.graph_path(r["id"]).exists():
                todo = True
            if todo:
                out.append(_item(r))
        return out

    def graph_path(self, pid: str) -> Path:
        return self.graphs / f"{pid}.json"

    def record(self, res: Result) -> None:
        """Write the graph (temp file + rename), then mark its row done, or record the error line."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        if res.graph_json is None:
            with self._tx():
                self.con.execute(
                    "UPDATE prompts SET status='error', error=?, wall_s=?, worker=?, finished_at=? WHERE id=?",
                    (res.error or "unknown error", res.wall_s, res.worker, now, res.id),
                )
            return
        data = res.graph_json.encode("utf-8")
        if res.adjacency is not None:
            atomic_write_bytes(self.graphs / f"{res.id}.adjacency.safetensors", res.adjacency)
        atomic_write_bytes(self.graph_path(res.id), data)
        with self._tx():
            self.con.execute(
                """UPDATE prompts SET status='done', error=NULL, top_logit=?, top_prob=?,
                   correct=CASE WHEN expect IS NULL THEN NULL ELSE (trim(expect) = trim(?)) END,
                   n_nodes=?, n_edges=?, replacement_score=?, completeness_score=?, attribution_s=?, wall_s=?,
                   graph_bytes=?, worker=?, finished_at=? WHERE id=?""",
                (res.top_logit, res.top_prob, res.top_logit, res.n_nodes, res.n_edges, res.replacement_score,
                 res.completeness_score, res.attribution_s, res.wall_s, len(data), res.worker, now, res.id),
            )  # fmt: skip

    # ---- runs and summaries ------------------------------------------------------------------------
    def start_run(self, backend: str, workers: int, threads: int) -> int:
        with self._tx():
            cur = self.con.execute(
                "INSERT INTO runs (started, backend, workers, threads) VALUES (?,?,?,?)",
                (time.strftime("%Y-%m-%dT%H:%M:%S"), backend, workers, threads),
            )
        return int(cur.lastrowid)

    def finish_run(self, run: int, n_done: int, n_error: int, wall_s: float) -> None:
        with self._tx():
            self.con.execute(
                "UPDATE runs SET finished=?, n_done=?, n_error=?, wall_s=? WHERE run=?",
                (time.strftime("%Y-%m-%dT%H:%M:%S"), n_done, n_error, round(wall_s, 3), run),
            )

    def counts(self) -> dict[str, int]:
        c = {"pending": 0, "done": 0, "error": 0}
        for r in self.con.execute("SELECT status, count(*) AS n FROM prompts GROUP BY status"):
            c[r["status"]] = r["n"]
        return c

    def rows(self, status: str | None = "done") -> Iterator[sqlite3.Row]:
        """Catalogue rows in input order (all statuses with status=None)."""
        q = "SELECT * FROM prompts" + (" WHERE status=?" if status else "") + " ORDER BY line, id"
        yield from self.con.execute(q, (status,) if status else ())

    def close(self) -> None:
        self.con.close()
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def _tx(self):
        return _Transaction(self.con)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error): one writer at a time, never half a record."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type, exc, tb) -> None:
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")


def _lock(root: Path):
    """Hold DIR/.lock for the writer's lifetime: two runs on one store would trace the same prompts twice."""
    import fcntl

    f = open(root / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise MechscopeError(
            f"store {root} is in use by another trace-many run; wait for it or use another --store"
        ) from None
    return f


def _item(r: sqlite3.Row) -> PromptItem:
    return PromptItem(r["id"], r["line"], r["prompt"], tuple(json.loads(r["targets"])), r["grp"], r["expect"])


def _short(v: object) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."
