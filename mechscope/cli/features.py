"""CLI: index-features, feature, search-features."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from mechscope.cli._common import JsonOut, MemoryOpt, ModelOpt, TranscodersOpt, command
from mechscope.configs import param, require
from mechscope.features.config import IndexConfig


@dataclass(kw_only=True)
class IndexArgs(ModelOpt, TranscodersOpt, JsonOut):
    index: IndexConfig = field(default_factory=IndexConfig)
    out: str | None = param(None, help="SQLite path (default: the user data dir, $MECHSCOPE_HOME/features)")
    labeller: str = param(
        "heuristic",
        help="who writes the labels: 'heuristic' (built in, no LLM), 'command:CMD' (a shell command reading the "
        "prompt on stdin, e.g. a local llama.cpp), or 'openai:URL[#MODEL]' (an OpenAI-compatible server; key from "
        "$OPENAI_API_KEY); an LLM is asked a test prompt before any work",
    )


@command("index-features", help="build the feature index (examples, logit effects, labels)")
def cmd_index(a: IndexArgs) -> int:
    from mechscope.features import build_index, user_index_path
    from mechscope.features.llm_labeller import labeller_from_spec
    from mechscope.paths import check_writable
    from mechscope.session import Session

    out = a.out or user_index_path(a.model)
    check_writable(out)
    s = Session(a.model, a.transcoders)
    s.check_transcoders()
    labeller = labeller_from_spec(a.labeller)
    meta = build_index(s.model, s.transcoders, out, a.index, labeller=labeller, progress=not a.json)
    meta["path"] = str(out)
    print(
        json.dumps(meta)
        if a.json
        else f"indexed {meta['tokens']} tokens in {meta['elapsed_s']} s -> {out}; label F1 (held-out) mean {meta['label_f1_mean']}"
    )
    return 0


@dataclass(kw_only=True)
class FeatureArgs(ModelOpt, JsonOut):
    id: str = param(positional=True, metavar="L/F", help="the feature, as LAYER/FEATURE")
    index: str | None = param(None, help="feature index path (default: the model's)")


def _bar(x: float, width: int = 20) -> str:
    return "█" * int(round(x * width))


@command("feature", help="text dashboard of one feature")
def cmd_feature(a: FeatureArgs) -> int:
    from mechscope.interventions import parse_ref
    from mechscope.session import Session

    ref = parse_ref(a.id)
    d = Session(a.model, index=a.index).feature(ref.layer, ref.feature)
    if a.json:
        print(json.dumps(d, ensure_ascii=False))
        return 0
    print("\n".join(dashboard_text(d)))
    return 0


def _ex_text(ex: dict) -> str:
    text = "".join(f"[[{t}]]" if i == ex["max_pos"] else t for i, t in enumerate(ex["tokens"]))
    return f"{ex['activation']:6.2f}  {text!r}"


def dashboard_text(d: dict) -> list[str]:
    """The text dashboard: label (both sides), density, tokens it fires on, logits, examples, histogram."""
    score = d["label_score"]
    out = [
        f"feature {d['id']}  “{d['label']}”  (confidence {d['label_confidence']:.2f}"
        + (f", held-out F1 {score:.2f}" if score is not None else "")
        + ")"
    ]
    if d.get("label_input") or d.get("label_output"):
        out.append(f"reads: {d.get('label_input') or '–'}   says: {d.get('label_output') or '–'}")
    flag = "  DENSE (not offered in search)" if d.get("dense") else "  DEAD" if d.get("dead") else ""
    out.append(f"density {d['density']:.5f}   max activation {d['max_act']:.2f}   mean {d['mean_act']:.2f}{flag}")
    fires = d.get("fires_on") or [[t, n, None, None] for t, n in d["top_tokens"]]
    out.append(
        "fires on: " + ", ".join(f"{t!r}×{n}" + (f" ({p:.0%})" if p is not None else "") for t, n, p, _ in fires[:8])
    )
    basis = "relative to the mean unembedding" if d.get("logits_relative") else "raw"
    out.append(f"promotes ({basis}): " + ", ".join(f"{t!r} {v:+.3g}" for t, v in d["top_logits"][:8]))
    out.append("suppresses: " + ", ".join(f"{t!r} {v:+.3g}" for t, v in d["bottom_logits"][:8]))
    out.append("top examples:")
    out += [f"  {_ex_text(e)}" for e in d.get("top_examples", d["examples"])]
    for q in d.get("quantiles", []):
        out.append(f"quantile {q['from_pct']}–{q['to_pct']}% (activation {q['lo']:.2f}–{q['hi']:.2f}):")
        out += [f"  {_ex_text(e)}" for e in q["examples"]]
    if d.get("random_examples"):
        out.append("random active examples:")
        out += [f"  {_ex_text(e)}" for e in d["random_examples"]]
    counts = d["hist"]["counts"]
    if counts:
        mx = max(counts) or 1
        edges = d["hist"]["edges"]
        out.append("histogram (non-zero activations):")
        for i, c in enumerate(counts):
            if c:
                lo = edges[i - 1] if i > 0 else 0
                out.append(f"  ≥{lo:8.3f} {_bar(c / mx)} {c}")
    return out


@dataclass(kw_only=True)
class SearchArgs(ModelOpt, TranscodersOpt, MemoryOpt, JsonOut):
    query: str = param(positional=True, help="label text, a token, or (with --by prompt) a text to run the model on")
    by: Literal["label", "token", "logit", "prompt"] = param(
        "label",
        help="prompt: run QUERY through the model and list the features active at --token/--pos (default: last token)",
    )
    token: str | None = param(None, help="with --by prompt: probe the last occurrence of this token")
    pos: int | None = param(None, help="with --by prompt: probe this position (negative from the end)")
    limit: int = param(20, help="most results to print")
    index: str | None = param(None, help="feature index path (default: the model's)")

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options validate themselves too (--model, --threads)
        require(
            self.by == "prompt" or (self.token is None and self.pos is None), "--token and --pos go with --by prompt"
        )
        require(self.limit >= 1, "--limit must be at least 1")
        require(bool(self.query.strip()), "empty search query: give a label text, a token (e.g. ' Texas') or a text")


@command("search-features", help="find features by label, input token, output token, or by running a text")
def cmd_search(a: SearchArgs) -> int:
    from mechscope.session import Session

    s = Session(a.model, a.transcoders, index=a.index)
    if a.by == "prompt":
        return _search_by_prompt(a, s)
    rows = s.search(a.query, by=a.by, limit=a.limit)
    if a.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        from mechscope.features import FeatureIndex

        print(FeatureIndex.empty_hint(a.query, a.by))
        return 0
    score = {"token": "specificity", "logit": "logit rise", "label": "confidence"}[a.by]
    print(f"{'feature':<10} {score:>11}  {'density':>8}  {'label':<44}  why")
    for r in rows:
        lab = r["label"] if len(r["label"]) <= 44 else r["label"][:43] + "…"
        print(f"{r['id']:<10} {r['score']:11.3f}  {r['density']:8.5f}  {lab:<44}  {r['why']}")
    return 0


def _search_by_prompt(a: SearchArgs, s) -> int:
    res = s.probe(a.query, token=a.token, pos=a.pos, limit=a.limit)
    if a.json:
        print(json.dumps(res, ensure_ascii=False))
        return 0
    pos, toks = res["position"], res["tokens"]
    print(
        f"features at position {pos} ({toks[pos]!r}) of {a.query!r}"
        + ("" if s.index else " — no matching feature index: ranked by raw activation, no labels")
    )
    for h in res["features"]:
        # the share of the index maximum is capped at 100% (an activation above the indexed maximum is "100%")
        rel = f"{min(h['relative'], 1.0):6.0%} of max" if h["relative"] is not None else ""
        dens = h["density"] if h["density"] is not None else float("nan")
        print(f"{h['id']:<10} act {h['activation']:7.2f} {rel:>12}  density {dens:.4f}  “{h['label']}”")
    return 0
