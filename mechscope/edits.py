"""Run a model with some transcoder features edited — the mechanics under steering, ablation, swaps and graph
validation. A module of its own, below attribution and interventions, so both use the same mechanics.

An edit changes the activations of features read at one layer; every MLP output those features write to (that
layer alone for per-layer transcoders; it and later ones for cross-layer transcoders) receives
`decode(edited) − decode(original)`, so the transcoder's error term is kept (an edit is never undone by the
error) and later layers re-encode their features from the modified residual stream: effects propagate.

>>> logits = run_with_edits(model, ts, ids, [Edit(FeatureRef(3, 17, 5), "ablate")])      # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.transcoders.source import Source, readers

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter


@dataclass(frozen=True)
class FeatureRef:
    layer: int
    feature: int
    pos: int | None = None  # None: every position

    def __str__(self) -> str:
        return f"{self.layer}/{self.feature}" + (f"@{self.pos}" if self.pos is not None else "")


@dataclass
class Edit:
    """mode: 'set' (activation := value), 'scale' (activation *= value), 'ablate' (activation := 0)."""

    ref: FeatureRef
    mode: str
    value: float = 0.0


def check_edits(model: ModelAdapter, ts: Source, edits: list[Edit], n_pos: int) -> list[Edit]:
    """Validate ranges before anything runs; negative positions become absolute."""
    out = []
    for e in edits:
        r = e.ref
        if not 0 <= r.layer < len(ts):
            raise MechscopeError(f"feature {r}: layer {r.layer} out of range (0..{len(ts) - 1})")
        if not 0 <= r.feature < ts.d_transcoder:
            raise MechscopeError(f"feature {r}: index {r.feature} out of range (0..{ts.d_transcoder - 1})")
        pos = r.pos
        if pos is not None:
            if not -n_pos <= pos < n_pos:
                raise MechscopeError(f"feature {r}: position {pos} out of range for a {n_pos}-token prompt")
            pos %= n_pos
        if not math.isfinite(e.value):
            raise MechscopeError(f"feature {r}: value must be finite")
        out.append(Edit(FeatureRef(r.layer, r.feature, pos), e.mode, e.value))
    return out


def edit_hooks(
    model: ModelAdapter,
    ts: Source,
    edits: list[Edit],
    skip_patches: dict[int, dict[int, Tensor]] | None = None,
    offset: int = 0,
    rows: list[int] | None = None,
) -> dict:
    """Hooks applying `edits`, and optionally replacing the skip term's output at (layer, position) by
    W_skip · x_donor (skip_patches: layer -> position -> donor MLP input [d]).

    offset: the absolute position of the forward's first input position — a decoding step that reads the
    earlier positions from a KV cache runs only the new one, so `L/F@P` and skip patches address P − offset
    (and do nothing when it is not in this forward). rows: the batch rows edited (None: all); the others run
    unchanged, so an unedited and an edited sequence can share one batch.

    >>> with model.hooks(edit_hooks(model, ts, [Edit(FeatureRef(3, 17), "ablate")], offset=9, rows=[1])):  # doctest: +SKIP
    ...     logits, cache = model.forward_cached(next_ids, cache)
    """
    by_layer: dict[int, list[Edit]] = {}
    for e in edits:
        by_layer.setdefault(e.ref.layer, []).append(e)
    skip_patches = skip_patches or {}
    # layers whose output changes: the write layers of every edited read layer, and the skip-patched ones
    touched = set(skip_patches)
    for l in by_layer:
        touched.update(ts.write_layers(l))
    hooked = sorted(touched | set(by_layer))
    cur_in: dict[int, Tensor] = {}
    diffs: dict[int, Tensor] = {}  # read layer -> edited − original activations (set when its output hook runs)
    hooks = {}
    for l in hooked:

        def rec(x: Tensor, l=l) -> None:
            cur_in[l] = x

        def out(y: Tensor, l=l) -> Tensor:
            x = cur_in[l] if rows is None else cur_in[l][rows]  # only the edited rows are encoded
            if l in by_layer:
                acts = ts.layer_encode(l, x)  # [b, n, F]
                edited = acts.clone()
                for e in by_layer[l]:
                    p = None if e.ref.pos is None else e.ref.pos - offset
                    if p is not None and not 0 <= p < acts.shape[1]:
                        continue  # its position is not in this forward (a later one, or one in the cache)
                    sl = (slice(None), slice(None) if p is None else slice(p, p + 1), e.ref.feature)
                    if e.mode == "set":
                        edited[sl] = e.value
                    elif e.mode == "scale":
                        edited[sl] = edited[sl] * e.value
                    else:
                        edited[sl] = 0.0
                diffs[l] = edited - acts
            delta = None
            for r in readers(ts, l):  # edited features read at l or below that write here
                if r in diffs:
                    dr = diffs[r] @ ts.dec_weights(r, l).to(diffs[r].dtype)
                    delta = dr if delta is None else delta + dr
            W_skip = ts.skip_weight(l)
            for pos, xd in skip_patches.get(l, {}).items():
                p = pos - offset
                if 0 <= p < x.shape[1] and W_skip is not None:
                    if delta is None:
                        delta = torch.zeros(*x.shape[:-1], y.shape[-1], dtype=x.dtype, device=x.device)
                    delta[:, p] += (xd.to(delta.dtype) - x[:, p].to(delta.dtype)) @ W_skip.T.to(delta.dtype)
            if delta is None:
                return y
            if rows is None:
                return y + delta.to(y.dtype)
            y = y.clone()  # the hooked module's own output may be used elsewhere: never written in place
            y[rows] += delta.to(y.dtype)
            return y

        hooks[f"blocks.{l}.hook_mlp_in"] = rec
        hooks[f"blocks.{l}.hook_mlp_out"] = out
    return hooks


@torch.no_grad()
def run_with_edits(
    model: ModelAdapter,
    ts: Source,
    ids: Tensor,
    edits: list[Edit],
    patterns: dict[int, Tensor] | None = None,
    skip_patches: dict[int, dict[int, Tensor]] | None = None,
) -> Tensor:
    """Logits [n, vocab] of the prompt `ids` [n] with `edits` applied (and attention frozen to `patterns`)."""
    with model.hooks(edit_hooks(model, ts, edits, skip_patches)), model.attention_patterns(override=patterns):
        return model.forward(ids[None].to(model.device))[0].float()


@torch.no_grad()
def mlp_inputs(model: ModelAdapter, ids: Tensor) -> list[Tensor]:
    """Every layer's MLP input for a prompt: [n_layers] of [n, d]."""
    cache = model.run_with_cache(
        ids[None].to(model.device), [f"blocks.{l}.hook_mlp_in" for l in range(model.n_layers)], logits=False
    )
    return [cache[f"blocks.{l}.hook_mlp_in"][0] for l in range(model.n_layers)]


@torch.no_grad()
def active_features(model: ModelAdapter, ts: Source, ids: Tensor, pos: int) -> list[tuple[int, int, float]]:
    """(layer, feature, activation) of every feature active at `pos`, largest activation first."""
    return features_at(ts, mlp_inputs(model, ids), pos)


@torch.no_grad()
def features_at(ts: Source, xs: list[Tensor], pos: int) -> list[tuple[int, int, float]]:
    """active_features from already computed MLP inputs (xs: n_layers x [n, d])."""
    out = []
    for l, x in enumerate(xs):
        a = ts.layer_encode(l, x[pos].float())
        for f in a.nonzero().squeeze(-1).tolist():
            out.append((l, f, float(a[f])))
    return sorted(out, key=lambda t: -t[2])
