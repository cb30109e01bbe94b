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
    layers = list(range(model.n_layers)) if layers is None else layers
    runs = [(c, () if c in ("none", "embedding") else tuple(layers)) for c in ("none",) + LOCATE_COMPONENTS]
    res = locate_logits(model, ts, prompt, donor, runs, span, batch=1)
    logits = res.pop("logits")
    return {**res, "layers": layers, "dists": {c: torch.softmax(lg, -1) for (c, _), lg in zip(runs, logits)}}


@torch.no_grad()
def locate_logits(
    model: ModelAdapter,
    ts: Source,
    prompt: str,
    donor: str,
    runs: list[tuple[str, tuple[int, ...]]],
    span: str = "rest",
    batch: int = 16,
) -> dict:
    """The recipient's last-position logits under each patched run, `batch` runs per forward.

    A run is (component, layers): the component (one of LOCATE_COMPONENTS, or 'none') of the MLP outputs at
    those layers, at the aligned positions, is set to the donor run's; 'embedding' patches the token embedding
    (its layers are ignored). Each run patches only its own row of the batch, so runs do not interact.
    Returns `logits` [len(runs), vocab] (float) beside the prompts and positions.

    >>> locate_logits(m, ts, "Dallas is in", "Oakland is in", [("features", (3,)), ("skip", (3,))])["logits"].shape  # doctest: +SKIP
    torch.Size([2, 262144])
    """
    bad = [c for c, _ in runs if c != "none" and c not in LOCATE_COMPONENTS]
    if bad:
        raise MechscopeError(f"unknown locate component {bad[0]!r}; known: none, {', '.join(LOCATE_COMPONENTS)}")
    if batch < 1:
        raise MechscopeError("locate batch must be ≥ 1")
    rt, dt = model.tokenize(prompt), model.tokenize(donor)
    check_forward(model, ts, max(len(rt.strs), len(dt.strs)), what="locating the concept")
    bos = model.tokenizer.bos_token_id
    pos, dpos = aligned_positions(rt.strs, dt.strs, span, bos=bos is not None and int(rt.ids[0]) == bos)
    if not pos:
        raise MechscopeError("the prompts do not differ")
    L = model.n_layers
    out_at = sorted({l for c, ls in runs if c not in ("none", "embedding") for l in ls})
    bad_l = [l for l in out_at if not 0 <= l < L]
    if bad_l:
        raise MechscopeError(f"locate layer {bad_l[0]} out of range (0..{L - 1})")
    # every layer's MLP input: a cross-layer transcoder's features part at l sums features read at l and below
    sites = [f"blocks.{l}.hook_mlp_in" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in out_at]
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
    donor_parts = {l: parts(l, donor_x, donor_cache[f"blocks.{l}.hook_mlp_out"][:, dpos]) for l in out_at}
    donor_emb = donor_cache["hook_embed"][:, dpos]

    def forward(chunk: list[tuple[str, tuple[int, ...]]]) -> Tensor:
        emb_rows = [i for i, (c, _) in enumerate(chunk) if c == "embedding"]
        # layer -> [(row, component)] patched there
        at: dict[int, list[tuple[int, str]]] = {}
        for i, (c, ls) in enumerate(chunk):
            if c not in ("none", "embedding"):
                for l in ls:
                    at.setdefault(l, []).append((i, c))
        cur_in: dict[int, Tensor] = {}
        hooks = {}
        if emb_rows:

            def emb(e: Tensor) -> Tensor:
                e = e.clone()
                for i in emb_rows:
                    e[i, pos] = donor_emb[0].to(e.dtype)
                return e

            hooks["hook_embed"] = emb
        if at:
            for l in range(L):

                def rec(x: Tensor, l=l) -> None:
                    cur_in[l] = x

                hooks[f"blocks.{l}.hook_mlp_in"] = rec
            for l, rows in at.items():

                def out(y: Tensor, l=l, rows=rows) -> Tensor:
                    idx = sorted({i for i, _ in rows})
                    mine = parts(l, {r: x[idx][:, pos] for r, x in cur_in.items()}, y[idx][:, pos])
                    y = y.clone()
                    for i, c in rows:
                        y[i, pos] += (donor_parts[l][c][0] - mine[c][idx.index(i)]).to(y.dtype)
                    return y

                hooks[f"blocks.{l}.hook_mlp_out"] = out
        ids = rt.ids[None].to(model.device).repeat(len(chunk), 1)
        with model.hooks(hooks):
            h = model.forward(ids, logits=False)[:, -1]
        return model.logits_from_resid(h).float()

    logits = torch.cat([forward(runs[i : i + batch]) for i in range(0, len(runs), batch)])
    return {"prompt": prompt, "donor": donor, "positions": pos, "donor_positions": dpos, "logits": logits}


# ---- graph validation ----------------------------------------------------------------------------
