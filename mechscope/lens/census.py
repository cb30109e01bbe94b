"""A census of dense latents: per layer, how many latents fire on more than half, more than a tenth, and none of
the tokens of a stated held-out text.

Dense latents (firing on most tokens) crowd the top of attribution graphs without saying anything specific;
dead ones waste width. Density = share of the measured tokens where the latent's activation is > 0, position 0 of
each sequence left out (the sink, as `eval-transcoders` leaves it out). The text is read as every held-out
reader reads it (`chunk_stream`, seed 0, no chunk shuffle), so two sets see the same tokens.

>>> c = dense_census(m, ts, "shipped:gemma3-270m", tokens=16384)               # doctest: +SKIP
>>> c["per_layer"][0]["over_0.1"], c["per_layer"][0]["dead"]                  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from mechscope.errors import MechscopeError
from mechscope.lens.probe_config import DENSE_THRESHOLDS


@torch.no_grad()
def latent_densities(
    model, ts, corpus: str, tokens: int, seq_len: int = 128, batch: int = 8, progress: bool = False
) -> tuple[torch.Tensor, int]:
    """(density [n_layers, d_transcoder], tokens measured): the share of exactly `tokens` tokens (fewer when the
    text runs out) of `corpus`'s held-out split where each latent fires."""
    from mechscope.corpus.sources import chunk_stream
    from mechscope.progress import counter

    L = model.n_layers
    sites = [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    fired = torch.zeros(L, ts.d_transcoder, dtype=torch.float64)
    n = 0
    chunks = chunk_stream(model.tokenizer, corpus, "heldout", seq_len, seed=0, chunk_buffer=0)
    with counter("probe: dense census", tokens, "tokens", enabled=progress) as bar:
        done = False
        while not done:
            got = [c for _, c in zip(range(batch), chunks)]
            if not got:
                break
            ids = torch.stack(got).to(model.device)
            cache = model.run_with_cache(ids, sites, logits=False)
            need = min(tokens - n, ids.shape[0] * (ids.shape[1] - 1))
            for l, site in enumerate(sites):
                a = ts.layer_encode(l, cache[site][:, 1:]).flatten(0, 1)[:need]  # rows in text order
                fired[l] += (a > 0).sum(0).double().cpu()
            n += need
            bar.update(need)
            done = n >= tokens
    if n == 0:
        raise MechscopeError(f"corpus {corpus} has too little held-out text for one sequence of {seq_len} tokens")
    return fired / n, n


def census(density: torch.Tensor, top: int = 3) -> list[dict]:
    """Per layer: latents with density over each of DENSE_THRESHOLDS (`over_0.5`, `over_0.1`), `dead` (never fired),
    and the `top` densest as [feature, density]."""
    out = []
    for l, d in enumerate(density):
        row: dict = {"layer": l}
        for t in DENSE_THRESHOLDS:
            row[f"over_{t:g}"] = int((d > t).sum())
        row["dead"] = int((d == 0).sum())
        v, i = d.topk(min(top, d.numel()))
        row["densest"] = [[int(f), round(float(x), 4)] for x, f in zip(v, i)]
        out.append(row)
    return out


def dense_census(
    model, ts, corpus: str, tokens: int = 16384, seq_len: int = 128, batch: int = 8, progress: bool = False
) -> dict:
    """The census (see the module) with its totals over layers and the text it was measured on."""
    density, n = latent_densities(model, ts, corpus, tokens, seq_len, batch, progress)
    rows = census(density)
    totals = {k: sum(r[k] for r in rows) for k in rows[0] if k not in ("layer", "densest")}
    return {
        "corpus": corpus,
        "split": "heldout",
        "tokens": n,
        "seq_len": seq_len,
        "n_latents": int(density.numel()),
        "latents_per_layer": int(density.shape[1]),
        "totals": totals,
        "per_layer": rows,
    }
