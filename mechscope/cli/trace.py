"""CLI: trace (attribution graphs)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mechscope.attribution.config import AttributionConfig
from mechscope.cli._common import JsonOut, ModelOpt, TranscodersOpt, command
from mechscope.configs import param, require


@dataclass(kw_only=True)
class TraceArgs(ModelOpt, TranscodersOpt, JsonOut):
    prompt: str = param(positional=True, help="the prompt whose next-token prediction is explained")
    attribution: AttributionConfig = field(default_factory=AttributionConfig)  # its knobs become options
    out: str | None = param(None, help="graph JSON path (default: the graph store, $MECHSCOPE_HOME/graphs)")
    validate: int = param(
        0,
        metavar="N",
        help="ablate the N most influential features and compare with the graph's predicted total effect "
        "(in the frozen local replacement model, and in the real model with attention frozen)",
    )
    device: Literal["cpu", "cuda", "auto"] = param(
        "cpu", help="where the model runs (cuda: untested here, no GPU was available; rows are assembled on the CPU)"
    )
    chat: bool = param(False, help="apply the model's chat template")
    flowchart: str | None = param(
        None, metavar="FILE.svg", help="also write an automatic flowchart of labelled supernodes as SVG"
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options validate themselves too (--model, --threads)
        require(self.validate >= 0, f"--validate must be ≥ 0 (features to ablate), got {self.validate}")
        require(not (self.validate and self.chat), "--validate does not support --chat yet")
        require(
            not self.flowchart or self.flowchart.lower().endswith(".svg"),
            f"--flowchart must name an .svg file, got {self.flowchart!r}",
        )


@command("trace", help="compute the attribution graph of a prompt")
def cmd_trace(a: TraceArgs) -> int:
    from mechscope.paths import atomic_write_text, check_writable
    from mechscope.session import Session

    # every output is checked before the model loads: a bad path should not cost minutes
    if a.out:
        check_writable(a.out)
    if a.flowchart:
        check_writable(a.flowchart)
    if a.device == "cpu":  # context and memory from the tokenizer and config files alone, before the model loads
        from mechscope.attribution.precheck import precheck_trace

        precheck_trace(a.model, a.prompt, a.attribution, chat=a.chat, transcoders=a.transcoders)
    s = Session(a.model, a.transcoders, device=a.device)
    s.check_transcoders()
    from mechscope.attribution import graph_store  # torch: only once the trace is known to be wanted
    from mechscope.attribution.supernodes import flowchart

    g = s.trace(a.prompt, a.attribution, chat=a.chat)
    out = Path(a.out) if a.out else graph_store() / f"{g.slug()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    labels = s.labels()
    data = g.to_json(labels=labels)
    atomic_write_text(out, json.dumps(data))
    g.save_binary(out.with_suffix(".adjacency.safetensors"))
    fc = flowchart(data, labels)
    if a.flowchart:
        atomic_write_text(Path(a.flowchart), fc.to_svg())
    info = data["metadata"]["info"]
    summary = {
        "graph_path": str(out),
        "n_nodes": len(data["nodes"]),
        "n_edges": len(data["links"]),
        "replacement_score": info["replacement_score"],
        "input_completeness_score": info["input_completeness_score"],
        "ct_completeness_score": info["ct_completeness_score"],
        "pruned_replacement_score": info["pruned_replacement_score"],
        "pruned_input_completeness_score": info["pruned_input_completeness_score"],
        "n_nodes_full": info["n_nodes_full"],
        "n_edges_full": info["n_edges_full"],
        "elapsed_s": g.meta["elapsed_s"],
        "top_logits": g.meta["top_logits"],
        "prompt_tokens": g.meta["prompt_tokens"],
    }
    if g.meta.get("target_hints"):
        summary["target_hints"] = g.meta["target_hints"]
    if a.validate:
        summary["validation"] = s.validate(g, top_n=a.validate)
    summary["flowchart"] = fc.to_json()
    if a.flowchart:
        summary["flowchart_svg"] = str(a.flowchart)
    if a.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    _print_summary(a, g, data, summary, fc, out)
    return 0


def _print_summary(a: TraceArgs, g, data: dict, summary: dict, fc, out: Path) -> None:
    from mechscope.attribution import graph_store

    print(f"tokens: {' | '.join(repr(t) for t in g.meta['prompt_tokens'])}")
    print("top logits: " + ", ".join(f"{t['token']!r} {t['prob']:.3f}" for t in g.meta["top_logits"]))
    print("most influential features per position (layer/feature, activation, label):")
    by_pos: dict[int, list[dict]] = {}
    for nd in data["nodes"]:
        if nd["feature_type"] == "cross layer transcoder":
            by_pos.setdefault(nd["ctx_idx"], []).append(nd)
    for p in sorted(by_pos):
        top = sorted(by_pos[p], key=lambda nd: nd["influence"])[:3]
        desc = "; ".join(
            f"{nd['layer']}/{nd['feature']} a={nd['activation']:.2f}" + (f" “{nd['clerp']}”" if nd["clerp"] else "")
            for nd in top
        )
        print(f"  [{p}] {g.meta['prompt_tokens'][p]!r}: {desc}")
    print(
        f"replacement score {summary['replacement_score']:.3f} (pruned {summary['pruned_replacement_score']:.3f}), "
        f"input completeness {summary['input_completeness_score']:.3f} "
        f"(pruned {summary['pruned_input_completeness_score']:.3f}), "
        f"circuit-tracer's completeness {summary['ct_completeness_score']:.3f}"
    )
    print(
        f"pruned graph: {summary['n_nodes']} nodes, {summary['n_edges']} edges "
        f"(full: {summary['n_nodes_full']} nodes, {summary['n_edges_full']} edges); {summary['elapsed_s']:.2f} s"
    )
    if a.validate:
        v = summary["validation"]
        print(
            f"validation on {v['target']}: {v['n']} features ablated; Spearman(predicted, measured) = "
            f"{v['spearman']:.2f} in the local replacement model (attention and norms frozen, as published), sign "
            f"agreement {v['sign_agreement']:.2f}; real model, attention frozen only: {v['spearman_unfrozen']:.2f} "
            f"(signs {v['sign_agreement_unfrozen']:.2f}); features' on/off frozen too: {v['spearman_linear']:.2f}"
        )
    print(fc.to_text())
    print(f"saved {out}" + (f"; flowchart {a.flowchart}" if a.flowchart else ""))
    if out.parent.resolve() == graph_store().resolve():
        print(f"explore it: mechscope serve --model {a.model}  then open http://127.0.0.1:8765/#graph={out.stem}")
