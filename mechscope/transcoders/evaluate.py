"""Held-out evaluation of a transcoder set: FVU, L0, dead features, and spliced next-token loss."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.models.adapter import ModelAdapter
from mechscope.transcoders.corpus import iter_documents, shuffled, token_chunks
from mechscope.transcoders.module import TranscoderSet

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    corpus: str = "builtin"
    tokens: int = 16384           # held-out tokens for FVU / L0 / dead and the all-layers loss
    ce_layer_tokens: int = 2048   # tokens for the per-layer spliced loss (one extra forward per layer)
    seq_len: int = 128
    batch_size: int = 2
    seed: int = 0


OUTLIER = 10.0   # × the batch median MLP-output norm: beyond it a token counts as a massive-activation outlier


def _chunks(model: ModelAdapter, cfg: EvalConfig):
    docs = shuffled(iter_documents(cfg.corpus, "heldout"), cfg.seed)
    return token_chunks(model.tokenizer, docs, cfg.seq_len)


def _ce_and_logp(model: ModelAdapter, ids: Tensor, hooks: dict) -> tuple[Tensor, Tensor]:
    with model.hooks(hooks):
        logits = model.forward(ids)[:, 1:-1].float()      # predict tokens 2..n (skip BOS position)
    logp = F.log_softmax(logits, -1)
    tgt = ids[:, 2:]
    ce = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return ce.flatten(), logp


def _kl(logp_ref: Tensor, logp: Tensor) -> Tensor:
    return (logp_ref.exp() * (logp_ref - logp)).sum(-1).flatten()


@torch.no_grad()
def evaluate_transcoders(model: ModelAdapter, ts: TranscoderSet, cfg: EvalConfig, progress: bool = True) -> dict:
    """Per-layer FVU/L0/dead and CE loss recovered (each layer alone and all layers at once).

    >>> res = evaluate_transcoders(model, ts, EvalConfig(tokens=4096))   # doctest: +SKIP
    >>> res["mean_fvu"], res["ce_loss_recovered_all_layers"]
    """
    from tqdm.auto import tqdm

    L = model.n_layers
    sites_in = [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    sites_out = [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    err2 = torch.zeros(L, dtype=torch.float64)
    ysum = torch.zeros(L, model.d_model, dtype=torch.float64)
    y2 = torch.zeros(L, dtype=torch.float64)
    l0 = torch.zeros(L, dtype=torch.float64)
    # the same sums without "massive activation" tokens (MLP output norm > OUTLIER × the batch median):
    # one such token can dominate a layer's variance (SmolLM2 layer 11) and hide how the rest is explained
    t_err2, t_ysum, t_y2, t_n = torch.zeros(L, dtype=torch.float64), torch.zeros(L, model.d_model, dtype=torch.float64), \
        torch.zeros(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
    fired = torch.zeros(L, ts.d_transcoder, dtype=torch.bool)
    n = 0
    ce = {"clean": [], "spliced_all": [], "zero_all": []}
    kl_all: list[Tensor] = []
    ce_layer = {f"{kind}_{l}": [] for l in range(L) for kind in ("spliced", "zero")}
    kl_layer: dict[int, list[Tensor]] = {l: [] for l in range(L)}
    n_layer_tokens = 0

    def splice(l: int):
        tc = ts[l]
        return lambda y: tc(cur_in[l]).to(y.dtype)

    bar = tqdm(total=cfg.tokens, unit="tok", disable=not progress, desc="eval-transcoders")
    batch: list[Tensor] = []
    for chunk in _chunks(model, cfg):
        batch.append(chunk)
        if len(batch) < cfg.batch_size:
            continue
        ids = torch.stack(batch).to(model.device)
        batch = []
        cache = model.run_with_cache(ids, sites_in + sites_out, logits=False)
        cur_in = [cache[s] for s in sites_in]
        for l in range(L):
            x = cache[sites_in[l]][:, 1:].reshape(-1, model.d_model)
            y = cache[sites_out[l]][:, 1:].reshape(-1, model.d_model).double()
            acts = ts[l].encode(x)
            y_hat = ts[l].decode(acts, x).double()
            err2[l] += (y - y_hat).pow(2).sum()
            ysum[l] += y.sum(0)
            y2[l] += y.pow(2).sum()
            norms = y.norm(dim=-1)
            keep = norms <= OUTLIER * norms.median()
            t_err2[l] += (y - y_hat)[keep].pow(2).sum()
            t_ysum[l] += y[keep].sum(0)
            t_y2[l] += y[keep].pow(2).sum()
            t_n[l] += int(keep.sum())
            l0[l] += (acts > 0).sum()
            fired[l] |= (acts > 0).any(0).cpu()
        n_tok = ids.shape[0] * (ids.shape[1] - 1)
        n += n_tok
        ce_clean, logp_clean = _ce_and_logp(model, ids, {})
        ce["clean"].append(ce_clean)
        c, logp = _ce_and_logp(model, ids, {s: splice(l) for l, s in enumerate(sites_out)})
        ce["spliced_all"].append(c)
        kl_all.append(_kl(logp_clean, logp))
        ce["zero_all"].append(_ce_and_logp(model, ids, {s: (lambda y: torch.zeros_like(y)) for s in sites_out})[0])
        if n_layer_tokens < cfg.ce_layer_tokens:
            for l in range(L):
                c, logp = _ce_and_logp(model, ids, {sites_out[l]: splice(l)})
                ce_layer[f"spliced_{l}"].append(c)
                kl_layer[l].append(_kl(logp_clean, logp))
                ce_layer[f"zero_{l}"].append(_ce_and_logp(model, ids, {sites_out[l]: lambda y: torch.zeros_like(y)})[0])
            ce_layer.setdefault("clean", []).append(ce_clean)
            n_layer_tokens += n_tok
        bar.update(n_tok)
        if n >= cfg.tokens:
            break
    bar.close()
    if n == 0:
        from mechscope.errors import MechscopeError
        raise MechscopeError(f"held-out split of corpus {cfg.corpus} has too little text for one batch")
    var = y2 - ysum.pow(2).sum(-1) / n
    fvu = (err2 / var).tolist()
    fvu_t = (t_err2 / (t_y2 - t_ysum.pow(2).sum(-1) / t_n.clamp_min(1))).tolist()
    mean = {k: float(torch.cat(v).mean()) for k, v in ce.items()}

    def recovered(zero: float, spliced: float, clean: float) -> float:
        return (zero - spliced) / (zero - clean) if zero != clean else float("nan")

    clean_l = float(torch.cat(ce_layer["clean"]).mean())
    per_layer_rec = [recovered(float(torch.cat(ce_layer[f"zero_{l}"]).mean()), float(torch.cat(ce_layer[f"spliced_{l}"]).mean()), clean_l)
                     for l in range(L)]
    dead = (~fired).float().mean(-1).tolist()
    return {
        "model": model.name, "tokens": n, "corpus": cfg.corpus, "split": "heldout",
        "mean_fvu": sum(fvu) / L, "max_fvu": max(fvu), "fvu_per_layer": fvu,
        "mean_fvu_trimmed": sum(fvu_t) / L, "max_fvu_trimmed": max(fvu_t), "fvu_per_layer_trimmed": fvu_t,
        "trimmed_token_fraction": 1 - float(t_n.mean()) / n,
        "mean_l0": float((l0 / n).mean()), "l0_per_layer": (l0 / n).tolist(),
        "dead_fraction": sum(dead) / L, "dead_fraction_per_layer": dead,
        "ce_clean": mean["clean"], "ce_spliced_all_layers": mean["spliced_all"], "ce_zero_ablate_all_layers": mean["zero_all"],
        "ce_loss_recovered_all_layers": recovered(mean["zero_all"], mean["spliced_all"], mean["clean"]),
        "kl_all_layers": float(torch.cat(kl_all).mean()),
        "ce_loss_recovered_per_layer": per_layer_rec,
        "kl_per_layer": [float(torch.cat(kl_layer[l]).mean()) for l in range(L)],
        "ce_layer_tokens": n_layer_tokens,
    }
