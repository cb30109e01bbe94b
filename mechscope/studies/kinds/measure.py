"""Experiment kinds that measure what the model does and what its graph shows: trace and compare
(preconditions by default: facts about the model), overlap and operand_grid (evidence about representations).
"""

from __future__ import annotations

import itertools
import re
import zlib
from dataclasses import dataclass, field
from typing import Literal

import torch

from mechscope.attribution.graph import input_completeness
from mechscope.configs import require
from mechscope.progress import step as announce  # `step` is also an operand_grid key
from mechscope.studies import figures
from mechscope.studies.kinds.common import fmt_top, label
from mechscope.studies.registry import Context, ExperimentOptions, Result, experiment


@dataclass(kw_only=True)
class TraceOptions(ExperimentOptions):
    """Trace a prompt; passes when every given expectation holds."""

    prompt: str
    target: str | None = None  # explain this token's logit (and report its probability and rank)
    expect_top: str | None = None  # the model's top next token
    expect_labels: list[str] = field(default_factory=list)  # some feature label contains one of these words
    expect_logit_regex: str | None = None  # a last-position feature promotes a token matching this
    max_feature_nodes: int | None = None  # default: the run's --max-feature-nodes
    validate: int = 0  # also check the graph: ablate its N most influential features (`validate_graph`)

    def single_tokens(self) -> list[str]:
        return [t for t in (self.target, self.expect_top) if t is not None] + super().single_tokens()

    def rule(self) -> str:
        checks = ([f"the top token is {self.expect_top!r}"] if self.expect_top else []) + (
            [f"some feature label in the graph contains one of {self.expect_labels}"] if self.expect_labels else []
        )
        if self.expect_logit_regex:
            checks.append(f"an influential last-position feature promotes a token matching /{self.expect_logit_regex}/")
        return "passes when " + " and ".join(checks) if checks else "no expectation: shown (and validated), not judged"


@experiment("trace", role="precondition")
def exp_trace(ctx: Context, o: TraceOptions) -> Result:
    from mechscope.attribution.attribute import AttributionConfig, attribute  # the module, not the lazy package
    from mechscope.attribution.supernodes import flowchart

    cfg = AttributionConfig(
        max_feature_nodes=o.max_feature_nodes if o.max_feature_nodes is not None else ctx.max_feature_nodes,
        targets=[o.target] if o.target else [],
    )
    g = attribute(ctx.model, ctx.ts, o.prompt, cfg)
    data = g.to_json(labels=ctx.labels)
    info = data["metadata"]["info"]
    p = ctx.probs(o.prompt)
    top = ctx.top(p, 5)
    feats = sorted(
        (n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"), key=lambda n: n["influence"]
    )[:12]
    checks = []
    if o.expect_top:
        checks.append(top[0][0] == o.expect_top)
    if o.expect_labels:
        found = [
            w
            for w in o.expect_labels
            if any(
                w.lower() in n["clerp"].lower() for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"
            )
        ]
        checks.append(bool(found))
    if o.expect_logit_regex and ctx.index is not None:
        rx = re.compile(o.expect_logit_regex)
        last = len(g.meta["prompt_tokens"]) - 1
        hits = []
        for n in feats:
            if n["ctx_idx"] == last:
                d = ctx.index.feature(int(n["layer"]), n["feature"])
                hits += [t for t, _ in d["top_logits"][:10] if rx.search(t.strip())]
        checks.append(bool(hits))
    passed = all(checks) if checks else None
    rows = [
        {
            "feature": f"{n['layer']}/{n['feature']}@{n['ctx_idx']}",
            "token": g.meta["prompt_tokens"][n["ctx_idx"]],
            "label": n["clerp"],
            "activation": round(n["activation"], 3),
            "influence_rank": round(n["influence"], 3),
        }
        for n in feats
    ]
    tgt = ""
    if o.target:
        tid = ctx.model.token_id(o.target)
        tgt = f"; p({o.target!r}) = {float(p[tid]):.4f}, rank {int((p > p[tid]).sum()) + 1}"
    summary = (
        f"top tokens: {fmt_top(top)}{tgt}. Replacement score {info['replacement_score']:.3f}, input "
        f"completeness {input_completeness(info):.3f}; pruned graph {len(data['nodes'])} nodes, {len(data['links'])} edges."
    )
    val = None
    if o.validate:
        from mechscope.attribution.validate import validate_graph

        with announce(f"validating the graph of {o.prompt!r} ({o.validate} ablations)"):
            v = validate_graph(ctx.model, ctx.ts, g, top_n=o.validate)
        val = {k: v[k] for k in ("n", "spearman", "spearman_unfrozen", "spearman_linear", "sign_agreement")}
        summary += (
            f" Validation ({v['n']} features ablated): Spearman(predicted, measured) {v['spearman']:.2f} in the frozen "
            f"local replacement model, {v['spearman_unfrozen']:.2f} in the real model (attention frozen)."
        )
    # the flowchart of labelled supernodes comes first: it is the figure the hypothesis is read from
    fc = flowchart(data, labels=ctx.labels)
    tag = f"{zlib.crc32(o.prompt.encode()):08x}"
    return Result(
        "trace",
        o.title or f"Graph of {o.prompt!r}",
        passed,
        summary,
        {
            "prompt": o.prompt,
            "validation": val,
            "top": top,
            "scores": {
                "replacement_score": info["replacement_score"],
                "input_completeness_score": input_completeness(info),
            },
            "features": rows,
            "flowchart": fc.to_json(),
        },
        [(f"flowchart-{tag}.svg", fc.to_svg()), (f"graph-{tag}.svg", figures.graph_svg(data))],
    )


@dataclass(kw_only=True)
class CompareOptions(ExperimentOptions):
    """A token's probability across prompts; passes when last vs first moves as expected."""

    prompts: list[str]
    token: str
    expect: Literal["increase", "decrease"] = "increase"

    def single_tokens(self) -> list[str]:
        return [self.token] + super().single_tokens()

    def rule(self) -> str:
        higher = "higher" if self.expect == "increase" else "lower"
        return f"passes when p({self.token!r}) is {higher} after the last prompt than after the first"


@experiment("compare", role="precondition")
def exp_compare(ctx: Context, o: CompareOptions) -> Result:
    tid = ctx.model.token_id(o.token)
    rows = []
    for pr in o.prompts:
        p = ctx.probs(pr)
        rows.append({"prompt": pr, "p": round(float(p[tid]), 4), "top": ctx.top(p, 3)})
    first, last = rows[0]["p"], rows[-1]["p"]
    passed = (last > first) if o.expect == "increase" else (last < first)
    summary = "; ".join(f"{r['prompt']!r}: p({o.token!r}) = {r['p']:.4f} (top {fmt_top(r['top'])})" for r in rows)
    return Result("compare", o.title or "Compare " + " vs ".join(map(repr, o.prompts)), passed, summary, {"rows": rows})


@torch.no_grad()
def _active_sets(ctx: Context, prompt: str, all_positions: bool = False) -> list[set[int]]:
    m = ctx.model
    ids = m.tokenize(prompt).ids
    cache = m.run_with_cache(ids[None], [f"blocks.{l}.hook_mlp_in" for l in range(m.n_layers)], logits=False)
    out = []
    for l in range(m.n_layers):
        x = cache[f"blocks.{l}.hook_mlp_in"][0]
        a = ctx.ts.layer_encode(l, x[1:] if all_positions else x[-1:])
        out.append(set((a > 0).any(0).nonzero().squeeze(-1).tolist()))
    return out


def _iou(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


@dataclass(kw_only=True)
class OverlapOptions(ExperimentOptions):
    """Per-layer IoU of active features on translated prompts vs unrelated ones."""

    groups: list[list[str]]
    baseline: list[str]
    all_positions: bool = False
    id: str = "iou"  # figure file name: overlap-{id}.svg

    NEEDS_PRECONDITION = False  # a claim about representations of any text, not about an answer

    def rule(self) -> str:
        return (
            "passes when the translations' mean IoU over the middle layers is more than twice the unrelated "
            "prompts' (the control) and above the translations' own first/last-layer mean"
        )


@experiment("overlap")
def exp_overlap(ctx: Context, o: OverlapOptions) -> Result:
    L = ctx.model.n_layers
    series: dict[str, list[float]] = {}
    allpos = bool(o.all_positions)
    groups = o.groups
    for name, prompts in (("translations", [g for g in groups]), ("unrelated", [o.baseline])):
        per_layer = [[] for _ in range(L)]
        for grp in prompts:
            sets = [_active_sets(ctx, p, allpos) for p in grp]
            for s1, s2 in itertools.combinations(sets, 2):
                for l in range(L):
                    per_layer[l].append(_iou(s1[l], s2[l]))
        series[name] = [sum(v) / len(v) if v else 0.0 for v in per_layer]
    mid = range(L // 4, 3 * L // 4)
    t_mid = sum(series["translations"][l] for l in mid) / len(mid)
    u_mid = sum(series["unrelated"][l] for l in mid) / len(mid)
    t_edge = (series["translations"][0] + series["translations"][-1]) / 2
    passed = t_mid > 2 * u_mid and t_mid > t_edge
    summary = (
        f"mean IoU of active features ({'all positions' if allpos else 'last position'}) over middle layers: translations "
        f"{t_mid:.3f} vs unrelated prompts {u_mid:.3f}; translations at the first/last layer {t_edge:.3f}. Shared "
        f"multilingual features predict middle > edges and translations > unrelated."
    )
    return Result(
        "overlap",
        o.title or "Cross-language feature overlap",
        passed,
        summary,
        {"series": {k: [round(v, 4) for v in vs] for k, vs in series.items()}},
        [(f"overlap-{o.id}.svg", figures.line_svg(series, "layer", "IoU of active features"))],
        control=f"unrelated prompts: middle-layer IoU {u_mid:.3f}",
    )


@dataclass(kw_only=True)
class OperandGridOptions(ExperimentOptions):
    """Feature activations over a grid of operands, e.g. "{a}+{b}="."""

    template: str
    range: list[int] = field(default_factory=lambda: [0, 99])
    step: int = 1
    accuracy_prefix: str | None = None
    accuracy_samples: int = 40
    min_corr: float = 0.5

    NEEDS_PRECONDITION = False  # a claim about representations over the operand grid, not about the sums

    def rule(self) -> str:
        return f"passes when some active feature correlates with a candidate heuristic at |r| ≥ {self.min_corr:g}"

    def __post_init__(self) -> None:
        require(len(self.range) == 2 and self.step >= 1, "operand_grid: range needs [low, high] and step ≥ 1")


def _grid_acts(ctx: Context, by_len: dict, vals: list[int], sites: list[str], acts: torch.Tensor) -> None:
    """Fill acts[a, b, layer] with the last position's feature activations, prompts of one length batched."""
    m, L = ctx.model, ctx.model.n_layers
    for items in by_len.values():
        for s in range(0, len(items), 64):
            chunk = items[s : s + 64]
            cache = m.run_with_cache(torch.stack([c[2] for c in chunk]), sites, logits=False)
            for l in range(L):
                x = cache[sites[l]][:, -1]
                a_ = ctx.ts.layer_encode(l, x).half()
                for j, (a, b, _) in enumerate(chunk):
                    acts[vals.index(a), vals.index(b), l] = a_[j]


def _accuracy(m, o: OperandGridOptions, template: str) -> float:
    """Few-shot accuracy of the model on `accuracy_samples` random two-digit sums (greedy, 4 new tokens)."""
    with announce(f"few-shot accuracy on {o.accuracy_samples} sums"):
        g = torch.Generator().manual_seed(0)
        n_ok, n = 0, int(o.accuracy_samples)
        for _ in range(n):
            a, b = (int(x) for x in torch.randint(10, 100, (2,), generator=g))
            out = m.generate(o.accuracy_prefix + template.format(a=a, b=b), max_new_tokens=4)["completion"]
            n_ok += re.match(r"\s*(\d+)", out) is not None and int(re.match(r"\s*(\d+)", out).group(1)) == a + b
    return n_ok / n


@experiment("operand_grid")
@torch.no_grad()
def exp_operand_grid(ctx: Context, o: OperandGridOptions) -> Result:
    m = ctx.model
    lo, hi = o.range
    step = int(o.step)
    vals = list(range(lo, hi + 1, step))
    template = o.template
    prompts = [(a, b, template.format(a=a, b=b)) for a in vals for b in vals]
    L, F = m.n_layers, ctx.ts.d_transcoder
    acts = torch.zeros(len(vals), len(vals), L, F, dtype=torch.float16)
    by_len: dict[int, list] = {}
    for a, b, pr in prompts:
        ids = m.tokenize(pr).ids
        by_len.setdefault(len(ids), []).append((a, b, ids))
    sites = [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    with announce(
        f"operand grid: {len(prompts)} prompts"
    ):  # minutes on a CPU: it says so, and (with heartbeats) how far
        _grid_acts(ctx, by_len, vals, sites, acts)
    A = torch.tensor(vals)[:, None].expand(len(vals), len(vals)).float()
    B = torch.tensor(vals)[None, :].expand(len(vals), len(vals)).float()
    heuristics = {
        "(a+b) mod 10": (A + B) % 10,
        "a+b": A + B,
        "a mod 10": A % 10,
        "b mod 10": B % 10,
        "a+b ≥ 100": (A + B >= 100).float(),
        "(a mod 10)+(b mod 10) ≥ 10 (carry)": ((A % 10 + B % 10) >= 10).float(),
    }
    flat = acts.float().reshape(len(vals) ** 2, L * F)
    active = (flat > 0).float().mean(0) > 0.02
    best = []
    fz = flat - flat.mean(0)
    fn = fz.norm(dim=0).clamp_min(1e-9)
    for name, h in heuristics.items():
        hz = h.reshape(-1) - h.mean()
        corr = (hz @ fz) / (hz.norm() * fn)
        corr[~active] = 0
        j = int(corr.abs().argmax())
        best.append(
            {
                "heuristic": name,
                "feature": f"{j // F}/{j % F}",
                "corr": round(float(corr[j]), 3),
                "label": label(ctx, j // F, j % F),
            }
        )
    best.sort(key=lambda r: -abs(r["corr"]))
    figs = []
    for feat in dict.fromkeys(r["feature"] for r in best[:3]):  # one plot per feature, even if it tops two rows
        l, f = map(int, feat.split("/"))
        grid = acts[:, :, l, f].float().tolist()
        figs.append(
            (f"operands-{l}-{f}.png", figures.png_data_uri(figures.heatmap_png(grid, scale=max(1, 300 // len(vals)))))
        )
    acc = None
    if o.accuracy_prefix is not None:
        acc = _accuracy(m, o, template)
    passed = abs(best[0]["corr"]) >= o.min_corr
    summary = (
        "Best-correlated feature (last position) per candidate heuristic: "
        + "; ".join(f"{r['heuristic']}: {r['feature']} r={r['corr']:+.2f}" for r in best)
        + "."
        + (
            f" Few-shot accuracy of the model on {o.accuracy_samples} random two-digit sums: {acc:.0%}."
            if acc is not None
            else ""
        )
    )
    return Result("operand_grid", o.title or "Operand plots", passed, summary, {"best": best, "accuracy": acc}, figs)
