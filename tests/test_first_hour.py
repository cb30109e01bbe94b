"""The first hour: the CLI answers fast and before torch loads, slow steps always say what they do (and never
"done" when interrupted), and likely mistakes get a hint that names what to do instead."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from mechscope import progress
from mechscope.errors import MechscopeError


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["trace", "--help"],
        ["trace", "Dallas is", "--node-threshold", "3"],  # an argument error
        ["trace", "Dallas is", "--model", "no-such-model"],  # refused before the model, before torch
        ["train-transcoders", "--help"],
        ["eval-lens", "--factor", "7"],
        ["study", "--help"],
    ],
)
def test_help_and_refusals_never_import_torch(argv):
    r = _run(
        "import sys\nfrom mechscope.cli import main\n"
        f"rc = main({argv!r})\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc)"
    )
    assert "HEAVY [] " in r.stdout, (r.stdout, r.stderr[-2000:])
    rc = int(r.stdout.split("HEAVY [] ")[1].split()[0])
    if "--help" in argv:
        assert rc == 0
    else:
        assert rc == 2 and len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr


def test_every_command_builds_its_options_without_torch():
    r = _run(
        "import sys\nfrom mechscope.cli import build_parser\nfrom mechscope.cli._common import COMMANDS\n"
        "build_parser()\nprint(len(COMMANDS), 'torch' in sys.modules)"
    )
    n, torch_loaded = r.stdout.split()
    assert int(n) >= 15 and torch_loaded == "False", r.stderr


@pytest.fixture
def captured(monkeypatch):
    """Progress lines as the CLI prints them (logger 'mechscope.progress'), mode restored afterwards."""
    lines: list[str] = []
    progress.configure("text")

    class H(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            lines.append(rec.getMessage())

    log = logging.getLogger("mechscope.progress")
    h = H()
    log.addHandler(h)
    old = log.level
    log.setLevel(logging.INFO)
    yield lines
    log.removeHandler(h)
    log.setLevel(old)
    progress.configure("text")


def test_step_says_start_heartbeat_and_done(captured):
    with progress.step("working hard", after_s=0.05, heartbeat_s=0.1):
        time.sleep(0.45)
    assert captured[0] == "working hard…"
    assert any("still working" in ln for ln in captured[1:-1])
    assert captured[-1].startswith("working hard: done in")


@pytest.mark.parametrize("exc, word", [(KeyboardInterrupt, "interrupted after"), (RuntimeError, "stopped by an error")])
def test_an_interrupted_step_never_says_done(captured, exc, word):
    with pytest.raises(exc):
        with progress.step("attributing", after_s=0.0):
            time.sleep(0.1)
            raise exc()
    assert captured[-1].startswith(f"attributing: {word}") and not any("done" in ln for ln in captured)
    with pytest.raises(exc):
        with progress.Progress("indexing", total=10, unit="tokens", after_s=0.0, every_s=0.05, bar=False) as bar:
            bar.update(3)
            time.sleep(0.15)
            raise exc()
    assert "indexing: 3 tokens of 10 tokens (30%)" in " ".join(captured)
    assert captured[-1].startswith(f"indexing: {word}")


def test_a_quick_step_says_nothing(captured):
    with progress.step("quick"):
        pass
    with progress.counter("quick bar", 5, "files") as bar:
        bar.update(5)
    assert captured == []


def test_only_the_innermost_step_talks(captured):
    with progress.step("outer", after_s=0.2, heartbeat_s=0.1):
        with progress.step("inner", after_s=0.0, heartbeat_s=0.05):
            time.sleep(0.6)
    assert captured and all(ln.startswith("inner") for ln in captured[:-1]), captured


def test_json_mode_writes_objects_and_quiet_mode_nothing(capsys):
    progress.configure("json")
    try:
        with progress.Progress("unpacking", total=4e6, unit="B", after_s=0.0, every_s=0.05, bar=False) as bar:
            bar.update(1e6)
            time.sleep(0.12)
            bar.update(3e6)
        progress.warn("did you mean ' Texas'?")
        events = [json.loads(ln) for ln in capsys.readouterr().err.splitlines()]
        assert events[0]["event"] == "progress" and events[0]["unit"] == "B" and events[0]["total"] == 4e6
        assert any(e.get("eta_s") is not None for e in events) and events[-2]["event"] == "done"
        assert events[-1] == {"event": "warning", "message": "did you mean ' Texas'?"}
        progress.configure("quiet")
        with progress.step("silent", after_s=0.0):
            time.sleep(0.05)
        assert capsys.readouterr().err == ""
    finally:
        progress.configure("text")
    with pytest.raises(ValueError):
        progress.configure("loud")  # type: ignore[arg-type]


def test_phases_move_with_time_and_finish_at_100(captured):
    with progress.Phases("converting", [("reading", 0.2), ("writing", 0.2)], every_s=0.05, after_s=0.0) as ph:
        time.sleep(0.12)
        mid = ph.bar.done
        ph.next()
        time.sleep(0.12)
    assert 0 < mid < 50 and ph.bar.done == 100
    assert any("(1/2 reading)" in ln for ln in captured) and any("(2/2 writing)" in ln for ln in captured)
    assert captured[-1].startswith("converting: done in")


def test_fmt_helpers():
    assert progress.fmt_seconds(42) == "42 s" and progress.fmt_seconds(185) == "3 min 05 s"
    assert progress.fmt_seconds(3720) == "1 h 02 min"
    assert progress.fmt_count(14_200_000, "B") == "14.2 MB" and progress.fmt_count(1234, "tokens") == "1,234 tokens"


def test_command_watch_speaks_first_then_fills_silences_and_never_after(captured):
    progress._said.clear()
    with progress.watch_command("trace", first_s=0.05, quiet_s=0.3):
        time.sleep(0.15)
        assert captured == ["trace: starting (loading libraries)…"]
        with progress.step("busy", after_s=0.0, heartbeat_s=0.1):  # a talking step: no watcher lines
            time.sleep(0.5)
        n = len(captured)
        assert all(not ln.startswith("trace:") for ln in captured[1:])
        time.sleep(0.45)  # silence between steps: the watcher speaks
        assert any(ln.startswith("trace: still working") for ln in captured[n:])
    n = len(captured)
    time.sleep(0.4)
    assert len(captured) == n
    progress._said.clear()
    with progress.watch_command("quick", first_s=0.2):
        pass
    time.sleep(0.3)
    assert len(captured) == n


def test_cli_quiet_prints_results_only(tiny_dir, tiny_tc_dir, tmp_path):
    out = tmp_path / "g.json"
    cmd = ["trace", "a b c d", "--model", str(tiny_dir), "--transcoders", str(tiny_tc_dir), "--out", str(out), "-q"]
    r = subprocess.run(
        [sys.executable, "-m", "mechscope", *cmd],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and r.stderr.strip() == "" and out.exists(), r.stderr


# ---- mistakes caught where they are made ------------------------------------------------------------------------
def test_target_variants():
    from mechscope.attribution.targets import variants

    assert variants("Texas")[0] == " Texas" and " texas" in variants("Texas")
    assert "Texas" in variants(" Texas") and " Texas" not in variants(" Texas")


def test_target_hint_names_the_likely_variant(tiny):
    import torch

    from mechscope.attribution.targets import target_hints

    def single(t: str) -> int | None:
        ids = tiny.tokenizer(t, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    # a word the tiny BPE holds both with and without its leading space
    words = (tiny.tokenizer.decode([i]) for i in range(tiny.vocab_size))
    w = next(w for w in words if w.isalpha() and single(w) is not None and single(" " + w) is not None)
    probs = torch.zeros(tiny.vocab_size)
    probs[single(" " + w)] = 0.8
    probs[single(w)] = 0.001
    hints = target_hints(tiny, probs, [w])
    assert len(hints) == 1 and f"did you mean {' ' + w!r} (0.800)" in hints[0] and "p = 0.001" in hints[0]
    assert target_hints(tiny, probs, [" " + w]) == []  # the likely token itself: no hint


def test_feature_out_of_range_names_the_range(tiny, tiny_dir, tiny_tc, tmp_path):
    from mechscope.features import FeatureIndex, IndexConfig, build_index

    path, ts = tmp_path / "tiny.sqlite", tiny_tc
    cfg = IndexConfig(corpus=str(tiny_dir / "corpus.txt"), tokens=256, seq_len=32, batch_size=4)
    build_index(tiny, ts, path, cfg, progress=False)
    with pytest.raises(MechscopeError, match=r"out of range: the set has layers 0–\d+ and features 0–\d+"):
        FeatureIndex(path).feature(len(ts), 0)
    with pytest.raises(MechscopeError, match="out of range"):
        FeatureIndex(path).feature(0, ts.d_transcoder)


# ---- the README's two commands --------------------------------------------------------------------------------
def readme_commands() -> list[str]:
    """The README's bash blocks, in order: [0] install and trace, [1] install and test (what CI runs)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_ci_runs_exactly_the_readme_test_command():
    from pathlib import Path

    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text().strip().splitlines()
    cmds = readme_commands()
    assert ci[-1] == cmds[1]
    first = cmds[0]
    # a fresh machine: clone, a virtual environment, the install and a trace, nothing assumed installed
    for part in ("git clone --depth 1", "python3 -m venv .venv", ". .venv/bin/activate", "mechscope trace"):
        assert part in first, part
    assert "wordnet-base" in cmds[1] and "chromium" in cmds[1]


def test_swap_alignment_doubts():
    from mechscope.interventions.swap import alignment_doubts

    same_kind = (["<s>", "Dallas", " is", " in", " the"], ["<s>", "Oak", "land", " is", " in", " the"])
    assert alignment_doubts(*same_kind, bos=True) == []
    one_shared = alignment_doubts(["<s>", "Dallas", " is", " of"], ["<s>", "The", " big", " city", " of"], bos=True)
    assert len(one_shared) == 1 and "share only 1 token" in one_shared[0] and "'Dallas is'" in one_shared[0]
    far_apart = alignment_doubts(["<s>", "A", " is", " of"], ["<s>", "B", "c", "d", "e", "f", " is", " of"], bos=True)
    assert len(far_apart) == 1 and "1 and 5 tokens" in far_apart[0]


def test_swap_plan_carries_its_alignment_warnings(tiny, tiny_tc):
    import importlib

    swap_mod = importlib.import_module("mechscope.interventions.swap")
    words = "alpha beta gamma delta epsilon zeta"
    for donor in ("one two three four " + words.split()[-1], "x y zeta", "omega beta gamma delta epsilon zeta"):
        plan = swap_mod.plan_swap(tiny, tiny_tc, words, donor)
        rt, dt = tiny.tokenize(words), tiny.tokenize(donor)
        bos = tiny.tokenizer.bos_token_id is not None and int(rt.ids[0]) == tiny.tokenizer.bos_token_id
        assert plan.doubts == swap_mod.alignment_doubts(rt.strs, dt.strs, bos=bos)
        assert plan.info()["alignment_warnings"] == plan.doubts
    assert swap_mod.plan_swap(tiny, tiny_tc, words, "x y zeta").doubts or len(tiny.tokenize("zeta").strs) > 2
    assert swap_mod.plan_swap(tiny, tiny_tc, words, "omega " + " ".join(words.split()[1:])).doubts == []


def test_lines_logged_straight_to_the_progress_logger_follow_the_mode(captured, capsys):
    log = logging.getLogger("mechscope.progress")
    log.info("variant 1/3")
    assert captured == ["variant 1/3"]
    progress.configure("quiet")
    log.info("variant 2/3")
    assert captured == ["variant 1/3"]
    progress.configure("json")
    log.info("variant 3/3")
    assert captured == ["variant 1/3"]
    assert json.loads(capsys.readouterr().err.splitlines()[-1]) == {"event": "log", "message": "variant 3/3"}


def test_a_resumed_step_counts_only_this_runs_rate(monkeypatch):
    """A job resumed at 90% says 90% done, and its time left comes from this run's own rate, not from the 90%
    it did not do now (which would promise the rest in no time)."""
    from mechscope import progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    bar = progress.Progress("indexing", total=1000, bar=False)
    with bar:
        bar.resume(900)
        assert bar.eta_s() is None and "900 of 1,000 (90%)" in bar._text()
        now[0] += 10
        bar.update(10)  # 10 units in 10 s: 90 left take 90 s
        assert bar.eta_s() == pytest.approx(90.0)
