"""Head loadings (mechscope.attribution.heads): every cross-position link of a pruned graph split into the heads of
its last hop — the parts sum to the link, and each head's part equals what brute force measures: in the frozen
model, cut that head's attention from the target's position to every earlier position and the link loses exactly
that part (attention is causal, so a path enters the target's position once)."""

from __future__ import annotations

import dataclasses


from mechscope.attribution import AttributionConfig, attribute
from mechscope.attribution.heads import cross_links, head_loadings
from mechscope.attribution.replacement import frozen_forward, prepare
from test_clt import random_clt

PROMPT = "Dallas is in the state of Texas. The capital"


def _setup(model, ts):
    g = attribute(model, ts, PROMPT, AttributionConfig(max_feature_nodes=10_000, batch_size=16))
    toks = model.tokenize(PROMPT)
    st = prepare(model, ts, toks.ids, toks.strs)
    _, edge_mask, _ = g.prune()
    links = cross_links(g, edge_mask)
    ids = [t["id"] for t in g.meta["top_logits"]]
    vecs = model.W_U.float()[ids] - model.W_U_mean
    return g, st, links, vecs


def _read(model, ts, st, g, t, vecs, src=None, emb=None) -> float:
    """Target t's input in the frozen model (its read vector at its site), leaves replaced if given."""
    run = frozen_forward(model, ts, st, src_values=src, emb_value=emb, grad=False)
    nd = g.nodes[t]
    p = nd["ctx_idx"]
    if nd["feature_type"] == "logit":
        return float(vecs[t - (g.n_feat + g.n_err + g.n_tok)] @ run.final[0, p].float())
    l = int(nd["layer"])
    return float(ts.enc_weights(l)[0][nd["feature"]].float() @ run.mlp_in[l][0, p].float())


def _without(model, ts, st, g, s):
    src = [(st.recon[l] + st.error[l]).clone() for l in range(model.n_layers)]
    emb = st.embed.clone()
    nd = g.nodes[s]
    p = nd["ctx_idx"]
    if nd["feature_type"] == "embedding":
        emb[p] = 0
    elif nd["feature_type"] == "mlp reconstruction error":
        src[int(nd["layer"])][p] -= st.error[int(nd["layer"]), p]
    else:
        l, f = int(nd["layer"]), nd["feature"]
        for w in ts.write_layers(l):
            src[w][p] -= st.acts[l, p, f] * ts.dec_weights(l, w).detach().float()[f]
    return src, emb


def check_heads(model, ts) -> None:
    g, st, links, vecs = _setup(model, ts)
    assert links, "the pruned graph has no cross-position link"
    res = head_loadings(model, ts, st, g, links, vecs, batch=7, workers=2)  # several chunks, on threads
    scale = max(abs(float(g.A[t, s])) for t, s in links)
    for t, s in links:
        total = sum(w for _, _, w in res[(t, s)]["heads"])
        assert abs(total - float(g.A[t, s])) <= 1e-5 * scale, (t, s, total, float(g.A[t, s]))
    # brute force on the three strongest links, the most multi-hop one and the strongest into a logit: cut the
    # largest head's (and a deep head's) attention row at the target position
    picked = sorted(links, key=lambda ts_: -abs(float(g.A[ts_])))[:3]
    picked.append(max(links, key=lambda ts_: abs(res[ts_]["multi_hop"])))
    assert abs(res[picked[-1]]["multi_hop"]) > 0, "no multi-hop link to test"
    into_logit = [x for x in links if g.nodes[x[0]]["feature_type"] == "logit"]
    picked += sorted(into_logit, key=lambda ts_: -abs(float(g.A[ts_])))[:1]
    for t, s in picked:
        heads = res[(t, s)]["heads"]
        for l, h, w in {tuple(max(heads, key=lambda x: abs(x[2]))), tuple(max(heads, key=lambda x: x[0]))}:
            _check_cut(model, ts, st, g, vecs, t, s, l, h, w, scale)


def _check_cut(model, ts, st, g, vecs, t, s, l, h, w, scale) -> None:
    """Cut head (l, h)'s attention from the target's position to every earlier one: the link loses exactly w."""
    p_t = g.nodes[t]["ctx_idx"]
    src, emb = _without(model, ts, st, g, s)
    edge = _read(model, ts, st, g, t, vecs) - _read(model, ts, st, g, t, vecs, src, emb)
    assert abs(edge - float(g.A[t, s])) <= 1e-4 * scale
    pats = {k: v.clone() for k, v in st.patterns.items()}
    pats[l][0, h, p_t, :p_t] = 0
    cut = dataclasses.replace(st, patterns=pats)
    edge_cut = _read(model, ts, cut, g, t, vecs) - _read(model, ts, cut, g, t, vecs, src, emb)
    assert abs((edge - edge_cut) - w) <= 1e-4 * scale, (t, s, l, h, edge - edge_cut, w)


def test_head_loadings_sum_and_match_brute_force(tiny, tiny_tc):
    check_heads(tiny, tiny_tc)


def test_head_loadings_families(tiny_family):
    check_heads(tiny_family, random_clt(tiny_family, features=24, k=4, max_write_layers=2))


def test_trace_heads_writes_loadings_on_cross_position_links(tiny, tiny_tc):
    from mechscope.attribution import validate_graph_json

    g = attribute(tiny, tiny_tc, PROMPT, AttributionConfig(max_feature_nodes=64, heads=True))
    data = g.to_json()
    validate_graph_json(data)
    pos = {nd["node_id"]: nd["ctx_idx"] for nd in data["nodes"]}
    cross = [lk for lk in data["links"] if pos[lk["source"]] != pos[lk["target"]]]
    assert cross and all("heads" in lk and "multi_hop" in lk for lk in cross)
    assert not any("heads" in lk for lk in data["links"] if pos[lk["source"]] == pos[lk["target"]])
    for lk in cross:
        assert all(0 <= l < tiny.n_layers and 0 <= h < 4 for l, h, _ in lk["heads"])
        assert len(lk["heads"]) <= 8  # the largest first, the rest summed
        assert [abs(w) for _, _, w in lk["heads"]] == sorted((abs(w) for _, _, w in lk["heads"]), reverse=True)
        total = sum(w for _, _, w in lk["heads"]) + lk.get("heads_rest", 0.0)
        assert abs(total - lk["weight"]) <= 1e-5 * max(abs(lk["weight"]), 1e-3)
    assert any("heads_rest" in lk for lk in cross)
    assert (
        "heads" not in attribute(tiny, tiny_tc, PROMPT, AttributionConfig(max_feature_nodes=64)).to_json()["links"][0]
    )
