"""CLI: train-transcoders, eval-transcoders, fit-sinks, export-transcoders."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechscope.cli_registry import command
from mechscope.errors import MechscopeError


def add_parsers(sub, add_model) -> None:
    from mechscope.transcoders.sinks import SinkConfig
    from mechscope.transcoders.storage import SAVE_DTYPES
    from mechscope.transcoders.train import ACTIVATIONS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train-transcoders", help="train a transcoder for every layer")
    add_model(p)
    p.add_argument("--corpus", default="builtin", help="'builtin', a .txt/.jsonl/.parquet file or folder, or hf:DATASET")
    p.add_argument("--tokens", type=int, default=d.tokens)
    p.add_argument("--features", type=int, default=d.features)
    p.add_argument("--k", type=int, default=d.k, help="active features per token (TopK, BatchTopK) or target mean L0 (JumpReLU)")
    p.add_argument("--activation", default=d.activation, choices=list(ACTIVATIONS),
                   help="sparsity: per-token TopK, batch-wide BatchTopK, or JumpReLU with learned thresholds")
    p.add_argument("--no-skip", action="store_true", help="train without the linear skip term")
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=0.0)
    p.add_argument("--out", default="", help="output directory (default: the user data dir for this model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init-from", default="", help="continue from an existing set (fresh optimizer and schedule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-dtype", default=d.save_dtype, choices=list(SAVE_DTYPES),
                   help="storage of the saved set (int8: per-row int8 matrices with fp16 scales, half of fp16's size)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--dead-after-tokens", type=int, default=d.dead_after_tokens,
                   help="a feature silent this many tokens counts as dead and gets the AuxK revival loss")
    p.add_argument("--resample-dead", action="store_true",
                   help="also re-draw dead features at checkpoint steps (not in the final LR decay) from badly "
                        "reconstructed tokens (topk/batchtopk)")
    p.add_argument("--resample-scale", type=float, default=d.resample_scale,
                   help="a re-drawn feature's pre-activation on the token it is drawn from, in units of that token's "
                        "TopK cut (below 1: waits for AuxK; above 1: fires at once)")
    p.add_argument("--outlier-factor", type=float, default=d.outlier_factor,
                   help="drop tokens whose MLP output norm is over X times the batch median at some layer (0: keep all); "
                        "fit-sinks then gives the set latents for those attention-sink outputs")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval-transcoders", help="held-out FVU, L0, dead features, spliced loss")
    add_model(p)
    p.add_argument("--transcoders", default=None, help="transcoder set directory (default: the model's)")
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--layer-tokens", type=int, default=2048, help="tokens for the per-layer spliced loss")
    p.add_argument("--dead-tokens", type=int, default=65536,
                   help="a feature is dead if it never fires in this many held-out tokens (at least --tokens; "
                        "the extra ones run only the model and the encoders)")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("fit-sinks", help="fit one latent per layer to the MLP's massive activations at attention sinks")
    add_model(p)
    p.add_argument("--transcoders", default=None, help="transcoder set directory (default: the model's)")
    p.add_argument("--out", required=True, help="directory of the new set (may not be the input set)")
    p.add_argument("--factor", type=float, default=SinkConfig.factor, help="a sink's MLP output norm exceeds X times the batch median")
    p.add_argument("--tokens", type=int, default=SinkConfig.tokens, help="training-split tokens to measure the sinks on")
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export-transcoders", help="write a set in circuit-tracer's layout (or import one with --from-circuit-tracer)")
    add_model(p)
    p.add_argument("out")
    p.add_argument("--transcoders", default=None)
    p.add_argument("--from-circuit-tracer", default=None, help="import this circuit-tracer directory into OUT instead")
    p.add_argument("--format", default="circuit-tracer", choices=["circuit-tracer", "mechscope"],
                   help="mechscope: re-save the set in our own layout, e.g. compactly with --dtype int8")
    p.add_argument("--dtype", default=None, choices=list(SAVE_DTYPES),
                   help="storage dtype (default: float32 for circuit-tracer, float16 for mechscope; int8 is mechscope-only)")


@command("train-transcoders")
def cmd_train(args: argparse.Namespace) -> int:
    from mechscope.transcoders.registry import user_transcoder_dir
    from mechscope.transcoders.train import TrainConfig, train_transcoders

    for name in ("tokens", "features", "k", "seq_len", "batch_size", "dead_after_tokens"):
        if getattr(args, name) < 1:
            raise MechscopeError(f"--{name.replace('_', '-')} must be positive")
    if args.resample_scale <= 0:
        raise MechscopeError("--resample-scale must be positive")
    if args.k > args.features:
        raise MechscopeError("--k cannot exceed --features")
    cfg = TrainConfig(model=args.model, corpus=args.corpus, tokens=args.tokens, features=args.features, k=args.k,
                      skip=not args.no_skip, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                      out=args.out or str(user_transcoder_dir(args.model)), device=args.device, seed=args.seed,
                      checkpoint_every=args.checkpoint_every, init_from=args.init_from, activation=args.activation,
                      dead_after_tokens=args.dead_after_tokens, resample_dead=args.resample_dead,
                      resample_scale=args.resample_scale,
                      outlier_factor=args.outlier_factor, save_dtype=args.save_dtype)
    summary = train_transcoders(cfg, resume=args.resume, progress=not args.json)
    import os
    if int(os.environ.get("RANK", "0")) != 0:
        return 0   # under torchrun only rank 0 reports
    summary["out"] = cfg.out
    print(json.dumps(summary) if args.json else
          f"saved {cfg.out}: {summary['tokens_trained']} tokens in {summary['elapsed_s']} s ({summary['tokens_per_s']} tok/s); "
          f"train FVU mean {sum(summary['train_fvu_per_layer']) / len(summary['train_fvu_per_layer']):.3f}")
    return 0


@command("eval-transcoders")
def cmd_eval(args: argparse.Namespace) -> int:
    from mechscope.models import load_model
    from mechscope.paths import atomic_write_text, portable_path
    from mechscope.transcoders.evaluate import EvalConfig, evaluate_transcoders
    from mechscope.transcoders.registry import find_transcoders
    from mechscope.transcoders.storage import load_transcoders

    if args.tokens < 1 or args.layer_tokens < 0 or args.dead_tokens < 0:
        raise MechscopeError("--tokens must be positive, --layer-tokens and --dead-tokens not negative")
    model = load_model(args.model)
    path = find_transcoders(args.model, args.transcoders)
    ts = load_transcoders(path, n_layers=model.n_layers, d_model=model.d_model)
    res = evaluate_transcoders(model, ts, EvalConfig(corpus=args.corpus, tokens=args.tokens, ce_layer_tokens=args.layer_tokens,
                                                          dead_tokens=args.dead_tokens),
                               progress=not args.json)
    res["transcoders"] = portable_path(path)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(res, indent=2))
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{path} on {res['tokens']} held-out tokens of {res['corpus']}")
        print("layer   FVU     L0   dead  CE-rec")
        for l, (f, l0, dd, r) in enumerate(zip(res["fvu_per_layer"], res["l0_per_layer"], res["dead_fraction_per_layer"], res["ce_loss_recovered_per_layer"])):
            print(f"{l:>5} {f:6.3f} {l0:6.1f} {dd:6.3f} {r:7.3f}")
        print(f"mean FVU {res['mean_fvu']:.3f} (max {res['max_fvu']:.3f}), mean L0 {res['mean_l0']:.1f}, "
              f"dead {res['dead_fraction']:.3f} (silent in {res['dead_window_tokens']} tokens; {res['dead_fraction_in_loss_tokens']:.3f} in the first {res['tokens']}); "
              f"all layers spliced: CE {res['ce_spliced_all_layers']:.3f} vs clean {res['ce_clean']:.3f}, zero-ablated {res['ce_zero_ablate_all_layers']:.3f}"
              f" -> recovered {res['ce_loss_recovered_all_layers']:.3f}, KL {res['kl_all_layers']:.3f}")
        print(f"with position 0 kept (as in attribution graphs): CE {res['ce_spliced_all_layers_bos_kept']:.3f}, "
              f"zero-ablated {res['ce_zero_ablate_all_layers_bos_kept']:.3f} -> recovered {res['ce_loss_recovered_all_layers_bos_kept']:.3f}, "
              f"KL {res['kl_all_layers_bos_kept']:.3f}")
    return 0


@command("fit-sinks")
def cmd_fit_sinks(args: argparse.Namespace) -> int:
    from mechscope.models import load_model
    from mechscope.transcoders.registry import find_transcoders
    from mechscope.transcoders.sinks import SinkConfig, fit_sinks
    from mechscope.transcoders.storage import load_transcoders, read_config, save_transcoders

    if args.factor <= 1 or args.tokens < 1:
        raise MechscopeError("--factor must exceed 1 and --tokens be positive")
    path = find_transcoders(args.model, args.transcoders)
    if Path(args.out).resolve() == path.resolve():
        raise MechscopeError("--out must differ from the input set (it is replaced atomically, not edited)")
    if read_config(path)["activation"] != "topk":     # before the model loads: a refusal should be quick
        raise MechscopeError("fit-sinks needs a TopK set (a JumpReLU threshold would need refitting too)")
    model = load_model(args.model)
    ts = load_transcoders(path, n_layers=model.n_layers, d_model=model.d_model).to(model.device)
    reports = fit_sinks(model, ts, SinkConfig(factor=args.factor, tokens=args.tokens, corpus=args.corpus))
    ts.meta["sink_latents"] = {"factor": args.factor, "tokens": args.tokens, "corpus": args.corpus, "layers": reports}
    save_transcoders(ts.cpu(), args.out, dtype=ts.meta.get("dtype", "float16"))
    if args.json:
        print(json.dumps(reports))
    else:
        for r in reports:
            got = f"latent {r['latent']}: sinks' error {r['sink_rel_err_before']:.3f} -> {r['sink_rel_err_after']:.3f}, " \
                  f"ordinary FVU {r['normal_fvu_before']:.4f} -> {r['normal_fvu_after']:.4f}" if r["fitted"] else r["reason"]
            print(f"layer {r['layer']}: {r['sinks']} sinks ({r['norm_ratio_min']:.0f}-{r['norm_ratio_max']:.0f}x the median) — {got}")
        print(f"wrote {args.out} ({sum(r['fitted'] for r in reports)} sink latents)")
    return 0


@command("export-transcoders")
def cmd_export(args: argparse.Namespace) -> int:
    from mechscope.transcoders.registry import find_transcoders
    from mechscope.transcoders.storage import export_circuit_tracer, import_circuit_tracer, load_transcoders, save_transcoders

    own_dtype = args.dtype or "float16"      # our layout; circuit-tracer's defaults to float32 below
    if args.from_circuit_tracer:
        ts = import_circuit_tracer(args.from_circuit_tracer)
        ts.meta["model"] = args.model
        save_transcoders(ts, args.out, dtype=own_dtype)
        print(f"imported {args.from_circuit_tracer} -> {args.out}")
        return 0
    ts = load_transcoders(find_transcoders(args.model, args.transcoders))
    if args.format == "mechscope":
        save_transcoders(ts, args.out, dtype=own_dtype)
        print(f"wrote {args.out} ({own_dtype}, {len(ts)} layers)")
        return 0
    if args.dtype == "int8":
        raise MechscopeError("circuit-tracer reads float weights only: use --dtype float32/float16/bfloat16, or --format mechscope")
    export_circuit_tracer(ts, args.out, model_name=args.model, dtype=args.dtype or "float32")
    print(f"wrote circuit-tracer layout to {args.out} (config.yaml + {len(ts)} safetensors)")
    return 0
