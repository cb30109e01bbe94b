"""Locate a concept: which part of the MLPs (features, skip, error) carries the difference between two prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.guards import check_forward
from mechscope.interventions.swap import aligned_positions
from mechscope.transcoders.source import Source, readers

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


LOCATE_COMPONENTS = ("mlp_out", "features", "skip", "error", "embedding")  # what locate_concept patches, in order


@torch.no_grad()
def locate_concept(
    model: ModelAdapter,
    ts: Source,
    prompt: str,
    donor: str,
    watch: list[str],
    span: str = "rest",
    layers: list[int] | None = None,
) -> dict:
    """Where does the difference between two prompts live? Patch one component of every MLP output (at the
    aligned positions, the given layers) from the donor run into the recipient run and report the watched
    tokens' probabilities. Components: the whole MLP output, the transcoder features' part, the linear skip
    part, the error (MLP − transcoder) — plus the token embedding alone.

    A concept swap through features can only work if the 'features' row moves the answer; when 'skip' or
    'error' does instead, the transcoders have not learned the concept as features.

    >>> locate_concept(m, ts, "Dallas is in the state of", "Berkeley is in the state of", [" Texas", " California"])  # doctest: +SKIP
    """
    ids_w = [model.token_id(w) for w in watch]
    res = locate_distributions(model, ts, prompt, donor, span, layers)
    probs = res.pop("dists")
    return {**res, "watch": watch, "probs": {c: [float(p[i]) for i in ids_w] for c, p in probs.items()}}


@torch.no_grad()
def locate_distributions(
    model: ModelAdapter,
    ts: Source,
    prompt: str,
    donor: str,
    span: str = "rest",
    layers: list[int] | None = None,
) -> dict:
    """`locate_concept` with the whole next-token distribution of each patched run (`dists`: component →
    probabilities [vocab], 'none' first), for measures other than two watched tokens (entropy, one token).

    >>> locate_distributions(m, ts, "Michael Batkin played", "Michael Jordan played")["dists"]["features"]  # doctest: +SKIP
    """
    rt, dt = model.tokenize(prompt), model.tokenize(donor)
    check_forward(model, ts, max(len(rt.strs), len(dt.strs)), what="locating the concept")
    bos = model.tokenizer.bos_token_id
    pos, dpos = aligned_positions(rt.strs, dt.strs, span, bos=bos is not None and int(rt.ids[0]) == bos)
    if not pos:
        raise MechscopeError("the prompts do not differ")
    layers = list(range(model.n_layers)) if layers is None else layers
    L = model.n_layers
    # every layer's MLP input: a cross-layer transcoder's features part at l sums features read at l and below
    sites = [f"blocks.{l}.hook_mlp_in" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in layers]
    donor_cache = model.run_with_cache(dt.ids[None].to(model.device), sites + ["hook_embed"], logits=False)

    def parts(l: int, xs: dict[int, Tensor], y: Tensor) -> dict[str, Tensor]:
        """xs: read layer -> MLP input at the patched positions; y: layer l's MLP output there."""
        feat = sum(ts.layer_encode(r, xs[r].float()) @ ts.dec_weights(r, l).float() for r in readers(ts, l))
        skip = ts.layer_skip(l, xs[l].float()).float()
        return {
            "mlp_out": y.float(),
            "features": feat,
            "skip": skip,
            "error": y.float() - feat - skip - ts.out_bias(l).float(),
        }

    # the donor's side is fixed: split it once, not once per patched run
    donor_x = {r: donor_cache[f"blocks.{r}.hook_mlp_in"][:, dpos] for r in range(L)}
    donor_parts = {l: parts(l, donor_x, donor_cache[f"blocks.{l}.hook_mlp_out"][:, dpos]) for l in layers}

    def run(component: str) -> Tensor:
        cur_in: dict[int, Tensor] = {}
        hooks = {}
        if component == "embedding":

            def emb(e: Tensor) -> Tensor:
                e = e.clone()
                e[:, pos] = donor_cache["hook_embed"][:, dpos].to(e.dtype)
                return e

            hooks["hook_embed"] = emb
        elif component != "none":
            for l in range(L):

                def rec(x: Tensor, l=l) -> None:
                    cur_in[l] = x

                hooks[f"blocks.{l}.hook_mlp_in"] = rec
            for l in layers:

                def out(y: Tensor, l=l) -> Tensor:
                    mine = parts(l, {r: x[:, pos] for r, x in cur_in.items()}, y[:, pos])[component]
                    y = y.clone()
                    y[:, pos] += (donor_parts[l][component] - mine).to(y.dtype)
                    return y

                hooks[f"blocks.{l}.hook_mlp_out"] = out
        with model.hooks(hooks):
            lg = model.forward(rt.ids[None].to(model.device))[0, -1].float()
        return torch.softmax(lg, -1)

    dists = {comp: run(comp) for comp in ("none",) + LOCATE_COMPONENTS}
    return {
        "prompt": prompt,
        "donor": donor,
        "positions": pos,
        "donor_positions": dpos,
        "layers": layers,
        "dists": dists,
    }


# ---- graph validation ----------------------------------------------------------------------------
