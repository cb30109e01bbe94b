"""The feature index: examples, densities, histograms, logit effects and labels of every transcoder feature.

Built from held-out corpus text in one pass: the model runs once per batch, every layer's features are
encoded and kept sparsely (top-k per token, fp16) in memory; statistics and examples are then derived per
layer with vectorised reductions. Chunks with an even index provide the evidence for labels, odd ones
score them (`label_score`), so the reported label quality is measured on text the label never saw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.features.labels import (
    FeatureInfo,
    HeuristicLabeller,
    Labeller,
    guess_language,
    label_keywords,
    label_language,
    norm_token,
)
from mechscope.features.config import IndexConfig  # noqa: F401 (re-exported)
from mechscope.features.shipped import SHIPPED, index_path, user_index_path  # noqa: F401 (re-exported)
from mechscope.paths import portable_path
from mechscope.store import connect
from mechscope.transcoders.corpus import chunk_stream
from mechscope.transcoders.source import Source, logit_decoder

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

log = logging.getLogger(__name__)
HIST_EDGES = torch.logspace(-3, 3, 31)


def fingerprint(ts: Source) -> str:
    """Identifies a transcoder set by its weight files' SHA-256 (labels only apply to the set they describe)."""
    import hashlib

    files = ts.meta.get("files") or {}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16] if files else ""


@torch.no_grad()
def _collect(model: ModelAdapter, ts: Source, cfg: IndexConfig, progress: bool):
    from mechscope.progress import counter

    L = model.n_layers
    chunks = chunk_stream(model.tokenizer, cfg.corpus, "heldout", cfg.seq_len, cfg.seed, chunk_buffer=0)
    n_chunks = max(1, cfg.tokens // cfg.seq_len)
    ids_all: list[Tensor] = []
    vals: list[list[Tensor]] = [[] for _ in range(L)]
    idxs: list[list[Tensor]] = [[] for _ in range(L)]
    kk = min(ts.d_transcoder, max(ts.cfg.k, 1) if ts.cfg.activation == "topk" else 64)
    sites = [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    bar = counter("indexing features", n_chunks * cfg.seq_len, "tokens", enabled=progress)
    batch: list[Tensor] = []

    def flush() -> None:
        ids = torch.stack(batch)
        cache = model.run_with_cache(ids.to(model.device), sites, logits=False)
        for l in range(L):
            a = ts.layer_encode(l, cache[sites[l]].float())  # [b, T, F]
            a[:, 0] = 0
            v, i = a.topk(kk, dim=-1)
            vals[l].append(v.reshape(-1, kk).half())
            idxs[l].append(i.reshape(-1, kk).to(torch.int16 if ts.d_transcoder < 32768 else torch.int32))
        ids_all.append(ids)
        bar.update(ids.numel())
        batch.clear()

    with bar:
        for chunk in chunks:
            batch.append(chunk)
            if len(batch) == cfg.batch_size:
                flush()
                if sum(x.shape[0] for x in ids_all) >= n_chunks:
                    break
        if batch and sum(x.shape[0] for x in ids_all) < n_chunks:
            flush()
    if not ids_all:
        raise MechscopeError(f"the held-out split of {cfg.corpus} is too small to index")
    return torch.cat(ids_all), [torch.cat(v) for v in vals], [torch.cat(i).long() for i in idxs]


def _direct_logits(model: ModelAdapter, W_dec: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top / bottom n tokens by each feature's direct effect through the final norm gain and unembedding."""
    gain = model.family.norm_gain(model.final_norm).float()
    W_U = model.W_U.float()
    tops_v, tops_i, bots_v, bots_i = [], [], [], []
    for s in range(0, W_dec.shape[0], 256):
        dec = W_dec[s : s + 256].float()
        if model.family.norm_kind == "layer":  # LayerNorm (GPT-2) removes the mean first
            dec = dec - dec.mean(-1, keepdim=True)
        eff = (dec * gain) @ W_U.T  # [256, vocab]
        eff -= eff.mean(-1, keepdim=True)
        tv, ti = eff.topk(n, -1)
        bv, bi = (-eff).topk(n, -1)
        tops_v.append(tv)
        tops_i.append(ti)
        bots_v.append(-bv)
        bots_i.append(bi)
    return torch.cat(tops_v), torch.cat(tops_i), torch.cat(bots_v), torch.cat(bots_i)


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
    cfg = cfg or IndexConfig()
    labeller = labeller or HeuristicLabeller()
    t0 = time.time()
    ids, vals, idxs = _collect(model, ts, cfg, progress)
    n_chunks, T = ids.shape
    N = n_chunks * T
    F = ts.d_transcoder
    tok = model.tokenizer
    vocab_str: dict[int, str] = {}

    def s(t: int) -> str:
        if t not in vocab_str:
            vocab_str[t] = tok.decode([t])
        return vocab_str[t]

    flat_ids = ids.reshape(-1)
    chunk_of = torch.arange(N) // T
    even = chunk_of % 2 == 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    for p in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
        p.unlink(missing_ok=True)
    con = connect(tmp, write=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    scores: list[float] = []
    kinds: dict[str, int] = {}
    # token -> normalised key id, for label scoring
    key_of: dict[str, int] = {}
    tok_key = torch.tensor([key_of.setdefault(norm_token(s(int(t))), len(key_of)) for t in flat_ids.tolist()])
    lang_of_chunk = [guess_language(tok.decode(ids[c].tolist())) for c in range(n_chunks)]
    for l in range(len(ts)):
        v, i = vals[l].float(), idxs[l]  # [N, k]
        act = v > 0
        feat = i[act]
        val = v[act]
        pos = act.nonzero()[:, 0]  # token index of each entry
        count = torch.bincount(feat, minlength=F).float()
        density = count / (N - n_chunks)  # position 0 never counts
        sum_act = torch.zeros(F).index_add_(0, feat, val)
        max_act = torch.zeros(F).scatter_reduce_(0, feat, val, "amax")
        bins = torch.bucketize(val, HIST_EDGES).clamp(max=len(HIST_EDGES))
        hist = torch.zeros(F, len(HIST_EDGES) + 1).index_put_((feat, bins), torch.ones_like(val), accumulate=True)
        # per (chunk, feature): max activation, and a random active entry
        key = chunk_of[pos] * F + feat
        cmax = torch.zeros(n_chunks * F).scatter_reduce_(0, key, val, "amax")
        is_max = val >= cmax[key]
        cpos = torch.full((n_chunks * F,), -1, dtype=torch.long)
        cpos[key[is_max]] = pos[is_max] % T  # position within its chunk
        prio = torch.rand(val.shape, generator=gen)
        rkey = torch.zeros(n_chunks * F).scatter_reduce_(0, key, prio, "amax")
        is_r = prio >= rkey[key]
        rpos = torch.full((n_chunks * F,), -1, dtype=torch.long)
        rpos[key[is_r]] = pos[is_r] % T
        rval = torch.zeros(n_chunks * F)
        rval[key[is_r]] = val[is_r]
        cmax_m = cmax.view(n_chunks, F)
        even_m = torch.tensor([c % 2 == 0 for c in range(n_chunks)])[:, None]
        top_v, top_c = cmax_m.topk(min(cfg.n_top, n_chunks), dim=0)  # [n_top, F]
        ev_v, ev_c = (cmax_m * even_m).topk(min(cfg.n_evidence, n_chunks), dim=0)  # evidence from even chunks
        rnd_v, rnd_c = (rkey.view(n_chunks, F) * (rval.view(n_chunks, F) > 0)).topk(min(cfg.n_random, n_chunks), dim=0)
        # through all of a feature's decoders: a cross-layer feature adds to the residual stream at every layer
        # it writes to, and its direct logit effect reads the sum (a per-layer feature: its one decoder)
        tv, ti, bv, bi = _direct_logits(model, logit_decoder(ts, l), cfg.n_logits)
        # dense activity of this layer on odd (scoring) chunks, for label F1
        odd_tok = (~even).nonzero().squeeze(-1)
        odd_sel = ~even[pos]

        def window(c: int, p: int, f: int) -> tuple[bytes, bytes, int]:
            lo, hi = max(0, p - cfg.window_before), min(T, p + cfg.window_after + 1)
            t_ids = ids[c, lo:hi].numpy().astype(np.uint32)
            rows = slice(c * T + lo, c * T + hi)
            a = (vals[l][rows].float() * (idxs[l][rows] == f)).sum(-1).numpy()
            mx = a.max() if a.max() > 0 else 1.0
            return t_ids.tobytes(), (np.clip(a / mx, 0, 1) * 255).astype(np.uint8).tobytes(), p - lo

        if odd_sel.any():
            of, op = feat[odd_sel], pos[odd_sel]
            order = of.argsort()
            of, op = of[order], op[order]
            bounds = torch.searchsorted(of, torch.arange(F + 1))
        for f in range(F):
            if count[f] == 0:
                con.execute(
                    "INSERT INTO features VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        l,
                        f,
                        0.0,
                        0.0,
                        0.0,
                        "[]",
                        json.dumps([[s(int(t)), round(float(x), 4)] for t, x in zip(ti[f], tv[f])]),
                        json.dumps([[s(int(t)), round(float(x), 4)] for t, x in zip(bi[f], bv[f])]),
                        "[]",
                        "dead (never active on held-out text)",
                        1.0,
                        "none",
                        None,
                    ),
                )
                continue
            ev_tokens: dict[int, int] = {}
            contexts = []
            for r in range(ev_v.shape[0]):
                if ev_v[r, f] <= 0:
                    break
                c = int(ev_c[r, f])
                p = int(cpos[c * F + f])
                t = int(ids[c, p])
                ev_tokens[t] = ev_tokens.get(t, 0) + 1
                if len(contexts) < 12:
                    contexts.append(tok.decode(ids[c, max(0, p - cfg.window_before) : p + 1].tolist()))
            top_tokens = sorted(((s(t), n) for t, n in ev_tokens.items()), key=lambda x: -x[1])[:10]
            info = FeatureInfo(
                l, f, top_tokens, [(s(int(t)), float(x)) for t, x in zip(ti[f], tv[f])], contexts, len(contexts)
            )
            label, conf = labeller.label(info)
            # held-out label score (F1 on odd chunks)
            score = None
            if odd_sel.any():
                actual = torch.zeros(N, dtype=torch.bool)
                actual[op[bounds[f] : bounds[f + 1]]] = True
                actual = actual[odd_tok]
                kw = label_keywords(label)
                lang = label_language(label)
                pred = None
                if kw:
                    kw_ids = torch.tensor([key_of[k] for k in kw if k in key_of], dtype=torch.long)
                    pred = torch.isin(tok_key[odd_tok], kw_ids) if kw_ids.numel() else torch.zeros_like(actual)
                    kinds["token"] = kinds.get("token", 0) + 1
                elif lang:
                    lang_tok = torch.tensor([lang_of_chunk[int(c)] == lang for c in chunk_of[odd_tok]])
                    pred = lang_tok
                    kinds["language"] = kinds.get("language", 0) + 1
                else:
                    kinds["other"] = kinds.get("other", 0) + 1
                if pred is not None and (actual.any() or pred.any()):
                    tp = float((pred & actual).sum())
                    score = 2 * tp / (2 * tp + float((pred & ~actual).sum()) + float((~pred & actual).sum()))
                    scores.append(score)
            con.execute(
                "INSERT INTO features VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    l,
                    f,
                    float(density[f]),
                    float(max_act[f]),
                    float(sum_act[f] / count[f]),
                    json.dumps(hist[f].int().tolist(), separators=(",", ":")),
                    json.dumps([[s(int(t)), round(float(x), 4)] for t, x in zip(ti[f], tv[f])]),
                    json.dumps([[s(int(t)), round(float(x), 4)] for t, x in zip(bi[f], bv[f])]),
                    json.dumps(top_tokens),
                    label,
                    conf,
                    labeller.name,
                    score,
                ),
            )
            for kind, vv, cc, n_keep in (("top", top_v, top_c, cfg.n_top), ("random", rnd_v, rnd_c, cfg.n_random)):
                for r in range(min(n_keep, vv.shape[0])):
                    if vv[r, f] <= 0:
                        break
                    c = int(cc[r, f])
                    p = int((cpos if kind == "top" else rpos)[c * F + f])
                    a = float(cmax[c * F + f] if kind == "top" else rval[c * F + f])
                    tb, ab, mp = window(c, p, f)
                    con.execute("INSERT INTO examples VALUES (?,?,?,?,?,?,?,?)", (l, f, kind, r, a, tb, ab, mp))
        con.commit()
        log.info("indexed layer %d", l)
    meta = {
        "model": model.name,
        "transcoders": portable_path(ts.meta.get("path", "")),
        "transcoder_fingerprint": fingerprint(ts),
        "hist_edges": [round(float(e), 6) for e in HIST_EDGES],
        "config": asdict(cfg),
        "tokens": N,
        "labeller": labeller.name,
        "label_f1_mean": float(np.mean(scores)) if scores else None,
        "label_f1_median": float(np.median(scores)) if scores else None,
        "label_kinds": kinds,
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
    return meta
