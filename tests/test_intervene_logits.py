"""intervene(logit_ids=...): the centred logits (logit − mean logit) the page sets beside a graph's prediction."""

import math

import pytest

from mechscope.errors import MechscopeError
from mechscope.interventions import Edit, FeatureRef, active_features, intervene

PROMPT = "Dallas is in the state of"


def test_intervene_reports_the_centred_logits_asked_for(tiny, tiny_tc):
    ids = tiny.tokenize(PROMPT).ids
    l, f, _ = active_features(tiny, tiny_tc, ids, ids.shape[0] - 1)[0]
    edits = [Edit(FeatureRef(l, f, -1), "scale", 5.0)]
    plain = intervene(tiny, tiny_tc, PROMPT, edits, freeze_attention=True, top_k=2)
    (b1, b2), (a1, a2) = plain["before"], plain["after"]
    res = intervene(tiny, tiny_tc, PROMPT, edits, freeze_attention=True, top_k=2, logit_ids=[b1["id"], b2["id"], a1["id"], a2["id"]])  # fmt: skip
    got = res["logits"]
    assert [r["id"] for r in got] == [b1["id"], b2["id"], a1["id"], a2["id"]] and "logits" not in plain
    # differences of centred logits are log-ratios of the probabilities, before and after the edit
    assert got[0]["before"] - got[1]["before"] == pytest.approx(math.log(b1["prob"] / b2["prob"]), abs=1e-3)
    assert got[2]["after"] - got[3]["after"] == pytest.approx(math.log(a1["prob"] / a2["prob"]), abs=1e-3)
    clean = tiny.forward(ids[None])[0, -1].float()
    assert got[0]["before"] == pytest.approx(float(clean[b1["id"]] - clean.mean()), abs=1e-3)
    with pytest.raises(MechscopeError, match="not a token id"):
        intervene(tiny, tiny_tc, PROMPT, edits, logit_ids=[tiny.vocab_size])
