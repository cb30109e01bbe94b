"""Does feature search find everyday words? (issue #31, part 4): prints a table; not a test.

For each word, `search --by token` and `--by logit` on a feature index; a hit is a top-5 result whose top
examples peak on the word (token search) or whose top 10 logits contain it (logit search), words compared as
labels compare them (case and leading space ignored). Also the share of live features whose label is specific,
and with `--lens FILE` (an `eval-lens --out` JSON) the label judge on the graphs' top-20 features as this index
labels them: the same graphs judged with another index, without re-running the suite.

    python benchmarks/bench_feature_search.py --model gemma3-270m [--index FILE] [--lens lens.json] [--json]
"""

from __future__ import annotations

import argparse
import json

from mechscope.errors import MechscopeError
from mechscope.features import FeatureIndex
from mechscope.features.labels import norm_token
from mechscope.lens.metrics import is_specific_label, judge_label
from mechscope.session import Session
from mechscope.provenance import stamp

WORDS = [
    " Texas",
    " Paris",
    " France",
    " London",
    " Japan",
    " Monday",
    " Sunday",
    " football",
    " tennis",
    " doctor",
    " teacher",
    " piano",
    " guitar",
]


def _hit(idx: FeatureIndex, word: str, by: str) -> tuple[bool, list[str]]:
    key = norm_token(word)
    try:
        rows = idx.search(word, by=by, limit=5)
    except MechscopeError as e:
        return False, [f"error: {e}"]
    shown, found = [], False
    for r in rows:
        d = idx.feature(r["layer"], r["feature"])
        if by == "token":
            peaks = [norm_token(e["tokens"][e["max_pos"]]) for e in d["examples"] if e["kind"] == "top"]
            ok = key in peaks
        else:
            ok = key in {norm_token(t) for t, _ in d["top_logits"][:10]}
        found |= ok
        shown.append(f"{r['layer']}/{r['feature']}{'*' if ok else ''} “{r['label']}”")
    return found, shown


def _judge_lens(con, lens_path: str) -> dict:
    """Means over the lens graphs of the label judge on each graph's top features (docs/lens.md)."""
    res = json.load(open(lens_path))
    table = {
        f"{l}/{f}": (lab, sc)
        for l, f, lab, sc in con.execute("SELECT layer, feature, label, label_score FROM features")
    }
    spec, f1, ver = [], [], []
    for row in res["prompts"]:
        feats = [x.split("@")[0] for x in row.get("top_features", [])]
        if not feats:
            continue
        judged = [judge_label(*table.get(f, ("", None))) for f in feats]
        spec.append(sum(j["specific"] for j in judged) / len(judged))
        f1.append(sum(j["f1"] for j in judged) / len(judged))
        ver.append(sum(j["verified"] for j in judged) / len(judged))
    n = max(1, len(spec))
    return {
        "graphs": len(spec),
        "top20_specific_share": sum(spec) / n,
        "top20_label_f1": sum(f1) / n,
        "top20_verified_share": sum(ver) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--index", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--lens", default=None, help="an eval-lens --out JSON: judge its graphs' top features' labels")
    a = ap.parse_args()
    s = Session(a.model, index=a.index)
    idx = s._index_only()
    out = {"index": str(idx.path), "tokens": idx.meta.get("tokens"), "words": {}}
    for w in WORDS:
        out["words"][w] = {by: _hit(idx, w, by) for by in ("token", "logit")}
    labels = idx.labels()
    import sqlite3

    con = sqlite3.connect(idx.path)
    live = {f"{l}/{f}" for l, f in con.execute("SELECT layer, feature FROM features WHERE density > 0")}
    out["specific_share_live"] = sum(is_specific_label(labels[k]) for k in live) / max(1, len(live))
    out["label_f1_mean"] = idx.meta.get("label_f1_mean")
    for by in ("token", "logit"):
        out[f"found_{by}"] = sum(v[by][0] for v in out["words"].values())
    if a.lens:
        out["lens"] = _judge_lens(con, a.lens)
    if a.json:
        print(json.dumps(stamp(out, model=a.model, index=idx.path), ensure_ascii=False, indent=1))
        return
    print(f"index {out['index']} ({out['tokens']} tokens)")
    for w, v in out["words"].items():
        for by in ("token", "logit"):
            ok, shown = v[by]
            print(f"{w!r:12} {by:5} {'FOUND' if ok else '-----'}  " + "; ".join(shown[:3]))
    n = len(WORDS)
    print(f"found by token {out['found_token']}/{n}, by logit {out['found_logit']}/{n}")
    print(f"live features with a specific label {out['specific_share_live']:.3f}; label F1 {out['label_f1_mean']}")
    if a.lens:
        print("top-20 features of the lens graphs: " + ", ".join(f"{k} {v:.3f}" for k, v in out["lens"].items()))


if __name__ == "__main__":
    main()
