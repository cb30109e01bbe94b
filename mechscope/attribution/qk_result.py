"""The result of a QK attribution: a head's score at (query, key) as (query-side node × key-side node) pairs,
with its sums, marginals and certified largest pairs (see mechscope/attribution/qk.py for how it is computed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mechscope.attribution.replacement import PromptState


@dataclass
class QKNode:
    """A query- or key-side node: id as in the graph JSON (`{l}_{f}_{p}`, `err_{l}_{p}`, `E_{tok}_{p}`) or "bias"."""

    id: str
    kind: str  # feature | error | token | bias
    layer: int | None = None
    pos: int | None = None
    feature: int | None = None
    token: str = ""

    def label(self) -> str:
        if self.kind == "feature":
            return f"{self.layer}/{self.feature}@{self.pos}"
        if self.kind == "error":
            return f"error {self.layer}@{self.pos}"
        if self.kind == "token":
            return f"token {self.token!r}@{self.pos}"
        return "bias (constants)"


@dataclass
class QKAttribution:
    """The decomposed score of one head at (query, key).  S_q / S_k: query- / key-side nodes (bias last).

    >>> from mechscope import load_model
    >>> from mechscope.transcoders import load_default_transcoders
    >>> m = load_model("gemma3-270m"); ts = load_default_transcoders(m)                  # doctest: +SKIP
    >>> from mechscope.attribution.qk import qk_attribution
    >>> a = qk_attribution(m, ts, "Dallas is in the state of", layer=9, head=2, key=2)     # doctest: +SKIP
    >>> abs(a.pairs_total - a.score) <= 1e-5 * abs(a.score)       # doctest: +SKIP
    True
    """

    layer: int
    head: int
    query: int
    key: int
    tokens: list[str]  # the prompt up to the query
    score: float  # pre-softmax, pre-soft-cap score of the clean run (the model's own query and key)
    scaling: float
    softcap: float | None
    scores: list[float]  # pre-cap scores of every key 0..query (masked ones too)
    pattern: list[float]  # attention weights over keys 0..query
    q_nodes: list[QKNode]
    k_nodes: list[QKNode]
    q_vecs: Tensor  # [S_q, head_dim] each node's part of the query (bias last)
    k_vecs: Tensor  # [S_k, head_dim]
    query_vec: Tensor  # [head_dim] the clean query (checks)
    key_vec: Tensor  # [head_dim]
    state: tuple[PromptState, dict[str, Tensor]] | None = field(default=None, repr=False)  # for re-runs

    # The S_q × S_k pair matrix (pair (s, t) = scaling · Q_s · K_t) is never formed whole: on gemma3-270m's top
    # layer it has ~56 M entries. Its sums are regrouped (Σ_s Σ_t Q_s·K_t = Σ_s Q_s · Σ_t K_t) and its largest
    # entries found by a certified search (`top_pairs`).
    def pair_matrix(self) -> Tensor:
        """The whole pair matrix [S_q, S_k], float64 (small prompts, tests)."""
        return self.scaling * (self.q_vecs.double() @ self.k_vecs.double().T)

    @property
    def pairs_total(self) -> float:
        """The sum over all S_q × S_k pairs (float64)."""
        return float(self.scaling * (self.q_vecs.double().sum(0) @ self.k_vecs.double().sum(0)))

    @property
    def n_pairs(self) -> int:
        return self.q_vecs.shape[0] * self.k_vecs.shape[0]

    def totals(self, which: str) -> Tensor:
        """Marginals [S]: a query-side node's pairs summed over every key-side node (its part of the score), or
        a key-side node's over every query-side node. Each side's marginals sum to the score."""
        if which == "query":
            return self.scaling * (self.q_vecs.double() @ self.k_vecs.double().sum(0))
        return self.scaling * (self.k_vecs.double() @ self.q_vecs.double().sum(0))

    @property
    def score_scale(self) -> float:
        """scaling · |query| · |key|: the size float32 round-off of the score is relative to (a score near zero
        is a cancellation, so errors are reported against max(|score|, this))."""
        return float(abs(self.scaling) * self.query_vec.norm() * self.key_vec.norm())

    def rel_error(self) -> float:
        """|pairs_total − score| / max(|score|, score_scale)."""
        return abs(self.pairs_total - self.score) / max(abs(self.score), self.score_scale, 1e-30)

    @property
    def capped_score(self) -> float:
        c = self.softcap
        return float(torch.tanh(torch.tensor(self.score / c)) * c) if c else self.score

    def top_pairs(self, n: int = 20) -> list[dict]:
        """The n pairs of largest |weight|: query node, key node, weight (in score units). Exact: see `top_pair_index`."""
        out = []
        for i, j, w in top_pair_index(self.q_vecs, self.k_vecs, self.scaling, n):
            a, b = self.q_nodes[i], self.k_nodes[j]
            out.append(
                {
                    "query_node": a.id,
                    "key_node": b.id,
                    "weight": w,
                    "query_label": a.label(),
                    "key_label": b.label(),
                }
            )
        return out

    def side(self, which: str, n: int = 10) -> list[dict]:
        """Marginals: a query-side node's pairs summed over every key-side node (its part of the score), or the
        reverse. Each side's marginals sum to the score too."""
        tot = self.totals(which)
        nodes = self.q_nodes if which == "query" else self.k_nodes
        idx = tot.abs().topk(min(n, tot.numel())).indices.tolist()
        return [{"node": nodes[i].id, "label": nodes[i].label(), "total": float(tot[i])} for i in idx]

    def to_json(self, top: int = 20) -> dict:
        q_err = float((self.q_vecs.sum(0) - self.query_vec).norm() / self.query_vec.norm().clamp_min(1e-30))
        k_err = float((self.k_vecs.sum(0) - self.key_vec).norm() / self.key_vec.norm().clamp_min(1e-30))
        return {
            "layer": self.layer,
            "head": self.head,
            "query": self.query,
            "key": self.key,
            "query_token": self.tokens[self.query],
            "key_token": self.tokens[self.key],
            "score": self.score,
            "pairs_total": self.pairs_total,
            "scaling": self.scaling,
            "softcap": self.softcap,
            "capped_score": self.capped_score,
            "attention": self.pattern[self.key],
            "scores": self.scores,
            "pattern": self.pattern,
            "n_pairs": self.n_pairs,
            "query_side": self.side("query", top),
            "key_side": self.side("key", top),
            "pairs": self.top_pairs(top),
            "checks": {"rel_error": self.rel_error(), "query_rel_error": q_err, "key_rel_error": k_err},
            "convention": "pre-softmax score before any soft-cap; patterns, residual-norm and q/k-norm scales "
            "frozen at the clean run; 'bias' = every constant (biases, b_dec, position embeddings)",
        }


def top_pair_index(
    Q: Tensor, K: Tensor, scaling: float, n: int, block: int | None = None, blocks: tuple[int, ...] = (64, 512)
) -> list[tuple[int, int, float]]:
    """The n entries of largest |scaling · Q @ K.T| as (i, j, value), without forming the product when a bound
    allows: |Q_i·K_j| ≤ |Q_i||K_j|, so after scanning the b longest rows of Q against all of K and all of Q
    against the b longest rows of K, no unscanned pair can beat the n-th best found once |Q_(b+1)||K_(b+1)| is
    below it. b grows through `blocks` until the bound holds (node lengths fall fast: 64 usually does);
    otherwise the whole product is scanned, in blocks. `block` fixes b (one try).  Q: [S_q, hd], K: [S_k, hd]
    """
    blocks = (block,) if block else blocks
    qn, kn = Q.norm(dim=1), K.norm(dim=1)
    qo, ko = qn.argsort(descending=True), kn.argsort(descending=True)
    cand: dict[tuple[int, int], float] = {}
    want = min(n, Q.shape[0] * K.shape[0])

    def scan(rows: Tensor, cols: Tensor) -> None:
        P = scaling * (Q[rows].double() @ K[cols].double().T)
        top = P.abs().flatten().topk(min(n, P.numel()))
        for f, v in zip(top.indices.tolist(), P.flatten()[top.indices].tolist()):
            cand[(int(rows[f // P.shape[1]]), int(cols[f % P.shape[1]]))] = v

    def best() -> list[tuple[tuple[int, int], float]]:
        return sorted(cand.items(), key=lambda kv: -abs(kv[1]))[:n]

    for b in blocks:
        scan(qo[:b], ko)
        scan(qo, ko[:b])
        top = best()
        rest_q = float(qn[qo[b]]) if len(qo) > b else 0.0
        rest_k = float(kn[ko[b]]) if len(ko) > b else 0.0
        if len(top) >= want and (not top or abs(scaling) * rest_q * rest_k <= abs(top[-1][1])):
            return [(i, j, v) for (i, j), v in top]
    for s in range(0, Q.shape[0], blocks[-1]):  # no certificate: scan everything, a block of rows at a time
        scan(torch.arange(s, min(s + blocks[-1], Q.shape[0])), torch.arange(K.shape[0]))
    return [(i, j, v) for (i, j), v in best()]
