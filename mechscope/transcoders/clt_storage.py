"""Cross-layer transcoders on disk, our layout (storage.py dispatches here on `"kind": "clt"` in config.json).

    config.json            like a per-layer set's, plus "kind": "clt" and "max_write_layers" (0: every later layer)
    enc_{l}.safetensors    W_enc [F, d], b_enc [F], threshold [F], b_dec [d] (layer l's output bias), W_skip [d, d]
    dec_{l}.safetensors    W_dec [F, n_write(l), d]: features read at l into layers l .. l+n_write(l)−1

int8 storage quantises every matrix per row (W_dec per (feature, write layer) row, scale [F, n_write]), as the
per-layer sets do. Every file's SHA-256 is in config.json, so a truncated decoder file is a one-line error.

>>> save_clt(clt, "out/my-clt", dtype="int8"); clt2 = load_transcoders("out/my-clt")   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mechscope.errors import MechscopeError
from mechscope.paths import file_sha256
from mechscope.transcoders.clt import CLTConfig, CrossLayerTranscoder
from mechscope.transcoders.storage import dequantize_int8, pack_tensors

ENC_KEYS = ("W_enc", "b_enc", "threshold", "b_dec", "W_skip")


def save_clt_files(clt: CrossLayerTranscoder, tmp: Path, dtype: str) -> dict:
    """Write the tensor files into `tmp` (inside storage.save_transcoders' atomic directory); return the config
    fields that describe them (files with their SHA-256 included)."""
    files = {}
    for l in range(clt.n_layers):
        enc = {"W_enc": clt.W_enc[l], "b_enc": clt.b_enc[l], "threshold": clt.threshold[l], "b_dec": clt.b_dec[l]}
        if clt.W_skip is not None:
            enc["W_skip"] = clt.W_skip[l]
        for name, tensors in ((f"enc_{l}", enc), (f"dec_{l}", {"W_dec": clt.W_dec[l]})):
            save_file(pack_tensors(tensors, dtype), str(tmp / f"{name}.safetensors"), metadata={"layer": str(l)})
            files[f"{name}.safetensors"] = file_sha256(tmp / f"{name}.safetensors")
    cfg = clt.cfg
    return {
        "kind": "clt",
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "d_transcoder": cfg.d_transcoder,
        "activation": cfg.activation,
        "k": cfg.k,
        "skip": cfg.skip,
        "max_write_layers": cfg.max_write_layers,
        "files": files,
    }


def load_clt(path: Path, meta: dict, dtype: torch.dtype = torch.float32, verify: bool = True) -> CrossLayerTranscoder:
    """Read our CLT layout (config.json already read and checked by storage.read_config)."""
    mw = meta.get("max_write_layers", 0)
    if not isinstance(mw, int) or isinstance(mw, bool) or mw < 0:
        raise MechscopeError(f"{path}/config.json: max_write_layers must be an integer ≥ 0 (got {mw!r})")
    cfg = CLTConfig(
        n_layers=meta["n_layers"],
        d_model=meta["d_model"],
        d_transcoder=meta["d_transcoder"],
        activation=meta["activation"],
        k=meta["k"],
        skip=meta["skip"],
        max_write_layers=mw,
        dtype=str(dtype).removeprefix("torch."),
    )
    clt = CrossLayerTranscoder(cfg, meta)
    for l in range(cfg.n_layers):
        enc = _read(path, f"enc_{l}.safetensors", meta, verify)
        dec = _read(path, f"dec_{l}.safetensors", meta, verify)
        for key in ENC_KEYS:
            if key not in enc:
                if key == "threshold" or (key == "W_skip" and not cfg.skip):
                    continue
                raise MechscopeError(f"{path}/enc_{l}.safetensors lacks tensor {key}")
            if key == "W_skip" and not cfg.skip:
                raise MechscopeError(f"{path}/enc_{l}.safetensors has W_skip but config.json says skip=false")
            _put(getattr(clt, key), l, enc[key], f"{path}/enc_{l}.safetensors: {key}")
        if "W_dec" not in dec:
            raise MechscopeError(f"{path}/dec_{l}.safetensors lacks tensor W_dec")
        _put_whole(clt.W_dec[l], dec["W_dec"], f"{path}/dec_{l}.safetensors: W_dec")
    return clt


def _read(path: Path, name: str, meta: dict, verify: bool) -> dict[str, torch.Tensor]:
    f = path / name
    if not f.exists():
        raise MechscopeError(f"cross-layer transcoder {path} is missing {name}")
    if verify and file_sha256(f) != meta["files"].get(name):
        raise MechscopeError(f"{f} does not match its SHA-256 in config.json (truncated or altered)")
    try:
        return dequantize_int8(load_file(str(f)))
    except MechscopeError:
        raise
    except Exception as e:  # safetensors raises several types on corrupt headers
        raise MechscopeError(
            f"{f} is not a readable safetensors file: {str(e).splitlines()[0] if str(e) else e}"
        ) from None


def _put(param: torch.Tensor, l: int, value: torch.Tensor, what: str) -> None:
    want = tuple(param.shape[1:])
    if tuple(value.shape) != want:
        raise MechscopeError(f"{what} has shape {tuple(value.shape)}, expected {want}")
    with torch.no_grad():
        param.data[l] = value.to(param.dtype)


def _put_whole(param: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if tuple(value.shape) != tuple(param.shape):
        raise MechscopeError(f"{what} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
    param.data = value.to(param.dtype).contiguous()
