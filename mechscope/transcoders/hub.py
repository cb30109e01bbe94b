"""Transcoder sets by reference: a local directory (ours or circuit-tracer's) or a Hugging Face hub repository
in circuit-tracer's layout, downloaded once and kept in our own format (SHA-256 checked on every load).

References, as circuit-tracer users write them (circuit_tracer/utils/hf_utils.py `HfUri`, `load_transcoder_from_hub`):
    org/repo                       config.yaml at the repository root
    org/repo@rev                   a branch, tag or commit
    org/repo//sub/folder@rev       config.yaml in a subfolder (circuit-tracer's scan names use `//`)
    org/repo/sub/folder            the same without `//`
    hf://org/repo/sub/folder?revision=rev

Example:
    >>> path = resolve_transcoders("mntss/transcoder-Llama-3.2-1B", n_layers=16, d_model=2048)  # doctest: +SKIP
    >>> ts = load_transcoders(path)                                                                # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from mechscope.errors import MechscopeError
from mechscope.paths import cache_dir
from mechscope.transcoders.circuit_tracer import (
    OUTPUT_HOOKS,
    ct_shapes,
    strip_block,
    check_fits,
    import_circuit_tracer,
    read_ct_config,
)
from mechscope.transcoders.storage import read_config, save_transcoders, sha256_file

log = logging.getLogger(__name__)
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    subfolder: str | None
    revision: str | None

    def __str__(self) -> str:
        s = self.repo_id + (f"//{self.subfolder}" if self.subfolder else "")
        return s + (f"@{self.revision}" if self.revision else "")

    def file(self, name: str) -> str:
        return f"{self.subfolder}/{name}" if self.subfolder else name


def parse_ref(ref: str) -> HubRef:
    """Parse a hub reference; raise a one-line error for anything else.

    >>> parse_ref("org/repo//layers/16k@v2")
    HubRef(repo_id='org/repo', subfolder='layers/16k', revision='v2')
    """
    if ref.startswith("hf://"):
        u = urlparse(ref)
        parts = u.path.strip("/").split("/", 1)
        repo, sub = f"{u.netloc}/{parts[0]}", (parts[1] if len(parts) > 1 else None)
        rev = parse_qs(u.query).get("revision", [None])[0]
    else:
        body, _, rev = ref.partition("@")
        head, sep, sub = body.partition("//")
        if not sep:
            comps = head.split("/")
            head, sub = "/".join(comps[:2]), "/".join(comps[2:])
        repo = head
    sub = (sub or "").strip("/") or None
    if not _REPO.match(repo) or (sub and ".." in sub.split("/")):
        raise MechscopeError(
            f"'{ref}' is neither a transcoder directory nor a hub reference (org/repo[//subfolder][@revision])"
        )
    return HubRef(repo, sub, rev or None)


# The two network calls, module level so tests (and offline users) can replace them.
def _download(repo_id: str, filename: str, revision: str | None) -> Path:
    """One file through huggingface_hub (its own progress bar; `.incomplete` temp file renamed into place)."""
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, cache_dir=str(cache_dir() / "hub"))
    )


def _list_files(repo_id: str, revision: str | None) -> list[str]:
    from huggingface_hub import HfApi

    return list(HfApi().list_repo_files(repo_id, revision=revision))


def _fetch(ref: HubRef, filename: str, revision: str | None = None, repo_id: str | None = None) -> Path:
    repo, rev = repo_id or ref.repo_id, revision if repo_id else ref.revision
    try:
        local = _download(repo, filename, rev)
    except Exception as e:  # huggingface_hub raises many types (offline, 404, gated, HTTP, timeouts)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MechscopeError(
            f"could not fetch {filename} from hub repository {repo}"
            f"{'@' + rev if rev else ''} (offline, missing or gated?): {type(e).__name__}: {first}"
        ) from None
    _verify(local, f"{repo}/{filename}")
    return local


def _verify(local: Path, what: str) -> None:
    """Check a downloaded file against its checksum: the hub cache names LFS blobs by their SHA-256."""
    blob = Path(local).resolve().name
    if _SHA256.match(blob) and sha256_file(Path(local)) != blob:
        raise MechscopeError(
            f"{what} does not match its SHA-256 on the hub (truncated or altered download); "
            f"delete {Path(local).resolve()} and retry"
        )


def hub_cache_dir(ref: HubRef) -> Path:
    safe = str(ref).replace("//", "__").replace("/", "__")
    return cache_dir() / "transcoders" / "hub" / safe


def _is_complete(path: Path) -> bool:
    try:
        read_config(path)
        return True
    except MechscopeError:
        return False


def resolve_transcoders(
    ref: str | Path,
    n_layers: int | None = None,
    d_model: int | None = None,
    post_mlp_norm: bool | None = None,
    progress: bool = True,
) -> Path:
    """Turn a `--transcoders` value into a directory in mechscope's format.

    A mechscope set (config.json) is returned as is; a local circuit-tracer directory (config.yaml) or a hub
    reference is converted once into the cache (`$MECHSCOPE_CACHE/transcoders/...`, written to a temporary
    directory and renamed) and that path is returned on every later call without touching the network.
    The model's `n_layers` / `d_model` (and whether its family has a post-MLP norm) are checked from config.yaml
    and the first layer's header before the other layers are fetched.
    """
    p = Path(ref)
    if (p / "config.json").exists():
        return p
    if p.is_dir():
        if not (p / "config.yaml").exists() and not (p / "W_enc_0.safetensors").exists():
            raise MechscopeError(f"{p} is not a transcoder set (no config.json, and no config.yaml of circuit-tracer)")
        key = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16]
        dest = cache_dir() / "transcoders" / "local" / f"{p.resolve().name}-{key}"
        # reconvert when config.yaml or any weight file beside it changed (size or modification time)
        files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".npz"))
        stamp = hashlib.sha256(
            (
                (sha256_file(p / "config.yaml") if (p / "config.yaml").exists() else "")
                + "".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns};" for f in files)
            ).encode()
        ).hexdigest()
        if _is_complete(dest) and read_config(dest).get("source_config_sha256") == stamp:
            return dest
        ts = import_circuit_tracer(p, n_layers=n_layers, d_model=d_model, post_mlp_norm=post_mlp_norm)
        ts.meta.update(source=str(p.resolve()), source_config_sha256=stamp)
        return save_transcoders(ts, dest, dtype="float32")
    if str(ref).startswith((".", "/", "~")) or p.suffix:
        raise MechscopeError(
            f"{ref} does not exist (expected a transcoder directory or org/repo[//subfolder][@revision])"
        )
    hub = parse_ref(str(ref))
    dest = hub_cache_dir(hub)
    if _is_complete(dest):
        return dest
    return _download_set(hub, dest, n_layers, d_model, post_mlp_norm, progress)


def _download_set(
    hub: HubRef, dest: Path, n_layers: int | None, d_model: int | None, post_mlp_norm: bool | None, progress: bool
) -> Path:
    from tqdm.auto import tqdm

    cfg_file = _fetch(hub, hub.file("config.yaml"))
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-ref-", dir=cache_dir()) as tmp:
        # config.yaml alone in a scratch directory: checks (kind, hooks, activation) before any weights are fetched
        work = Path(tmp)
        (work / "config.yaml").write_bytes(cfg_file.read_bytes())
        cfg = read_ct_config(work, allow_clt=True)
        if cfg.get("model_kind") == "cross_layer_transcoder":
            clt = _download_clt(hub, work, cfg, n_layers, d_model, post_mlp_norm, progress)
            clt.meta.update(source=f"hub:{hub}", scan=clt.meta.get("scan") or str(hub))
            return save_transcoders(clt, dest, dtype="float32")
        if "transcoders" in cfg:
            entries = [str(e) for e in cfg["transcoders"]]
        else:
            pat = re.compile(re.escape(hub.file("")) + r"layer_(\d+)\.safetensors$")
            found = {int(m.group(1)): f for f in _list_files(hub.repo_id, hub.revision) if (m := pat.match(f))}
            entries = [found[i] for i in sorted(found)]
            if sorted(found) != list(range(len(found))) or not found:
                raise MechscopeError(f"hub repository {hub} has no layer_0..n-1.safetensors beside its config.yaml")
        if n_layers is not None and len(entries) != n_layers:
            raise MechscopeError(f"transcoder set {hub} has {len(entries)} layers but the model has {n_layers}")
        out_hook = OUTPUT_HOOKS[strip_block(str(cfg["feature_output_hook"]))]
        if post_mlp_norm and out_hook == "hook_mlp_out_raw":
            raise MechscopeError(
                f"transcoder set {hub} predicts {cfg['feature_output_hook']} (the MLP output before the "
                "post-MLP norm); mechscope's transcoders predict hook_mlp_out for this family"
            )
        local: dict[str, Path] = {}
        bar = tqdm(total=len(entries), desc=f"transcoders {hub}", unit="layer", disable=not progress)
        for i, e in enumerate(entries):
            if e.startswith("hf://"):
                u = parse_ref(e)
                local[e] = _fetch(hub, u.subfolder or "", revision=u.revision, repo_id=u.repo_id)
            else:
                local[e] = _fetch(hub, hub.file(e) if "transcoders" in cfg else e)
            if i == 0:  # the first layer's header fixes d_model: refuse before fetching the rest
                check_fits(len(entries), ct_shapes(local[e])[1], Path(str(hub)), None, d_model)
            bar.update(1)
        bar.close()
        if "transcoders" not in cfg:  # repository paths found by listing: hand the importer the list
            import yaml

            (work / "config.yaml").write_text(yaml.safe_dump({**cfg, "transcoders": entries}))
        ts = import_circuit_tracer(
            work, n_layers=n_layers, d_model=d_model, post_mlp_norm=post_mlp_norm, local_files=local
        )
    ts.meta.update(
        source=f"hub:{hub}", scan=ts.meta.get("scan") or str(hub), model=ts.meta.get("model") or cfg.get("model_name")
    )
    log.info("converted %s into %s", hub, dest)
    return save_transcoders(ts, dest, dtype="float32")


def _download_clt(
    hub: HubRef, work: Path, cfg: dict, n_layers: int | None, d_model: int | None, post_mlp_norm, progress: bool
):
    """circuit-tracer's CLT layout from the hub: `W_enc_{i}` / `W_dec_{i}.safetensors` beside config.yaml, listed
    from the repository; the layer count and the first encoder's width are checked before the rest is fetched."""
    from tqdm.auto import tqdm

    from mechscope.transcoders.clt_ct import import_circuit_tracer_clt

    pat = re.compile(re.escape(hub.file("")) + r"W_enc_(\d+)\.safetensors$")
    found = sorted(int(m.group(1)) for f in _list_files(hub.repo_id, hub.revision) if (m := pat.match(f)))
    if not found or found != list(range(len(found))):
        raise MechscopeError(f"hub repository {hub} has no W_enc_0..n-1.safetensors beside its config.yaml")
    if n_layers is not None and len(found) != n_layers:
        raise MechscopeError(f"cross-layer transcoder {hub} has {len(found)} layers but the model has {n_layers}")
    names = [f"W_enc_{i}.safetensors" for i in found] + [f"W_dec_{i}.safetensors" for i in found]
    bar = tqdm(total=len(names), desc=f"transcoders {hub}", unit="file", disable=not progress)
    for j, name in enumerate(names):
        (work / name).symlink_to(_fetch(hub, hub.file(name)))
        if j == 0:  # W_enc_0's header fixes d_model: refuse before fetching the rest
            from safetensors import safe_open

            with safe_open(str(work / name), framework="pt") as h:
                check_fits(len(found), int(h.get_slice("W_enc_0").get_shape()[1]), Path(str(hub)), None, d_model)
        bar.update(1)
    bar.close()
    return import_circuit_tracer_clt(work, cfg, n_layers=n_layers, d_model=d_model, post_mlp_norm=post_mlp_norm)


def load_transcoders_ref(model, ref: str | Path | None, progress: bool = True):
    """The set a front end should use for `model` given `--transcoders` (None → the model's default).

    >>> ts = load_transcoders_ref(load_model("gemma2-local"), "org/repo//width_16k")   # doctest: +SKIP
    """
    from mechscope.transcoders import load_default_transcoders

    if ref is None:
        return load_default_transcoders(model, None)
    path = resolve_transcoders(
        ref,
        n_layers=model.n_layers,
        d_model=model.d_model,
        post_mlp_norm=model.family.post_mlp_norm is not None,
        progress=progress,
    )
    return load_default_transcoders(model, path)
