"""circuit-tracer's cross-layer transcoder layout, both ways.

Checked against circuit_tracer/transcoder/cross_layer_transcoder.py (`CrossLayerTranscoder.to_safetensors`,
`load_clt`, `_load_state_dict`) and circuit_tracer/utils/hf_utils.py (`model_kind: cross_layer_transcoder`):
  * config.yaml: `model_kind: cross_layer_transcoder`, `model_name`, `feature_input_hook`, `feature_output_hook`
    (plus `scan`); the tensors sit beside it.
  * `W_enc_{i}.safetensors`: `W_enc_{i}` [F, d], `b_enc_{i}` [F], `b_dec_{i}` [d] (layer i's output bias),
    optional `threshold_{i}` [F] (its loader picks JumpReLU iff present, ReLU otherwise) and `W_skip_{i}` [d, d],
    which it applies as `x @ W_skip` — the transpose of our convention (`x @ W_skip.T`).
  * `W_dec_{i}.safetensors`: `W_dec_{i}` [F, n_layers − i, d] (every later layer, always).
The number of layers is the number of `W_enc_*` files. circuit-tracer's CLT has no TopK, so TopK CLTs are not
exported (a one-line error says so). A decoder window (`max_write_layers` N) is written as zero decoders beyond
N layers — the same model — and recovered on import from those all-zero trailing slices.

>>> export_circuit_tracer_clt(clt, "out/ct-clt", model_name="google/gemma-3-270m")   # doctest: +SKIP
>>> clt = import_circuit_tracer_clt("out/ct-clt", n_layers=18, d_model=640)       # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_dir
from mechscope.transcoders.circuit_tracer import INPUT_HOOKS, OUTPUT_HOOKS, strip_block, check_fits
from mechscope.transcoders.clt import CLTConfig, CrossLayerTranscoder

KIND = "cross_layer_transcoder"
_ENC_FILE = re.compile(r"W_enc_(\d+)\.safetensors$")


def is_ct_clt(path: Path, cfg: dict | None = None) -> bool:
    """Whether a directory holds circuit-tracer's CLT layout (by config.yaml's model_kind or its files)."""
    return (cfg or {}).get("model_kind") == KIND or (path / "W_enc_0.safetensors").exists()


def export_circuit_tracer_clt(
    clt: CrossLayerTranscoder, path: str | Path, model_name: str, dtype: str = "float32"
) -> Path:
    """Write circuit-tracer's CLT layout (config.yaml + `W_enc_{i}` / `W_dec_{i}.safetensors`) atomically."""
    import yaml

    act = clt.cfg.activation
    if act not in ("jumprelu", "relu"):
        raise MechscopeError(
            f"circuit-tracer's cross-layer transcoders run JumpReLU or ReLU, not {act}; "
            "train the CLT with --activation jumprelu or batchtopk to export it"
        )
    path = Path(path)
    dt = getattr(torch, dtype)
    L, d = clt.n_layers, clt.d_model
    with atomic_dir(path) as tmp:
        for i in range(L):
            enc = {
                f"W_enc_{i}": clt.W_enc[i],
                f"b_enc_{i}": clt.b_enc[i],
                f"b_dec_{i}": clt.b_dec[i],
            }
            if act == "jumprelu":
                enc[f"threshold_{i}"] = clt.threshold[i]
            if clt.W_skip is not None:
                enc[f"W_skip_{i}"] = clt.W_skip[i].T  # circuit-tracer: x @ W_skip
            save_file({k: v.detach().to(dt).contiguous() for k, v in enc.items()}, str(tmp / f"W_enc_{i}.safetensors"))
            dec = torch.zeros(clt.d_transcoder, L - i, d, dtype=dt)
            n = clt.cfg.n_write(i)
            dec[:, :n] = clt.W_dec[i].detach().to(dt)
            save_file({f"W_dec_{i}": dec.contiguous()}, str(tmp / f"W_dec_{i}.safetensors"))
        cfg = {
            "model_kind": KIND,
            "model_name": model_name,
            "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "hook_mlp_out",
            "scan": clt.meta.get("scan") or f"mechscope/{model_name}",
        }
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _open(f: Path) -> dict[str, torch.Tensor]:
    if not f.exists():
        raise MechscopeError(f"cross-layer transcoder file {f} is missing")
    try:
        with safe_open(str(f), framework="pt") as h:
            return {k: h.get_tensor(k) for k in h.keys()}
    except Exception as e:  # safetensors raises several types on corrupt or truncated files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MechscopeError(f"{f} is not a readable safetensors file: {msg}") from None


def _header_shape(f: Path, key: str) -> tuple[int, ...]:
    try:
        with safe_open(str(f), framework="pt") as h:
            return tuple(h.get_slice(key).get_shape())
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MechscopeError(f"{f} is not a readable cross-layer transcoder file ({key}): {msg}") from None


def import_circuit_tracer_clt(
    path: str | Path,
    cfg: dict,
    dtype: torch.dtype = torch.float32,
    n_layers: int | None = None,
    d_model: int | None = None,
    post_mlp_norm: bool | None = None,
) -> CrossLayerTranscoder:
    """Read circuit-tracer's CLT layout (its config.yaml already parsed into `cfg`), checking the model's shape
    from the first file's header before the weights are read."""
    path = Path(path)
    for field, known in (("feature_input_hook", INPUT_HOOKS), ("feature_output_hook", OUTPUT_HOOKS)):
        hook = cfg.get(field)
        if hook is None:
            raise MechscopeError(f"{path}/config.yaml lacks {field}")
        if strip_block(str(hook)) not in known:
            raise MechscopeError(
                f"{path}/config.yaml: {field} {hook!r} is not supported; mechscope's features read the MLP input "
                f"and write the MLP output ({', '.join(known)})"
            )
    if post_mlp_norm and OUTPUT_HOOKS[strip_block(str(cfg["feature_output_hook"]))] == "hook_mlp_out_raw":
        raise MechscopeError(
            f"cross-layer transcoder {path} predicts {cfg['feature_output_hook']} (before the post-MLP norm); "
            "mechscope's transcoders predict hook_mlp_out for this family"
        )
    found = sorted(int(m.group(1)) for p in path.iterdir() if (m := _ENC_FILE.match(p.name)))
    if not found or found != list(range(len(found))):
        raise MechscopeError(f"{path}: W_enc_{{i}}.safetensors files are not numbered 0..n-1 ({found})")
    L = len(found)
    F, d = _header_shape(path / "W_enc_0.safetensors", "W_enc_0")
    check_fits(L, d, path, n_layers, d_model)
    encs = [_open(path / f"W_enc_{i}.safetensors") for i in range(L)]
    decs = []
    for i in range(L):
        t = _open(path / f"W_dec_{i}.safetensors")
        W = t.get(f"W_dec_{i}")
        if W is None or tuple(W.shape) != (F, L - i, d):
            got = "missing" if W is None else tuple(W.shape)
            raise MechscopeError(f"{path}/W_dec_{i}.safetensors: W_dec_{i} has shape {got}, expected {(F, L - i, d)}")
        decs.append(W)
    has_th = f"threshold_{0}" in encs[0]
    has_skip = "W_skip_0" in encs[0]
    # a window N: every decoder slot from N on is zero (how export writes a windowed CLT)
    used = [int((W.abs().sum((0, 2)) > 0).nonzero().max()) + 1 if bool((W != 0).any()) else 0 for W in decs]
    window = max(used) if max(used) < L else 0
    ccfg = CLTConfig(
        n_layers=L,
        d_model=d,
        d_transcoder=F,
        activation="jumprelu" if has_th else "relu",
        k=0,
        skip=has_skip,
        max_write_layers=window,
        dtype=str(dtype).removeprefix("torch."),
    )
    meta = {
        "model": cfg.get("model_name"),
        "scan": cfg.get("scan_name", cfg.get("scan")),
        "source": "circuit-tracer",
        "feature_input_hook": cfg["feature_input_hook"],
        "feature_output_hook": cfg["feature_output_hook"],
    }
    clt = CrossLayerTranscoder(ccfg, meta)
    want = {"W_enc": (F, d), "b_enc": (F,), "b_dec": (d,), "threshold": (F,), "W_skip": (d, d)}
    with torch.no_grad():
        for i, t in enumerate(encs):
            for key in (
                ("W_enc", "b_enc", "b_dec") + (("threshold",) if has_th else ()) + (("W_skip",) if has_skip else ())
            ):
                v = t.get(f"{key}_{i}")
                if v is None or tuple(v.shape) != want[key]:
                    got = "missing" if v is None else tuple(v.shape)
                    raise MechscopeError(
                        f"{path}/W_enc_{i}.safetensors: {key}_{i} has shape {got}, expected {want[key]}"
                    )
                if key == "W_skip":
                    v = v.T
                getattr(clt, key).data[i] = v.to(clt.b_enc.dtype)
            clt.W_dec[i].data = decs[i][:, : ccfg.n_write(i)].to(clt.b_enc.dtype).contiguous()
    return clt
