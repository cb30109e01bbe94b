"""QK attribution (mechscope.attribution.qk) on tiny random models of every family: the pairs sum to the score,
agree with brute force (remove one node in the frozen model, measure the change), and bad input is refused.

Brute force: with query = Σ Q_s and key = Σ K_t, removing node x from both sides changes the score by
    Δ = Σ_t P[x, t] + Σ_s P[s, x] − P[x, x]
(its row, its column, and the pair it forms with itself counted once), so the cross terms are checked, not only
the marginals. Families: llama and gemma3 (fixture `tiny`, trained per-layer transcoders) and gemma2, qwen3,
llama3 and gpt2 (fixture `tiny_family`, random cross-layer transcoders: exactness does not depend on quality).
"""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.attribution.qk import QKAttribution, frozen_score, qk_attribution, top_pair_index
from mechscope.errors import MechscopeError
from mechscope.transcoders.source import readers
from test_clt import random_clt

PROMPT = "Dallas is in the state of Texas. The capital"
REL = 1e-5


@pytest.fixture(scope="module")
def family_clt(tiny_family):
    return random_clt(tiny_family, features=24, k=4, max_write_layers=2)


def _cases(model) -> list[tuple[int, int, int | None, int | None]]:
    """(layer, head, query, key): the top layer with the last head (GQA: a shared key head), a middle layer with
    the default key, and an earlier query."""
    L, H = model.n_layers, model.cfg.num_attention_heads if hasattr(model.cfg, "num_attention_heads") else 4
    return [(L - 1, H - 1, None, -3), (L // 2, 0, None, None), (L - 1, 1, 5, 3)]  # keys inside any window


def _rel(a: float, b: float, scale: float) -> float:
    return abs(a - b) / max(abs(b), scale, 1e-12)


def _tol(a: QKAttribution, trained: bool) -> float:
    """1e-5 of max(|score|, scaling·|q|·|k|) (a score near zero is a cancellation of q and k); random dictionaries'
    nodes cancel each other (features against their error nodes, ~600× the query's norm on tiny llama), so there
    float32 round-off is measured against the sum of the pairs' sizes."""
    base = REL * max(abs(a.score), a.score_scale)
    return base if trained else max(base, 1e-6 * float(a.pair_matrix().abs().sum()))


def _close_vec(parts: torch.Tensor, whole: torch.Tensor, trained: bool) -> None:
    err = float((parts.sum(0) - whole).norm())
    tol = REL * float(whole.norm()) + (0 if trained else 1e-6 * float(parts.norm(dim=1).sum()))
    assert err <= tol, (err, tol)


def check_pairs_sum_to_score(model, ts, trained: bool = True) -> None:
    for layer, head, q, k in _cases(model):
        a = qk_attribution(model, ts, PROMPT, layer, head, query=q, key=k, batch_size=10)
        assert isinstance(a, QKAttribution)
        assert abs(a.pairs_total - a.score) <= _tol(a, trained), (layer, head, a.pairs_total, a.score)
        # every coordinate of query and key, not just their product, is rebuilt from the node vectors
        _close_vec(a.q_vecs, a.query_vec, trained)
        _close_vec(a.k_vecs, a.key_vec, trained)
        # the score is the model's: soft-cap + causal/sliding mask + softmax of the scores gives its pattern
        s = torch.tensor(a.scores)
        if a.softcap:
            s = torch.tanh(s / a.softcap) * a.softcap
        p = torch.tensor(a.pattern)
        live = p > 0
        torch.testing.assert_close(torch.softmax(s[live], 0), p[live], rtol=1e-4, atol=1e-6)
        # marginals sum to the score on either side
        side = a.totals("query")
        assert abs(float(side.sum()) - a.score) <= _tol(a, trained)
        # the certified top-pair search finds what a full scan finds
        P = a.pair_matrix()
        top = P.abs().flatten().topk(5).values
        got = torch.tensor([abs(x["weight"]) for x in a.top_pairs(5)], dtype=P.dtype)
        torch.testing.assert_close(got, top)
        js = a.to_json(top=5)
        assert len(js["pairs"]) == 5 and js["pairs"][0]["weight"] == max((x["weight"] for x in js["pairs"]), key=abs)
        json.dumps(js)


def _remove(model, ts, st, node) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The leaves with one node's value taken out (a feature's decoder output at every layer it writes to)."""
    src = [(st.recon[l] + st.error[l]).clone() for l in range(model.n_layers)]
    emb = st.embed.clone()
    if node.kind == "token":
        emb[node.pos] = 0
    elif node.kind == "error":
        src[node.layer][node.pos] -= st.error[node.layer, node.pos]
    else:
        a = st.acts[node.layer, node.pos, node.feature]
        for w in range(model.n_layers):
            if node.layer in readers(ts, w):
                src[w][node.pos] -= a * ts.dec_weights(node.layer, w).detach().float()[node.feature]
    return src, emb


def check_brute_force(model, ts, trained: bool = True) -> None:
    L = model.n_layers
    a = qk_attribution(model, ts, PROMPT, L - 1, 1, query=10, key=7)  # within every tiny sliding window
    st, qk_scales = a.state
    base = frozen_score(model, ts, st, qk_scales, a.layer, a.head, a.query, a.key)
    assert abs(base - a.score) <= _tol(a, trained)  # the frozen model reproduces the clean score
    q_idx = {nd.id: i for i, nd in enumerate(a.q_nodes)}
    k_idx = {nd.id: i for i, nd in enumerate(a.k_nodes)}
    P = a.pair_matrix()
    scale = float(P.abs().sum())
    # the strongest nodes of each kind on each side: on both sides (pos <= key) and on the query side only
    picked = []
    for kind in ("feature", "error", "token"):
        for only_query in (False, True):
            cand = [nd for nd in a.q_nodes if nd.kind == kind and (nd.pos > a.key) == only_query and nd.id in q_idx]
            if cand:
                picked.append(max(cand, key=lambda nd: float(a.q_vecs[q_idx[nd.id]].norm())))
    assert any(nd.kind == "feature" and nd.pos <= a.key for nd in picked), "no feature on both sides to test"
    for nd in picked:
        src, emb = _remove(model, ts, st, nd)
        measured = base - frozen_score(model, ts, st, qk_scales, a.layer, a.head, a.query, a.key, src, emb)
        i, j = q_idx.get(nd.id), k_idx.get(nd.id)
        pred = 0.0
        if i is not None:
            pred += float(P[i].sum())
        if j is not None:
            pred += float(P[:, j].sum())
        if i is not None and j is not None:
            pred -= float(P[i, j])
        assert abs(measured - pred) <= 1e-4 * max(abs(measured), 1e-3 * scale), (nd.id, measured, pred)


def check_bad_inputs(model, ts) -> None:
    L = model.n_layers
    for kw, msg in [
        (dict(layer=L, head=0), "--layer"),
        (dict(layer=-1, head=0), "--layer"),
        (dict(layer=0, head=99), "--head"),
        (dict(layer=0, head=0, query=999), "outside the prompt"),
        (dict(layer=0, head=0, key=-999), "outside the prompt"),
        (dict(layer=0, head=0, query=2, key=3), "after --query"),
    ]:
        with pytest.raises(MechscopeError, match=msg) as e:
            qk_attribution(model, ts, PROMPT, **kw)
        assert "\n" not in str(e.value)


def test_pairs_sum_to_score(tiny, tiny_tc):
    check_pairs_sum_to_score(tiny, tiny_tc)


def test_brute_force(tiny, tiny_tc):
    check_brute_force(tiny, tiny_tc)


def test_bad_inputs(tiny, tiny_tc):
    check_bad_inputs(tiny, tiny_tc)


def test_families_pairs_sum_to_score(tiny_family, family_clt):
    check_pairs_sum_to_score(tiny_family, family_clt, trained=False)


def test_families_brute_force(tiny_family, family_clt):
    check_brute_force(tiny_family, family_clt, trained=False)


def test_cross_layer_transcoders(tiny):
    clt = random_clt(tiny, features=24, k=4, max_write_layers=0)
    check_pairs_sum_to_score(tiny, clt, trained=False)
    check_brute_force(tiny, clt, trained=False)


@pytest.mark.parametrize("tiny_family_dir", ["gemma2"], indirect=True)  # the one window shorter than the prompt
def test_masked_key_in_sliding_window(tiny_family, family_clt):
    """Gemma 2's tiny model has a 4-token sliding window on even layers: a key further back is masked."""
    with pytest.raises(MechscopeError, match="masked"):
        qk_attribution(tiny_family, family_clt, PROMPT, 0, 0, query=9, key=1)


@pytest.mark.parametrize("spread", [0.0, 3.0])
def test_top_pair_search_matches_a_full_scan(spread):
    """With a few long node vectors the bound certifies early (spread 3); with equal lengths it cannot and the
    search scans everything (spread 0): both must return the full scan's top pairs."""
    torch.manual_seed(0)
    Q = torch.randn(300, 8) * torch.exp(spread * torch.randn(300, 1))
    K = torch.randn(200, 8) * torch.exp(spread * torch.randn(200, 1))
    P = 0.5 * (Q.double() @ K.double().T)
    want = P.abs().flatten().topk(7).values
    got = top_pair_index(Q, K, 0.5, 7, block=16)
    torch.testing.assert_close(torch.tensor([abs(v) for _, _, v in got], dtype=P.dtype), want)
    assert all(abs(float(P[i, j]) - v) < 1e-12 for i, j, v in got)


def _attend(capsys, *argv) -> tuple[int, str, str]:
    from mechscope.cli import main

    rc = main(["attend", *[str(a) for a in argv]])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_attend_json_and_refusals(tiny_dir, tiny_tc_dir, capsys):
    common = ["--model", tiny_dir, "--transcoders", tiny_tc_dir, "--quiet"]
    rc, out, err = _attend(capsys, PROMPT, *common, "--layer", 2, "--head", 3, "--key", 4, "--top", 3, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["layer"] == 2 and res["head"] == 3 and res["key"] == 4 and len(res["pairs"]) == 3
    assert abs(res["pairs_total"] - res["score"]) <= REL * max(abs(res["score"]), 1e-3)
    # without a head: chosen from the top logit's graph, and said why
    rc, out, err = _attend(capsys, PROMPT, *common, "--json")
    assert rc == 0, err
    assert "strongest cross-position link" in json.loads(out)["chosen_by"]
    rc, out, _ = _attend(capsys, PROMPT, *common, "--layer", 1, "--head", 0)
    assert rc == 0 and "score" in out and "largest pairs" in out
    for args, msg in [
        (["--layer", 99, "--head", 0], "--layer must lie in"),
        (["--layer", 0, "--head", 9], "--head must lie in"),
        (["--layer", 0, "--head", 0, "--query", 999], "outside the prompt"),
        (["--layer", 0, "--head", 0, "--query", 2, "--key", 3], "after --query"),
        (["--layer", 0], "go together"),
        (["--top", 0], "--top must be"),
    ]:
        rc, out, err = _attend(capsys, PROMPT, *common, *args)
        assert rc == 2 and out == "" and msg in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_unsupported_family_is_refused(tiny, tiny_tc, monkeypatch):
    import mechscope.attribution.qk as qk

    monkeypatch.setattr(qk, "QK_FAMILIES", ("gpt2",))
    with pytest.raises(MechscopeError, match="does not support the .* family"):
        qk_attribution(tiny, tiny_tc, PROMPT, 0, 0)


@pytest.mark.real
def test_gemma3_270m_pairs_sum_to_score_and_match_brute_force(gemma):
    """The default model with its shipped transcoders: exact to 1e-5 of |score| (q/k norms frozen, GQA 4:1)."""
    from mechscope.transcoders import load_default_transcoders

    ts = load_default_transcoders(gemma)
    a = qk_attribution(gemma, ts, "Dallas is in the state of", 6, 3, key=1)
    assert abs(a.pairs_total - a.score) <= REL * abs(a.score)
    st, qk_scales = a.state
    base = frozen_score(gemma, ts, st, qk_scales, a.layer, a.head, a.query, a.key)
    assert abs(base - a.score) <= REL * abs(a.score)
    # remove the key side's strongest feature (at a position <= the query, so on the query side too): the score
    # moves by its column + its row − its self-pair
    feats = [i for i, nd in enumerate(a.k_nodes) if nd.kind == "feature"]
    j = max(feats, key=lambda i: float(a.k_vecs[i].norm()))
    nd = a.k_nodes[j]
    i = next((x for x, m in enumerate(a.q_nodes) if m.id == nd.id), None)
    tq, tk = a.totals("query"), a.totals("key")
    pred = float(tk[j]) + (
        float(tq[i]) - float(a.scaling * (a.q_vecs[i].double() @ a.k_vecs[j].double())) if i is not None else 0.0
    )
    src, emb = _remove(gemma, ts, st, nd)
    measured = base - frozen_score(gemma, ts, st, qk_scales, a.layer, a.head, a.query, a.key, src, emb)
    assert abs(measured - pred) <= 1e-4 * max(abs(measured), 1e-2), (measured, pred)
