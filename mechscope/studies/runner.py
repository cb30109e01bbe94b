"""Case studies as data: a YAML file lists prompts and experiments; the runner measures, draws and decides.

Each experiment returns numbers, optional figures and `passed` (True / False / None = not testable here).
The study's verdict is computed, never written: all testable experiments passed → "supported"; some →
"partly supported"; none → "not supported on this model".

Experiment kinds (fields in parentheses):
  trace         trace a prompt (prompt, target?, expect_top?, expect_labels?, expect_logit_regex?)
  swap          concept transplant (prompt, donor, expect_top, factors?, max_layer?)
  steer         inject or suppress the features that distinguish `source` from `against` at a position
                (prompt, source, against, pos?, factor, top_n?, measure: entropy|prob, token?, expect: increase|decrease)
  compare       the probability of a token across prompts (prompts, token, expect: increase|decrease)
  overlap       per-layer IoU of active features on translated prompts vs unrelated ones (groups, baseline)
  operand_grid  feature activations over a grid of operands, e.g. "{a}+{b}=" (template, range, step, accuracy_prefix?)
"""
from __future__ import annotations

import html
import itertools
import json
import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_bytes, atomic_write_text
from mechscope.studies import figures

log = logging.getLogger(__name__)
DEFS = Path(__file__).with_name("defs")


@dataclass
class Result:
    kind: str
    title: str
    passed: bool | None
    summary: str
    numbers: dict = field(default_factory=dict)
    figures: list[tuple[str, str]] = field(default_factory=list)   # (file name, svg text or png data-uri)


def list_studies() -> list[str]:
    return sorted(p.stem for p in DEFS.glob("*.yaml"))


def load_study(name_or_path: str) -> dict:
    p = Path(name_or_path)
    if not p.exists():
        p = DEFS / f"{name_or_path}.yaml"
    if not p.exists():
        raise MechscopeError(f"unknown study {name_or_path!r}; known: {', '.join(list_studies())} (or a path to a .yaml file)")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise MechscopeError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MechscopeError(f"cannot read study {p}: {e}") from None
    if spec is None:
        raise MechscopeError(f"study {p} is empty: it needs name, title, hypothesis and experiments")
    if not isinstance(spec, dict):
        raise MechscopeError(f"study {p} must be a mapping with name, title, hypothesis and experiments, "
                             f"not a {type(spec).__name__}")
    for key in ("name", "title", "hypothesis", "experiments"):
        if key not in spec:
            raise MechscopeError(f"study {p} lacks '{key}'")
    if not isinstance(spec["experiments"], list) or not spec["experiments"]:
        raise MechscopeError(f"study {p}: 'experiments' must be a non-empty list")
    for i, e in enumerate(spec["experiments"]):
        if not isinstance(e, dict):
            raise MechscopeError(f"study {p}: experiment {i + 1} must be a mapping with a 'kind'")
        missing = [k for k in REQUIRED.get(e.get("kind"), ()) if k not in e]
        if missing:
            raise MechscopeError(f"study {p}: experiment {i + 1} ({e.get('kind')}) lacks {', '.join(missing)}")
    return spec


# keys each experiment kind needs (the rest have defaults); checked when a study file is loaded
REQUIRED = {"trace": ("prompt",), "swap": ("prompt", "donor", "expect_top"), "locate": ("prompt", "donor", "watch"),
            "steer": ("prompt", "source", "against"), "compare": ("prompts", "token"), "overlap": ("groups", "baseline"),
            "operand_grid": ("template",)}


class Context:
    def __init__(self, model, ts, index=None, max_feature_nodes: int = 512) -> None:
        self.model, self.ts, self.index = model, ts, index
        self.labels = index.labels() if index else {}
        self.max_feature_nodes = max_feature_nodes

    def probs(self, prompt: str) -> torch.Tensor:
        ids = self.model.tokenize(prompt).ids
        with torch.no_grad():
            return torch.softmax(self.model.forward(ids[None])[0, -1].float(), -1)

    def top(self, p: torch.Tensor, k: int = 3) -> list[tuple[str, float]]:
        v, i = p.topk(k)
        return [(self.model.tokenizer.decode([int(t)]), round(float(x), 4)) for x, t in zip(v, i)]


def _fmt_top(top) -> str:
    return ", ".join(f"{t!r} {p:.3f}" for t, p in top)


def _label(ctx: Context, l: int, f: int) -> str:
    return ctx.labels.get(f"{l}/{f}", "")


def exp_trace(ctx: Context, e: dict) -> Result:
    from mechscope.attribution import AttributionConfig, attribute
    from mechscope.attribution.supernodes import flowchart

    cfg = AttributionConfig(max_feature_nodes=e.get("max_feature_nodes", ctx.max_feature_nodes),
                            targets=[e["target"]] if e.get("target") else [])
    g = attribute(ctx.model, ctx.ts, e["prompt"], cfg)
    data = g.to_json(labels=ctx.labels)
    info = data["metadata"]["info"]
    p = ctx.probs(e["prompt"])
    top = ctx.top(p, 5)
    feats = sorted((n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"), key=lambda n: n["influence"])[:12]
    checks = []
    if e.get("expect_top"):
        checks.append(top[0][0] == e["expect_top"])
    if e.get("expect_labels"):
        found = [w for w in e["expect_labels"] if any(w.lower() in n["clerp"].lower() for n in data["nodes"] if n["feature_type"] == "cross layer transcoder")]
        checks.append(bool(found))
    if e.get("expect_logit_regex") and ctx.index is not None:
        rx = re.compile(e["expect_logit_regex"])
        last = len(g.meta["prompt_tokens"]) - 1
        hits = []
        for n in feats:
            if n["ctx_idx"] == last:
                d = ctx.index.feature(int(n["layer"]), n["feature"])
                hits += [t for t, _ in d["top_logits"][:10] if rx.search(t.strip())]
        checks.append(bool(hits))
    passed = all(checks) if checks else None
    rows = [{"feature": f'{n["layer"]}/{n["feature"]}@{n["ctx_idx"]}', "token": g.meta["prompt_tokens"][n["ctx_idx"]],
             "label": n["clerp"], "activation": round(n["activation"], 3), "influence_rank": round(n["influence"], 3)} for n in feats]
    tgt = ""
    if e.get("target"):
        tid = ctx.model.token_id(e["target"])
        tgt = f"; p({e['target']!r}) = {float(p[tid]):.4f}, rank {int((p > p[tid]).sum()) + 1}"
    summary = (f"top tokens: {_fmt_top(top)}{tgt}. Replacement score {info['replacement_score']:.3f}, completeness "
               f"{info['completeness_score']:.3f}; pruned graph {len(data['nodes'])} nodes, {len(data['links'])} edges.")
    # the flowchart of labelled supernodes comes first: it is the figure the hypothesis is read from
    fc = flowchart(data, labels=ctx.labels)
    tag = f"{zlib.crc32(e['prompt'].encode()):08x}"
    return Result("trace", e.get("title", f"Graph of {e['prompt']!r}"), passed, summary,
                  {"top": top, "scores": {k: info[k] for k in ("replacement_score", "completeness_score")}, "features": rows,
                   "flowchart": fc.to_json()},
                  [(f"flowchart-{tag}.svg", fc.to_svg()), (f"graph-{tag}.svg", figures.graph_svg(data))])


def exp_swap(ctx: Context, e: dict) -> Result:
    from mechscope.interventions import swap

    base = ctx.top(ctx.probs(e["prompt"]), 3)
    tries = []
    for factor in e.get("factors", [1.0]):
        res = swap(ctx.model, ctx.ts, e["prompt"], e["donor"], factor=factor, max_layer=e.get("max_layer"),
                   span=e.get("span", "diff"), with_skip=bool(e.get("with_skip", False)))
        after = [(r["token"], round(r["prob"], 4)) for r in res["after"][:3]]
        tries.append({"factor": factor, "after": after, "n_removed": len(res["removed"]), "n_injected": len(res["injected"]),
                      "positions": res["positions"]})
    success = [t for t in tries if t["after"][0][0] == e["expect_top"]]
    passed = bool(success)
    lines = "; ".join(f"×{t['factor']}: {_fmt_top(t['after'])}" for t in tries)
    summary = f"before: {_fmt_top(base)}. After suppressing {tries[0]['n_removed']} recipient features and injecting " \
              f"{tries[0]['n_injected']} donor features at positions {tries[0]['positions']}" \
              f"{' (with the skip term)' if e.get('with_skip') else ''}: {lines}. " \
              f"Expected top token {e['expect_top']!r}: {'reached' if passed else 'not reached'}."
    return Result("swap", e.get("title", f"Swap {e['prompt']!r} ← {e['donor']!r}"), passed, summary, {"before": base, "tries": tries})


def exp_locate(ctx: Context, e: dict) -> Result:
    """Which part of the MLPs carries the difference between two prompts (features, skip term or error)."""
    from mechscope.interventions import LOCATE_COMPONENTS, locate_concept

    watch = e["watch"]
    res = locate_concept(ctx.model, ctx.ts, e["prompt"], e["donor"], watch, span=e.get("span", "rest"))
    p = res["probs"]
    # the component "moves the answer" when the donor's token overtakes the recipient's
    moves = {c: p[c][1] > p[c][0] for c in LOCATE_COMPONENTS}
    carriers = [c for c in ("features", "skip", "error") if moves[c]]
    passed = moves["features"]
    rows = "; ".join(f"{c}: {watch[0]!r} {v[0]:.3f} / {watch[1]!r} {v[1]:.3f}" for c, v in p.items())
    summary = (f"Donor components patched into the recipient at positions {res['positions']}, all layers — {rows}. "
               f"Components that alone make {watch[1]!r} beat {watch[0]!r}: {', '.join(carriers) or 'none'}"
               f"{' (the whole MLP output does)' if moves['mlp_out'] else ''}. "
               + ("The transcoder features carry the concept: a feature swap can work." if passed else
                  "The transcoder features do not carry it; a feature-level swap cannot flip the answer with this set."))
    return Result("locate", e.get("title", f"Where does {e['prompt']!r} vs {e['donor']!r} live?"), passed, summary, {"probs": p})


def _entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-30).log()).sum())


def exp_steer(ctx: Context, e: dict) -> Result:
    from mechscope.interventions import Edit, FeatureRef, active_features, run_with_edits

    m = ctx.model
    src_ids, ag_ids, ids = m.tokenize(e["source"]).ids, m.tokenize(e["against"]).ids, m.tokenize(e["prompt"]).ids
    pos_s = e.get("source_pos", -1) % len(src_ids)
    pos_a = e.get("against_pos", -1) % len(ag_ids)
    pos = e.get("pos", -1) % len(ids)
    src = {(l, f): a for l, f, a in active_features(m, ctx.ts, src_ids, pos_s)}
    ag = {(l, f): a for l, f, a in active_features(m, ctx.ts, ag_ids, pos_a)}
    distinct = sorted(((k, a - ag.get(k, 0.0)) for k, a in src.items()), key=lambda t: -t[1])[: e.get("top_n", 10)]
    factor = float(e.get("factor", 1.0))
    edits = [Edit(FeatureRef(l, f, pos), "set", src[(l, f)] * factor) for (l, f), _ in distinct]
    with torch.no_grad():
        before = torch.softmax(m.forward(ids[None])[0, -1].float(), -1)
        after = torch.softmax(run_with_edits(m, ctx.ts, ids, edits)[-1], -1)
    if e.get("measure", "entropy") == "entropy":
        b, a = _entropy(before), _entropy(after)
        what = "next-token entropy (nats)"
    else:
        tid = m.token_id(e["token"])
        b, a = float(before[tid]), float(after[tid])
        what = f"p({e['token']!r})"
    passed = (a < b) if e.get("expect", "decrease") == "decrease" else (a > b)
    feats = [f"{l}/{f}" + (f" “{_label(ctx, l, f)}”" if _label(ctx, l, f) else "") for (l, f), _ in distinct]
    summary = (f"{len(edits)} features that are more active at {e['source']!r}[{pos_s}] than at {e['against']!r}[{pos_a}] set to "
               f"{factor}× their activation at {e['prompt']!r}[{pos}]: {what} {b:.3f} → {a:.3f} (expected to {e.get('expect', 'decrease')}). "
               f"Top tokens before: {_fmt_top(ctx.top(before))}; after: {_fmt_top(ctx.top(after))}.")
    return Result("steer", e.get("title", "Steering"), passed, summary, {"before": b, "after": a, "features": feats})


def exp_compare(ctx: Context, e: dict) -> Result:
    tid = ctx.model.token_id(e["token"])
    rows = []
    for pr in e["prompts"]:
        p = ctx.probs(pr)
        rows.append({"prompt": pr, "p": round(float(p[tid]), 4), "top": ctx.top(p, 3)})
    first, last = rows[0]["p"], rows[-1]["p"]
    passed = (last > first) if e.get("expect", "increase") == "increase" else (last < first)
    summary = "; ".join(f"{r['prompt']!r}: p({e['token']!r}) = {r['p']:.4f} (top {_fmt_top(r['top'])})" for r in rows)
    return Result("compare", e.get("title", "Compare prompts"), passed, summary, {"rows": rows})


@torch.no_grad()
def _active_sets(ctx: Context, prompt: str, all_positions: bool = False) -> list[set[int]]:
    m = ctx.model
    ids = m.tokenize(prompt).ids
    cache = m.run_with_cache(ids[None], [f"blocks.{l}.hook_mlp_in" for l in range(m.n_layers)], logits=False)
    out = []
    for l in range(m.n_layers):
        x = cache[f"blocks.{l}.hook_mlp_in"][0]
        a = ctx.ts[l].encode(x[1:] if all_positions else x[-1:])
        out.append(set((a > 0).any(0).nonzero().squeeze(-1).tolist()))
    return out


def _iou(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def exp_overlap(ctx: Context, e: dict) -> Result:
    L = ctx.model.n_layers
    series: dict[str, list[float]] = {}
    allpos = bool(e.get("all_positions", False))
    groups = e["groups"]
    for name, prompts in (("translations", [g for g in groups]), ("unrelated", [e["baseline"]])):
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
    summary = (f"mean IoU of active features ({'all positions' if allpos else 'last position'}) over middle layers: translations "
               f"{t_mid:.3f} vs unrelated prompts {u_mid:.3f}; translations at the first/last layer {t_edge:.3f}. Shared "
               f"multilingual features predict middle > edges and translations > unrelated.")
    return Result("overlap", e.get("title", "Cross-language feature overlap"), passed, summary,
                  {"series": {k: [round(v, 4) for v in vs] for k, vs in series.items()}},
                  [(f"overlap-{e.get('id', 'iou')}.svg", figures.line_svg(series, "layer", "IoU of active features"))])


@torch.no_grad()
def exp_operand_grid(ctx: Context, e: dict) -> Result:
    m = ctx.model
    lo, hi = e.get("range", [0, 99])
    step = int(e.get("step", 1))
    vals = list(range(lo, hi + 1, step))
    template = e.get("template", "{a}+{b}=")
    prompts = [(a, b, template.format(a=a, b=b)) for a in vals for b in vals]
    L, F = m.n_layers, ctx.ts.d_transcoder
    acts = torch.zeros(len(vals), len(vals), L, F, dtype=torch.float16)
    by_len: dict[int, list] = {}
    for a, b, pr in prompts:
        ids = m.tokenize(pr).ids
        by_len.setdefault(len(ids), []).append((a, b, ids))
    sites = [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    for items in by_len.values():
        for s in range(0, len(items), 64):
            chunk = items[s:s + 64]
            cache = m.run_with_cache(torch.stack([c[2] for c in chunk]), sites, logits=False)
            for l in range(L):
                x = cache[sites[l]][:, -1]
                a_ = ctx.ts[l].encode(x).half()
                for j, (a, b, _) in enumerate(chunk):
                    acts[vals.index(a), vals.index(b), l] = a_[j]
    A = torch.tensor(vals)[:, None].expand(len(vals), len(vals)).float()
    B = torch.tensor(vals)[None, :].expand(len(vals), len(vals)).float()
    heuristics = {"(a+b) mod 10": (A + B) % 10, "a+b": A + B, "a mod 10": A % 10, "b mod 10": B % 10,
                  "a+b ≥ 100": (A + B >= 100).float(), "(a mod 10)+(b mod 10) ≥ 10 (carry)": ((A % 10 + B % 10) >= 10).float()}
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
        best.append({"heuristic": name, "feature": f"{j // F}/{j % F}", "corr": round(float(corr[j]), 3), "label": _label(ctx, j // F, j % F)})
    best.sort(key=lambda r: -abs(r["corr"]))
    figs = []
    for r in best[:3]:
        l, f = map(int, r["feature"].split("/"))
        grid = acts[:, :, l, f].float().tolist()
        figs.append((f"operands-{l}-{f}.png", figures.png_data_uri(figures.heatmap_png(grid, scale=max(1, 300 // len(vals))))))
    acc = None
    if e.get("accuracy_prefix") is not None:
        g = torch.Generator().manual_seed(0)
        n_ok, n = 0, int(e.get("accuracy_samples", 40))
        for _ in range(n):
            a, b = (int(x) for x in torch.randint(10, 100, (2,), generator=g))
            out = m.generate(e["accuracy_prefix"] + template.format(a=a, b=b), max_new_tokens=4)["completion"]
            n_ok += re.match(r"\s*(\d+)", out) is not None and int(re.match(r"\s*(\d+)", out).group(1)) == a + b
        acc = n_ok / n
    passed = abs(best[0]["corr"]) >= e.get("min_corr", 0.5)
    summary = ("Best-correlated feature (last position) per candidate heuristic: " + "; ".join(
        f"{r['heuristic']}: {r['feature']} r={r['corr']:+.2f}" for r in best) + "."
        + (f" Few-shot accuracy of the model on {e.get('accuracy_samples', 40)} random two-digit sums: {acc:.0%}." if acc is not None else ""))
    return Result("operand_grid", e.get("title", "Operand plots"), passed, summary, {"best": best, "accuracy": acc}, figs)


KINDS = {"trace": exp_trace, "swap": exp_swap, "locate": exp_locate, "steer": exp_steer, "compare": exp_compare, "overlap": exp_overlap,
         "operand_grid": exp_operand_grid}


def _supernode_rows(fc: dict) -> list[tuple[str, str, str, str, str]]:
    """(supernode, kind, layers, members, inputs from) for the boxes of a flowchart (to_json form)."""
    names = {b["id"]: b["name"] for b in fc["boxes"]}
    rows = []
    for b in fc["boxes"]:
        ins = [f"{names[a['src']]} ({a['weight']:+.2f})" for a in fc["arrows"] if a["dst"] == b["id"]]
        layers = f"{min(b['layers'])}–{max(b['layers'])}" if b["layers"] else "–"
        rows.append((b["name"], b["kind"], layers, str(len(b["members"])), ", ".join(ins) or "–"))
    return rows


def _supernode_table(fc: dict) -> list[str]:
    md = ["**Supernodes** (automatic flowchart: the most influential features grouped and named by their labels):", "",
          "| supernode | kind | layers | members | driven by (summed direct effect) |", "|---|---|---|---|---|"]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in _supernode_rows(fc)]
    return md + [""]


def _supernode_table_html(fc: dict) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("supernode", "kind", "layers", "members", "driven by (summed direct effect)"))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in _supernode_rows(fc))
    return f"<table border='1' cellpadding='3' style='border-collapse:collapse'><tr>{head}</tr>{rows}</table>"


def verdict(results: list[Result]) -> str:
    tested = [r.passed for r in results if r.passed is not None]
    if tested and all(tested):
        return "supported"
    if any(tested):
        return "partly supported"
    return "not supported on this model"


def run_study(spec: dict, ctx: Context, out_dir: Path) -> dict:
    t0 = time.time()
    results = []
    for e in spec["experiments"]:
        kind = e.get("kind")
        if kind not in KINDS:
            raise MechscopeError(f"study {spec['name']}: unknown experiment kind {kind!r}; kinds: {', '.join(KINDS)}")
        log.info("study %s: %s", spec["name"], e.get("title", kind))
        try:
            results.append(KINDS[kind](ctx, e))
        except MechscopeError as err:   # one bad experiment is reported, the study goes on
            results.append(Result(kind, e.get("title", kind), None, f"could not run: {err}"))
    v = verdict(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {spec['title']}", "", f"*Model:* `{ctx.model.name}` · *study:* `{spec['name']}` · *run:* {time.strftime('%Y-%m-%d %H:%M')}"
          f" · {time.time() - t0:.0f} s", "", f"**Hypothesis.** {spec['hypothesis'].strip()}", ""]
    if spec.get("note"):
        md += [f"*Note.* {spec['note'].strip()}", ""]
    body = [f"<h1>{html.escape(spec['title'])}</h1>", f"<p><em>Model:</em> <code>{html.escape(ctx.model.name)}</code></p>",
            f"<p><strong>Hypothesis.</strong> {html.escape(spec['hypothesis'].strip())}</p>"]
    for i, r in enumerate(results, 1):
        mark = {True: "✅ passed", False: "❌ failed", None: "— not testable"}[r.passed]
        md += [f"## {i}. {r.title} — {mark}", "", r.summary, ""]
        body += [f"<h2>{i}. {html.escape(r.title)} — {mark}</h2>", f"<p>{html.escape(r.summary)}</p>"]
        if r.kind == "trace" and r.numbers.get("flowchart"):
            md += _supernode_table(r.numbers["flowchart"])
            body.append(_supernode_table_html(r.numbers["flowchart"]))
        if r.kind == "trace" and r.numbers.get("features"):
            md += ["| feature | token | label | activation | cum. influence |", "|---|---|---|---|---|"]
            md += [f"| {f['feature']} | {f['token']!r} | {f['label'] or '–'} | {f['activation']} | {f['influence_rank']} |" for f in r.numbers["features"]]
            md.append("")
        for name, fig in r.figures:
            if fig.startswith("data:image/png"):
                import base64
                atomic_write_bytes(out_dir / name, base64.b64decode(fig.split(",", 1)[1]))
                body.append(f'<p><img alt="{name}" src="{fig}"></p>')
            else:
                atomic_write_text(out_dir / name, fig)
                body.append(fig)
            md += [f"![{name}]({name})", ""]
    rule = "all testable experiments passed → supported; some → partly supported; none → not supported on this model"
    md += [f"## Verdict: **{v}**", "", f"(computed: {rule})", ""]
    body += [f"<h2>Verdict: {html.escape(v)}</h2>", f"<p>(computed: {html.escape(rule)})</p>"]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    atomic_write_text(out_dir / "report.html", "<!doctype html><meta charset='utf-8'><title>" + html.escape(spec["title"])
                      + "</title><style>body{font:14px sans-serif;max-width:900px;margin:2em auto}svg{max-width:100%}</style>" + "".join(body))
    res = {"name": spec["name"], "title": spec["title"], "model": ctx.model.name, "verdict": v, "elapsed_s": round(time.time() - t0, 1),
           "experiments": [{"kind": r.kind, "title": r.title, "passed": r.passed, "summary": r.summary, "numbers": r.numbers} for r in results]}
    atomic_write_text(out_dir / "results.json", json.dumps(res, indent=1, ensure_ascii=False, default=str))
    return res


def write_index(results: list[dict], out_dir: Path) -> None:
    rows = "".join(f"<tr><td><a href='{html.escape(r['name'])}/report.html'>{html.escape(r['title'])}</a></td><td>{html.escape(r['model'])}</td>"
                   f"<td>{html.escape(r['verdict'])}</td></tr>" for r in results)
    atomic_write_text(out_dir / "index.html", "<!doctype html><meta charset='utf-8'><title>mechscope studies</title>"
                      "<style>body{font:14px sans-serif;max-width:900px;margin:2em auto}td{padding:4px 10px}</style>"
                      f"<h1>mechscope case studies</h1><table><tr><th>study</th><th>model</th><th>verdict</th></tr>{rows}</table>")
    atomic_write_text(out_dir / "index.md", "# mechscope case studies\n\n| study | model | verdict |\n|---|---|---|\n" + "".join(
        f"| [{r['title']}]({r['name']}/report.md) | `{r['model']}` | {r['verdict']} |\n" for r in results))
