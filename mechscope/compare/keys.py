"""Keys that align the nodes of different graphs (read from graph JSON only).

A feature is keyed by its id `L/F`, or by its label when the graphs come from different transcoder sets (ids then
name unrelated features); with `positions`, also by its position counted from the prompt's end (`@-1` is the
last token), so prompts of different lengths line up on their final tokens. Tokens and logits are keyed by
their text; error nodes by layer.

>>> feature_key({"layer": "3", "feature": 17, "ctx_idx": 5, "feature_type": "cross layer transcoder"}, 7, True)
'3/17@-2'
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mechscope.attribution.clustering import influence_shares, is_feature
from mechscope.errors import MechscopeError

_LOGIT = re.compile(r'^Output "(.*)" \(p=', re.S)


def load_graph(path: str | Path) -> dict:
    """A graph JSON (circuit-tracer's format, as `mechscope trace` writes it); one line for anything else."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MechscopeError(f"no graph file {path}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise MechscopeError(f"{path} is not readable graph JSON ({type(e).__name__})") from None
    if not (isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list)):
        raise MechscopeError(f"{path} is not a graph (no 'nodes' and 'links' lists)")
    return data


def graph_model(g: dict) -> str:
    return str(g.get("metadata", {}).get("info", {}).get("model", ""))


def n_tokens(g: dict) -> int:
    toks = g.get("metadata", {}).get("prompt_tokens") or []
    return len(toks) or 1 + max((int(n.get("ctx_idx") or 0) for n in g.get("nodes", [])), default=0)


def rel_pos(node: dict, n: int) -> int:
    """Position counted from the end: -1 is the last token."""
    return int(node.get("ctx_idx") or 0) - n


def feature_key(node: dict, n: int, positions: bool) -> str:
    key = f"{node.get('layer')}/{node.get('feature')}"
    return f"{key}@{rel_pos(node, n)}" if positions else key


def logit_token(node: dict) -> str:
    m = _LOGIT.match(node.get("clerp") or "")
    return m.group(1) if m else f"#{node.get('feature')}"


def node_key(node: dict, n: int, positions: bool, labels: dict[str, str] | None = None) -> str | None:
    """The alignment key of any node; with `labels` (node_id → supernode or feature label) features are keyed by
    label, and a feature without one gets None (it cannot be aligned across sets)."""
    kind = node.get("feature_type")
    at = f"@{rel_pos(node, n)}" if positions else ""
    if kind == "embedding":
        return f"tok {node.get('clerp', '')!r}{at}"
    if kind == "logit":
        return f"out {logit_token(node)!r}"
    if kind == "mlp reconstruction error":
        return f"err L{node.get('layer')}{at}"
    if labels is not None:
        lab = labels.get(node["node_id"], "")
        return f"«{lab}»{at}" if lab else None
    return feature_key(node, n, positions)


def supernode_labels(g: dict, use_flowchart: bool = True) -> dict[str, str]:
    """node_id → supernode name: the graph's own supernodes (qParams), else its automatic flowchart's boxes;
    features in neither keep their own label (clerp) when it says something."""
    from mechscope.attribution.clustering import informative

    out: dict[str, str] = {}
    for n in g.get("nodes", []):
        if is_feature(n) and informative(n.get("clerp") or ""):
            out[n["node_id"]] = n["clerp"].strip()
    groups = (g.get("qParams") or {}).get("supernodes") or []
    if not groups and use_flowchart:
        from mechscope.attribution.flowchart import flowchart

        fc = flowchart(g)
        groups = [[b.name, *b.members] for b in fc.boxes if b.kind == "features" and " features L" not in b.name]
    for grp in groups:
        if isinstance(grp, list) and len(grp) > 1:
            for m in grp[1:]:
                out[str(m)] = str(grp[0])
    return out


def shares(g: dict) -> dict[str, float]:
    """node_id → the node's own influence share (from the cumulative `influence` field)."""
    return influence_shares(g.get("nodes", []))
