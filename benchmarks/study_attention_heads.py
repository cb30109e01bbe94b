"""Case study: which attention heads move the entity into the last position, and do ablations agree?

On "X is in the state of" (US cities) and "X plays the sport of" (athletes), gemma3-270m with its default
transcoders, for every variant the model answers correctly (top-1 token = the expected one):

1. Trace the answer logit (256 feature rows, head loadings on). A head's *entity flow* is the share of the logit's
   influence that crosses from the entity's tokens to the last position through that head (its last hop): over the
   pruned graph's links from an entity position into the last position, the link's influence share (as pruning
   scores edges) times the head's part of the link / the link's weight. The heads sum to the entity→last share.
2. Ablate heads in the real model (their output at the last position, before the output projection): each head
   alone, zeroed (to rank against the entity flow); the prompt's top-3 entity-flow heads together, zeroed and
   mean-ablated (mean over the task's prompts); 3 random heads outside its top 10 together (control).
   Also the frozen-model prediction of zeroing each head alone: −ĝ·out (ĝ: the answer logit's gradient at the
   head's output, attention and norms frozen, features frozen).
3. For the prompt's top head, QK attribution at (last position, the entity token it attends to most); its largest
   query-side and key-side features (positive marginals) are removed: the predicted change of the pre-softmax score
   (that node's row + column − self pair, exact in the frozen model) against the change measured in the real model
   (the feature's decoder output subtracted at its position), with the attention weight and the answer's log-prob.

Writes reports/attention/entity_heads.json (every number) and entity_heads.md (summary). Needs ~10-20 min on 2
shared cores with one thread:

    MECHSCOPE_THREADS=1 python benchmarks/study_attention_heads.py [--limit 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from mechscope.provenance import stamp

CITIES = {
    "Dallas": "Texas", "Houston": "Texas", "Chicago": "Illinois", "Seattle": "Washington", "Denver": "Colorado",
    "Phoenix": "Arizona", "Atlanta": "Georgia", "Boston": "Massachusetts", "Miami": "Florida", "Detroit": "Michigan",
    "Portland": "Oregon", "Philadelphia": "Pennsylvania", "Nashville": "Tennessee", "Las Vegas": "Nevada",
    "Cleveland": "Ohio", "Baltimore": "Maryland", "Milwaukee": "Wisconsin", "Minneapolis": "Minnesota",
    "New Orleans": "Louisiana", "Sacramento": "California", "Salt Lake City": "Utah", "Indianapolis": "Indiana",
    "Honolulu": "Hawaii", "Anchorage": "Alaska", "Omaha": "Nebraska", "Boise": "Idaho", "Tucson": "Arizona",
}  # fmt: skip
ATHLETES = {
    "Michael Jordan": "basketball", "LeBron James": "basketball", "Kobe Bryant": "basketball",
    "Magic Johnson": "basketball", "Tom Brady": "football", "Peyton Manning": "football", "Aaron Rodgers": "football",
    "Serena Williams": "tennis", "Roger Federer": "tennis", "Novak Djokovic": "tennis", "Pete Sampras": "tennis",
    "Lionel Messi": "soccer|football", "David Beckham": "soccer", "Neymar": "soccer", "Tiger Woods": "golf",
    "Phil Mickelson": "golf", "Jack Nicklaus": "golf", "Babe Ruth": "baseball", "Derek Jeter": "baseball",
    "Mike Trout": "baseball", "Shohei Ohtani": "baseball", "Wayne Gretzky": "hockey", "Sidney Crosby": "hockey",
    "Alex Ovechkin": "hockey", "Mario Lemieux": "hockey",
}  # fmt: skip
TASKS = {"state": ("{} is in the state of", CITIES), "sport": ("{} plays the sport of", ATHLETES)}
OUT = Path("reports/attention")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=20, help="variants per task (correct ones, in list order)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    import torch

    from mechscope.models import load_model
    from mechscope.transcoders import load_default_transcoders

    t0 = time.time()
    m = load_model("gemma3-270m")
    ts = load_default_transcoders(m)
    ts.requires_grad_(False)
    result: dict = {"model": m.name, "threads": torch.get_num_threads(), "tasks": {}}
    for task, (template, table) in TASKS.items():
        items = select(m, template, table, a.limit)
        means = clean_means(m, items)
        rows = []
        for i, it in enumerate(items):
            rows.append(study_prompt(m, ts, it, means, seed=i))
            print(f"{task} {i + 1}/{len(items)} {it['prompt']!r}: top head {rows[-1]['top_heads'][0]} "
                  f"({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
        result["tasks"][task] = {"template": template, "n_tried": len(table), "prompts": rows, **summarise(rows)}
    result["seconds"] = round(time.time() - t0, 1)
    result["load_end"] = os.getloadavg()[0]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "entity_heads.json").write_text(json.dumps(stamp(result, model=m.name), indent=1))
    (a.out / "entity_heads.md").write_text(markdown(result))
    print(f"wrote {a.out / 'entity_heads.json'} and entity_heads.md in {result['seconds']} s")


def select(m, template: str, table: dict[str, str], limit: int) -> list[dict]:
    """The variants the model answers correctly (top-1 = the expected token), with the entity's positions."""
    import torch

    out = []
    for entity, answer in table.items():
        prompt = template.format(entity)
        toks = m.tokenize(prompt)
        with torch.no_grad():
            logits = m.forward(toks.ids[None].to(m.device))[0, -1].float()
        top = int(logits.argmax())
        if m.tokenizer.decode([top]).strip() not in answer.split("|"):
            continue
        n_ent = m.tokenize(entity).ids.shape[0] - 1  # the entity opens the prompt, after BOS
        out.append(
            {"prompt": prompt, "entity": entity, "answer": m.tokenizer.decode([top]), "answer_id": top,
             "entity_pos": list(range(1, 1 + n_ent)), "last": toks.ids.shape[0] - 1}
        )  # fmt: skip
        if len(out) == limit:
            break
    return out


def clean_means(m, items: list[dict]) -> dict:
    """Per layer, the mean over the task's prompts of every head's output at the last position [H, hd]."""
    import torch

    acc: dict[int, list] = {}
    for it in items:
        cap: dict = {}
        with torch.no_grad(), m.capture_qk(cap):
            m.forward(m.tokenize(it["prompt"]).ids[None].to(m.device), logits=False)
        for l, c in cap.items():
            acc.setdefault(l, []).append(c.out[0, :, it["last"]].float())
    return {l: torch.stack(v).mean(0) for l, v in acc.items()}


def study_prompt(m, ts, it: dict, means: dict, seed: int) -> dict:
    """Entity flow per head, head ablations and the QK-side feature ablations of one prompt."""
    import torch

    from mechscope.attribution import AttributionConfig, attribute

    g = attribute(m, ts, it["prompt"], AttributionConfig(max_feature_nodes=256, max_logits=1, heads=True))
    share = entity_flow(g, set(it["entity_pos"]), it["last"])  # {(l, h): share}
    H = m.cfg.num_attention_heads
    heads = [(l, h) for l in range(m.n_layers) for h in range(H)]
    ranked = sorted(heads, key=lambda x: -share.get(x, 0.0))
    top3 = ranked[:3]
    rng = random.Random(seed)
    control = rng.sample(ranked[10:], 3)
    pred = linear_prediction(m, ts, g, it)  # {(l, h): predicted Δ answer logit of zeroing the head}
    zero_each = ablate(m, it, [[x] for x in heads], None)
    rec = {
        "prompt": it["prompt"], "answer": it["answer"], "entity_pos": it["entity_pos"],
        "entity_to_last_share": sum(share.values()),
        "top_heads": [[l, h, round(share.get((l, h), 0.0), 4)] for l, h in ranked[:8]],
        "ablate_top3_zero": ablate(m, it, [top3], None)[0],
        "ablate_top3_mean": ablate(m, it, [top3], means)[0],
        "ablate_control3_zero": ablate(m, it, [control], None)[0],
        "ablate_control3_mean": ablate(m, it, [control], means)[0],
        "control_heads": [list(x) for x in control],
        "per_head": {f"{l}.{h}": [round(share.get((l, h), 0.0), 5), round(pred[(l, h)], 4),
                                  round(zero_each[i]["d_logprob"], 4)] for i, (l, h) in enumerate(heads)},
    }  # fmt: skip
    s = torch.tensor([share.get(x, 0.0) for x in heads])
    d = torch.tensor([-z["d_logprob"] for z in zero_each])
    p = torch.tensor([-pred[x] for x in heads])
    rec["spearman_share_vs_drop"] = _spearman(s, d)
    rec["spearman_linear_vs_drop"] = _spearman(p, d)
    rec["qk"] = qk_features(m, ts, it, top3[0])
    return rec


def entity_flow(g, entity: set[int], last: int) -> dict[tuple[int, int], float]:
    """Per head, the share of the logit's influence that crosses from the entity's positions to the last position
    through it: Σ over pruned links (entity → last) of the link's influence share × part / weight."""
    from mechscope.attribution.graph import influence, row_normalize

    node_mask, edge_mask, _ = g.prune()
    A = g.A * node_mask[:, None] * node_mask[None, :]
    An = row_normalize(A)
    score = An * (influence(An, g.w) + g.w)[:, None] * edge_mask
    total = float(score.sum())
    out: dict[tuple[int, int], float] = {}
    for (t, s), item in g.heads.items():
        if g.nodes[s]["ctx_idx"] in entity and g.nodes[t]["ctx_idx"] == last and float(g.A[t, s]) != 0:
            frac = float(score[t, s]) / total / float(g.A[t, s])
            for l, h, part in item["heads"]:
                out[(l, h)] = out.get((l, h), 0.0) + frac * part
    return out


def linear_prediction(m, ts, g, it: dict) -> dict[tuple[int, int], float]:
    """Δ answer logit of zeroing each head's output at the last position in the frozen model: −ĝ · out."""

    from mechscope.attribution.heads import target_head_grads
    from mechscope.attribution.replacement import prepare

    toks = m.tokenize(it["prompt"])
    cap: dict = {}
    with m.capture_qk(cap):
        st = prepare(m, ts, toks.ids, toks.strs)
    logit = g.n_feat + g.n_err + g.n_tok  # the graph's one logit node
    vec = (m.W_U.float()[it["answer_id"]] - m.W_U_mean)[None]
    grads, _ = target_head_grads(m, ts, st, g, [logit], vec)  # [1, L, H, hd]
    return {
        (l, h): -float(grads[0, l, h] @ cap[l].out[0, h, it["last"]].float())
        for l in range(m.n_layers)
        for h in range(grads.shape[2])
    }


def ablate(m, it: dict, groups: list[list[tuple[int, int]]], means: dict | None) -> list[dict]:
    """For each group of heads, the answer's change when their outputs at the last position are zeroed (or set to
    `means`), in one batched forward of the real model (element 0 clean)."""
    import torch

    ids = m.tokenize(it["prompt"]).ids
    B, last, hd = len(groups) + 1, it["last"], m.layers[0].self_attn.head_dim
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for b, grp in enumerate(groups, start=1):
        for l, h in grp:
            by_layer.setdefault(l, []).append((b, h))

    def hook(l):
        def pre(mod, args):
            x = args[0].clone()
            for b, h in by_layer[l]:
                x[b, last, h * hd : (h + 1) * hd] = 0 if means is None else means[l][h].to(x)
            return (x, *args[1:])

        return pre

    handles = [m.layers[l].self_attn.o_proj.register_forward_pre_hook(hook(l)) for l in by_layer]
    try:
        with torch.no_grad():
            logp = torch.log_softmax(m.forward(ids[None].expand(B, -1).to(m.device))[:, last].float(), -1)
    finally:
        for h in handles:
            h.remove()
    ans = it["answer_id"]
    return [
        {"d_logprob": float(logp[b, ans] - logp[0, ans]), "still_top1": int(logp[b].argmax()) == ans}
        for b in range(1, B)
    ]


def qk_features(m, ts, it: dict, head: tuple[int, int]) -> dict:
    """QK attribution of `head` at (last, its most attended entity token); its largest query-side and key-side
    features removed: predicted Δscore (frozen model) against the real model's."""
    from mechscope.attribution.qk import frozen_score, qk_attribution

    l, h = head
    toks = m.tokenize(it["prompt"])
    clean = real_score(m, ts, toks.ids, l, h, it["last"], None)
    key = max(it["entity_pos"], key=lambda p: clean["pattern"][p])
    a = qk_attribution(m, ts, it["prompt"], l, h, query=it["last"], key=key)
    st, qk_scales = a.state
    tq, tk = a.totals("query"), a.totals("key")
    out = {"head": [l, h], "key": key, "score": a.score, "rel_error": a.rel_error(), "attention": clean["pattern"][key]}
    for side, tot, nodes in (("query", tq, a.q_nodes), ("key", tk, a.k_nodes)):
        feats = [i for i, nd in enumerate(nodes) if nd.kind == "feature"]
        if not feats:
            continue
        i = max(feats, key=lambda j: float(tot[j]))
        nd = nodes[i]
        pred = _removal(a, nd.id, tq, tk)
        src, emb = _without(m, ts, st, nd)
        frozen = a.score - frozen_score(m, ts, st, qk_scales, l, h, a.query, a.key, src, emb)
        act = float(st.acts[nd.layer, nd.pos, nd.feature])
        real = real_score(m, ts, toks.ids, l, h, it["last"], (nd.layer, nd.pos, nd.feature, act))
        out[side] = {
            "feature": nd.id, "marginal": float(tot[i]), "predicted_drop": pred, "frozen_drop": frozen,
            "real_drop": clean["score"][key] - real["score"][key],
            "attention_after": real["pattern"][key],
            "d_answer_logprob": float(real["logprob"][it["answer_id"]] - clean["logprob"][it["answer_id"]]),
        }  # fmt: skip
    return out


def _removal(a, node_id: str, tq, tk) -> float:
    """The score's drop when a node is removed from both sides: its row + its column − its self pair."""
    qi = next((i for i, nd in enumerate(a.q_nodes) if nd.id == node_id), None)
    ki = next((i for i, nd in enumerate(a.k_nodes) if nd.id == node_id), None)
    drop = (float(tq[qi]) if qi is not None else 0.0) + (float(tk[ki]) if ki is not None else 0.0)
    if qi is not None and ki is not None:
        drop -= float(a.scaling * (a.q_vecs[qi].double() @ a.k_vecs[ki].double()))
    return drop


def _without(m, ts, st, nd):
    """The frozen model's leaves with one feature's decoder output removed at its position."""
    src = [(st.recon[l] + st.error[l]).clone() for l in range(m.n_layers)]
    act = st.acts[nd.layer, nd.pos, nd.feature]
    for w in ts.write_layers(nd.layer):
        src[w][nd.pos] -= act * ts.dec_weights(nd.layer, w).detach().float()[nd.feature]
    return src, st.embed.clone()


def real_score(m, ts, ids, l: int, h: int, q: int, feature: tuple | None) -> dict:
    """The real model's pre-softmax scores and pattern of head (l, h) from query q, and the last position's
    log-probs; with `feature` = (layer, pos, index, activation), its decoder output subtracted where it writes."""
    import torch

    hooks = {}
    if feature is not None:
        fl, fp, fi, act = feature
        for w in ts.write_layers(fl):
            vec = act * ts.dec_weights(fl, w).detach().float()[fi]

            def fn(y, vec=vec):
                y = y.clone()
                y[0, fp] -= vec.to(y)
                return y

            hooks[f"blocks.{w}.hook_mlp_out"] = fn
    cap: dict = {}
    with torch.no_grad(), m.capture_qk(cap), m.hooks(hooks):
        logits = m.forward(ids[None].to(m.device))[0, -1].float()
    c = cap[l]
    kvh = h // (c.query.shape[1] // c.key.shape[1])
    score = c.scaling * (c.key[0, kvh].float() @ c.query[0, h, q].float())
    pattern = torch.softmax(torch.tanh(score / c.softcap) * c.softcap if c.softcap else score, -1)
    return {"score": score.tolist(), "pattern": pattern.tolist(), "logprob": torch.log_softmax(logits, -1)}


def summarise(rows: list[dict]) -> dict:
    """Across a task's prompts: how often each head is a top-3 entity-flow head, its mean share, and the
    ablation and QK-feature statistics."""
    count: dict[str, int] = {}
    mean: dict[str, float] = {}
    for r in rows:
        for l, h, _ in r["top_heads"][:3]:
            count[f"{l}.{h}"] = count.get(f"{l}.{h}", 0) + 1
        for k, (sh, _, _) in r["per_head"].items():
            mean[k] = mean.get(k, 0.0) + sh / len(rows)
    recurring = sorted(count, key=lambda k: (-count[k], -mean[k]))[:6]

    def med(key: str, field: str = "d_logprob") -> float:
        return round(statistics.median(r[key][field] for r in rows), 3)

    def frac(key: str) -> float:
        return round(sum(not r[key]["still_top1"] for r in rows) / len(rows), 3)

    qk = [
        (r["qk"][s]["predicted_drop"], r["qk"][s]["real_drop"]) for r in rows for s in ("query", "key") if s in r["qk"]
    ]
    return {
        "n": len(rows),
        "recurring": [{"head": k, "top3_in": count[k], "mean_share": round(mean[k], 4)} for k in recurring],
        "median_entity_to_last_share": round(statistics.median(r["entity_to_last_share"] for r in rows), 3),
        "median_d_logprob": {k: med(k) for k in ("ablate_top3_zero", "ablate_top3_mean", "ablate_control3_zero", "ablate_control3_mean")},
        "answer_lost": {k: frac(k) for k in ("ablate_top3_zero", "ablate_top3_mean", "ablate_control3_zero", "ablate_control3_mean")},
        "median_spearman_share_vs_drop": round(statistics.median(r["spearman_share_vs_drop"] for r in rows), 3),
        "median_spearman_linear_vs_drop": round(statistics.median(r["spearman_linear_vs_drop"] for r in rows), 3),
        "qk_features": {
            "n": len(qk),
            "sign_agrees": sum((p > 0) == (x > 0) for p, x in qk),
            "median_real_over_predicted": round(statistics.median(x / p for p, x in qk if p), 3) if qk else None,
            "pearson": _pearson([p for p, _ in qk], [x for _, x in qk]),
        },
    }  # fmt: skip


def markdown(res: dict) -> str:
    """A short summary of the study's numbers (the JSON has every prompt)."""
    lines = [
        "# Which heads move the entity into the last position (gemma3-270m)",
        "",
        f"Generated by `benchmarks/study_attention_heads.py` (commit {res['commit']}, {res['threads']} torch thread(s), "
        f"{res['seconds']:.0f} s, load average {res['load_end']:.1f} at the end). Every number: `entity_heads.json`.",
        "",
    ]
    for task, t in res["tasks"].items():
        z = t["median_d_logprob"]
        lost = t["answer_lost"]
        q = t["qk_features"]
        lines += [
            f"## {t['template'].format('X')!r} — {t['n']} variants answered correctly (of {t['n_tried']} tried)",
            "",
            f"- Entity → last position carries a median {t['median_entity_to_last_share']:.1%} of the answer logit's influence.",
            "- Recurring entity-flow heads (layer.head: prompts where it is top-3, mean share): "
            + ", ".join(f"{r['head']} ({r['top3_in']}/{t['n']}, {r['mean_share']:.1%})" for r in t["recurring"]) + ".",
            f"- Ablating each prompt's top-3 heads at the last position: median Δ log p(answer) {z['ablate_top3_zero']:+.3f} "
            f"(zero), {z['ablate_top3_mean']:+.3f} (mean); answer lost in {lost['ablate_top3_zero']:.0%} / "
            f"{lost['ablate_top3_mean']:.0%}. Three random other heads: {z['ablate_control3_zero']:+.3f} / "
            f"{z['ablate_control3_mean']:+.3f}, lost in {lost['ablate_control3_zero']:.0%} / {lost['ablate_control3_mean']:.0%}.",
            f"- Across all heads, each zeroed alone: median Spearman ρ between entity-flow share and the drop in "
            f"log p(answer) {t['median_spearman_share_vs_drop']:+.2f}; between the frozen-model prediction (−ĝ·out) and "
            f"the drop {t['median_spearman_linear_vs_drop']:+.2f}.",
            f"- QK side of the top head: removing its largest query-side / key-side feature, the real score moved the "
            f"predicted way in {q['sign_agrees']}/{q['n']} cases; real / predicted drop: median {q['median_real_over_predicted']}, "
            f"Pearson r {q['pearson']}.",
            "",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _spearman(a, b) -> float:
    import torch

    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return round(float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]), 3)


def _pearson(a: list[float], b: list[float]) -> float | None:
    import torch

    if len(a) < 3:
        return None
    return round(float(torch.corrcoef(torch.tensor([a, b], dtype=torch.float64))[0, 1]), 3)


if __name__ == "__main__":
    main()
