"""Careless and hostile inputs to the library behind the CLI: one clear line (MechscopeError), never a traceback, and
refusals that come before the heavy work — unknown models, bad transcoder configs, unwritable homes, damaged caches,
prompts too long for the context or the memory limit."""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mechscope.errors import MechscopeError

REPO = Path(__file__).resolve().parent.parent


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ---- unknown model, bad transcoder sets ------------------------------------------------------------------------
def test_unknown_model_is_named_as_such():
    from mechscope.transcoders.registry import find_transcoders

    with pytest.raises(MechscopeError) as e:
        find_transcoders("nope")
    msg = _one_line(e)
    assert "unknown model 'nope'" in msg and "gemma3-270m" in msg and "no transcoders" not in msg


def test_cli_unknown_model_is_one_line():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-m", "mechscope", "trace", "--model", "nope", "Dallas is"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown model" in lines[0], p.stderr


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda c: c.pop("d_transcoder"), "d_transcoder"),
        (lambda c: c.update(d_transcoder="96"), "d_transcoder"),
        (lambda c: c.update(n_layers=-1), "n_layers"),
        (lambda c: c.update(d_model=10**12), "d_model"),
        (lambda c: c.update(k=True), "k"),
        (lambda c: c.update(k=10**6), "k"),
        (lambda c: c.pop("activation"), "activation"),
        (lambda c: c.update(skip="yes"), "skip"),
        (lambda c: c.update(files=[]), "files"),
        (lambda c: c.pop("files"), "files"),
    ],
)
def test_bad_transcoder_config_is_one_line(tiny_tc_dir, tmp_path, change, field):
    from mechscope.transcoders.storage import load_transcoders

    d = tmp_path / "set"
    shutil.copytree(tiny_tc_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    change(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MechscopeError) as e:
        load_transcoders(d)
    assert field in _one_line(e)


def test_transcoder_config_that_is_not_an_object(tiny_tc_dir, tmp_path):
    from mechscope.transcoders.storage import load_transcoders

    d = tmp_path / "set"
    shutil.copytree(tiny_tc_dir, d)
    for text in ("[1, 2]", '"x"', "{", ""):
        (d / "config.json").write_text(text)
        with pytest.raises(MechscopeError) as e:
            load_transcoders(d)
        _one_line(e)


# ---- places we cannot write ----------------------------------------------------------------------------------
def test_unwritable_home_is_one_line(tmp_path, monkeypatch):
    from mechscope.attribution import graph_store
    from mechscope.paths import atomic_dir, atomic_write_text, writable_dir

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("MECHSCOPE_HOME", str(blocker / "home"))  # a file where a directory should be
    for action in (lambda: atomic_write_text(graph_store() / "g.json", "{}"), lambda: writable_dir(graph_store())):
        with pytest.raises(MechscopeError) as e:
            action()
        assert "MECHSCOPE_HOME" in _one_line(e)
    with pytest.raises(MechscopeError) as e:
        with atomic_dir(graph_store() / "set"):
            pass
    _one_line(e)
    monkeypatch.setenv("MECHSCOPE_HOME", "/proc/mechscope-test-home")  # /proc refuses new entries
    with pytest.raises(MechscopeError) as e:
        writable_dir(graph_store())
    _one_line(e)


# ---- damaged caches heal -------------------------------------------------------------------------------------
@pytest.fixture()
def shipped_tiny_index(tiny, tiny_dir, tiny_tc, tmp_path, monkeypatch):
    """A 'shipped' compressed index for the tiny model, unpacked into a private cache."""
    from mechscope.features import IndexConfig, build_index
    from mechscope.features import shipped as index_mod

    built = tmp_path / "built.sqlite"
    build_index(
        tiny,
        tiny_tc,
        built,
        IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=256, seq_len=32, batch_size=4),
        progress=False,
    )
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    with open(built, "rb") as src, lzma.open(shipped / "tiny.sqlite.xz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    monkeypatch.setattr(index_mod, "SHIPPED", shipped)
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    return built


def _new_process(monkeypatch) -> None:
    """Forget which cache files this process already checksummed (as a fresh CLI run would)."""
    from mechscope import paths

    monkeypatch.setattr(paths, "_VERIFIED", set())


@pytest.mark.parametrize("damage", ["truncate", "same-size", "garbage", "delete-record"])
def test_damaged_unpacked_index_is_rebuilt(shipped_tiny_index, monkeypatch, caplog, damage):
    from mechscope.features import FeatureIndex, index_path

    p = index_path("tiny")
    want = FeatureIndex(p).feature(0, 1)
    data = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(data[: len(data) // 3])
    elif damage == "same-size":
        mid = len(data) // 2
        p.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 4096]) + data[mid + 4096 :])
    elif damage == "garbage":
        p.write_bytes(b"not sqlite at all" * 100)
    else:
        Path(str(p) + ".check.json").unlink()
    _new_process(monkeypatch)
    with caplog.at_level("INFO"):
        q = index_path("tiny")
    assert q == p and q.read_bytes() == data
    notices = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert FeatureIndex(q).feature(0, 1) == want
    _new_process(monkeypatch)
    caplog.clear()
    with caplog.at_level("INFO"):
        index_path("tiny")  # healthy now: no second rebuild
    assert not [r for r in caplog.records if "rebuilding" in r.getMessage()]


def test_damage_after_the_check_is_one_line(shipped_tiny_index, monkeypatch):
    """A file damaged while a process already trusts it: queries fail with one line, and the next run heals it."""
    from mechscope.features import FeatureIndex, index_path

    p = index_path("tiny")
    idx = FeatureIndex(p)
    data = p.read_bytes()
    p.write_bytes(data[:4096] + b"\0" * (len(data) - 4096))
    with pytest.raises(MechscopeError) as e:
        idx.labels()
        idx.feature(0, 1)
    assert "damaged" in _one_line(e)
    _new_process(monkeypatch)
    assert FeatureIndex(index_path("tiny")).feature(0, 1)["id"] == "0/1"


def test_damaged_user_index_is_one_line(shipped_tiny_index, tmp_path):
    from mechscope.features import FeatureIndex

    user = tmp_path / "user.sqlite"
    user.write_bytes(shipped_tiny_index.read_bytes()[:8192])
    with pytest.raises(MechscopeError) as e:
        FeatureIndex(user).feature(0, 1)
    assert "damaged" in _one_line(e) and "index-features" in str(e.value)


def test_converted_model_cache_checksum(tmp_path):
    from mechscope.models.loading import CACHE_MARKER, cache_is_complete
    from mechscope.paths import file_sha256

    d = tmp_path / "m"
    d.mkdir()
    f = d / "model.safetensors"
    f.write_bytes(b"weights" * 1000)
    st = f.stat()
    (d / CACHE_MARKER).write_text(
        json.dumps(
            {
                "format": 1,
                "files": {f.name: st.st_size},
                "checks": {f.name: {"sha256": file_sha256(f), "mtime_ns": st.st_mtime_ns}},
            }
        )
    )
    assert cache_is_complete(d)
    f.write_bytes(b"WEIGHTS" * 1000)  # same size, new content, new mtime
    assert not cache_is_complete(d)
    f.write_bytes(b"weights" * 1000)  # restored content: the checksum matches again
    assert cache_is_complete(d)
    f.write_bytes(b"weights" * 999)
    assert not cache_is_complete(d)


# ---- resource guards before any work -------------------------------------------------------------------------
def test_trace_is_refused_before_any_forward(tiny, tiny_tc, monkeypatch):
    import importlib

    from mechscope.attribution import AttributionConfig, attribute

    attr_mod = importlib.import_module("mechscope.attribution.attribute")

    def no_forward(*a, **k):
        raise AssertionError("the forward ran before the memory check")

    monkeypatch.setattr(attr_mod, "prepare", no_forward)
    with pytest.raises(MechscopeError) as e:
        attribute(tiny, tiny_tc, "Dallas is in the state of Texas " * 10, AttributionConfig(max_memory_gb=0.01))
    msg = _one_line(e)
    assert "--max-memory-gb" in msg and "GB" in msg


def test_memory_limit_from_the_environment(monkeypatch):
    from mechscope.attribution import AttributionConfig

    monkeypatch.setenv("MECHSCOPE_MAX_MEMORY_GB", "2.5")
    assert AttributionConfig().max_memory_gb == 2.5
    monkeypatch.setenv("MECHSCOPE_MAX_MEMORY_GB", "lots")
    with pytest.raises(MechscopeError) as e:
        AttributionConfig()
    _one_line(e)


def test_intervene_and_probe_guards(tiny, tiny_tc, monkeypatch):
    from mechscope.features.probe import probe_features
    from mechscope.interventions import Edit, FeatureRef, intervene

    edit = [Edit(FeatureRef(0, 1), "ablate")]
    with pytest.raises(MechscopeError) as e:  # prompt + generated tokens beyond the 256-token context
        intervene(tiny, tiny_tc, "Dallas is in the state of", edit, generate=100_000)
    assert "context" in _one_line(e)
    monkeypatch.setenv("MECHSCOPE_MAX_MEMORY_GB", "0.0001")
    with pytest.raises(MechscopeError) as e:
        intervene(tiny, tiny_tc, "Dallas is in the state of", edit, generate=4)
    assert "--max-memory-gb" in _one_line(e)
    with pytest.raises(MechscopeError) as e:
        probe_features(tiny, tiny_tc, "the cat sat on the mat")
    assert "--max-memory-gb" in _one_line(e)


def test_generation_stops_when_cancelled(tiny, tiny_tc):
    from mechscope.cancel import Cancelled, cancel_scope
    from mechscope.interventions import Edit, FeatureRef, intervene

    stop = threading.Event()
    stop.set()
    with cancel_scope(stop), pytest.raises(Cancelled):
        intervene(tiny, tiny_tc, "Dallas is in the state of", [Edit(FeatureRef(0, 1), "ablate")], generate=8)


LONG_PROMPT = r"""
import resource, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.time()
from mechscope.attribution import AttributionConfig
from mechscope.attribution.precheck import precheck_trace
from mechscope.errors import MechscopeError
words = ("Dallas is a large city in Texas and the people there " * 500).split()[:5000]
out = []
for prompt, gb in ((" ".join(words), 8.0), (" ".join(words[:60]), 0.001)):
    try:
        precheck_trace(sys.argv[2], prompt, AttributionConfig(max_memory_gb=gb), transcoders=sys.argv[3])
        out.append("accepted")
    except MechscopeError as e:
        out.append(str(e))
print("\n".join(out))
print(f"rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} s={time.time() - t0:.1f}")
"""


def test_long_prompt_refused_before_the_model_loads(tiny_dir, tiny_tc_dir):
    """5,000 words: refused from the tokenizer and config files alone, in a fresh process that stays small."""
    p = subprocess.run(
        [sys.executable, "-c", LONG_PROMPT, str(REPO), str(tiny_dir), str(tiny_tc_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    too_long, too_big, stats = p.stdout.strip().splitlines()
    assert "context" in too_long and "--max-memory-gb" in too_big
    rss = float(stats.split()[0].split("=")[1])
    print(f"long prompt refused: {stats} (machine shared)")
    assert rss < 1024, stats
