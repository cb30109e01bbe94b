"""circuit-tracer's per-layer transcoder layout, both ways, checked against its source code.

Checked in circuit-tracer (github.com/safety-research/circuit-tracer, also decoderesearch/circuit-tracer):
  * circuit_tracer/transcoder/single_layer_transcoder.py
      - `SingleLayerTranscoder.to_safetensors`: keys W_enc [d_tc, d], W_dec [d_tc, d], b_enc [d_tc], b_dec [d],
        `activation_function.threshold` [d_tc] (JumpReLU only), `k` (a 0-d tensor, TopK only), `W_skip` [d, d].
      - `load_transcoder`: d_tc from b_enc, d_model from b_dec; JumpReLU iff `activation_function.threshold` is
        present (else ReLU) unless the set's config chose the activation; skip iff `W_skip` is present;
        `load_state_dict(..., assign=True)` is strict, so an extra key (e.g. `threshold`, or `k`) breaks it.
      - `load_gemma_scope_transcoder` (.npz: W_enc stored [d, d_tc], `threshold`) and
        `load_gemma_scope_2_transcoder` (safetensors: w_enc [d, d_tc], w_dec, b_enc, b_dec, threshold,
        affine_skip_connection [d, d]) are the two published variants it converts on load.
      - `load_transcoder_set`: config `activation: topk` needs `k` (TopK(k)); `activation: relu` → ReLU;
        anything else → thresholds from the weights.
  * circuit_tracer/transcoder/activation_functions.py: JumpReLU `x * (x > threshold)`; TopK keeps the k largest
    pre-activations `x * gate` (negative ones too).
  * circuit_tracer/utils/hf_utils.py (`load_transcoders`, `resolve_transcoder_paths`, `HfUri`): config.yaml fields
    `model_kind` (transcoder_set | cross_layer_transcoder), `model_name`, `feature_input_hook`,
    `feature_output_hook`, `activation`, `k`, `transcoders` (optional list of paths or `hf://` URIs; without it
    the files are `layer_{i}.safetensors` beside config.yaml).
  * circuit_tracer/utils/caching.py: a cached set is config.yaml + `layer_{i}.safetensors`, scan read from
    `scan_name` or `scan`.
  * circuit_tracer/transcoder/cross_layer_transcoder.py: CLTs are `W_enc_{i}.safetensors` / `W_dec_{i}.safetensors`
    (read and written by clt_ct.py; `import_circuit_tracer` / `export_circuit_tracer` dispatch there).

Our TopK drops negative pre-activations even when they are among the k largest (circuit-tracer keeps them);
the two agree whenever the k-th largest pre-activation is positive, which is the case on real inputs with k ≪ d_tc.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_dir
from mechscope.transcoders.module import Transcoder, TranscoderConfig, TranscoderSet

# TransformerLens hook names circuit-tracer configs use, mapped to our sites. `mlp.hook_out` is the MLP's own
# output: the same as hook_mlp_out except in families with a post-MLP norm (Gemma), where it is hook_mlp_out_raw.
INPUT_HOOKS = {"mlp.hook_in": "hook_mlp_in", "ln2.hook_normalized": "hook_mlp_in", "hook_mlp_in": "hook_mlp_in"}
OUTPUT_HOOKS = {"hook_mlp_out": "hook_mlp_out", "mlp.hook_out": "hook_mlp_out_raw"}
ACTIVATIONS = ("jumprelu", "topk", "relu")
_LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors$")


def strip_block(hook: str) -> str:
    """'blocks.{layer}.mlp.hook_in' / 'blocks.3.mlp.hook_in' -> 'mlp.hook_in'."""
    return re.sub(r"^blocks\.(\{layer\}|\d+)\.", "", hook)


def read_ct_config(path: str | Path, allow_clt: bool = False) -> dict:
    """Read and check a circuit-tracer config.yaml (one-line errors for anything we cannot load). With
    `allow_clt`, a cross-layer transcoder's config is returned unchecked (clt_ct.py checks it)."""
    import yaml

    path = Path(path)
    if not (path / "config.yaml").exists():
        if (path / "W_enc_0.safetensors").exists():
            raise MechscopeError(
                f"{path} holds a cross-layer transcoder (W_enc_{{i}}/W_dec_{{i}} files) but no config.yaml "
                "naming its hooks (model_kind: cross_layer_transcoder, feature_input_hook, feature_output_hook)"
            )
        raise MechscopeError(f"{path} has no config.yaml (not a circuit-tracer transcoder set)")
    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise MechscopeError(f"{path}/config.yaml is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise MechscopeError(f"{path}/config.yaml is not a mapping")
    kind = cfg.get("model_kind", "transcoder_set")
    if kind == "cross_layer_transcoder" or (path / "W_enc_0.safetensors").exists():
        if allow_clt:
            return cfg
        raise MechscopeError(
            f"{path} is a cross-layer transcoder (model_kind: cross_layer_transcoder); "
            "this path loads per-layer transcoders (transcoder_set) only"
        )
    if kind != "transcoder_set":
        raise MechscopeError(f"{path}/config.yaml has unknown model_kind {kind!r}; expected transcoder_set")
    for field, known in (("feature_input_hook", INPUT_HOOKS), ("feature_output_hook", OUTPUT_HOOKS)):
        hook = cfg.get(field)
        if hook is None:
            raise MechscopeError(f"{path}/config.yaml lacks {field}")
        if strip_block(str(hook)) not in known:
            raise MechscopeError(f"{path}/config.yaml: unknown {field} {hook!r}; mechscope knows " + ", ".join(known))
    act = cfg.get("activation")
    if act is not None and str(act).lower() not in ACTIVATIONS:
        raise MechscopeError(f"{path}/config.yaml: unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
    if act is not None and str(act).lower() == "topk" and cfg.get("k") is None:
        raise MechscopeError(f"{path}/config.yaml says activation: topk but gives no k")
    return cfg


def layer_entries(cfg: dict, path: Path) -> list[str]:
    """The per-layer file entries, in layer order: the `transcoders` list, else `layer_{i}.safetensors`."""
    if "transcoders" in cfg:
        entries = [str(e) for e in cfg["transcoders"] or []]
    else:
        found = {int(m.group(1)): p.name for p in path.iterdir() if (m := _LAYER_FILE.match(p.name))}
        if sorted(found) != list(range(len(found))):
            raise MechscopeError(f"{path}: layer files are not numbered 0..n-1 ({sorted(found)})")
        entries = [found[i] for i in range(len(found))]
    if not entries:
        raise MechscopeError(f"{path}: config.yaml lists no transcoders and there are no layer_{{i}}.safetensors")
    return entries


def _entry_path(entry: str, path: Path, local: dict[str, Path] | None) -> Path:
    if local and entry in local:
        return local[entry]
    if entry.startswith("hf://"):
        raise MechscopeError(f"{path}/config.yaml names {entry}; load it by hub reference (resolve_transcoders)")
    p = Path(entry)
    return p if p.is_absolute() else path / p


def _read_raw(f: Path) -> dict[str, torch.Tensor]:
    """One layer file -> tensors under circuit-tracer's key names (Gemma Scope variants converted as it does)."""
    if not f.exists():
        raise MechscopeError(f"transcoder file {f} is missing")
    try:
        if f.suffix == ".npz":  # Gemma Scope: W_enc stored [d, d_tc], threshold unprefixed
            import numpy as np

            with np.load(f, allow_pickle=False) as z:
                t = {k: torch.from_numpy(z[k].copy()) for k in z.files}
            t["W_enc"] = t["W_enc"].T.contiguous()
            if "threshold" in t:
                t["activation_function.threshold"] = t.pop("threshold")
            return t
        with safe_open(str(f), framework="pt") as h:
            t = {k: h.get_tensor(k) for k in h.keys()}
    except MechscopeError:
        raise
    except Exception as e:  # safetensors / numpy raise several types on corrupt files
        raise MechscopeError(
            f"{f} is not a readable transcoder file: {str(e).splitlines()[0] if str(e) else e}"
        ) from None
    if "w_enc" in t:  # Gemma Scope 2: lower-case keys, encoder and skip stored transposed
        t = {
            "W_enc": t["w_enc"].T.contiguous(),
            "W_dec": t["w_dec"],
            "b_enc": t["b_enc"],
            "b_dec": t["b_dec"],
            "activation_function.threshold": t["threshold"],
            **({"W_skip": t["affine_skip_connection"].T.contiguous()} if "affine_skip_connection" in t else {}),
        }
    if any(k.startswith(("W_enc_", "W_dec_")) for k in t):
        raise MechscopeError(
            f"{f} is a cross-layer transcoder file (W_enc_{{i}}/W_dec_{{i}}); mechscope loads per-layer transcoders only"
        )
    return t


def ct_shapes(f: Path) -> tuple[int, int]:
    """(d_transcoder, d_model) from a file's header (safetensors) without reading its tensors."""
    if f.suffix == ".npz":
        t = _read_raw(f)
        return int(t["b_enc"].shape[0]), int(t["b_dec"].shape[0])
    try:
        with safe_open(str(f), framework="pt") as h:
            keys = set(h.keys())
            enc, dec = ("b_enc", "b_dec") if "b_enc" in keys else (None, None)
            if enc is None:
                raise MechscopeError(f"{f} lacks b_enc/b_dec (not a circuit-tracer per-layer transcoder)")
            return int(h.get_slice(enc).get_shape()[0]), int(h.get_slice(dec).get_shape()[0])
    except MechscopeError:
        raise
    except Exception as e:
        raise MechscopeError(f"{f} is not a readable safetensors file: {e}") from None


def check_fits(n_files: int, d_model_file: int, path: Path, n_layers: int | None, d_model: int | None) -> None:
    if n_layers is not None and n_files != n_layers:
        raise MechscopeError(f"transcoder set {path} has {n_files} layers but the model has {n_layers}")
    if d_model is not None and d_model_file != d_model:
        raise MechscopeError(f"transcoder set {path} has d_model {d_model_file} but the model has {d_model}")


def import_circuit_tracer(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    n_layers: int | None = None,
    d_model: int | None = None,
    post_mlp_norm: bool | None = None,
    local_files: dict[str, Path] | None = None,
) -> TranscoderSet:
    """Read a circuit-tracer transcoder directory (config.yaml + per-layer files) into a TranscoderSet.

    With `n_layers` / `d_model` (the model's) the set is checked from config.yaml and the first file's header
    before any weights are read; `post_mlp_norm` (the model family has one) refuses sets trained on the raw
    MLP output (`mlp.hook_out`), which our transcoders' output site is not. `local_files` maps `hf://` entries
    to downloaded files (see `mechscope.transcoders.hub`).

    >>> ts = import_circuit_tracer("gemma-scope-set", n_layers=26, d_model=2304)   # doctest: +SKIP
    """
    path = Path(path)
    cfg = read_ct_config(path, allow_clt=local_files is None)
    if cfg.get("model_kind") == "cross_layer_transcoder" or (path / "W_enc_0.safetensors").exists():
        from mechscope.transcoders.clt_ct import import_circuit_tracer_clt

        return import_circuit_tracer_clt(path, cfg, dtype, n_layers, d_model, post_mlp_norm)  # type: ignore[return-value]
    out_hook = strip_block(str(cfg["feature_output_hook"]))
    if post_mlp_norm and OUTPUT_HOOKS[out_hook] == "hook_mlp_out_raw":
        raise MechscopeError(
            f"transcoder set {path} predicts {cfg['feature_output_hook']} (the MLP output before the "
            "post-MLP norm); mechscope's transcoders predict hook_mlp_out for this family"
        )
    files = [_entry_path(e, path, local_files) for e in layer_entries(cfg, path)]
    check_fits(len(files), ct_shapes(files[0])[1], path, n_layers, d_model)
    act_cfg = str(cfg["activation"]).lower() if cfg.get("activation") is not None else None
    layers = []
    for f in files:
        t = _read_raw(f)
        missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec") if k not in t]
        if missing:
            raise MechscopeError(f"{f} lacks {', '.join(missing)} (not a circuit-tracer per-layer transcoder)")
        d_tc, d = int(t["b_enc"].shape[0]), int(t["b_dec"].shape[0])
        check_fits(len(files), d, path, None, d_model)
        k = 0
        if act_cfg == "topk" or (act_cfg is None and "k" in t and "activation_function.threshold" not in t):
            act, k = "topk", int(cfg["k"]) if cfg.get("k") is not None else int(t["k"])
        elif act_cfg == "relu":
            act = "relu"
        else:
            act = "jumprelu" if "activation_function.threshold" in t else "relu"
        tc = Transcoder(
            TranscoderConfig(
                d_model=d,
                d_transcoder=d_tc,
                activation=act,
                k=k,
                skip="W_skip" in t,
                dtype=str(dtype).removeprefix("torch."),
            )
        )
        ours = {"W_enc": t["W_enc"], "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
        if act == "jumprelu":
            ours["threshold"] = t["activation_function.threshold"]
        if "W_skip" in t:
            ours["W_skip"] = t["W_skip"]
        for key, v in ours.items():
            target = getattr(tc, key)
            if tuple(v.shape) != tuple(target.shape):
                raise MechscopeError(f"{f}: {key} has shape {tuple(v.shape)}, expected {tuple(target.shape)}")
            target.data = v.to(target.dtype)
        layers.append(tc)
    scan = cfg.get("scan_name", cfg.get("scan"))
    meta = {
        "model": cfg.get("model_name"),
        "scan": scan,
        "source": "circuit-tracer",
        "feature_input_hook": cfg["feature_input_hook"],
        "feature_output_hook": cfg["feature_output_hook"],
    }
    return TranscoderSet(layers, meta)


def export_circuit_tracer(ts: TranscoderSet, path: str | Path, model_name: str, dtype: str = "float32") -> Path:
    """Write circuit-tracer's layout: config.yaml + `layer_{i}.safetensors` with exactly the keys its loader reads.

    No `transcoders` list: circuit-tracer then finds `layer_{i}.safetensors` beside config.yaml (hub repository,
    subfolder or its own cache), whereas relative list entries would be resolved against its working directory.
    TopK sets are written as `activation: topk` + `k` (no `k` tensor: its strict state-dict load rejects it).

    A cross-layer transcoder is written in circuit-tracer's CLT layout instead (clt_ct.py).

    >>> export_circuit_tracer(ts, "out/ct-set", model_name="google/gemma-3-270m")
    PosixPath('out/ct-set')
    """
    if getattr(ts, "kind", "plt") == "clt":
        from mechscope.transcoders.clt_ct import export_circuit_tracer_clt

        return export_circuit_tracer_clt(ts, path, model_name, dtype)  # type: ignore[arg-type]
    path = Path(path)
    dt = getattr(torch, dtype)
    cfg0 = ts[0].cfg
    with atomic_dir(path) as tmp:
        for l, tc in enumerate(ts):
            tensors = {k: getattr(tc, k).detach().to(dt).contiguous() for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
            if tc.cfg.activation == "jumprelu":
                tensors["activation_function.threshold"] = tc.threshold.detach().to(dt).contiguous()
            if tc.W_skip is not None:
                tensors["W_skip"] = tc.W_skip.detach().to(dt).contiguous()
            save_file(tensors, str(tmp / f"layer_{l}.safetensors"))
        cfg = {
            "model_kind": "transcoder_set",
            "model_name": model_name,
            "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "hook_mlp_out",
            "scan": ts.meta.get("scan") or f"mechscope/{model_name}",
            "activation": cfg0.activation,
        }
        if cfg0.activation == "topk":
            cfg["k"] = int(cfg0.k)
        import yaml

        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
