"""Sink latents: one latent per layer that reproduces the MLP's "massive activation" at attention sinks.

Some models (SmolLM2: layers 11 and 28) write an output hundreds of times the median norm at attention-sink
tokens — a chunk's first token, and sometimes the next one. Training drops those tokens (`--outlier-factor`):
a single one dominates a batch's variance and the least-squares initialisation. But then no latent can
produce them, and one such token in held-out text is enough to put a layer's FVU near 1, and to wreck every
spliced run through that position.

The sinks are simple, so they are fitted, not trained: measured on SmolLM2, their outputs share one direction
(cosine 1.000 to the mean) and their inputs are separable by one projection (sinks ≥ 0.86, other tokens ≤ 0.30
cosine to the sinks' mean input direction at layer 11). `fit_sink_latent` gives the least used latent of a
layer (a sink latent fitted before, if the set has one) the decoder row along the sinks' mean residual and an
encoder row along their mean input direction, with a bias that keeps it silent below a cut halfway between the
two groups' projections, so it never fires on the ordinary tokens measured. A layer whose sinks are not
separable that way is left alone.

    mechscope fit-sinks --model smollm2-135m --transcoders runs/smol --out runs/smol-sinks
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.transcoders.configs import SINK_FACTOR, SinkConfig  # noqa: F401 (re-exported)
from mechscope.corpus.sources import chunk_stream
from mechscope.transcoders.module import Transcoder, TranscoderSet

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


def massive(norms: Tensor, factor: float = SINK_FACTOR, dim: int = -1) -> Tensor:
    """THE massive-activation cut (training's --outlier-factor, the eval's sink-free metrics, fit-sinks): True
    where an MLP output norm exceeds `factor` × the median of `norms` along `dim` (the batch's tokens).

    >>> massive(torch.tensor([1.0, 1.0, 2.0, 500.0]))
    tensor([False, False, False,  True])
    """
    return norms > factor * norms.median(dim=dim, keepdim=True).values


def _fvu(y: Tensor, y_hat: Tensor) -> float:
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12))


def _rel_err(y: Tensor, y_hat: Tensor) -> float:
    """‖y − ŷ‖² / ‖y‖²: sinks' outputs are nearly one vector, so their own variance is no yardstick."""
    return float((y - y_hat).pow(2).sum() / y.pow(2).sum().clamp_min(1e-12))


@torch.no_grad()
def fit_sink_latent(
    tc: Transcoder, x_sink: Tensor, y_sink: Tensor, x_norm: Tensor, y_norm: Tensor, normals: int = 8192
) -> dict:
    """Turn `tc`'s least used latent into a sink latent (in place) when the sinks are separable; return a report.

    x_sink, y_sink: [s, d] MLP inputs and outputs at sink tokens; x_norm, y_norm: [n, d] at ordinary tokens
    (all x_norm set the cut; the first `normals` rows choose the latent and give the FVU; y_norm may hold just those). The report has `fitted` (bool), `latent`,
    the sinks' relative squared error ‖y − ŷ‖²/‖y‖² and the ordinary tokens' FVU, before and after.

    >>> rep = fit_sink_latent(ts[11], xs, ys, xn, yn)   # doctest: +SKIP
    """
    x_sink, y_sink, x_norm, y_norm = (t.to(tc.W_enc.dtype) for t in (x_sink, y_sink, x_norm, y_norm))
    xn, yn = x_norm[:normals], y_norm[:normals]
    acts_n = tc.encode(xn)  # [normals, f]
    rep: dict = {
        "sinks": len(x_sink),
        "fitted": False,
        "sink_rel_err_before": _rel_err(y_sink, tc(x_sink)),
        "normal_fvu_before": _fvu(yn, tc.decode(acts_n, xn)),
    }
    # The latent to use: one that never fires on ordinary text, preferring the one that fires most on the sinks —
    # a set fitted before and then trained on (whose sink latent AuxK may have moved) keeps its sink latent
    # instead of gaining a second one beside a stale first.
    fires = (acts_n > 0).sum(0)  # [f] how often each latent fires on ordinary text
    quiet = fires == fires.min()
    on_sinks = tc.encode(x_sink).sum(0)  # [f]
    j = int(torch.where(quiet, on_sinks, torch.full_like(on_sinks, -1.0)).argmax())
    saved = (tc.W_enc[j].clone(), tc.b_enc[j].clone(), tc.W_dec[j].clone())
    # silence it first, so the residual to fit is what the other latents miss, not including its old output
    tc.W_enc[j] = 0.0
    tc.b_enc[j] = -1.0
    resid = y_sink - tc(x_sink)  # [s, d] what the layer misses at the sinks
    out_dir = F.normalize(resid.mean(0), dim=0)  # [d]
    in_dir = F.normalize(F.normalize(x_sink, dim=-1).mean(0), dim=0)
    p_sink, p_norm = x_sink @ in_dir, x_norm @ in_dir  # projections [s], [n]
    lo, hi = float(p_norm.max()), float(p_sink.min())
    rep.update(
        sink_projection_min=hi,
        normal_projection_max=lo,
        output_cosine_min=float((F.normalize(resid, dim=-1) @ out_dir).min()),
    )

    def restore(reason: str) -> dict:
        tc.W_enc[j], tc.b_enc[j], tc.W_dec[j] = saved
        rep["reason"] = reason
        return rep

    if hi <= lo:
        return restore("sinks not separable from ordinary tokens along their mean input direction")
    cut = (lo + hi) / 2
    m = resid @ out_dir  # [s] wanted activation per sink
    # activation a·(p − cut): least squares on the sinks, but never a slope that would not reach them
    dp = p_sink - cut
    a = float((dp * m).sum() / dp.pow(2).sum())
    if a <= 0:
        a = float(m.mean() / dp.mean())
    # The output's size lives in the activation, not the decoder row: a TopK layer only keeps the latent when its
    # pre-activation beats the others' at the sinks. Its bias can then exceed fp16's range (SmolLM2: ~1e5), which
    # save_transcoders keeps in float32.
    tc.W_enc[j] = a * in_dir
    tc.b_enc[j] = -a * cut  # silent on every ordinary token measured: their projections are all below the cut
    tc.W_dec[j] = out_dir
    after = _rel_err(y_sink, tc(x_sink))
    if after >= rep["sink_rel_err_before"]:
        return restore(f"the fitted latent would not lower the sinks' error ({after:.3g} ≥ before)")
    rep.update(
        fitted=True,
        latent=j,
        latent_fired_before=int(fires[j]),
        latent_on_sinks_before=float(on_sinks[j]),
        slope=a,
        cut=cut,
        sink_rel_err_after=after,
        normal_fvu_after=_fvu(yn, tc(xn)),
    )
    return rep


@torch.no_grad()
def fit_sinks(model: ModelAdapter, ts: TranscoderSet, cfg: SinkConfig = SinkConfig()) -> list[dict]:
    """Measure sinks on training text and fit a sink latent in every layer that has them (in place).

    Returns one report per layer with sinks (see `fit_sink_latent`), each with `layer` and the sinks' norm
    ratio to the batch median.

    >>> reports = fit_sinks(load_model("smollm2-135m"), ts)   # doctest: +SKIP
    """
    L = model.n_layers
    sites = [f"blocks.{l}.hook_mlp_{k}" for l in range(L) for k in ("in", "out")]
    stream = chunk_stream(model.tokenizer, cfg.corpus, "train", cfg.seq_len, cfg.seed, chunk_buffer=0)
    chunks = list(itertools.islice(stream, max(1, cfg.tokens // cfg.seq_len)))
    sink: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {l: [] for l in range(L)}
    # every ordinary input sets the cut; outputs are needed only for the first cfg.normals of them
    norm_x: dict[int, list[Tensor]] = {l: [] for l in range(L)}
    norm_y: dict[int, list[Tensor]] = {l: [] for l in range(L)}
    n_y = [0] * L
    for b in range(0, len(chunks), cfg.batch_size):
        ids = torch.stack(chunks[b : b + cfg.batch_size]).to(model.device)
        cache = model.run_with_cache(ids, sites, logits=False)
        for l in range(L):
            x = cache[f"blocks.{l}.hook_mlp_in"].reshape(-1, model.d_model).float().cpu()
            y = cache[f"blocks.{l}.hook_mlp_out"].reshape(-1, model.d_model).float().cpu()
            n = y.norm(dim=-1)
            med = n.median()
            s = massive(n, cfg.factor)
            sink[l].append((x[s], y[s], n[s] / med))
            norm_x[l].append(x[~s])
            if n_y[l] < cfg.normals:
                norm_y[l].append(y[~s][: cfg.normals - n_y[l]])
                n_y[l] += len(norm_y[l][-1])
    reports = []
    for l in range(L):
        xs, ys, ratio = (torch.cat(t) for t in zip(*sink[l]))
        if len(xs) < cfg.min_sinks:
            continue
        xn, yn = torch.cat(norm_x[l]), torch.cat(norm_y[l])
        dev = model.device
        rep = fit_sink_latent(ts[l], xs.to(dev), ys.to(dev), xn.to(dev), yn.to(dev), cfg.normals)
        reports.append(
            {
                "layer": l,
                "norm_ratio_min": round(float(ratio.min()), 1),
                "norm_ratio_max": round(float(ratio.max()), 1),
                **rep,
            }
        )
    return reports
