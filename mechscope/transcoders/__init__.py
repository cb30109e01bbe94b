"""Transcoders: module, storage (incl. circuit-tracer layout), training, evaluation, corpus sources."""

from __future__ import annotations

from mechscope.transcoders.clt import CLTConfig, CrossLayerTranscoder
from mechscope.transcoders.module import Transcoder, TranscoderConfig, TranscoderSet
from mechscope.transcoders.registry import find_transcoders
from mechscope.transcoders.storage import (
    export_circuit_tracer,
    import_circuit_tracer,
    load_transcoders,
    save_transcoders,
)


def load_default_transcoders(model, path=None) -> TranscoderSet | CrossLayerTranscoder:
    """The transcoder set (per-layer or cross-layer) a model uses by default (or `path`), checked against the
    model's shape.

    >>> ts = load_default_transcoders(load_model("gemma3-270m"))   # doctest: +SKIP
    """
    p = find_transcoders(model.name, path)
    ts = load_transcoders(p, n_layers=model.n_layers, d_model=model.d_model).to(model.device)
    ts.meta["path"] = str(p)
    return ts


__all__ = [
    "CLTConfig",
    "CrossLayerTranscoder",
    "Transcoder",
    "TranscoderConfig",
    "TranscoderSet",
    "find_transcoders",
    "load_transcoders",
    "save_transcoders",
    "export_circuit_tracer",
    "import_circuit_tracer",
    "load_default_transcoders",
]
