"""The feature index: examples, densities, histograms, logit effects and labels of every transcoder feature.

Built from held-out corpus text in two passes. First the model runs once per batch and every layer's features
are encoded and kept sparsely (top-k per token, fp16), spilled to disk in parts so an interrupted build resumes
(`collect`). Then, one layer at a time, statistics and examples are derived with vectorised reductions (`layer_stats`), logit effects relative to the mean unembedding (`logits`),
and each layer is labelled and written (`writer`). Chunks with an even index provide the evidence for labels,
odd ones score them (`scoring`, stored as `label_score`), so the reported label quality is measured on text the
label never saw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mechscope.features.collect import collect, fingerprint, work_dir
from mechscope.features.labels import DENSE_DENSITY, HeuristicLabeller, Labeller, guess_language, norm_token
from mechscope.features.layer_stats import HIST_EDGES, layer_stats
from mechscope.features.logits import relative_logits
from mechscope.features.scoring import HeldOutScorer
from mechscope.features.writer import LayerInput, LayerWriter
from mechscope.features.config import IndexConfig  # noqa: F401 (re-exported)
from mechscope.features.shipped import SHIPPED, index_path, user_index_path  # noqa: F401 (re-exported)
from mechscope.paths import portable_path
from mechscope.store import connect
from mechscope.transcoders.source import Source, logit_decoder

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

log = logging.getLogger(__name__)


@torch.no_grad()
def build_index(
    model: ModelAdapter,
    ts: Source,
    out: str | Path,
    cfg: IndexConfig | None = None,
    labeller: Labeller | None = None,
    progress: bool = True,
) -> dict:
    """Build the SQLite feature index at `out` (written to a temp file, then renamed).

    >>> stats = build_index(m, ts, "gemma.sqlite", IndexConfig(tokens=32768))   # doctest: +SKIP
    """
    from mechscope.progress import counter

    cfg = cfg or IndexConfig()
    labeller = labeller or HeuristicLabeller()
    t0 = time.time()
    out = Path(out)
    work = work_dir(out)
    col = collect(model, ts, cfg, work, progress)
    ids = col.ids
    n_chunks, T = ids.shape
    F = ts.d_transcoder
    tok = model.tokenizer
    vocab_str: dict[int, str] = {}

    def decode(t: int) -> str:
        if t not in vocab_str:
            vocab_str[t] = tok.decode([t])
        return vocab_str[t]

    key_of: dict[str, int] = {}  # normalised token -> key id (labels, scores and search compare keys)
    shown: list[str] = []  # key id -> the key's first token as decoded (" Texas" for "texas"), for display
    flat: list[int] = []
    for t in ids.reshape(-1).tolist():
        text = decode(int(t))
        k = norm_token(text)
        if k not in key_of:
            key_of[k] = len(key_of)
            shown.append(text)
        flat.append(key_of[k])
    tok_key = torch.tensor(flat)
    keys = list(key_of)
    lang_of_chunk = [guess_language(tok.decode(ids[c].tolist())) for c in range(n_chunks)]
    scorer = HeldOutScorer(tok_key, keys, n_chunks, T, lang_of_chunk)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    for p in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
        p.unlink(missing_ok=True)
    con = connect(tmp, write=True)
    writer = LayerWriter(con, cfg, labeller, scorer)
    gen = torch.Generator().manual_seed(cfg.seed)
    with counter("labelling and writing features", len(ts), "layers", enabled=progress) as bar:
        for l in range(len(ts)):
            vals, idxs = col.layer(l)  # [N, k] each: one layer in memory at a time
            st = layer_stats(vals, idxs, n_chunks, T, tok_key, cfg, F, gen)
            act = vals > 0
            scorer.begin_layer(idxs[act], act.nonzero()[:, 0])
            # through all of a feature's decoders: a cross-layer feature adds to the residual stream at every layer
            # it writes to, and its direct logit effect reads the sum (a per-layer feature: its one decoder)
            tops, bots = relative_logits(model, logit_decoder(ts, l), cfg.n_logits, decode)
            writer.write(LayerInput(l, ids, vals, idxs, st, tops, bots, keys, shown, decode, tok.decode))
            log.info("indexed layer %d", l)
            bar.update()
    scores = scorer.scores
    meta = {
        "model": model.name,
        "transcoders": portable_path(ts.meta.get("path", "")),
        "transcoder_fingerprint": fingerprint(ts),
        "hist_edges": [round(float(e), 6) for e in HIST_EDGES],
        "config": asdict(cfg),
        "tokens": n_chunks * T,
        "n_features": len(ts) * F,
        "labeller": labeller.name,
        "label_f1_mean": float(np.mean(scores)) if scores else None,
        "label_f1_median": float(np.median(scores)) if scores else None,
        "label_kinds": scorer.kinds,
        "dense_density": DENSE_DENSITY,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "elapsed_s": round(time.time() - t0, 1),
    }
    for k, v in meta.items():
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v)))
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("VACUUM")
    con.close()
    os.replace(tmp, out)
    shutil.rmtree(work, ignore_errors=True)  # the parts served their purpose once the index is in place
    return meta
