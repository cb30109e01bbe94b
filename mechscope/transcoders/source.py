"""The replacement model's source abstraction: a set of features, each with one read layer and a set of
write layers.

A *source* is either a per-layer `TranscoderSet` (features read at l write to l only) or a
`CrossLayerTranscoder` (features read at l write to l and later layers). Everything downstream — the local
replacement model, attribution, interventions, validation, the feature index — uses only this interface:

    kind                      "plt" | "clt"
    n_layers, d_model, d_transcoder, cfg (activation, k, skip), meta
    layer_pre_acts(l, x)      pre-activations of the features read at l     x [..., d] -> [..., F]
    layer_encode(l, x)        their activations
    enc_weights(l)            (W_enc [F, d], b_enc [F])
    write_layers(l)           range of layers those features write to
    dec_weights(l, w)         decoder rows [F, d] from read layer l into layer w's MLP output
    out_bias(w)               b_dec [d] of layer w's MLP output
    layer_skip(w, x)          W_skip x at layer w (zeros without a skip term); skip_weight(w) -> [d, d] | None

`enc_rows` / `dec_rows` below read only the rows of the features asked for: a memory-mapped set (mapped.py)
dequantizes just those, an in-memory one indexes its float32 matrices.

>>> from mechscope.transcoders.clt import CLTConfig, CrossLayerTranscoder
>>> src = CrossLayerTranscoder(CLTConfig(n_layers=3, d_model=4, d_transcoder=5, k=2))
>>> readers(src, 2)
[0, 1, 2]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

from mechscope.errors import MechscopeError

if TYPE_CHECKING:
    from mechscope.transcoders.clt import CrossLayerTranscoder
    from mechscope.transcoders.module import TranscoderSet

Source = Union["TranscoderSet", "CrossLayerTranscoder"]
KINDS = ("plt", "clt")
KIND_NAMES = {"plt": "per-layer transcoder set", "clt": "cross-layer transcoder"}


def readers(src: Source, w: int) -> list[int]:
    """Read layers whose features write into layer w's MLP output (ascending)."""
    return [l for l in range(w + 1) if w in src.write_layers(l)]


def enc_rows(src: Source, l: int, idx: Tensor) -> tuple[Tensor, Tensor]:
    """(W_enc rows [k, d], b_enc [k]) of the features `idx` read at l, float32, on the source's device."""
    if hasattr(src, "enc_rows"):
        return src.enc_rows(l, idx)
    W, b = src.enc_weights(l)
    return W.detach().float()[idx], b.detach().float()[idx]


def dec_rows(src: Source, l: int, w: int, idx: Tensor) -> Tensor:
    """Decoder rows [k, d] of the features `idx` read at l into layer w's MLP output, float32."""
    if hasattr(src, "dec_rows"):
        return src.dec_rows(l, w, idx)
    return src.dec_weights(l, w).detach().float()[idx]


def reconstruct(src: Source, acts: Tensor) -> Tensor:
    """Σ over every feature writing to each layer of a·W_dec, plus b_dec (no skip).  acts [L, n, F] -> [L, n, d]

    A memory-mapped source decodes only the features active somewhere in `acts` (their rows, on demand)."""
    L = src.n_layers
    sparse = hasattr(src, "dec_rows")
    out = []
    for w in range(L):
        y = src.out_bias(w).float().expand(acts.shape[1], -1).clone()
        for l in readers(src, w):
            if sparse:
                live = acts[l].ne(0).any(0).nonzero().squeeze(-1)
                if live.numel():
                    y = y + acts[l][:, live].float() @ src.dec_rows(l, w, live)
                continue
            y = y + acts[l].float() @ src.dec_weights(l, w).float()
        out.append(y)
    return torch.stack(out)


def feature_output(src: Source, l: int, f: int, a: float | Tensor) -> dict[int, Tensor]:
    """What feature f read at l adds to each layer it writes to: {w: a·W_dec[l→w][f]}."""
    return {w: a * src.dec_weights(l, w)[f].float() for w in src.write_layers(l)}


def logit_decoder(src: Source, l: int) -> Tensor:
    """Σ over write layers of the decoders of the features read at l [F, d]: everything a feature adds to the
    residual stream, the vector its direct logit effects read."""
    total = None
    for w in src.write_layers(l):
        d = src.dec_weights(l, w).float()
        total = d.clone() if total is None else total + d
    return total


def source_kind(meta: dict) -> str:
    """The kind a graph's metadata records: "clt" for cross-layer graphs; per-layer graphs record none."""
    return str(meta.get("transcoder_kind", "plt"))


def check_same_kind(src: Source, graph_meta: dict) -> None:
    """Refuse to mix a cross-layer transcoder with a per-layer set in one graph (one-line error)."""
    g = source_kind(graph_meta)
    if g != src.kind:
        raise MechscopeError(
            f"this graph was traced with a {KIND_NAMES.get(g, g)} but the loaded transcoders are a "
            f"{KIND_NAMES[src.kind]}; a graph cannot mix the two (load the set it was traced with)"
        )


def check_fits_model(src: Source, n_layers: int, d_model: int, name: str = "the model") -> None:
    """One-line error when the source's layer count or width does not match the model."""
    if src.n_layers != n_layers or src.d_model != d_model:
        raise MechscopeError(
            f"{KIND_NAMES[src.kind]} does not fit {name}: it has {src.n_layers} layers and d_model {src.d_model}, "
            f"the model {n_layers} and {d_model}"
        )


def layer_output(src: Source, w: int, acts: dict[int, Tensor] | list[Tensor], x_w: Tensor) -> Tensor:
    """The source's prediction of layer w's MLP output from the activations of every read layer that writes to
    w (`acts[r]` [..., F]) and layer w's own input x_w (for the skip term). For a per-layer set this is exactly
    `ts[w].decode(acts[w], x_w)`, which it calls."""
    if src.kind == "plt":
        return src[w].decode(acts[w], x_w)  # type: ignore[index]
    y = None
    for r in readers(src, w):
        part = acts[r] @ src.dec_weights(r, w).to(acts[r].dtype)
        y = part if y is None else y + part
    y = y + src.out_bias(w)
    if src.skip_weight(w) is not None:
        y = y + src.layer_skip(w, x_w)
    return y
