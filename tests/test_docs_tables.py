"""Every generated table in README.md and docs/ matches the JSON it names, and every results JSON records where
it came from (fast: no model, no torch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mechscope import docs_tables, provenance

ROOT = Path(__file__).resolve().parents[1]


def test_every_generated_table_matches_its_json():
    problems = docs_tables.check(ROOT)
    assert not problems, "stale tables (regenerate: python -m mechscope.docs_tables --write):\n" + "\n".join(problems)


def test_there_are_generated_tables():
    names = {b["name"] for d in provenance.DOCS(ROOT) for b in docs_tables.blocks(d)}
    assert {"lens-headline", "busy-threads", "first-hour"} <= names


def test_a_stale_table_names_the_file_the_number_and_the_json(tmp_path):
    src = ROOT / "reports/speed/bench_busy_threads.json"
    (tmp_path / "reports").mkdir()
    shutil.copy(src, tmp_path / "reports/b.json")
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n")
    rows = docs_tables.generate("busy-threads", ["reports/b.json"], tmp_path)
    rows[2] = rows[2].replace("3.39 s", "3.10 s")  # a hand edit
    doc = tmp_path / "docs/bench.md"
    doc.write_text("text\n<!-- table: busy-threads reports/b.json -->\n" + "\n".join(rows) + "\n<!-- /table -->\n")
    (problem,) = docs_tables.check(tmp_path)
    assert problem.startswith("docs/bench.md:5:") and "'3.10 s'" in problem and "'3.39 s'" in problem, problem
    assert "reports/b.json" in problem and "'quiet'" in problem, problem
    assert docs_tables.write(tmp_path) == ["docs/bench.md"] and docs_tables.check(tmp_path) == []


def test_an_unclosed_marker_or_unknown_renderer_is_refused(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("<!-- table: busy-threads reports/b.json -->\n| a |\n")
    with pytest.raises(SystemExit, match="README.md:1: table marker without its closing"):
        docs_tables.check(tmp_path)
    (tmp_path / "README.md").write_text("<!-- table: nope reports/b.json -->\n<!-- /table -->\n")
    with pytest.raises(SystemExit, match="unknown table renderer 'nope'"):
        docs_tables.check(tmp_path)


def test_provenance_block_and_audit_levels(tmp_path):
    p = provenance.collect()
    assert p["commit"] and p["versions"]["python"] and p["machine"]["cores"] and p["machine"]["cpu"]
    full = tmp_path / "full.json"
    full.write_text(json.dumps(provenance.stamp({"x": 1})))
    none = tmp_path / "none.json"
    none.write_text('{"x": 1}')
    assert provenance.inspect(none) == {
        "level": "none",
        "have": {},
        "lacks": list(provenance.FULL_KEYS),
        "reconstructed": False,
    }
    if p["commit"] != "unknown":
        assert provenance.inspect(full)["level"] == "full"
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"x": 1, "provenance": {"reconstructed": True, "commit_added": "abc"}}))
    assert provenance.inspect(rec)["level"] == "partial"


def test_every_committed_results_json_records_its_origin():
    none = [str(f.relative_to(ROOT)) for f in provenance.result_files(ROOT) if provenance.inspect(f)["level"] == "none"]
    assert not none, f"results without provenance (stamp them: mechscope.provenance.stamp): {none}"
