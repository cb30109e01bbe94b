"""The page's "why does this head look there" panel: QK attribution of one head on a stored graph's prompt.

    POST /api/attend {"graph": NAME, "layer": L, "head": H, "query": Q, "key": K, "top": N}   → a model job

Positions are the graph's (its `ctx_idx`; negative counts from the end). Everything that can be refused without
the model is refused at once with one line (unknown graph 404; a graph of another model, a layer, head or
position out of range, a key after the query: 400); the decomposition itself runs in the model queue. The job's
result is `QKAttribution.to_json` (docs/attention.md) with feature labels, the prompt's tokens, and what the
rows shown leave out (`pairs_rest`, `query_side_rest`, `key_side_rest`), so every table the page draws sums to
`pairs_total`, which equals the score.
"""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI, Request

from mechscope.errors import MechscopeError
from mechscope.server.requests import AttendRequest


def register(app: FastAPI, scope, submit: Callable[[str, Callable[[], dict], Request], dict]) -> None:
    """Add POST /api/attend; `submit(kind, fn, request)` queues fn as a model job and returns the job's view."""

    @app.post("/api/attend")
    def attend(body: AttendRequest, request: Request) -> dict:
        data = scope.read_graph(body.graph)
        prompt, chat, q, k = check(scope, body.graph, data, body)
        return submit("attend", lambda: run(scope, prompt, chat, body.layer, body.head, q, k, body.top), request)


def check(scope, name: str, data: dict, body: AttendRequest) -> tuple[str, bool, int, int | None]:
    """(prompt, chat, query, key) for the graph's prompt, or one line saying why not. Tokenizer only, no model run."""
    from mechscope.attribution.qk import check_head, resolve_pos

    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    prompt, toks = meta.get("prompt"), meta.get("prompt_tokens")
    model = str((meta.get("info") or {}).get("model") or "")
    if not isinstance(prompt, str) or not prompt.strip() or not isinstance(toks, list):
        raise MechscopeError(f"graph {name} records no prompt to explain")
    if model and model != scope.model.name:
        raise MechscopeError(f"graph {name} was traced on {model}; this server runs {scope.model.name}")
    chat = _chat(scope.model, prompt, toks, name)
    check_head(scope.model, body.layer, body.head)
    n = len(toks)
    q = resolve_pos(body.query, n, "query", n - 1)
    k = None if body.key is None else resolve_pos(body.key, n, "key", 0)
    if k is not None and k > q:
        raise MechscopeError(f"key {k} comes after query {q}: the causal mask hides it (no score to explain)")
    return prompt, chat, q, k


def _chat(model, prompt: str, toks: list, name: str) -> bool:
    """Whether the graph was traced with the chat template: the tokenization that gives its tokens."""
    for chat in (False, True):
        if chat and not getattr(model.tokenizer, "chat_template", None):
            break
        if model.tokenize(prompt, chat=chat).strs == toks:
            return chat
    raise MechscopeError(f"graph {name}'s tokens are not this model's tokens of its prompt (traced on another model?)")


def run(scope, prompt: str, chat: bool, layer: int, head: int, query: int, key: int | None, top: int) -> dict:
    """The decomposition, JSON-ready, with labels and the remainders of the shown rows."""
    from mechscope.attribution.qk import qk_attribution

    res = qk_attribution(scope.model, scope.ts, prompt, layer, head, query, key, chat=chat)
    out = res.to_json(top=top)
    labels = scope.labels or {}
    for item in out["pairs"]:
        for side in ("query", "key"):
            item[f"{side}_label"] = _labelled(item[f"{side}_label"], item[f"{side}_node"], labels)
    for side in ("query_side", "key_side"):
        for item in out[side]:
            item["label"] = _labelled(item["label"], item["node"], labels)
    total = out["pairs_total"]
    # what the top rows leave out: the page shows it as one more row, so each table sums to the total exactly
    out["pairs_rest"] = total - sum(p["weight"] for p in out["pairs"])
    out["n_pairs_rest"] = out["n_pairs"] - len(out["pairs"])
    out["query_side_rest"] = total - sum(x["total"] for x in out["query_side"])
    out["key_side_rest"] = total - sum(x["total"] for x in out["key_side"])
    out["n_query_nodes"], out["n_key_nodes"] = len(res.q_nodes), len(res.k_nodes)
    out["tokens"] = list(res.tokens)
    return out


def _labelled(text: str, node_id: str, labels: dict[str, str]) -> str:
    """A feature node `{l}_{f}_{p}`'s text with its index label, if any (as `mechscope attend` prints it)."""
    parts = node_id.split("_")
    lab = labels.get(f"{parts[0]}/{parts[1]}", "") if len(parts) == 3 and parts[0].isdigit() else ""
    return f"{text} “{lab}”" if lab else text
