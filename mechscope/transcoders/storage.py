"""Transcoder sets on disk: ours (config.json + one safetensors per layer, SHA-256 checked) and
circuit-tracer's (config.yaml + per-layer safetensors; see circuit_tracer.py), both ways. Loading never unpickles.
Cross-layer transcoders use the same config.json with `"kind": "clt"` (clt_storage.py; circuit-tracer's CLT
layout: clt_ct.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_dir, file_sha256
from mechscope.transcoders.module import Transcoder, TranscoderConfig, TranscoderSet
from mechscope.transcoders.source import Source

FORMAT = "mechscope-transcoders"
FORMAT_VERSION = 1
TENSOR_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip")
MATRIX_KEYS = ("W_enc", "W_dec", "W_skip")
SAVE_DTYPES = ("float32", "float16", "bfloat16", "int8")


# one checksum helper for every file the package verifies (sets, converted models, cache entries)
sha256_file = file_sha256


FP16_MAX = 65504.0


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 over the last dimension: `w[..., i, :] ≈ q[..., i, :] * scale[..., i]`; returns
    (q: int8 like w, scale: fp16 of w.shape[:-1]) — [rows] for a matrix, [F, n_write] for a CLT's W_dec [F, n, d].

    Rows are features (W_enc, W_dec) or output dims (W_skip), so each gets its own range: one outlier feature
    never costs the others precision. Half the bytes of fp16, which matters because every replacement of a
    shipped set stays in git history.

    >>> q, s = quantize_int8(torch.randn(4, 8)); (q.float() * s.float()[:, None]).shape
    torch.Size([4, 8])
    """
    w = w.detach().float()
    scale = (w.abs().amax(dim=-1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.half().contiguous()


def pack_tensors(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Tensors as stored in a set's files (per-layer and cross-layer sets alike): for `dtype` "int8", matrices as
    int8 + `<name>.scale` (fp16, one per row) and vectors (biases, thresholds) fp16, or float32 where a value lies
    beyond fp16's range (it would become inf); otherwise everything in `dtype`, and a float16 save of a value
    beyond its range is refused (a silent inf would switch a feature off, or on, everywhere).

    >>> pack_tensors({"b_enc": torch.tensor([-9e4, 1.0])}, "int8")["b_enc"].dtype
    torch.float32
    """
    out = {}
    for k, t in tensors.items():
        t = t.detach()
        if dtype == "int8" and k in MATRIX_KEYS:
            out[k], out[f"{k}.scale"] = quantize_int8(t)
            continue
        beyond_fp16 = float(t.abs().max()) > FP16_MAX if t.numel() else False
        if dtype == "float16" and beyond_fp16:
            raise MechscopeError(f"{k} holds values beyond float16's range; save as float32, bfloat16 or int8")
        if dtype == "int8":
            # beyond fp16's range (a sink latent's bias): kept exact
            out[k] = (t.float() if beyond_fp16 else t.half()).contiguous()
        else:
            out[k] = t.to(getattr(torch, dtype)).contiguous()
    return out


def dequantize_int8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo `quantize_int8` for every int8 tensor of a file (its `.scale` dropped); other tensors pass through."""
    out = {k: v for k, v in tensors.items() if not k.endswith(".scale")}
    for k, v in out.items():
        if v.dtype == torch.int8:
            scale = tensors.get(f"{k}.scale")
            if scale is None or tuple(scale.shape) != tuple(v.shape[:-1]):
                raise MechscopeError(f"int8 tensor {k} has no matching {k}.scale")
            out[k] = v.float() * scale.float().unsqueeze(-1)
    return out


def save_transcoders(ts: Source, path: str | Path, dtype: str = "float16") -> Path:
    """Write a set atomically: `path/config.json` + `path/layer_{l}.safetensors` (a cross-layer transcoder:
    `enc_{l}` / `dec_{l}.safetensors`, see clt_storage.py).

    dtype: float32, float16, bfloat16, or int8 (matrices as per-row int8 with fp16 scales, vectors fp16).

    >>> save_transcoders(ts, "out/my-set", dtype="int8")   # doctest: +SKIP
    """
    from mechscope.transcoders.mapped import in_memory

    path = Path(path)
    ts = in_memory(ts)
    if dtype not in SAVE_DTYPES:
        raise MechscopeError(f"unknown storage dtype {dtype!r}; choose one of {', '.join(SAVE_DTYPES)}")
    if getattr(ts, "kind", "plt") == "clt":
        from mechscope.transcoders.clt_storage import save_clt_files

        with atomic_dir(path) as tmp:
            fields = save_clt_files(ts, tmp, dtype)  # type: ignore[arg-type]
            meta = {**ts.meta, "format": FORMAT, "format_version": FORMAT_VERSION, **fields, "dtype": dtype}
            meta.update(_HOOKS)
            (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        return path
    with atomic_dir(path) as tmp:
        files = {}
        for l, tc in enumerate(ts):
            name = f"layer_{l}.safetensors"
            tensors = pack_tensors({k: getattr(tc, k) for k in TENSOR_KEYS if getattr(tc, k) is not None}, dtype)
            save_file(tensors, str(tmp / name), metadata={"layer": str(l)})
            files[name] = sha256_file(tmp / name)
        cfg = ts[0].cfg
        meta = {
            **ts.meta,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_layers": len(ts),
            "d_model": cfg.d_model,
            "d_transcoder": cfg.d_transcoder,
            "activation": cfg.activation,
            "k": cfg.k,
            "skip": cfg.skip,
            "dtype": dtype,
            **_HOOKS,
            "files": files,
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    return path


_HOOKS = {
    "feature_input_hook": "blocks.{layer}.hook_mlp_in",
    "feature_output_hook": "blocks.{layer}.hook_mlp_out",
    "norms_folded": False,
}


def read_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise MechscopeError(f"{path} is not a transcoder set (no config.json)") from None
    except ValueError as e:
        raise MechscopeError(f"{path}/config.json is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MechscopeError(f"{path}/config.json is not a mechscope transcoder set")
    _check_fields(path, meta)
    return meta


_POSITIVE = {"n_layers": 4096, "d_model": 1 << 20, "d_transcoder": 1 << 24}


def _check_fields(path: Path, meta: dict) -> None:
    """Every field the loader reads, present and of the right type: one line instead of a KeyError later."""

    def bad(key: str, want: str) -> MechscopeError:
        got = "missing" if key not in meta else f"{meta[key]!r}"
        return MechscopeError(f"{path}/config.json: {key} must be {want} (got {got})")

    for key, top in _POSITIVE.items():
        v = meta.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= top:
            raise bad(key, f"an integer in 1..{top}")
    if meta.get("activation") not in ("topk", "jumprelu", "relu"):
        raise bad("activation", "topk, jumprelu or relu")
    k = meta.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= meta["d_transcoder"]:
        raise bad("k", f"an integer in 0..{meta['d_transcoder']}")
    if not isinstance(meta.get("skip"), bool):
        raise bad("skip", "true or false")
    if meta.get("kind", "plt") not in ("plt", "clt"):
        raise bad("kind", "plt or clt")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise bad("files", "an object of file name → SHA-256")


def load_transcoders(
    path: str | Path,
    n_layers: int | None = None,
    d_model: int | None = None,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
    mapped: bool | None = None,
) -> Source:
    """Load a set (per-layer or cross-layer), checking SHA-256 of every file and that it fits the model
    (n_layers, d_model).

    `mapped`: read the set lazily from memory-mapped files (`mapped.py`: int8 or bf16 as stored, float32 a layer
    at a time) instead of loading it whole in float32. None (the default) maps a set whose float32 copy would
    take more than `MAP_ABOVE_GB`, or as $MECHSCOPE_MAPPED (1 or 0) says."""
    path = Path(path)
    meta = read_config(path)
    if n_layers is not None and meta["n_layers"] != n_layers:
        raise MechscopeError(
            f"{_what(meta)} {path} has {meta['n_layers']} layers but the model has {n_layers} "
            f"(made for {meta.get('model', '?')})"
        )
    if d_model is not None and meta["d_model"] != d_model:
        raise MechscopeError(
            f"{_what(meta)} {path} has d_model {meta['d_model']} but the model has {d_model} "
            f"(made for {meta.get('model', '?')})"
        )
    if mapped is None:
        mapped = use_mapped(meta) and dtype == torch.float32
    if mapped:
        from mechscope.transcoders.mapped import load_mapped

        return load_mapped(path, meta, verify=verify)
    if meta.get("kind", "plt") == "clt":
        from mechscope.transcoders.clt_storage import load_clt

        return load_clt(path, meta, dtype=dtype, verify=verify)
    cfg = TranscoderConfig(
        d_model=meta["d_model"],
        d_transcoder=meta["d_transcoder"],
        activation=meta["activation"],
        k=meta["k"],
        skip=meta["skip"],
        dtype=str(dtype).removeprefix("torch."),
    )
    layers = []
    for l in range(meta["n_layers"]):
        name = f"layer_{l}.safetensors"
        f = path / name
        if not f.exists():
            raise MechscopeError(f"transcoder set {path} is missing {name}")
        if verify and sha256_file(f) != meta["files"].get(name):
            raise MechscopeError(f"{f} does not match its SHA-256 in config.json (truncated or altered)")
        try:
            tensors = dequantize_int8(load_file(str(f)))
        except Exception as e:  # safetensors raises several types on corrupt headers
            raise MechscopeError(f"{f} is not a readable safetensors file: {e}") from None
        tc = Transcoder(cfg)
        _assign(tc, tensors, f)
        layers.append(tc)
    return TranscoderSet(layers, meta)


#: sets whose float32 copy would exceed this are read memory-mapped by default
MAP_ABOVE_GB = 1.0


def float32_gb(meta: dict) -> float:
    """GB a set takes loaded whole in float32, from its config alone."""
    L, d, F = meta["n_layers"], meta["d_model"], meta["d_transcoder"]
    if meta.get("kind", "plt") == "clt":
        mw = meta.get("max_write_layers", 0) or 0
        writes = sum(L - l if mw <= 0 else min(L - l, mw) for l in range(L))
    else:
        writes = L
    n = L * F * (d + 2) + writes * F * d + L * d + (L * d * d if meta.get("skip") else 0)
    return n * 4 / 2**30


def use_mapped(meta: dict) -> bool:
    """Whether `load_transcoders` maps this set by default: $MECHSCOPE_MAPPED (1/0) or its float32 size."""
    import os

    env = os.environ.get("MECHSCOPE_MAPPED", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return float32_gb(meta) > MAP_ABOVE_GB


def _what(meta: dict) -> str:
    return "cross-layer transcoder" if meta.get("kind") == "clt" else "transcoder set"


def _assign(tc: Transcoder, tensors: dict[str, torch.Tensor], f: Path) -> None:
    for key in TENSOR_KEYS:
        target = getattr(tc, key)
        if key not in tensors:
            if key in ("threshold",) or target is None:
                continue
            raise MechscopeError(f"{f} lacks tensor {key}")
        if target is None:
            raise MechscopeError(f"{f} has {key} but its config says skip=False")
        if tuple(tensors[key].shape) != tuple(target.shape):
            raise MechscopeError(f"{f}: {key} has shape {tuple(tensors[key].shape)}, expected {tuple(target.shape)}")
        target.data = tensors[key].to(target.dtype)


# ---- circuit-tracer layout: its own module (checked against circuit-tracer's loader and writer) ------------
from mechscope.transcoders.circuit_tracer import export_circuit_tracer, import_circuit_tracer  # noqa: E402,F401
