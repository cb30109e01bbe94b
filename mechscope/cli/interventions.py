"""CLI: intervene and swap."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from mechscope.cli._common import JsonOut, MemoryOpt, ModelOpt, TranscodersOpt, command
from mechscope.configs import param, require
from mechscope.errors import MechscopeError


@dataclass(kw_only=True)
class InterveneArgs(ModelOpt, TranscodersOpt, MemoryOpt, JsonOut):
    prompt: str = param(positional=True, help="the prompt to run before and after the edits")
    set: list[str] = param(
        default_factory=list, metavar="L/F[@P]=VALUE", help="set a feature's activation (repeatable)"
    )
    scale: list[str] = param(default_factory=list, metavar="L/F[@P]=FACTOR", help="scale a feature (repeatable)")
    ablate: list[str] = param(default_factory=list, metavar="L/F[@P]", help="zero a feature (repeatable)")
    supernode: list[str] = param(default_factory=list, metavar="NAME=L/F@P,L/F@P", help="name a group of features")
    freeze_attention: bool = param(False, help="keep attention patterns of the clean run")
    generate: int = param(0, metavar="N", help="also generate N tokens before and after")
    watch: list[str] = param(default_factory=list, metavar="TOKEN", help="report this token's probability")
    top_k: int = param(5, help="next tokens listed before and after")
    chat: bool = param(False, help="apply the model's chat template")

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options validate themselves too (--model, --threads)
        require(self.generate >= 0 and self.top_k >= 1, "--generate must be ≥ 0 and --top-k ≥ 1")


def _print(res: dict) -> None:
    width = max(len(repr(r["token"])) for r in res["before"] + res["after"])
    print(f"{'before':<{width + 8}}   after")
    for b, a in zip(res["before"], res["after"]):
        print(f"{b['token']!r:<{width}} {b['prob']:.3f}   {a['token']!r:<{width}} {a['prob']:.3f}")
    for w in res.get("watch", []):
        print(f"p({w['token']!r}): {w['before']:.3f} -> {w['after']:.3f}")
    if "generation_before" in res:
        print(f"generation before: {res['generation_before']!r}")
        print(f"generation after:  {res['generation_after']!r}")


@command("intervene", help="set / scale / ablate features and compare outputs before and after")
def cmd_intervene(a: InterveneArgs) -> int:
    from mechscope.interventions import Supernodes, parse_edits
    from mechscope.session import Session

    sn = Supernodes()
    for spec in a.supernode:
        sn.add(spec)
    edits = parse_edits(a.set, a.scale, a.ablate, sn)  # bad specs fail before the model loads
    if not edits:
        raise MechscopeError("no edit given: use --set, --scale or --ablate")
    s = Session(a.model, a.transcoders)
    s.check_transcoders()
    res = s.intervene(
        a.prompt,
        edits,
        generate=a.generate,
        freeze_attention=a.freeze_attention,
        top_k=a.top_k,
        chat=a.chat,
        watch=a.watch,
    )
    if a.json:
        print(json.dumps(res, ensure_ascii=False))
    else:
        _print(res)
    return 0


@dataclass(kw_only=True)
class SwapArgs(ModelOpt, TranscodersOpt, MemoryOpt, JsonOut):
    prompt: str = param(positional=True, help="the recipient prompt")
    donor: str = param(help="donor prompt, e.g. 'Oakland is in the state of'")
    remove: str = param("auto", help="'auto' or comma-separated features/supernodes to suppress")
    supernode: list[str] = param(default_factory=list, metavar="NAME=L/F@P,L/F@P", help="name a group of features")
    pos: list[int] | None = param(None, help="recipient position(s) (default: where the prompts differ; repeatable)")
    donor_pos: list[int] | None = param(None, help="donor position(s) (repeatable)")
    factor: float = param(1.0, help="scale of the injected donor features")
    max_layer: int | None = param(None, help="only swap features up to this layer")
    span: Literal["span", "rest", "diff"] = param(
        "span",
        help="swap the whole differing span aligned on the shared context (span), that and every later position "
        "(rest), or only the span's last token (diff)",
    )
    with_skip: bool = param(False, help="also transplant the transcoders' linear skip term there")
    watch: list[str] = param(default_factory=list, metavar="TOKEN", help="report this token's probability")
    locate: bool = param(
        False, help="instead of swapping, show which part of the MLPs (features, skip, error) carries the difference"
    )
    generate: int = param(0, metavar="N", help="also generate N tokens before and after")
    top_k: int = param(5, help="next tokens listed before and after")

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options validate themselves too (--model, --threads)
        require(self.generate >= 0 and self.top_k >= 1, "--generate must be ≥ 0 and --top-k ≥ 1")
        require(
            not self.locate or bool(self.watch),
            "--locate needs --watch TOKEN (e.g. --watch ' Texas' --watch ' California')",
        )


@command("swap", help="transplant a concept: suppress the prompt's features, inject a donor's")
def cmd_swap(a: SwapArgs) -> int:
    from mechscope.interventions import Edit, Supernodes
    from mechscope.session import Session

    sn = Supernodes()
    for spec in a.supernode:
        sn.add(spec)
    remove = None
    if a.remove != "auto":
        remove = [Edit(r, "ablate") for tok in a.remove.split(",") if tok.strip() for r in sn.resolve(tok.strip())]
    s = Session(a.model, a.transcoders)
    s.check_transcoders()
    model = s.model
    if a.max_layer is not None and not 0 <= a.max_layer < model.n_layers:
        raise MechscopeError(f"--max-layer {a.max_layer} out of range (0..{model.n_layers - 1})")
    if a.locate:
        res = s.locate(a.prompt, a.donor, a.watch, span=a.span)
        if a.json:
            print(json.dumps(res, ensure_ascii=False))
            return 0
        print(f"patched from the donor at positions {res['positions']} (donor {res['donor_positions']}), all layers:")
        print(f"{'component':<12}" + "".join(f"{w!r:>14}" for w in a.watch))
        for comp, ps in res["probs"].items():
            print(f"{comp:<12}" + "".join(f"{p:>14.3f}" for p in ps))
        return 0
    res = s.swap(
        a.prompt,
        a.donor,
        remove=remove,
        pos=a.pos,
        donor_pos=a.donor_pos,
        factor=a.factor,
        max_layer=a.max_layer,
        generate=a.generate,
        top_k=a.top_k,
        watch=a.watch,
        span=a.span,
        with_skip=a.with_skip,
    )
    if a.json:
        print(json.dumps(res, ensure_ascii=False))
    else:
        print(f"swapped (recipient position <- donor position): {res['swapped']}")
        print(f"{len(res['removed'])} features suppressed, {len(res['injected'])} injected (factor {res['factor']})")
        _print(res)
        _print_donor_answer(res)
    return 0


def _print_donor_answer(res: dict) -> None:
    """The donor prompt's own answer beside the result: a swap that does not give the donor's answer fails the
    features only where the donor prompt itself gives it."""
    d = res.get("donor_answer")
    if not d:
        return
    if d["rank_after"] is None:
        got = f"not in the top {len(res['after'])} after the swap"
    else:
        got = f"{d['after']:.3f} after the swap, rank {d['rank_after']}"
    print(f"donor prompt alone answers {d['token']!r} {d['prob']:.3f} ({got})")
