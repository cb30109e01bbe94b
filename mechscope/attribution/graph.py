"""The attribution graph: nodes, adjacency, pruning, scores, and the circuit-tracer/Neuronpedia JSON.

Node order in the adjacency A[target, source]: selected features (by layer, position, index), error
nodes (layer-major, then position), token embeddings (by position), logits.

Error-node ids: circuit-tracer writes `0_{layer}_{pos}`, which collides with the layer-0 feature id
`0_{feature}_{pos}` when feature == layer (circuit-tracer issue #78). We write `err_{layer}_{pos}` instead;
viewers identify error nodes by `feature_type == "mlp reconstruction error"`, which is unchanged.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_text, data_dir

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("graph_schema.json")


def row_normalize(A: Tensor) -> Tensor:
    """|A| with each row scaled to sum 1 (rows without inputs stay 0)."""
    a = A.abs()
    s = a.sum(1, keepdim=True)
    return torch.where(s > 0, a / s.clamp_min(1e-30), a)


def influence(A_norm: Tensor, w: Tensor, max_iter: int = 1000) -> Tensor:
    """w^T (Â + Â² + ...): total (indirect included) influence of every node on the weighted outputs."""
    x, total = w.clone(), torch.zeros_like(w)
    for _ in range(max_iter):
        x = x @ A_norm
        if float(x.abs().sum()) < 1e-10:
            break
        total += x
    return total


@dataclass
class Graph:
    meta: dict
    nodes: list[dict]  # one dict per node, in adjacency order
    A: Tensor  # [N, N] direct effects, A[target, source]
    w: Tensor  # [N] logit weights (probabilities of the target logits, normalised)
    const: Tensor  # [N] constant terms of each row (biases through the frozen model)
    dropped: Tensor  # [N] summed effect of active features that got no node
    values: Tensor  # [N] each target's value (pre-activation / centred logit); 0 for sources
    n_feat: int
    n_err: int
    n_tok: int
    n_logit: int

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        *,
        model,
        ts,
        st,
        feat,
        feat_val,
        chosen,
        chosen_rows,
        chosen_row_of,
        chosen_bias,
        logit_rows,
        logit_bias,
        logit_labels,
        logit_ids,
        logit_probs,
        logit_weights,
        logit_vecs,
        cfg,
        prompt,
    ) -> "Graph":
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
            dropped[:n_sel] = chosen_rows[:, :n_feat_all].sum(1)[rows_idx] - A[:n_sel, :n_sel].sum(1)
            lpf = feat[torch.tensor(sel, dtype=torch.long)]  # [n_sel, 3]
            for l in lpf[:, 0].unique().tolist():  # pre-activations, one gather per layer
                m = (lpf[:, 0] == l).nonzero().squeeze(-1)
                W_enc, b_enc = ts.enc_weights(l)
                W = W_enc.detach().float().cpu()[lpf[m, 2]]  # [m, d]
                x = st.mlp_in[l].cpu()[lpf[m, 1]].float()  # [m, d]
                values[m] = (W * x).sum(-1) + b_enc.detach().float().cpu()[lpf[m, 2]]
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
        return cls(
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

    # ---- slices -----------------------------------------------------------------------------
    @property
    def N(self) -> int:
        return self.A.shape[0]

    def kinds(self) -> tuple[slice, slice, slice, slice]:
        a = self.n_feat
        b = a + self.n_err
        c = b + self.n_tok
        return slice(0, a), slice(a, b), slice(b, c), slice(c, self.N)

    # ---- influence, pruning, scores -----------------------------------------------------------
    def node_influence(self, A: Tensor | None = None, renormalize: bool = True) -> Tensor:
        A = self.A if A is None else A
        An = row_normalize(A) if renormalize else A
        return influence(An, self.w)

    def prune(
        self, node_threshold: float | None = None, edge_threshold: float | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(node_mask [N], edge_mask [N, N], cumulative influence score per node [N]) by cumulative influence."""
        nt = self.meta["node_threshold"] if node_threshold is None else node_threshold
        et = self.meta["edge_threshold"] if edge_threshold is None else edge_threshold
        fs, es, ts_, ls = self.kinds()
        infl = self.node_influence()
        node_mask = torch.zeros(self.N, dtype=torch.bool)
        node_mask[ts_] = True
        node_mask[ls] = True
        cum_score = torch.ones(self.N)
        cand = torch.arange(0, es.stop)
        vals = infl[cand]
        order = vals.argsort(descending=True)
        total = float(vals.sum())
        if total > 0:
            cum = vals[order].cumsum(0) / total
            keep = cum <= nt
            # include the node that crosses the threshold
            n_keep = min(len(order), int(keep.sum()) + 1)
            node_mask[cand[order[:n_keep]]] = True
            cum_score[cand[order]] = cum
        A = self.A * node_mask[:, None] * node_mask[None, :]
        An = row_normalize(A)
        infl_p = influence(An, self.w) + self.w
        edge_scores = An * infl_p[:, None]
        flat = edge_scores.flatten()
        nz = flat.nonzero().squeeze(-1)
        edge_mask = torch.zeros_like(flat, dtype=torch.bool)
        if nz.numel():
            v = flat[nz]
            o = v.argsort(descending=True)
            cum = v[o].cumsum(0) / v.sum()
            n_keep = min(len(o), int((cum <= et).sum()) + 1)
            edge_mask[nz[o[:n_keep]]] = True
        edge_mask = edge_mask.view(self.N, self.N)
        # a node left with no kept edge is dropped (tokens and logits stay)
        connected = edge_mask.any(0) | edge_mask.any(1)
        node_mask &= connected | torch.isin(torch.arange(self.N), torch.arange(ts_.start, self.N))
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        return node_mask, edge_mask, cum_score

    def scores(self, node_mask: Tensor | None = None, edge_mask: Tensor | None = None) -> dict:
        """Replacement and completeness scores (Ameisen et al. 2025) of the full graph, or of a pruned one.

        replacement: share of the logits' end-to-end influence that reaches token nodes rather than error nodes.
        completeness: influence-weighted share of nodes' (|A|-)input coming from non-error nodes.
        For a pruned graph, pruned edges count as unexplained: rows keep the full graph's normalisation.
        """
        fs, es, ts_, ls = self.kinds()
        An_full = row_normalize(self.A)
        infl_full = influence(An_full, self.w)
        denom = float(infl_full[ts_].sum() + infl_full[es].sum())
        An = An_full if edge_mask is None else An_full * edge_mask
        infl = influence(An, self.w)
        out_infl = infl + self.w
        has_rows = self.A.abs().sum(1) > 0
        if node_mask is not None:
            has_rows &= node_mask
        non_err = An.sum(1) - An[:, es].sum(1)
        comp = float((non_err * out_infl)[has_rows].sum() / out_infl[has_rows].sum().clamp_min(1e-30))
        repl = float(infl[ts_].sum()) / denom if denom > 0 else 0.0
        return {"replacement_score": repl, "completeness_score": comp}

    # ---- output ---------------------------------------------------------------------------------
    def to_json(
        self,
        node_threshold: float | None = None,
        edge_threshold: float | None = None,
        slug: str = "",
        labels: dict[str, str] | None = None,
    ) -> dict:
        """The pruned graph in circuit-tracer's frontend format (also read by Neuronpedia)."""
        node_mask, edge_mask, cum = self.prune(node_threshold, edge_threshold)
        full = self.scores()
        pruned = self.scores(node_mask, edge_mask)
        keep = node_mask.nonzero().squeeze(-1).tolist()
        nodes = []
        for i in keep:
            nd = {
                "token_prob": 0.0,
                "is_target_logit": False,
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "clerp": "",
                **self.nodes[i],
                "influence": float(cum[i]),
            }
            if labels and nd["feature_type"] == "cross layer transcoder":
                nd["clerp"] = labels.get(f"{nd['layer']}/{nd['feature']}", nd["clerp"])
            nodes.append(nd)
        t, s = edge_mask.nonzero(as_tuple=True)
        links = [
            {"source": self.nodes[j]["node_id"], "target": self.nodes[i]["node_id"], "weight": float(self.A[i, j])}
            for i, j in zip(t.tolist(), s.tolist())
        ]
        meta = {
            "slug": slug or self.slug(),
            "scan": self.meta["scan"],
            "transcoder_list": [],
            "prompt_tokens": self.meta["prompt_tokens"],
            "prompt": self.meta["prompt"],
            "node_threshold": node_threshold if node_threshold is not None else self.meta["node_threshold"],
            "schema_version": SCHEMA_VERSION,
            "info": {
                "generator": "mechscope",
                "model": self.meta["model"],
                "edge_threshold": edge_threshold if edge_threshold is not None else self.meta["edge_threshold"],
                "replacement_score": full["replacement_score"],
                "completeness_score": full["completeness_score"],
                "pruned_replacement_score": pruned["replacement_score"],
                "pruned_completeness_score": pruned["completeness_score"],
                "n_nodes_full": self.N,
                "n_edges_full": int((self.A != 0).sum()),
                "n_active_features": self.meta["n_active_features"],
                "top_logits": self.meta["top_logits"],
                "elapsed_s": self.meta.get("elapsed_s"),
                # only cross-layer graphs carry it: per-layer JSON stays byte-for-byte as before
                **({"transcoder_kind": self.meta["transcoder_kind"]} if "transcoder_kind" in self.meta else {}),
            },
        }
        return {
            "metadata": meta,
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes,
            "links": links,
        }

    def slug(self) -> str:
        base = re.sub(r"[^a-z0-9]+", "-", self.meta["prompt"].lower()).strip("-")[:40] or "graph"
        model = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.meta["model"]).name).strip("-.") or "model"
        return f"{model}-{base}"

    def save(self, path: str | Path, **kw) -> Path:
        """Write the pruned JSON graph to `path` and the full adjacency beside it (`.pt.safetensors`)."""
        path = Path(path)
        data = self.to_json(**kw)
        atomic_write_text(path, json.dumps(data))
        self.save_binary(path.with_suffix(".adjacency.safetensors"))
        return path

    def save_binary(self, path: Path) -> None:
        idx = self.A.nonzero().T.contiguous()
        tensors = {
            "indices": idx,
            "values": self.A[idx[0], idx[1]].contiguous(),
            "w": self.w,
            "const": self.const,
            "dropped": self.dropped,
            "target_values": self.values,
        }
        meta = {
            "meta": json.dumps(self.meta),
            "nodes": json.dumps(self.nodes),
            "sizes": json.dumps([self.n_feat, self.n_err, self.n_tok, self.n_logit]),
        }
        tmp = path.with_name(f".tmp-{path.name}")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load_binary(cls, path: str | Path) -> "Graph":
        """Reload the unpruned graph (re-prune it without recomputing)."""
        from safetensors import safe_open

        path = Path(path)
        t = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            md = f.metadata()
        nf, ne, nt, nl = json.loads(md["sizes"])
        N = nf + ne + nt + nl
        A = torch.zeros(N, N)
        A[t["indices"][0], t["indices"][1]] = t["values"]
        return cls(
            meta=json.loads(md["meta"]),
            nodes=json.loads(md["nodes"]),
            A=A,
            w=t["w"],
            const=t["const"],
            dropped=t["dropped"],
            values=t["target_values"],
            n_feat=nf,
            n_err=ne,
            n_tok=nt,
            n_logit=nl,
        )


def graph_store() -> Path:
    """Default directory for graphs (`$MECHSCOPE_HOME/graphs`)."""
    return data_dir() / "graphs"


def validate_graph_json(data: dict) -> None:
    """Raise jsonschema.ValidationError if `data` does not follow the graph schema (needs the test extra)."""
    try:
        import jsonschema
    except ImportError:
        raise MechscopeError(
            "validating a graph against its schema needs jsonschema: pip install 'mechscope[test]'"
        ) from None

    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))
