"""Transcoder sets by hub reference, offline: a local directory laid out like a hub repository stands in for the
hub (the download function is replaced), and the real huggingface_hub is used in offline mode for the error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mechscope.errors import MechscopeError
from mechscope.transcoders import load_transcoders
from mechscope.transcoders import hub
from mechscope.transcoders.storage import sha256_file
from test_circuit_tracer import D, L, ct_reference, write_ct_set


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))


class FakeHub:
    """Serves files of `root/<repo_id>/<path>` the way hf_hub_download leaves them: a snapshot path that links to a
    blob named by the file's SHA-256 (what `_verify` checks)."""

    def __init__(self, root: Path, store: Path) -> None:
        self.root, self.store, self.calls = root, store, []

    def download(self, repo_id: str, filename: str, revision: str | None) -> Path:
        self.calls.append((repo_id, filename, revision))
        src = self.root / repo_id / filename
        if not src.is_file():
            raise FileNotFoundError(
                f"404 Client Error: Entry Not Found for url: https://huggingface.co/{repo_id}/{filename}"
            )
        blob = self.store / "blobs" / sha256_file(src)
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        snap = self.store / "snapshots" / (revision or "main") / repo_id / filename
        snap.parent.mkdir(parents=True, exist_ok=True)
        if not snap.exists():
            os.symlink(blob, snap)
        return snap

    def list_files(self, repo_id: str, revision: str | None) -> list[str]:
        base = self.root / repo_id
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeHub:
    f = FakeHub(tmp_path / "repos", tmp_path / "hfcache")
    monkeypatch.setattr(hub, "_download", f.download)
    monkeypatch.setattr(hub, "_list_files", f.list_files)
    return f


def test_parse_ref():
    assert hub.parse_ref("org/repo") == hub.HubRef("org/repo", None, None)
    assert hub.parse_ref("org/repo@v1") == hub.HubRef("org/repo", None, "v1")
    assert hub.parse_ref("org/repo//width_16k/l0@abc") == hub.HubRef("org/repo", "width_16k/l0", "abc")
    assert hub.parse_ref("org/repo/width_16k") == hub.HubRef("org/repo", "width_16k", None)
    assert hub.parse_ref("hf://org/repo/sub/f.npz?revision=r2") == hub.HubRef("org/repo", "sub/f.npz", "r2")
    for bad in ("justaname", "org/", "org/repo//../../etc"):
        with pytest.raises(MechscopeError, match="hub reference"):
            hub.parse_ref(bad)


def test_subfolder_reference_downloads_once_and_loads_exactly(fake, tmp_path):
    raw = write_ct_set(fake.root / "org" / "tcs" / "width_16k", "jumprelu", True, listed=False)
    (fake.root / "org" / "tcs" / "README.md").write_text("other files in the repository are not fetched")
    p = hub.resolve_transcoders("org/tcs//width_16k@v1", n_layers=L, d_model=D, progress=False)
    assert ("org/tcs", "width_16k/config.yaml", "v1") in fake.calls
    assert sorted(c[1] for c in fake.calls) == ["width_16k/config.yaml"] + [
        f"width_16k/layer_{l}.safetensors" for l in range(L)
    ]
    ts = load_transcoders(p, n_layers=L, d_model=D)  # our format: SHA-256 checked
    assert ts.meta["source"] == "hub:org/tcs//width_16k@v1" and ts[0].cfg.activation == "jumprelu"
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(0))
    for tc, t in zip(ts, raw):
        assert torch.equal(tc.encode(x), ct_reference(t, {}, x)[0])
    n = len(fake.calls)
    assert hub.resolve_transcoders("org/tcs//width_16k@v1", n_layers=L, d_model=D) == p
    assert len(fake.calls) == n, "a cached reference never touches the network again"
    assert not list(p.parent.glob(".tmp-*"))


def test_listed_hf_uris_from_another_repository(fake):
    src = fake.root / "google" / "scope"
    raw = write_ct_set(src, "topk", False, listed=False)
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    cfg["transcoders"] = [f"hf://google/scope/layer_{l}.safetensors?revision=r9" for l in range(L)]
    (fake.root / "me" / "ref").mkdir(parents=True)
    (fake.root / "me" / "ref" / "config.yaml").write_text(yaml.safe_dump(cfg))
    ts = load_transcoders(hub.resolve_transcoders("me/ref", progress=False))
    assert ("google", "scope") == tuple(fake.calls[1][0].split("/")) and fake.calls[1][2] == "r9"
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(0))
    assert ts[2].cfg.activation == "topk" and torch.equal(ts[2].encode(x), ct_reference(raw[2], cfg, x)[0])


def test_mismatches_fail_before_the_weights(fake):
    write_ct_set(fake.root / "org" / "tcs", "relu", False, listed=False)
    with pytest.raises(MechscopeError, match="has 3 layers but the model has 5"):
        hub.resolve_transcoders("org/tcs", n_layers=5, progress=False)
    assert [c[1] for c in fake.calls] == ["config.yaml"]
    fake.calls.clear()
    with pytest.raises(MechscopeError, match="d_model 16 but the model has 8"):
        hub.resolve_transcoders("org/tcs", n_layers=L, d_model=8, progress=False)
    assert [c[1] for c in fake.calls] == ["config.yaml", "layer_0.safetensors"]
    assert not hub.hub_cache_dir(hub.parse_ref("org/tcs")).exists()
    write_ct_set(fake.root / "org" / "raw", "relu", False, listed=False, feature_output_hook="mlp.hook_out")
    with pytest.raises(MechscopeError, match="post-MLP norm"):
        hub.resolve_transcoders("org/raw", post_mlp_norm=True, progress=False)
    with pytest.raises(MechscopeError, match="could not fetch config.yaml from hub repository org/none"):
        hub.resolve_transcoders("org/none", progress=False)


def test_altered_download_is_refused(fake, monkeypatch):
    write_ct_set(fake.root / "org" / "tcs", "relu", False, listed=False)
    real = fake.download

    def corrupt(repo_id, filename, revision):
        p = real(repo_id, filename, revision)
        if filename.endswith("layer_1.safetensors"):
            blob = p.resolve()
            blob.write_bytes(blob.read_bytes()[:-8])
        return p

    monkeypatch.setattr(hub, "_download", corrupt)
    with pytest.raises(MechscopeError, match="SHA-256 on the hub"):
        hub.resolve_transcoders("org/tcs", progress=False)
    assert not hub.hub_cache_dir(hub.parse_ref("org/tcs")).exists()


def test_offline_error_is_one_line(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        MechscopeError, match="could not fetch config.yaml from hub repository someone/transcoders"
    ) as e:
        hub.resolve_transcoders("someone/transcoders@main", progress=False)
    assert "\n" not in str(e.value) and "offline" in str(e.value)


def test_local_circuit_tracer_directory_is_converted_once(tmp_path):
    raw = write_ct_set(tmp_path / "ct", "jumprelu", False, listed=False)
    p = hub.resolve_transcoders(tmp_path / "ct", n_layers=L, d_model=D)
    assert (p / "config.json").exists() and hub.resolve_transcoders(tmp_path / "ct") == p
    mtime = (p / "config.json").stat().st_mtime_ns
    assert hub.resolve_transcoders(str(tmp_path / "ct")) == p and (p / "config.json").stat().st_mtime_ns == mtime
    ts = load_transcoders(p)
    torch.testing.assert_close(ts[0].threshold.data, raw[0]["activation_function.threshold"], rtol=0, atol=0)
    from safetensors.torch import save_file

    save_file(
        {**raw[0], "activation_function.threshold": raw[0]["activation_function.threshold"] + 1},
        str(tmp_path / "ct" / "layer_0.safetensors"),
    )  # a changed weight file is converted again
    assert hub.resolve_transcoders(tmp_path / "ct") == p
    torch.testing.assert_close(load_transcoders(p)[0].threshold.data, raw[0]["activation_function.threshold"] + 1)
    assert hub.resolve_transcoders(p) == p  # already ours
    with pytest.raises(MechscopeError, match="does not exist"):
        hub.resolve_transcoders(tmp_path / "nope")
    with pytest.raises(MechscopeError, match="not a transcoder set"):
        hub.resolve_transcoders(tmp_path)


def test_cli_accepts_a_hub_reference_and_local_circuit_tracer_dir(fake, tmp_path):
    """Every command resolves --transcoders through find_transcoders, so references work there too."""
    from mechscope.transcoders.registry import find_transcoders

    write_ct_set(fake.root / "org" / "tcs", "relu", True, listed=False)
    p = find_transcoders("any-model", "org/tcs@main")
    assert p == hub.hub_cache_dir(hub.parse_ref("org/tcs@main")) and (p / "config.json").exists()
    write_ct_set(tmp_path / "ct", "relu", False, listed=False)
    assert (find_transcoders("any-model", str(tmp_path / "ct")) / "config.json").exists()
    with pytest.raises(MechscopeError, match="neither a transcoder directory nor a hub reference"):
        find_transcoders("any-model", "v4")


def test_cli_checks_the_model_shape_before_the_weights(fake, tmp_path):
    """find_transcoders reads the model's config.json (no weights) and refuses a set of the wrong shape after
    fetching config.yaml only."""
    import json
    from mechscope.transcoders.registry import find_transcoders

    write_ct_set(fake.root / "org" / "tcs", "relu", False, listed=False)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3", "num_hidden_layers": 5, "hidden_size": D}))
    with pytest.raises(MechscopeError, match="has 3 layers but the model has 5"):
        find_transcoders(str(model), "org/tcs")
    assert [c[1] for c in fake.calls] == ["config.yaml"]


def test_hub_cross_layer_transcoder_is_fetched_and_converted(fake):
    """circuit-tracer's CLT layout on the hub: W_enc_{i}/W_dec_{i} beside config.yaml, converted once into ours."""
    from test_clt import ct_clt_reference, write_ct_clt

    from mechscope.transcoders import CrossLayerTranscoder

    raw = write_ct_clt(fake.root / "org" / "clt" / "sub", L=3, F=6, d=D)
    p = hub.resolve_transcoders("org/clt//sub", n_layers=3, d_model=D, progress=False)
    assert sorted(c[1] for c in fake.calls) == sorted(
        ["sub/config.yaml"] + [f"sub/W_{k}_{i}.safetensors" for k in ("enc", "dec") for i in range(3)]
    )
    clt = load_transcoders(p, n_layers=3, d_model=D)
    assert isinstance(clt, CrossLayerTranscoder) and clt.meta["source"] == "hub:org/clt//sub"
    xs = [torch.randn(4, D) for _ in range(3)]
    _, ys = ct_clt_reference(raw, xs)
    with torch.no_grad():
        ours = clt.decode([clt.layer_encode(l, xs[l]) for l in range(3)], xs)
    for a, b in zip(ours, ys):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    write_ct_clt(fake.root / "org" / "clt4", L=4, F=6, d=D)
    with pytest.raises(MechscopeError, match="has 4 layers but the model has 3"):
        hub.resolve_transcoders("org/clt4", n_layers=3, d_model=D, progress=False)
    n = len(fake.calls)
    write_ct_clt(fake.root / "org" / "wide", L=3, F=6, d=2 * D)
    with pytest.raises(MechscopeError, match=f"d_model {2 * D} but the model has {D}"):
        hub.resolve_transcoders("org/wide", n_layers=3, d_model=D, progress=False)
    assert len(fake.calls) == n + 2  # config.yaml and W_enc_0 only: refused before the rest
