"""The remote GPU run at tiny scale on the CPU: pack here, the device's calls (pieces arriving one call at a time,
the run, the result batches) on a local copy, unpack here; pieces checked both ways."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mechscope.errors import MechscopeError
from mechscope.training import remote, remote_run
from mechscope.training.pieces import MIB, missing, read_pieces, write_pieces
from mechscope.transcoders.storage import load_transcoders


def test_pieces_round_trip_and_catch_damage(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(bytes(range(256)) * 400)  # 100 KiB
    (src / "b.txt").write_text("hello")
    m = write_pieces({"x/a.bin": src / "a.bin", "b.txt": src / "b.txt"}, tmp_path / "p", "payload", 16 * 1024)
    assert len(m["pieces"]) > 6 and all(p["size"] <= 16 * 1024 for p in m["pieces"])
    out = read_pieces(m, tmp_path / "p", tmp_path / "out")
    assert (tmp_path / "out" / "x" / "a.bin").read_bytes() == (src / "a.bin").read_bytes() and len(out) == 2
    piece = tmp_path / "p" / m["pieces"][2]["name"]
    data = piece.read_bytes()
    piece.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # one byte flipped
    (tmp_path / "p" / m["pieces"][4]["name"]).unlink()
    assert missing(m, tmp_path / "p") == [m["pieces"][2]["name"], m["pieces"][4]["name"]]
    with pytest.raises(MechscopeError, match="2 of .* pieces .* missing or damaged") as e:
        read_pieces(m, tmp_path / "p", tmp_path / "again")
    assert "\n" not in str(e.value)


def test_result_batches_fit_what_a_call_brings_back():
    pieces = [{"name": f"result.{i:03d}", "size": remote.PIECE_OUT_MIB * MIB} for i in range(9)]
    groups = remote_run.batches(pieces)
    assert sorted(i for g in groups for i in g) == list(range(9))
    for g in groups:
        assert len(g) <= remote.OUT_FILES - 2 and sum(pieces[i]["size"] for i in g) <= remote.OUT_MIB * MIB


def test_budget_fills_the_share_and_repeats_the_text():
    tokens, repeats = remote_run._budget({"cache_epochs": 2}, rate=10_000, seconds=100, corpus_tokens=200_000)
    assert tokens == 850_000 and repeats == 3  # 425k distinct tokens (+10%) from 200k of text


def test_bad_options_are_refused_when_packing():
    with pytest.raises(MechscopeError, match="--k cannot exceed --features"):
        remote.parse_options(["gemma3-270m"], ["gemma3-270m:k=4096"])
    with pytest.raises(MechscopeError, match="MODEL:FIELD=VALUE"):
        remote.parse_options(["gemma3-270m"], ["gemma3-270m:no_such=1"])


def test_remote_flow_at_tiny_scale(tiny_dir, tmp_path, monkeypatch):
    here, dev = tmp_path / "here", tmp_path / "device"
    here.mkdir()
    monkeypatch.chdir(here)
    model = str(tiny_dir)
    opts = [f"{model}:{kv}" for kv in ("corpus=" + str(tiny_dir / "corpus.txt"), "tokens=800", "features=32")]
    opts += [f"{model}:{kv}" for kv in ("k=4", "seq_len=32", "batch_size=4", "skip_init_tokens=200")]
    opts += [f"{model}:cache_gb=0.0004", f"{model}:cache_epochs=2"]
    root = Path(".remote")
    man = remote.pack([model], opts, root, piece_mib=0.25)
    pieces = [p["name"] for p in man["payload"]["pieces"]]
    assert len(pieces) > 2
    calls = remote.plan(root)
    assert len(calls) == len(pieces) and "run --dir .remote" in calls[-1]["command"]
    assert all(len(c["command"]) < 2000 for c in calls)

    # the device: each call carries the manifest and one piece, which stay on the machine between calls
    (dev / ".remote" / "pieces").mkdir(parents=True)
    monkeypatch.chdir(dev)
    for i, call in enumerate(calls):
        for path in call["carry"]:
            shutil.copy2(here / path, dev / path)
        said = remote_run.receive(root)
        assert said.startswith(f"{i + 1} of {len(pieces)} pieces here")
    assert said.endswith("ready to run")
    results = remote_run.run(root, tmp_path / "OUT0", seconds=600, device="cpu", piece_mib=4 / 1024)
    r = results["models"][tiny_dir.name]
    assert "error" not in r, r
    assert r["summary"]["steps"] == 6 and r["summary"]["distinct_tokens"] < r["summary"]["tokens_trained"]
    n_batches = len(remote_run.batches(results["pieces"]["pieces"]))
    assert n_batches > 1  # small result pieces: more than one call brings them back
    outs = [tmp_path / "OUT0"]
    for b in range(1, n_batches):
        outs.append(tmp_path / f"OUT{b}")
        remote_run.emit(root, outs[-1], b)

    # back here: the sets from the returned folders, checked
    monkeypatch.chdir(here)
    with pytest.raises(MechscopeError, match="missing or damaged"):
        remote.unpack(outs[:1], here / "sets", root)
    res = remote.unpack(outs, here / "sets", root)
    ts = load_transcoders(here / "sets" / tiny_dir.name)
    assert ts.meta["training"]["features"] == 32 and ts.meta["dtype"] == "int8"
    assert res["models"][tiny_dir.name]["summary"]["steps"] == 6


def test_run_refuses_a_missing_piece(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts = [f"{tiny_dir}:corpus={tiny_dir / 'corpus.txt'}", f"{tiny_dir}:tokens=300", f"{tiny_dir}:features=32"]
    opts += [f"{tiny_dir}:k=4", f"{tiny_dir}:skip_init_tokens=100", f"{tiny_dir}:seq_len=32"]
    man = remote.pack([str(tiny_dir)], opts, Path(".remote"), piece_mib=0.25)
    (Path(".remote/pieces") / man["payload"]["pieces"][1]["name"]).unlink()
    assert remote.main(["run", "--out", str(tmp_path / "OUT"), "--device", "cpu"]) == 2
    assert f"missing: {man['payload']['pieces'][1]['name']}" in remote_run.receive(Path(".remote"))
    assert json.loads(Path(".remote/manifest.json").read_text())["format"] == "mechscope-remote"
    assert not (tmp_path / "OUT").exists()


@pytest.mark.real
def test_a_carried_gguf_converts_to_the_same_weights(tmp_path, monkeypatch):
    """The device's conversion, here: smollm2's GGUF and tokenizer as packed, converted in a fresh cache, must give
    this machine's weights tensor for tensor (install raises otherwise)."""
    from mechscope.models.loading import converted_dir
    from mechscope.training.remote_model import install, payload_files

    files, entry = payload_files("smollm2-135m")
    work = tmp_path / "work"
    for name, src in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).symlink_to(src)
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    assert install("smollm2-135m", entry, work) == "smollm2-135m"
    assert (converted_dir("smollm2-135m") / "model.safetensors").exists()
    bad = dict(entry, digest={**entry["digest"], "model.norm.weight": "0" * 64})
    with pytest.raises(MechscopeError, match="differ from the packing machine's in 1 tensors"):
        install("smollm2-135m", bad, work)
