"""FVU by position: how well a transcoder set reconstructs the MLP outputs at the entity's positions (where a
swap pair's prompts differ) against the rest of the same prompts.

Per layer, FVU_g = Σ_{t∈g} ‖y_t − ŷ_t‖² / Σ_{t∈g} ‖y_t − μ‖², with μ the mean MLP output over all measured
tokens of the layer (both groups): with one shared mean the overall FVU is exactly the average of the two
groups' FVUs weighted by their share of the variance (`weight_entity`), so the two numbers split the overall
one instead of measuring against different baselines. Position 0 (BOS, or a first token that is an attention
sink) is left out, as `eval-transcoders` leaves it out.

>>> res = fvu_by_position(m, ts, entity_positions(m, suite))                  # doctest: +SKIP
>>> res["mean_fvu_entity"], res["mean_fvu_rest"]                             # doctest: +SKIP
"""

from __future__ import annotations

import torch

from mechscope.errors import MechscopeError
from mechscope.lens.suite import Suite


def entity_positions(model, suite: Suite) -> dict[str, tuple[str, set[int]]]:
    """{prompt id: (prompt, its entity positions)} for every prompt in a swap pair: the positions of the span
    where it differs from its partner (`aligned_pairs(span="span")`, either side of the pair). Pairs that cannot
    be aligned (no shared context) add nothing.

    >>> entity_positions(m, load_suite().for_model(m.name, m.tokenizer))["dallas"]   # doctest: +SKIP
    ('Dallas is in the state of', {1})
    """
    from mechscope.interventions import aligned_pairs

    prompts = suite.by_id()
    toks = {}
    out: dict[str, tuple[str, set[int]]] = {}
    bos = model.tokenizer.bos_token_id
    for s in suite.swaps:
        for i in (s.recipient, s.donor):
            if i not in toks:
                toks[i] = model.tokenize(prompts[i].prompt)
        rt, dt = toks[s.recipient], toks[s.donor]
        try:
            pairs = aligned_pairs(rt.strs, dt.strs, "span", bos=bos is not None and int(rt.ids[0]) == bos)
        except MechscopeError:
            continue
        out.setdefault(s.recipient, (prompts[s.recipient].prompt, set()))[1].update(r for r, _ in pairs)
        out.setdefault(s.donor, (prompts[s.donor].prompt, set()))[1].update(d for _, d in pairs if d is not None)
    return out


@torch.no_grad()
def fvu_by_position(model, ts, prompts: dict[str, tuple[str, set[int]]]) -> dict:
    """Per layer FVU at the entity's positions, at the rest, and overall (shared mean: see the module), plus
    their means over layers and the token counts. `prompts`: `entity_positions`' output."""
    from mechscope.transcoders.source import layer_output

    L, d = model.n_layers, model.d_model
    sites_in = [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    sites_out = [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    groups = ("entity", "rest")
    sse = {g: torch.zeros(L, dtype=torch.float64) for g in groups}
    ysum = {g: torch.zeros(L, d, dtype=torch.float64) for g in groups}
    y2 = {g: torch.zeros(L, dtype=torch.float64) for g in groups}
    count = dict.fromkeys(groups, 0)
    for text, ent in prompts.values():
        ids = model.tokenize(text).ids
        n = ids.shape[0]
        mask = {"entity": torch.zeros(n, dtype=torch.bool)}
        mask["entity"][[p for p in ent if 0 < p < n]] = True
        mask["rest"] = ~mask["entity"]
        mask["rest"][0] = False  # position 0: the sink, left out of both
        cache = model.run_with_cache(ids[None].to(model.device), sites_in + sites_out, logits=False)
        acts = [ts.layer_encode(l, cache[sites_in[l]]) for l in range(L)]
        for l in range(L):
            y = cache[sites_out[l]][0].double().cpu()
            err = y - layer_output(ts, l, acts, cache[sites_in[l]])[0].double().cpu()
            for g in groups:
                m = mask[g]
                sse[g][l] += err[m].pow(2).sum()
                ysum[g][l] += y[m].sum(0)
                y2[g][l] += y[m].pow(2).sum()
        for g in groups:
            count[g] += int(mask[g].sum())
    n_all = count["entity"] + count["rest"]
    if count["entity"] == 0 or count["rest"] == 0:
        raise MechscopeError(
            f"FVU by position needs tokens in both groups (entity {count['entity']}, rest {count['rest']}): "
            "the suite's swap pairs leave none"
        )
    mu = (ysum["entity"] + ysum["rest"]) / n_all  # [L, d], the shared mean
    # Σ_{t∈g} ‖y_t − μ‖² = Σ‖y‖² − 2 μ·Σy + n_g ‖μ‖²
    sst = {g: y2[g] - 2 * (mu * ysum[g]).sum(-1) + count[g] * mu.pow(2).sum(-1) for g in groups}
    fvu = {g: (sse[g] / sst[g]).tolist() for g in groups}
    fvu["all"] = ((sse["entity"] + sse["rest"]) / (sst["entity"] + sst["rest"])).tolist()
    w = (sst["entity"] / (sst["entity"] + sst["rest"])).tolist()
    per_layer = [
        {
            "layer": l,
            "fvu_entity": fvu["entity"][l],
            "fvu_rest": fvu["rest"][l],
            "fvu_all": fvu["all"][l],
            "weight_entity": w[l],
        }
        for l in range(L)
    ]
    return {
        "n_prompts": len(prompts),
        "n_tokens_entity": count["entity"],
        "n_tokens_rest": count["rest"],
        "mean_fvu_entity": sum(fvu["entity"]) / L,
        "mean_fvu_rest": sum(fvu["rest"]) / L,
        "mean_fvu_all": sum(fvu["all"]) / L,
        "per_layer": per_layer,
    }
