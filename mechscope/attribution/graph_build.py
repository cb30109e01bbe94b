"""Assembling an attribution graph from the rows that attribution computed: node order, adjacency, constant
terms, dropped effects, target values, node records and metadata (the layout is described in graph.py)."""

from __future__ import annotations

import time

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.attribution.graph import Graph
from mechscope.transcoders.source import enc_rows

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.attribution.attribute import AttributionConfig
    from mechscope.attribution.replacement import PromptState
    from mechscope.models.adapter import ModelAdapter
    from mechscope.transcoders.source import Source


def build_graph(
    *,
    model: ModelAdapter,
    ts: Source,
    st: PromptState,
    feat: Tensor,  # [n_active, 3] (layer, position, feature) of every active feature
    feat_val: Tensor,  # [n_active] their activations
    chosen: list[int],  # active-feature indices that got rows, in the order chosen
    chosen_rows: Tensor,  # [≥ len(chosen), n_src] table holding chosen j's row at chosen_row_of[j]
    chosen_row_of: list[int],
    chosen_bias: list[float],  # constant term of each chosen row
    logit_rows: Tensor,  # [n_logits, n_src]
    logit_bias: list[float],
    logit_labels: list[str],
    logit_ids: list[int],
    logit_probs: Tensor,  # [n_logits]
    logit_weights: Tensor,  # [n_logits] influence weights (sum 1)
    logit_vecs: Tensor,  # [n_logits, d] readout directions
    cfg: AttributionConfig,
    prompt: str,
) -> Graph:
    """Assemble the graph of one traced prompt from its computed rows (see mechscope/attribution/attribute.py):
    selected features sorted by (layer, position, index), then error nodes, token embeddings and logits."""
    L, n = model.n_layers, st.ids.shape[0]
    n_feat_all = feat.shape[0]
    order = sorted(range(len(chosen)), key=lambda j: tuple(feat[chosen[j]].tolist()))
    sel = [chosen[j] for j in order]
    n_sel, n_err, n_tok, n_log = len(sel), L * n, n, len(logit_labels)
    N = n_sel + n_err + n_tok + n_log
    cols = torch.tensor(sel + list(range(n_feat_all, n_feat_all + n_err + n_tok)), dtype=torch.long)
    unselected = torch.ones(n_feat_all, dtype=torch.bool)
    unselected[torch.tensor(sel, dtype=torch.long)] = False
    A = torch.zeros(N, N)
    const = torch.zeros(N)
    dropped = torch.zeros(N)
    values = torch.zeros(N)
    if n_sel:
        # chosen_rows: a table [≥ n_chosen, n_src] holding chosen j's row at chosen_row_of[j]; gathered once, straight into A (rows of a 2,048-node
        # graph are ~100 MB: a stacked copy and a masked copy cost more than the rest of the build)
        rows_idx = torch.tensor([chosen_row_of[j] for j in order], dtype=torch.long)
        A[:n_sel, : n_sel + n_err + n_tok] = chosen_rows[rows_idx[:, None], cols[None]]
        const[:n_sel] = torch.tensor([chosen_bias[j] for j in order], dtype=const.dtype)
        # the unselected features' summed effect: all feature columns minus the selected ones
        # (summed over the table's rows up to the last one used: rows after it may never have been written)
        used = chosen_rows[: int(rows_idx.max()) + 1, :n_feat_all]
        dropped[:n_sel] = used.sum(1)[rows_idx] - A[:n_sel, :n_sel].sum(1)
        lpf = feat[torch.tensor(sel, dtype=torch.long)]  # [n_sel, 3]
        for l in lpf[:, 0].unique().tolist():  # pre-activations, one gather per layer
            m = (lpf[:, 0] == l).nonzero().squeeze(-1)
            W, b = enc_rows(ts, l, lpf[m, 2])  # [m, d], [m]: only the chosen features' rows
            x = st.mlp_in[l].cpu()[lpf[m, 1]].float()  # [m, d]
            values[m] = (W.cpu() * x).sum(-1) + b.cpu()
    for k in range(n_log):
        i = n_sel + n_err + n_tok + k
        A[i, : n_sel + n_err + n_tok] = logit_rows[k][cols]
        const[i] = logit_bias[k]
        dropped[i] = logit_rows[k][:n_feat_all][unselected].sum()
    # centred logit values: (W_U[tok] − mean W_U) · final  ==  logit − mean(logits)
    # (before any final soft-cap: st.logits_raw, the linear readout the rows attribute)
    raw = st.logits if st.logits_raw is None else st.logits_raw
    if logit_ids and logit_ids[0] < model.vocab_size:
        centred = raw[-1] - raw[-1].mean()
        for k, tid in enumerate(logit_ids):
            values[n_sel + n_err + n_tok + k] = float(centred[tid])
    else:
        a, b = (model.token_id(t) for t in cfg.logit_diff)
        values[-1] = float(raw[-1, a] - raw[-1, b])
    w = torch.zeros(N)
    w[n_sel + n_err + n_tok :] = logit_weights
    nodes: list[dict] = []
    for i in range(n_sel):
        l, p, f = feat[sel[i]].tolist()
        nodes.append(
            {
                "node_id": f"{l}_{f}_{p}",
                "feature": f,
                "layer": str(l),
                "ctx_idx": p,
                "feature_type": "cross layer transcoder",
                "jsNodeId": f"{l}_{f}-0",
                "activation": float(st.acts[l, p, f]),
                "clerp": "",
            }
        )
    for l in range(L):
        for p in range(n):
            nodes.append(
                {
                    "node_id": f"err_{l}_{p}",
                    "feature": -1,
                    "layer": str(l),
                    "ctx_idx": p,
                    "feature_type": "mlp reconstruction error",
                    "jsNodeId": f"{l}_{p}-0",
                    "activation": float(st.error[l, p].norm()),
                    "clerp": "",
                }
            )
    for p in range(n):
        tid = int(st.ids[p])
        nodes.append(
            {
                "node_id": f"E_{tid}_{p}",
                "feature": p,
                "layer": "E",
                "ctx_idx": p,
                "feature_type": "embedding",
                "jsNodeId": f"E_{tid}-{p}",
                "clerp": st.tokens[p],
            }
        )
    for k, (lab, tid) in enumerate(zip(logit_labels, logit_ids)):
        prob = float(logit_probs[k])
        nodes.append(
            {
                "node_id": f"{L + 1}_{tid}_{n - 1}",
                "feature": tid,
                "layer": str(L + 1),
                "ctx_idx": n - 1,
                "feature_type": "logit",
                "jsNodeId": f"L_{tid}-{n - 1}",
                "token_prob": prob,
                "is_target_logit": k == 0,
                "clerp": f'Output "{lab}" (p={prob:.3f})',
            }
        )
    meta = {
        "prompt": prompt,
        "prompt_tokens": st.tokens,
        "model": model.name,
        "scan": ts.meta.get("scan", f"mechscope/{model.name}"),
        "n_layers": L,
        "n_pos": n,
        "n_active_features": n_feat_all,
        "max_feature_nodes": cfg.max_feature_nodes,
        "node_threshold": cfg.node_threshold,
        "edge_threshold": cfg.edge_threshold,
        "transcoders": ts.meta.get("path", ""),
        # per-layer graphs record nothing here, so their JSON is unchanged; consumers read it with
        # mechscope.transcoders.source.source_kind and refuse to mix the kinds
        **({"transcoder_kind": ts.kind} if getattr(ts, "kind", "plt") != "plt" else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "top_logits": [
            {"token": lab, "id": int(tid), "prob": float(p)}
            for lab, tid, p in zip(logit_labels, logit_ids, logit_probs)
        ],
    }
    return Graph(
        meta=meta,
        nodes=nodes,
        A=A,
        w=w,
        const=const,
        dropped=dropped,
        values=values,
        n_feat=n_sel,
        n_err=n_err,
        n_tok=n_tok,
        n_logit=n_log,
    )
