"""Where a number came from: one `provenance` block for every results JSON that a benchmark or an evaluation
writes (commit and dirty flag, the transcoder set's and feature index's fingerprints where given, library
versions, CPU model, cores, threads, load average, date), and an audit of the results JSON already in the
repository (`python -m mechscope.provenance audit`, which writes reports/PROVENANCE.md).

>>> p = collect()
>>> sorted(p)
['commit', 'date', 'dirty', 'machine', 'versions']
>>> sorted(p["machine"])
['cores', 'cpu', 'load', 'threads']
>>> stamp({"x": 1})["x"], "provenance" in stamp({"x": 1})
(1, True)

A block is *full* when it names the commit, the versions and the machine (CPU, cores, load); a JSON whose
block was recovered after the fact (`"reconstructed": true`: the commit that added the file) is *partial*.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout, when mechscope runs from one
LIBRARIES = ("torch", "transformers", "mechscope")
FULL_KEYS = ("commit", "versions", "cpu", "cores", "load", "date")  # what a full block has


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def git_commit() -> tuple[str, bool | None]:
    """(HEAD's hash, whether tracked files differ from it); ("unknown", None) outside a checkout of mechscope."""
    top = _git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != ROOT:
        return "unknown", None
    head = _git("rev-parse", "HEAD") or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    return head, (bool(status) if status is not None else None)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    """Python's version and the installed versions of torch, transformers and mechscope (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    """CPU model, cores, threads (torch's, when torch is already imported; never imported for this) and the
    1/5/15-minute load averages."""
    threads = None
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "load": load}


def set_identity(set_dir: str | Path) -> dict:
    """A transcoder set's path and fingerprint (the hash feature indexes record; "" without checksums)."""
    from mechscope.features.integrity import set_fingerprint
    from mechscope.paths import portable_path

    return {"path": portable_path(set_dir), "fingerprint": set_fingerprint(set_dir)}


def index_identity(path: str | Path) -> dict:
    """A feature index's path and fingerprint (a hash of its meta table: model, set fingerprint, config, build
    time), with the set fingerprint and build time it records; fingerprint "" when unreadable."""
    from mechscope.paths import cache_dir, portable_path
    from mechscope.store import get_meta, reader

    shown = "shipped index (unpacked)" if str(path).startswith(str(cache_dir())) else portable_path(path)
    try:
        with reader(path) as con:
            meta = get_meta(con)
    except Exception:  # a missing or damaged index: its identity is unknown, the result is still written
        return {"path": shown, "fingerprint": ""}
    fp = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {
        "path": shown,
        "fingerprint": fp,
        "transcoder_fingerprint": meta.get("transcoder_fingerprint", ""),
        "built": meta.get("built"),
    }


def model_set(model: str) -> Path | None:
    """The transcoder set a model uses by default (user-trained, else shipped); None when it has none."""
    from mechscope.errors import MechscopeError
    from mechscope.transcoders.registry import find_transcoders

    try:
        p = find_transcoders(model)
    except (MechscopeError, OSError):
        return None
    return p if (Path(p) / "config.json").exists() else None


def collect(set_dir: str | Path | None = None, index: str | Path | None = None, model: str | None = None) -> dict:
    """The provenance block of a result measured now; `set_dir` / `index` add the set's and index's identity
    (`model` alone: the set that model uses by default)."""
    if model and not set_dir:
        set_dir = model_set(model)
    commit, dirty = git_commit()
    out: dict = {
        "commit": commit,
        "dirty": dirty,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "machine": machine(),
    }
    if set_dir:
        out["set"] = set_identity(set_dir)
    if index:
        out["index"] = index_identity(index)
    return out


def stamp(
    result: dict, set_dir: str | Path | None = None, index: str | Path | None = None, model: str | None = None
) -> dict:
    """`result` with its `provenance` block (added in place, last; returned for chaining)."""
    result["provenance"] = collect(set_dir, index, model)
    return result


# ---- the audit of results already written ------------------------------------------------------------------------

RESULT_DIRS = ("reports",)
SHIPPED_RESULTS = ("mechscope/artifacts/transcoders/*/eval.json", "mechscope/artifacts/transcoders/*/lens.json")
NOT_RESULTS = ("config.json", "manifest.json")  # transcoder-set configs and build manifests: inputs, not numbers
SIDECAR = ".provenance.json"  # beside a results JSON that is not an object (a list): its provenance block
OTHERS = ("reports/scale/",)  # results whose authors stamp them (reconstruct leaves them alone)


def sidecar(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".json") + SIDECAR)


def result_files(root: Path = ROOT) -> list[Path]:
    """Every results JSON: under reports/ (not set configs) and the shipped sets' eval.json / lens.json; in a
    checkout, only those git tracks (a result not committed yet is its author's to stamp)."""
    files = [
        p
        for d in RESULT_DIRS
        for p in (root / d).rglob("*.json")
        if p.name not in NOT_RESULTS and not p.name.endswith(SIDECAR)
    ]
    files += [p for pat in SHIPPED_RESULTS for p in root.glob(pat)]
    tracked = _git("ls-files", "--", *RESULT_DIRS, "mechscope/artifacts") if root == ROOT else None
    if tracked is not None:
        keep = {root / line for line in tracked.splitlines()}
        files = [p for p in files if p in keep]
    return sorted(set(files))


def _legacy(d: dict) -> dict:
    """What an older JSON records of its origin outside a provenance block (a `meta` block or top-level keys)."""
    src = {**d, **(d.get("meta") if isinstance(d.get("meta"), dict) else {})}
    have = {}
    if src.get("commit"):
        have["commit"] = src["commit"]
    if src.get("cpu"):
        have["cpu"] = src["cpu"]
    if src.get("cores") or src.get("cpus"):
        have["cores"] = src.get("cores") or src.get("cpus")
    if any(k in src for k in ("load", "load_end", "load_before", "load_1m")):
        have["load"] = True
    return have


def _rows_have_load(d: dict) -> bool:
    for key in ("rows", "results", "runs"):
        rows = d.get(key)
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            if any(k in rows[0] for k in ("load", "load_1m", "load_before", "load_after")):
                return True
    return False


def inspect(path: Path) -> dict:
    """What one results JSON records of its origin: `have` (found keys), `lacks`, `level` full/partial/none."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"level": "none", "have": {}, "lacks": list(FULL_KEYS), "error": str(e)}
    if not isinstance(d, dict):
        if not sidecar(path).exists():
            return {"level": "none", "have": {}, "lacks": list(FULL_KEYS), "error": "not a JSON object"}
        d = json.loads(sidecar(path).read_text())
    p = d.get("provenance") if isinstance(d.get("provenance"), dict) else {}
    have: dict = {}
    reconstructed = bool(p.get("reconstructed"))
    if p.get("commit") and p["commit"] != "unknown":
        have["commit"] = p["commit"]
    if p.get("versions"):
        have["versions"] = True
    m = p.get("machine") or {}
    for k in ("cpu", "cores", "load"):
        if m.get(k):
            have[k] = m[k] if k != "load" else True
    if p.get("date"):
        have["date"] = p["date"]
    for k, v in _legacy(d).items():
        have.setdefault(k, v)
    if "load" not in have and _rows_have_load(d):
        have["load"] = True
    if p.get("set"):
        have["set"] = True
    if p.get("index"):
        have["index"] = True
    if reconstructed and p.get("commit_added"):
        have.setdefault("commit_added", p["commit_added"])
    lacks = [k for k in FULL_KEYS if k not in have]
    if not lacks and not reconstructed:
        level = "full"
    elif have:
        level = "partial"
    else:
        level = "none"
    return {"level": level, "have": have, "lacks": lacks, "reconstructed": reconstructed}


def commit_added(path: Path, root: Path = ROOT) -> str | None:
    """The commit that added `path` to the repository (None when untracked)."""
    out = _git("log", "--diff-filter=A", "--format=%H", "--", str(path.relative_to(root)))
    return out.splitlines()[-1] if out else None


def reconstruct(path: Path, root: Path = ROOT) -> bool:
    """Add a reconstructed provenance block to a results JSON that has none: the commit that added the file and
    what the file itself records (never a CPU, load or version it does not). False when nothing was written."""
    if path.relative_to(root).as_posix().startswith(OTHERS):
        return False
    text = path.read_text()
    d = json.loads(text)
    if (isinstance(d, dict) and "provenance" in d) or (not isinstance(d, dict) and sidecar(path).exists()):
        return False
    added = commit_added(path, root)
    if not added:
        return False
    block: dict = {
        "reconstructed": True,
        "commit_added": added,
        "note": "written before results recorded their provenance: commit_added is the commit that added this "
        "file, not necessarily the one measured; machine, load and versions are unknown unless recorded above",
    }
    if not isinstance(d, dict):  # a list: the block goes beside it
        sidecar(path).write_text(json.dumps({"of": path.name, "provenance": block}, indent=1) + "\n")
        return True
    block.update({f"recorded_{k}": v for k, v in _legacy(d).items() if k != "load"})
    # appended as text, so the rest of the file stays byte for byte as it was measured
    body = text.rstrip()
    assert body.endswith("}")
    pad = " " if text.startswith("{\n ") else ""
    pad = "  " if text.startswith("{\n  ") else pad
    sep = "\n" if pad else ""
    inner = json.dumps(block, indent=len(pad) or None, ensure_ascii=False).replace("\n", "\n" + pad)
    path.write_text(body[:-1].rstrip() + f',{sep}{pad}"provenance": {inner}{sep}}}' + text[len(body) :])
    json.loads(path.read_text())  # still one JSON object
    return True


TABLE_RE = re.compile(r"<!-- table: (?P<name>[\w-]+) (?P<sources>[^>]*?) ?-->")
TABLE_END = "<!-- /table -->"
GENERATED_BEGIN = (TABLE_RE, re.compile(r"<!-- studies:begin -->"))
GENERATED_END = (TABLE_END, "<!-- studies:end -->")


def DOCS(root: Path = ROOT) -> list[Path]:  # noqa: N802 (a constant computed for a root)
    """The documents whose tables hold numbers: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def hand_written_tables(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(document, section, header) of every Markdown table outside the generated blocks."""
    out = []
    for doc in DOCS(root):
        inside, prev, section = False, "", ""
        for line in doc.read_text().splitlines():
            s = line.strip()
            if s.startswith("#"):
                section = s.lstrip("#").strip()
            if any(p.match(s) for p in GENERATED_BEGIN):
                inside = True
            elif s in GENERATED_END:
                inside = False
            elif not inside and s.startswith("|") and not prev.startswith("|"):
                out.append((doc.relative_to(root).as_posix(), section, s[:90]))
            prev = s
    return out


def audit_markdown(root: Path = ROOT) -> str:
    """reports/PROVENANCE.md: every results JSON with what its provenance lacks, and the hand-written tables."""
    rows = [(p.relative_to(root).as_posix(), inspect(p)) for p in result_files(root)]
    count = {k: sum(r["level"] == k for _, r in rows) for k in ("full", "partial", "none")}
    md = [
        "# Provenance of the results JSON",
        "",
        "Generated by `python -m mechscope.provenance audit --write`; do not edit by hand. A result is **full** when",
        "its JSON records the commit, library versions, CPU model, cores, load and date (`mechscope.provenance`);",
        "**partial** when some of these are missing or were reconstructed after the fact (`reconstructed`: the",
        "commit that added the file, `commit_added`, stands in for the commit measured); **none** when it records",
        "nothing. `set` / `index`: whether the transcoder set's / feature index's fingerprint is recorded (only",
        "results that use one can have it). Re-measuring a partial result with today's scripts makes it full.",
        "",
        f"**{len(rows)} results JSON: {count['full']} full, {count['partial']} partial, {count['none']} none.**",
        "",
        "| file | level | commit | lacks | set | index |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        h = r["have"]
        commit = (
            f"`{str(h['commit'])[:7]}`"
            if "commit" in h
            else f"added in `{h['commit_added'][:7]}`"
            if "commit_added" in h
            else "–"
        )
        md.append(
            f"| `{name}` | {r['level']} | {commit} | {', '.join(r['lacks']) or '–'} | "
            f"{'yes' if h.get('set') else '–'} | {'yes' if h.get('index') else '–'} |"
        )
    hand = hand_written_tables(root)
    md += [
        "",
        "## Hand-written tables",
        "",
        "Tables in README.md and docs/ that are not generated from a JSON (`python -m mechscope.docs_tables`",
        "regenerates the generated ones, between `<!-- table: ... -->` markers). Their numbers are quoted from",
        "the JSON or console output the text beside them names; they are not checked.",
        "",
        "| file | section | header |",
        "|---|---|---|",
    ]
    md += [f"| `{f}` | {sec.replace('|', '/')} | {head.replace('|', '/')} |" for f, sec, head in hand]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mechscope.provenance", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    au = sub.add_parser("audit", help="list every results JSON with what its provenance lacks")
    au.add_argument("--write", action="store_true", help="write reports/PROVENANCE.md")
    au.add_argument("--check", action="store_true", help="exit 1 when reports/PROVENANCE.md is out of date")
    sub.add_parser("reconstruct", help="add a reconstructed block (commit that added the file) where none is")
    sub.add_parser("show", help="print the provenance block of a result measured now")
    a = ap.parse_args(argv)
    if a.cmd == "show":
        print(json.dumps(collect(), indent=1))
        return 0
    if a.cmd == "reconstruct":
        done = [p for p in result_files() if inspect(p)["level"] != "full" and reconstruct(p)]
        for p in done:
            print(f"reconstructed {p.relative_to(ROOT)}")
        print(f"{len(done)} files")
        return 0
    md = audit_markdown()
    out = ROOT / "reports" / "PROVENANCE.md"
    if a.check:
        if not out.exists() or out.read_text() != md:
            print(f"{out.relative_to(ROOT)} is out of date; run: python -m mechscope.provenance audit --write")
            return 1
        return 0
    if a.write:
        out.write_text(md)
        print(f"wrote {out.relative_to(ROOT)}")
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
