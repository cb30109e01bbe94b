"""Held-out evaluation of a transcoder set: FVU, L0, dead features, and spliced next-token loss.

Position 0 (BOS, or a chunk's first token when the model has none) is an attention sink that training leaves
out; it is left out of every metric here too (FVU, L0, and the loss, which starts at the prediction made at
position 1). The spliced forwards replace the MLP output at every position, position 0 included, each
transcoder reading the MLP input of the spliced run itself (errors compound through the layers); the
`*_bos_kept` numbers keep the model's own MLP output at position 0, as attribution graphs do (they zero
features there), so they measure the replacement model that graphs explain.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.transcoders.configs import EvalConfig  # noqa: F401 (re-exported)
from mechscope.corpus.sources import chunk_stream
from mechscope.transcoders.source import Source, layer_output
from mechscope.transcoders.sinks import SINK_FACTOR, massive

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

log = logging.getLogger(__name__)


def _chunks(model: ModelAdapter, cfg: EvalConfig):
    return chunk_stream(model.tokenizer, cfg.corpus, "heldout", cfg.seq_len, cfg.seed, chunk_buffer=0)


def _ce_and_logp(model: ModelAdapter, ids: Tensor, hooks: dict) -> tuple[Tensor, Tensor]:
    with model.hooks(hooks):
        logits = model.forward(ids)[:, 1:-1].float()  # predict tokens 2..n (skip BOS position)
    logp = F.log_softmax(logits, -1)
    tgt = ids[:, 2:]
    ce = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return ce.flatten(), logp


def _kl(logp_ref: Tensor, logp: Tensor) -> Tensor:
    return (logp_ref.exp() * (logp_ref - logp)).sum(-1).flatten()


def _mean(parts: list[Tensor]) -> float:
    """Mean of concatenated per-token values; NaN when nothing was measured (e.g. --layer-tokens 0)."""
    return float(torch.cat(parts).mean()) if parts else float("nan")


def _replace(new: Callable[[Tensor], Tensor], keep_pos0: bool = False) -> Callable[[Tensor], Tensor]:
    """A hook putting new(y) in place of an MLP output y [b, n, d], or only at positions ≥ 1 with keep_pos0."""
    if not keep_pos0:
        return new
    return lambda y: torch.cat([y[:, :1], new(y)[:, 1:]], 1)


def _splice_all(ts: Source, sites_in: list[str], sites_out: list[str], keep_pos0: bool) -> dict:
    """Hooks replacing every MLP by its transcoder *on the spliced run's own MLP input*.

    Feeding each transcoder the clean run's input instead would hide how errors compound through later
    layers, and overstate the loss recovered when all layers are replaced at once.
    """
    seen: dict[int, Tensor] = {}

    def grab(l: int) -> Callable[[Tensor], None]:
        def fn(x: Tensor) -> None:
            seen[l] = x

        return fn

    acts: dict[int, Tensor] = {}  # read layer -> activations on this run's input (earlier layers run first)

    def put(l: int) -> Callable[[Tensor], Tensor]:
        def fn(y: Tensor) -> Tensor:
            x = seen.pop(l)
            if ts.kind == "plt":
                return ts[l](x).to(y.dtype)  # type: ignore[index]
            acts[l] = ts.layer_encode(l, x)
            return layer_output(ts, l, acts, x).to(y.dtype)

        return fn

    hooks: dict = {s: grab(l) for l, s in enumerate(sites_in)}
    hooks.update({s: _replace(put(l), keep_pos0) for l, s in enumerate(sites_out)})
    return hooks


DEAD_WINDOW_BATCH = 8  # chunks per forward in the dead-latent window: no loss runs there, so larger than batch_size


@torch.no_grad()
def _extend_dead_window(
    model: ModelAdapter, ts: Source, chunks: Iterator[Tensor], want: int, fired: Tensor, progress: bool
) -> int:
    """Mark in fired [L, F] the latents that fire on the next `want` tokens of `chunks` (the held-out chunks the
    losses did not read); returns the tokens read here.

    A latent silent in 8k tokens may fire once in 50k: the dead fraction needs a longer window than the losses,
    and here it costs only a forward and the encoders.
    """
    from mechscope.progress import counter

    if want <= 0:
        return 0
    sites_in = [f"blocks.{l}.hook_mlp_in" for l in range(model.n_layers)]
    n, batch = 0, []
    with counter("eval-transcoders: dead-latent window", want, "tokens", enabled=progress) as bar:
        for chunk in chunks:
            batch.append(chunk)
            if len(batch) < DEAD_WINDOW_BATCH:
                continue
            ids = torch.stack(batch).to(model.device)
            batch = []
            cache = model.run_with_cache(ids, sites_in, logits=False)
            for l, site in enumerate(sites_in):
                fired[l] |= (ts.layer_encode(l, cache[site][:, 1:]) > 0).flatten(0, 1).any(0).cpu()
            n += ids.shape[0] * (ids.shape[1] - 1)
            bar.update(ids.shape[0] * (ids.shape[1] - 1))
            if n >= want:
                break
    return n


@torch.no_grad()
def evaluate_transcoders(model: ModelAdapter, ts: Source, cfg: EvalConfig, progress: bool = True) -> dict:
    """Per-layer FVU/L0/dead and CE loss recovered (each layer alone and all layers at once).

    All layers at once is also measured with position 0 kept (`*_all_layers_bos_kept`): the model's own MLP
    output at position 0, transcoders elsewhere, against zero-ablating positions ≥ 1 only. Every spliced
    run feeds each transcoder its own (spliced) MLP input, so errors compound as they do in the replacement
    model; a single-layer splice sees the clean input, which is then exact.

    >>> res = evaluate_transcoders(model, ts, EvalConfig(tokens=4096))   # doctest: +SKIP
    >>> res["mean_fvu"], res["ce_loss_recovered_all_layers"]            # doctest: +SKIP
    """
    from mechscope.progress import counter

    L = model.n_layers
    sites_in = [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    sites_out = [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    err2 = torch.zeros(L, dtype=torch.float64)
    ysum = torch.zeros(L, model.d_model, dtype=torch.float64)
    y2 = torch.zeros(L, dtype=torch.float64)
    l0 = torch.zeros(L, dtype=torch.float64)
    # the same sums without attention sinks (MLP output norm > SINK_FACTOR × the batch median):
    # one such token can dominate a layer's variance (SmolLM2 layer 11) and hide how the rest is explained
    t_err2, t_ysum, t_y2, t_n = (
        torch.zeros(L, dtype=torch.float64),
        torch.zeros(L, model.d_model, dtype=torch.float64),
        torch.zeros(L, dtype=torch.float64),
        torch.zeros(L, dtype=torch.float64),
    )
    fired = torch.zeros(L, ts.d_transcoder, dtype=torch.bool)
    n = 0
    ce: dict[str, list[Tensor]] = {
        "clean": [],
        "spliced_all": [],
        "zero_all": [],
        "spliced_all_bos_kept": [],
        "zero_all_bos_kept": [],
    }
    kl_all: dict[str, list[Tensor]] = {"": [], "_bos_kept": []}
    ce_layer = {f"{kind}_{l}": [] for l in range(L) for kind in ("spliced", "zero")}
    kl_layer: dict[int, list[Tensor]] = {l: [] for l in range(L)}
    n_layer_tokens = 0

    def splice(l: int) -> Callable[[Tensor], Tensor]:
        return lambda y: y_hat[l].to(y.dtype)

    with counter("eval-transcoders: losses and FVU", cfg.tokens, "tokens", enabled=progress) as bar:
        batch: list[Tensor] = []
        chunks = _chunks(model, cfg)  # one pass: the dead-latent window continues where the losses stop
        for chunk in chunks:
            batch.append(chunk)
            if len(batch) < cfg.batch_size:
                continue
            ids = torch.stack(batch).to(model.device)
            batch = []
            cache = model.run_with_cache(ids, sites_in + sites_out, logits=False)
            y_hat: list[
                Tensor
            ] = []  # per layer [b, n, d], on the clean MLP inputs: for the FVU and the single-layer splices
            layer_acts = [ts.layer_encode(l, cache[sites_in[l]]) for l in range(L)]  # L x [b, n, F]
            for l in range(L):
                x = cache[sites_in[l]]  # [b, n, d]
                # a cross-layer transcoder's prediction of layer l sums the features read at l and below
                y_hat.append(layer_output(ts, l, layer_acts, x))
                acts = layer_acts[l][:, 1:].reshape(-1, ts.d_transcoder)
                y = cache[sites_out[l]][:, 1:].reshape(-1, model.d_model).double()
                err = y - y_hat[l][:, 1:].reshape(-1, model.d_model).double()  # [N, d]
                err2[l] += err.pow(2).sum()
                ysum[l] += y.sum(0)
                y2[l] += y.pow(2).sum()
                norms = y.norm(dim=-1)
                keep = ~massive(norms, SINK_FACTOR)
                t_err2[l] += err[keep].pow(2).sum()
                t_ysum[l] += y[keep].sum(0)
                t_y2[l] += y[keep].pow(2).sum()
                t_n[l] += int(keep.sum())
                l0[l] += (acts > 0).sum()
                fired[l] |= (acts > 0).any(0).cpu()
            n_tok = ids.shape[0] * (ids.shape[1] - 1)
            n += n_tok
            ce_clean, logp_clean = _ce_and_logp(model, ids, {})
            ce["clean"].append(ce_clean)
            for sfx, keep_pos0 in (("", False), ("_bos_kept", True)):
                c, logp = _ce_and_logp(model, ids, _splice_all(ts, sites_in, sites_out, keep_pos0))
                ce[f"spliced_all{sfx}"].append(c)
                kl_all[sfx].append(_kl(logp_clean, logp))
                ce[f"zero_all{sfx}"].append(
                    _ce_and_logp(model, ids, {s: _replace(torch.zeros_like, keep_pos0) for s in sites_out})[0]
                )
            if n_layer_tokens < cfg.ce_layer_tokens:
                for l in range(L):
                    c, logp = _ce_and_logp(model, ids, {sites_out[l]: splice(l)})
                    ce_layer[f"spliced_{l}"].append(c)
                    kl_layer[l].append(_kl(logp_clean, logp))
                    ce_layer[f"zero_{l}"].append(_ce_and_logp(model, ids, {sites_out[l]: torch.zeros_like})[0])
                ce_layer.setdefault("clean", []).append(ce_clean)
                n_layer_tokens += n_tok
            bar.update(n_tok)
            if n >= cfg.tokens:
                break
    if n == 0:
        from mechscope.errors import MechscopeError

        raise MechscopeError(f"held-out split of corpus {cfg.corpus} has too little text for one batch")
    dead_in_loss_window = (~fired).float().mean(-1).tolist()
    n_dead_window = n + _extend_dead_window(model, ts, chunks, cfg.dead_tokens - n, fired, progress)
    var = y2 - ysum.pow(2).sum(-1) / n
    fvu = (err2 / var).tolist()
    fvu_t = (t_err2 / (t_y2 - t_ysum.pow(2).sum(-1) / t_n.clamp_min(1))).tolist()
    mean = {k: _mean(v) for k, v in ce.items()}

    def recovered(zero: float, spliced: float, clean: float) -> float:
        return (zero - spliced) / (zero - clean) if zero != clean else float("nan")

    clean_l = _mean(ce_layer.get("clean", []))
    per_layer_rec = [
        recovered(_mean(ce_layer[f"zero_{l}"]), _mean(ce_layer[f"spliced_{l}"]), clean_l) for l in range(L)
    ]
    dead = (~fired).float().mean(-1).tolist()
    return {
        "model": model.name,
        "tokens": n,
        "corpus": cfg.corpus,
        "split": "heldout",
        "mean_fvu": sum(fvu) / L,
        "max_fvu": max(fvu),
        "fvu_per_layer": fvu,
        "mean_fvu_trimmed": sum(fvu_t) / L,
        "max_fvu_trimmed": max(fvu_t),
        "fvu_per_layer_trimmed": fvu_t,
        "trimmed_token_fraction": 1 - float(t_n.mean()) / n,
        "mean_l0": float((l0 / n).mean()),
        "l0_per_layer": (l0 / n).tolist(),
        "dead_fraction": sum(dead) / L,
        "dead_fraction_per_layer": dead,
        "dead_window_tokens": n_dead_window,
        "dead_fraction_in_loss_tokens": sum(dead_in_loss_window) / L,
        "ce_clean": mean["clean"],
        "ce_spliced_all_layers": mean["spliced_all"],
        "ce_zero_ablate_all_layers": mean["zero_all"],
        "ce_loss_recovered_all_layers": recovered(mean["zero_all"], mean["spliced_all"], mean["clean"]),
        "kl_all_layers": _mean(kl_all[""]),
        "ce_spliced_all_layers_bos_kept": mean["spliced_all_bos_kept"],
        "ce_zero_ablate_all_layers_bos_kept": mean["zero_all_bos_kept"],
        "ce_loss_recovered_all_layers_bos_kept": recovered(
            mean["zero_all_bos_kept"], mean["spliced_all_bos_kept"], mean["clean"]
        ),
        "kl_all_layers_bos_kept": _mean(kl_all["_bos_kept"]),
        "ce_loss_recovered_per_layer": per_layer_rec,
        "kl_per_layer": [_mean(kl_layer[l]) for l in range(L)],
        "ce_layer_tokens": n_layer_tokens,
    }
