"""CLI: attend (QK attribution: why a head looks where it looks). See docs/attention.md."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mechscope.attribution.qk_config import QKConfig
from mechscope.cli._common import JsonOut, ModelOpt, TranscodersOpt, command
from mechscope.configs import param


@dataclass(kw_only=True)
class AttendArgs(ModelOpt, TranscodersOpt, JsonOut):
    prompt: str = param(positional=True, help="the prompt whose attention is explained")
    qk: QKConfig = field(default_factory=QKConfig)  # its knobs become options
    chat: bool = param(False, help="apply the model's chat template")


@command(
    "attend",
    help="explain a head's attention score: (query-side node × key-side node) pairs that sum to it",
    description="Decompose head (--layer, --head)'s pre-softmax score at (--query, --key) into pairs of nodes of "
    "the local replacement model (features, error nodes, tokens, bias), with patterns and norm scales frozen: the "
    "pairs sum to the score. Without --layer/--head, the head is chosen from the top logit's attribution graph "
    "(docs/attention.md).",
)
def cmd_attend(a: AttendArgs) -> int:
    from mechscope.session import Session

    s = Session(a.model, a.transcoders)
    s.check_transcoders()
    model, ts = s.model, s.transcoders
    from mechscope.attribution.qk import check_head, qk_attribution  # torch: once the input is known to be wanted

    cfg, choice = a.qk, None
    query, key = cfg.query, cfg.key
    if cfg.layer is None:
        from mechscope.attribution.config import AttributionConfig
        from mechscope.attribution.qk_choice import choose_head

        g = s.trace(a.prompt, AttributionConfig(max_feature_nodes=512, max_logits=1), chat=a.chat)
        toks = model.tokenize(a.prompt, chat=a.chat)
        choice = choose_head(model, ts, toks.ids, toks.strs, g)
        layer, head = choice.layer, choice.head
        query = choice.query if query is None else query
        key = choice.key if key is None and query == choice.query else key
    else:
        layer, head = cfg.layer, cfg.head
    check_head(model, layer, head)
    res = qk_attribution(model, ts, a.prompt, layer, head, query, key, chat=a.chat, batch_size=cfg.batch_size)
    out = res.to_json(top=cfg.top)
    labels = s.labels()
    for item in out["pairs"]:
        for side in ("query", "key"):
            lab = _label(labels, item[f"{side}_node"])
            if lab:
                item[f"{side}_label"] += f" “{lab}”"
    for side in ("query_side", "key_side"):
        for item in out[side]:
            lab = _label(labels, item["node"])
            if lab:
                item["label"] += f" “{lab}”"
    if choice is not None:
        out["chosen_by"] = choice.reason()
    if a.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    _print(out)
    return 0


def _label(labels: dict[str, str], node_id: str) -> str:
    """A feature node `{l}_{f}_{p}`'s label from the feature index ("l/f" → label), if any."""
    parts = node_id.split("_")
    if len(parts) == 3 and parts[0].isdigit():
        return labels.get(f"{parts[0]}/{parts[1]}", "")
    return ""


def _print(out: dict) -> None:
    toks = [out["query_token"], out["key_token"]]
    print(
        f"head {out['layer']}.{out['head']}, query {out['query']} {toks[0]!r} → key {out['key']} {toks[1]!r}: "
        f"attention {out['attention']:.3f}"
    )
    if out.get("chosen_by"):
        print(f"  chosen: {out['chosen_by']}")
    cap = f" (soft-capped: {out['capped_score']:+.4f}; the pre-cap score is decomposed)" if out["softcap"] else ""
    print(
        f"score {out['score']:+.4f}{cap} = sum of {out['n_pairs']:,} pairs {out['pairs_total']:+.4f} "
        f"(relative error {out['checks']['rel_error']:.1e})"
    )
    print("scores over keys: " + " ".join(f"{i}:{v:+.2f}" for i, v in enumerate(out["scores"])))
    print("largest pairs (query-side node × key-side node = weight):")
    for p in out["pairs"]:
        print(f"  {p['weight']:+9.4f}  {p['query_label']}  ×  {p['key_label']}")
    for side, what in (("query_side", "query-side nodes"), ("key_side", "key-side nodes")):
        print(f"{what} (each summed over the other side; they sum to the score):")
        for item in out[side]:
            print(f"  {item['total']:+9.4f}  {item['label']}")
