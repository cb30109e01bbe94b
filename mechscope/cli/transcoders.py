"""CLI: train-transcoders, eval-transcoders, fit-sinks, fold-dense, export-transcoders."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mechscope.cli._common import JsonOut, ModelOpt, ThreadsOpt, TranscodersOpt, command
from mechscope.configs import param, require
from mechscope.errors import MechscopeError
from mechscope.transcoders.configs import EvalConfig, FoldConfig, SinkConfig
from mechscope.transcoders.registry import SHIPPED_DTYPE
from mechscope.training.config import SaveDtype, TrainConfig


@dataclass(kw_only=True)
class TrainArgs(ThreadsOpt, JsonOut):
    train: TrainConfig = field(default_factory=TrainConfig)  # every training knob is an option
    resume: bool = param(False, help="continue from the checkpoint in --out")


@command("train-transcoders", help="train a transcoder for every layer")
def cmd_train(a: TrainArgs) -> int:
    from dataclasses import replace

    from mechscope.paths import check_writable
    from mechscope.transcoders.registry import user_transcoder_dir
    from mechscope.training.train import train_transcoders

    cfg = a.train if a.train.out else replace(a.train, out=str(user_transcoder_dir(a.train.model)))
    check_writable(cfg.out, kind="dir")
    summary = train_transcoders(cfg, resume=a.resume, progress=not a.json)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports
    summary["out"] = cfg.out
    fvu = summary["train_fvu_per_layer"]
    print(
        json.dumps(summary)
        if a.json
        else f"saved {cfg.out}: {summary['tokens_trained']} tokens in {summary['elapsed_s']} s ({summary['tokens_per_s']} tok/s); "
        f"train FVU mean {sum(fvu) / len(fvu):.3f}"
    )
    return 0


@dataclass(kw_only=True)
class EvalArgs(ModelOpt, TranscodersOpt, JsonOut):
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str | None = param(None, help="also write the JSON result to this file")


@command("eval-transcoders", help="held-out FVU, L0, dead features, spliced loss")
def cmd_eval(a: EvalArgs) -> int:
    from mechscope.paths import atomic_write_text, check_writable, portable_path
    from mechscope.provenance import stamp
    from mechscope.session import Session
    from mechscope.transcoders.evaluate import evaluate_transcoders

    if a.out:
        check_writable(a.out)
    s = Session(a.model, a.transcoders)
    path = s.check_transcoders()
    res = evaluate_transcoders(s.model, s.transcoders, a.eval, progress=not a.json)
    res["transcoders"] = portable_path(path)
    stamp(res, set_dir=path)
    if a.out:
        atomic_write_text(Path(a.out), json.dumps(res, indent=2))
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{path} on {res['tokens']} held-out tokens of {res['corpus']}")
    print("layer   FVU     L0   dead  CE-rec")
    rows = zip(
        res["fvu_per_layer"], res["l0_per_layer"], res["dead_fraction_per_layer"], res["ce_loss_recovered_per_layer"]
    )
    for layer, (f, l0, dd, r) in enumerate(rows):
        print(f"{layer:>5} {f:6.3f} {l0:6.1f} {dd:6.3f} {r:7.3f}")
    print(
        f"mean FVU {res['mean_fvu']:.3f} (max {res['max_fvu']:.3f}), mean L0 {res['mean_l0']:.1f}, "
        f"dead {res['dead_fraction']:.3f} (silent in {res['dead_window_tokens']} tokens; "
        f"{res['dead_fraction_in_loss_tokens']:.3f} in the first {res['tokens']}); "
        f"all layers spliced: CE {res['ce_spliced_all_layers']:.3f} vs clean {res['ce_clean']:.3f}, "
        f"zero-ablated {res['ce_zero_ablate_all_layers']:.3f}"
        f" -> recovered {res['ce_loss_recovered_all_layers']:.3f}, KL {res['kl_all_layers']:.3f}"
    )
    print(
        f"with position 0 kept (as in attribution graphs): CE {res['ce_spliced_all_layers_bos_kept']:.3f}, "
        f"zero-ablated {res['ce_zero_ablate_all_layers_bos_kept']:.3f} -> "
        f"recovered {res['ce_loss_recovered_all_layers_bos_kept']:.3f}, KL {res['kl_all_layers_bos_kept']:.3f}"
    )
    return 0


def _per_layer_input(s, out: str, verb: str) -> tuple[Path, dict]:
    """The input set of a command that writes a new per-layer set into `out`, and its config.json: refused in one
    line before the model loads (a refusal should be quick) when `out` is the input set, not writable, or the
    input is a cross-layer transcoder."""
    from mechscope.paths import check_writable
    from mechscope.transcoders.storage import read_config

    path = s.check_transcoders()
    if Path(out).resolve() == path.resolve():
        raise MechscopeError("--out must differ from the input set (it is replaced atomically, not edited)")
    check_writable(out, kind="dir")
    meta = read_config(path)
    if meta.get("kind") == "clt":
        raise MechscopeError(f"{verb} per-layer transcoder sets; this is a cross-layer transcoder")
    return path, meta


@dataclass(kw_only=True)
class FitSinksArgs(ModelOpt, TranscodersOpt, JsonOut):
    out: str = param(help="directory of the new set (may not be the input set)")
    sinks: SinkConfig = field(default_factory=SinkConfig)


@command("fit-sinks", help="fit one latent per layer to the MLP's massive activations at attention sinks")
def cmd_fit_sinks(a: FitSinksArgs) -> int:
    from mechscope.session import Session
    from mechscope.transcoders.mapped import in_memory
    from mechscope.transcoders.sinks import fit_sinks
    from mechscope.transcoders.storage import save_transcoders

    s = Session(a.model, a.transcoders)
    _, meta = _per_layer_input(s, a.out, "fit-sinks fits")
    if meta["activation"] != "topk":  # before the model loads: a refusal should be quick
        raise MechscopeError("fit-sinks needs a TopK set (a JumpReLU threshold would need refitting too)")
    ts = in_memory(s.transcoders)  # fitted in place: a memory-mapped set would hand out copies
    reports = fit_sinks(s.model, ts, a.sinks)
    ts.meta["sink_latents"] = {
        "factor": a.sinks.factor,
        "tokens": a.sinks.tokens,
        "corpus": a.sinks.corpus,
        "layers": reports,
    }
    save_transcoders(ts.cpu(), a.out, dtype=ts.meta.get("dtype", SHIPPED_DTYPE))
    if a.json:
        print(json.dumps(reports))
        return 0
    for r in reports:
        got = (
            (
                f"latent {r['latent']}: sinks' error {r['sink_rel_err_before']:.3f} -> {r['sink_rel_err_after']:.3f}, "
                f"ordinary FVU {r['normal_fvu_before']:.4f} -> {r['normal_fvu_after']:.4f}"
            )
            if r["fitted"]
            else r["reason"]
        )
        print(
            f"layer {r['layer']}: {r['sinks']} sinks ({r['norm_ratio_min']:.0f}-{r['norm_ratio_max']:.0f}x the median) — {got}"
        )
    print(f"wrote {a.out} ({sum(r['fitted'] for r in reports)} sink latents)")
    return 0


@dataclass(kw_only=True)
class FoldArgs(ModelOpt, TranscodersOpt, JsonOut):
    out: str = param(help="directory of the new set (may not be the input set)")
    fold: FoldConfig = field(default_factory=FoldConfig)


@command("fold-dense", help="move the constant part of always-on latents into the decoder bias (exact on the text)")
def cmd_fold_dense(a: FoldArgs) -> int:
    from mechscope.paths import portable_path
    from mechscope.session import Session
    from mechscope.transcoders.fold import fold_dense
    from mechscope.transcoders.mapped import in_memory
    from mechscope.transcoders.storage import save_transcoders

    s = Session(a.model, a.transcoders)
    path, meta = _per_layer_input(s, a.out, "fold-dense folds")
    dtype = meta.get("dtype", SHIPPED_DTYPE)
    f = a.fold
    ts = in_memory(s.transcoders)  # folded in place: a memory-mapped set would hand out copies
    rep = fold_dense(s.model, ts, f.corpus, f.tokens, f.min_density, f.seq_len, f.batch_size, dtype, f.verify)
    ts.meta["folded_dense"] = {k: v for k, v in rep.items() if k != "latents"} | {"from": portable_path(path)}
    ts.meta["folded_dense"]["latents"] = [[r["layer"], r["latent"], r["shift"]] for r in rep["latents"]]
    save_transcoders(ts.cpu(), a.out, dtype=dtype)
    if a.json:
        print(json.dumps(rep))
        return 0
    for r in rep["latents"]:
        print(
            f"layer {r['layer']:>2} latent {r['latent']:>5}: density {r['density']:.3f}, {r['shift']:.4g} folded "
            f"({r['moved_share']:.0%} of its mean activation)"
        )
    change = (
        f"; largest change of a reconstruction on the text {rep['max_abs_change']:.3g} "
        f"({rep['max_change_over_rms']:.2g} of the output RMS)"
        if "max_abs_change" in rep
        else ""
    )
    print(f"wrote {a.out}: {rep['folded']} latents folded over {rep['tokens']} tokens of {rep['corpus']}{change}")
    return 0


@dataclass(kw_only=True)
class ExportArgs(ModelOpt, TranscodersOpt):
    out: str = param(positional=True, help="output directory")
    from_circuit_tracer: str | None = param(None, help="import this circuit-tracer directory into OUT instead")
    format: Literal["circuit-tracer", "mechscope"] = param(
        "circuit-tracer", help="mechscope: re-save the set in our own layout, e.g. compactly with --dtype int8"
    )
    dtype: SaveDtype | None = param(
        None,
        help=f"storage dtype (default: float32 for circuit-tracer, {SHIPPED_DTYPE} "
        "for mechscope as the shipped sets; int8 is mechscope-only)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options validate themselves too (--model, --threads)
        require(
            not (self.dtype == "int8" and self.format == "circuit-tracer" and not self.from_circuit_tracer),
            "circuit-tracer reads float weights only: use --dtype float32/float16/bfloat16, or --format mechscope",
        )


@command("export-transcoders", help="write a set in circuit-tracer's layout (or import one with --from-circuit-tracer)")
def cmd_export(a: ExportArgs) -> int:
    from mechscope.paths import check_writable
    from mechscope.transcoders.registry import find_transcoders
    from mechscope.transcoders.storage import (
        export_circuit_tracer,
        import_circuit_tracer,
        load_transcoders,
        save_transcoders,
    )

    check_writable(a.out, kind="dir")
    own_dtype = a.dtype or SHIPPED_DTYPE  # our layout; circuit-tracer's defaults to float32 below
    if a.from_circuit_tracer:
        ts = import_circuit_tracer(a.from_circuit_tracer)
        ts.meta["model"] = a.model
        save_transcoders(ts, a.out, dtype=own_dtype)
        print(f"imported {a.from_circuit_tracer} -> {a.out}")
        return 0
    ts = load_transcoders(find_transcoders(a.model, a.transcoders), mapped=False)  # every weight is written
    if a.format == "mechscope":
        save_transcoders(ts, a.out, dtype=own_dtype)
        print(f"wrote {a.out} ({own_dtype}, {len(ts)} layers)")
        return 0
    export_circuit_tracer(ts, a.out, model_name=a.model, dtype=a.dtype or "float32")
    n_files = 2 * len(ts) if ts.kind == "clt" else len(ts)  # a CLT: W_enc_{i} and W_dec_{i} per layer
    print(f"wrote circuit-tracer layout to {a.out} (config.yaml + {n_files} safetensors)")
    return 0
