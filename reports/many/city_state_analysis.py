"""Per-graph measurements of the city → state study (run by city_state.py analyse STORE).

For each traced prompt: where the city's tokens are, and how the answer's logit is reached —
  city_feat_share   influence share of features at the city's positions (of all ranked nodes, errors included)
  last_feat_share   the same for features at the last position ("of")
  error_share       error nodes' share
  into_answer       direct effects into the expected state's logit (or the top one), summed by source group:
                    city tokens (attention straight from the embedding), city features, last-position features,
                    other features, errors
  city_to_last      summed edges from city-position features to last-position features (the "hop")
  via_last          the two-step effect city features → last-position features → answer: Σ A[l,c]·A[ans,l]/a_l
                    (an edge is the source's activation times its unit effect; an active feature passes its
                    pre-activation on with slope 1, so a path's effect is the product of unit effects)
The claim holds for a graph when the city's features carry influence (≥ 5% share) and their effect on the answer,
direct plus through last-position features, is positive.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

from mechscope.compare.keys import logit_token, shares

MIN_CITY_SHARE = 0.05
KEEP = 40  # rows of each aggregate list kept in the report


def city_span(tokens: list[str], city: str) -> list[int]:
    for i in range(len(tokens)):
        for j in range(i + 1, len(tokens) + 1):
            if "".join(tokens[i:j]).strip() == city:
                return list(range(i, j))
    return []


def measure(g: dict, city: str, expect: str | None) -> dict:
    toks = g["metadata"]["prompt_tokens"]
    span = set(city_span(toks, city))
    last = len(toks) - 1
    sh = shares(g)
    kind = {}
    for nd in g["nodes"]:
        ft, p = nd["feature_type"], nd.get("ctx_idx")
        if ft == "embedding":
            kind[nd["node_id"]] = "city_tok" if p in span else "tok"
        elif ft == "mlp reconstruction error":
            kind[nd["node_id"]] = "error"
        elif ft == "logit":
            kind[nd["node_id"]] = "logit"
        else:
            kind[nd["node_id"]] = "city_feat" if p in span else "last_feat" if p == last else "other_feat"
    logits = [nd for nd in g["nodes"] if nd["feature_type"] == "logit"]
    target = next((nd for nd in logits if expect and logit_token(nd) == expect), None) or max(
        logits, key=lambda nd: nd.get("token_prob") or 0
    )
    into: Counter = Counter()
    hop = 0.0
    act = {nd["node_id"]: nd.get("activation") or 0.0 for nd in g["nodes"]}
    to_ans: dict[str, float] = {}
    c_to_l: list[tuple[str, float]] = []
    for link in g["links"]:
        s, t = kind.get(link["source"]), kind.get(link["target"])
        if link["target"] == target["node_id"]:
            into[s] += link["weight"]
            to_ans[link["source"]] = link["weight"]
        if s == "city_feat" and t == "last_feat":
            hop += link["weight"]
            c_to_l.append((link["target"], link["weight"]))
    via = sum(w * to_ans.get(l, 0.0) / act[l] for l, w in c_to_l if act.get(l))
    share = Counter()
    for nid, v in sh.items():
        share[kind.get(nid, "?")] += v
    return {
        "span": sorted(span),
        "answer": logit_token(target),
        "answer_prob": target.get("token_prob"),
        "city_feat_share": round(share["city_feat"], 4),
        "last_feat_share": round(share["last_feat"], 4),
        "other_feat_share": round(share["other_feat"], 4),
        "error_share": round(share["error"], 4),
        "into_answer": {k: round(v, 3) for k, v in into.items()},
        "city_to_last": round(hop, 3),
        "via_last": round(via, 3),
    }


def analyse(store: Path, out: Path) -> None:
    con = sqlite3.connect(store / "catalogue.sqlite")
    con.row_factory = sqlite3.Row
    per = []
    for r in con.execute("SELECT * FROM prompts WHERE status='done' ORDER BY line"):
        g = json.loads((store / "graphs" / f"{r['id']}.json").read_text())
        city = r["prompt"].split(" is ")[0].removeprefix("The city of ").strip()
        m = measure(g, city, r["expect"])
        m.update(id=r["id"], group=r["grp"], template=r["id"].split("-")[0], expect=r["expect"],
                 top=r["top_logit"], top_prob=round(r["top_prob"], 3), correct=bool(r["correct"]))  # fmt: skip
        m["city_total"] = round(m["into_answer"].get("city_feat", 0) + m["via_last"], 3)
        m["holds"] = m["city_feat_share"] >= MIN_CITY_SHARE and m["city_total"] > 0
        per.append(m)
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_graph.json").write_text(json.dumps(per, indent=0))
    # the store-level views, through the commands themselves
    runs = {
        "aggregate-all.json": [],
        "aggregate-is.json": ["--group", "id:is-*", "--positions", "--flowchart", str(out / "flowchart-is.svg")],
        "aggregate-cityof.json": ["--group", "id:cityof-*", "--positions", "--flowchart", str(out / "flowchart-cityof.svg")],
        "contrast-famous-lesser.json": ["--contrast", "famous", "lesser"],
        "contrast-right-wrong.json": ["--contrast", "answer:right", "answer:wrong"],
    }  # fmt: skip
    for name, extra in runs.items():
        res = subprocess.run(
            [sys.executable, "-m", "mechscope", "aggregate", str(store), "--json", *extra],
            capture_output=True,
            text=True,
        )
        data = json.loads(res.stdout) if res.returncode == 0 else {"error": res.stderr.strip()}
        for k in ("features", "supernodes", "edges"):  # the report keeps the head of each list (compact)
            if isinstance(data.get(k), list):
                data[f"{k}_total"] = len(data[k])
                data[k] = data[k][:KEEP]
        (out / name).write_text(json.dumps(data, indent=0, ensure_ascii=False))
    n = len(per)
    print(f"{n} graphs; correct {sum(m['correct'] for m in per)}; claim holds in {sum(m['holds'] for m in per)}")
