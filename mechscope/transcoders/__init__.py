"""Transcoders: the dictionary (per-layer and cross-layer), its file formats (ours, circuit-tracer's, the hub), its
evaluation and fitted attention-sink latents. Training lives in `mechscope.training`, text in `mechscope.corpus`.

Names load on first use (PEP 562), so the torch-free parts (`configs`, `registry`)
import without torch: the CLI builds its options from them before any heavy import.
"""

from __future__ import annotations

from mechscope.lazy import lazy_exports
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mechscope.transcoders.clt import CrossLayerTranscoder
    from mechscope.transcoders.module import TranscoderSet

_WHERE = {
    "CLTConfig": "clt",
    "CrossLayerTranscoder": "clt",
    "Transcoder": "module",
    "TranscoderConfig": "module",
    "TranscoderSet": "module",
    "find_transcoders": "registry",
    "load_transcoders": "storage",
    "save_transcoders": "storage",
    "export_circuit_tracer": "storage",
    "import_circuit_tracer": "storage",
}


__getattr__ = lazy_exports(__name__, _WHERE)


def load_default_transcoders(model, path=None) -> TranscoderSet | CrossLayerTranscoder:
    """The transcoder set (per-layer or cross-layer) a model uses by default (or `path`), checked against the
    model's shape.

    >>> ts = load_default_transcoders(load_model("gemma3-270m"))   # doctest: +SKIP
    """
    from mechscope.transcoders.registry import find_transcoders
    from mechscope.transcoders.storage import load_transcoders

    p = find_transcoders(model.name, path)
    ts = load_transcoders(p, n_layers=model.n_layers, d_model=model.d_model).to(model.device)
    ts.meta["path"] = str(p)
    return ts


__all__ = [*_WHERE, "load_default_transcoders"]
