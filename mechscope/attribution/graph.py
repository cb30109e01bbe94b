"""The attribution graph: nodes, adjacency, pruning, scores, and the circuit-tracer/Neuronpedia JSON.

Node order in the adjacency A[target, source]: selected features (by layer, position, index), error
nodes (layer-major, then position), token embeddings (by position), logits.

Error-node ids: circuit-tracer writes `0_{layer}_{pos}`, which collides with the layer-0 feature id
`0_{feature}_{pos}` when feature == layer (circuit-tracer issue #78). We write `err_{layer}_{pos}` instead;
viewers identify error nodes by `feature_type == "mlp reconstruction error"`, which is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import json
import re
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
    # (target, source) -> {"heads": [[layer, head, weight], ...], "multi_hop": w}: head loadings of the pruned
    # graph's cross-position links (AttributionConfig.heads; a heads.HeadLoadings mapping), written on links
    heads: Mapping | None = None

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

        replacement_score: share of the logits' end-to-end influence that reaches token nodes rather than error
        nodes (circuit-tracer's formula).
        input_completeness_score: influence-weighted share of (|A|-)input coming from non-error nodes, over the
        nodes that HAVE inputs (features and logits). Not circuit-tracer's completeness, which also counts the
        input-less token and error nodes as fully explained and so is higher whenever errors carry influence:
        that one is ct_completeness_score (the unpruned graph only; `mechscope.lens.metrics`).
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
        out = {"replacement_score": repl, "input_completeness_score": comp}
        if node_mask is None and edge_mask is None:
            explained = 1 - An[:, es].sum(1)  # input-less rows (tokens, errors) count as fully explained
            out["ct_completeness_score"] = float((explained * out_infl).sum() / out_infl.sum().clamp_min(1e-30))
        return out

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
            | (self.heads.get((i, j), {}) if self.heads else {})
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
                "input_completeness_score": full["input_completeness_score"],
                "ct_completeness_score": full["ct_completeness_score"],
                "pruned_replacement_score": pruned["replacement_score"],
                "pruned_input_completeness_score": pruned["input_completeness_score"],
                # deprecated aliases of the input_ scores, for pages that read the old names (`completeness`)
                "completeness_score": full["input_completeness_score"],
                "pruned_completeness_score": pruned["input_completeness_score"],
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


def input_completeness(info: dict, pruned: bool = False) -> float | None:
    """A graph JSON's `info` input completeness (`Graph.scores`), also from files written before it had its own
    name (`completeness_score`, which was never circuit-tracer's completeness).

    >>> input_completeness({"completeness_score": 0.7}), input_completeness({"input_completeness_score": 0.6})
    (0.7, 0.6)
    """
    p = "pruned_" if pruned else ""
    v = info.get(f"{p}input_completeness_score")
    return v if v is not None else info.get(f"{p}completeness_score")


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
