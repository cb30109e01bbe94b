"""The feature index's first pass: run the model over the index text and keep every layer's top-k activations.

This is the long part of an index build (gemma3-270m: 426 tokens/s on two quiet cores, ~80 min for 2M tokens),
so it is resumable: the activations are spilled to disk in parts of about `PART_TOKENS` tokens (one safetensors
file each, written to a temporary name and renamed, so a part is either whole or absent). A rerun with the same
model, set and text settings skips the chunks already collected (the token stream is deterministic) and goes on;
the parts are then read back one layer at a time, so memory holds one layer's activations, not all of them. A
partial build made with other settings is refused, naming the folder, rather than mixed in.

>>> col = collect(model, ts, cfg, Path(".parts-gemma3-270m.sqlite"))   # doctest: +SKIP
>>> vals, idxs = col.layer(7)        # [N, k] fp16, [N, k] int64         # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import logging
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from mechscope.corpus.sources import chunk_stream
from mechscope.errors import MechscopeError
from mechscope.features.config import IndexConfig
from mechscope.features.integrity import fingerprint_files
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

log = logging.getLogger(__name__)

PART_TOKENS = 65536  # tokens per spilled part: at most a few minutes of work lost to an interruption
_VERSION = 1


def fingerprint(ts: Source) -> str:
    """Identifies a transcoder set by its weight files' SHA-256 (labels only apply to the set they describe)."""
    return fingerprint_files(ts.meta.get("files") or {})


def kept_per_token(ts: Source) -> int:
    """How many activations are kept per token and layer: a TopK set's k, else the 64 strongest."""
    return min(ts.d_transcoder, max(ts.cfg.k, 1) if ts.cfg.activation == "topk" else 64)


def work_dir(out: Path) -> Path:
    """Where a build of `out` keeps its parts until the index is written."""
    return out.with_name(f".parts-{out.name}")


@dataclass
class Collected:
    """The collected activations: `ids` [n_chunks, T] in memory, each layer's [N, k] read from the parts on demand."""

    ids: Tensor  # [n_chunks, T] token ids
    parts: list[Path]
    n_rows: int  # tokens kept (n_chunks * T): a resumed build asked for fewer tokens ignores the rest

    def layer(self, l: int) -> tuple[Tensor, Tensor]:
        """(vals [N, k] fp16, idxs [N, k] int64) of layer l over all kept tokens."""
        vals, idxs = [], []
        for p in self.parts:
            with safe_open(str(p), framework="pt") as f:
                vals.append(f.get_tensor(f"vals.{l}"))
                idxs.append(f.get_tensor(f"idxs.{l}"))
        return torch.cat(vals)[: self.n_rows], torch.cat(idxs)[: self.n_rows].long()


def _stamp(model: ModelAdapter, ts: Source, cfg: IndexConfig) -> dict:
    # everything that decides which chunks come in which order and what is kept of them; not `tokens`: a rerun
    # asking for more (or fewer) tokens resumes the same stream
    return {
        "version": _VERSION,
        "model": model.name,
        "transcoders": fingerprint(ts),
        "corpus": cfg.corpus,
        "seq_len": cfg.seq_len,
        "seed": cfg.seed,
        "kept_per_token": kept_per_token(ts),
    }


def _existing_parts(work: Path, stamp: dict) -> tuple[list[Path], int]:
    """The parts a previous, interrupted build left, checked, and the chunks they hold; ([], 0) for a fresh build."""
    stamp_file = work / "stamp.json"
    if not stamp_file.exists():
        return [], 0
    try:
        old = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        old = None
    if old != stamp:
        diff = sorted(k for k in stamp if not isinstance(old, dict) or old.get(k) != stamp[k])
        raise MechscopeError(
            f"{work} holds a partial index build with other settings ({', '.join(diff)}): "
            "rerun with the same options to resume it, or delete the folder to start over"
        )
    parts = sorted(work.glob("part-*.safetensors"))
    chunks = 0
    for i, p in enumerate(parts):
        try:  # parts are renamed into place whole, but a disk can still lose one: keep what precedes it
            with safe_open(str(p), framework="pt") as f:
                chunks += f.get_slice("ids").get_shape()[0]
        except Exception:  # noqa: BLE001 (any read failure means the part is unusable)
            log.warning("part %s is unreadable: it and the %d after it are collected again", p.name, len(parts) - i - 1)
            for q in parts[i:]:
                q.unlink(missing_ok=True)
            return parts[:i], chunks
    return parts, chunks


@torch.no_grad()
def collect(model: ModelAdapter, ts: Source, cfg: IndexConfig, work: Path, progress: bool = True) -> Collected:
    """Run the model over `cfg.tokens` tokens of the index text, resuming from the parts in `work`."""
    from mechscope.progress import counter

    L, kk = model.n_layers, kept_per_token(ts)
    stamp = _stamp(model, ts, cfg)
    parts, done = _existing_parts(work, stamp)
    work.mkdir(parents=True, exist_ok=True)
    (work / "stamp.json").write_text(json.dumps(stamp, indent=1))
    # the first pass stops after the batch that reaches the target, so its chunk count is a batch multiple
    n_chunks = max(1, cfg.tokens // cfg.seq_len)
    n_keep = -(-n_chunks // cfg.batch_size) * cfg.batch_size
    if parts:
        log.info("resuming the index build: %d chunks already collected in %s", done, work)
    sites = [f"blocks.{l}.hook_mlp_in" for l in range(L)]
    topk_act = ts.cfg.activation == "topk"
    idx_dtype = torch.int16 if ts.d_transcoder < 32768 else torch.int32
    batch: list[Tensor] = []
    pending: dict[str, list[Tensor]] = {}

    def flush() -> None:
        ids = torch.stack(batch)  # [b, T]
        cache = model.run_with_cache(ids.to(model.device), sites, logits=False)
        pending.setdefault("ids", []).append(ids.to(torch.int32))
        for l in range(L):
            x = cache[sites[l]].float()
            if topk_act:  # one top-k instead of two: the activation is the top k of the pre-activations
                v, i = ts.layer_pre_acts(l, x).topk(kk, dim=-1, sorted=False)
                v = v.clamp_min(0)
            else:
                v, i = ts.layer_encode(l, x).topk(kk, dim=-1, sorted=False)
            v[:, 0] = 0  # position 0 (BOS or a chunk's first token) never counts
            pending.setdefault(f"vals.{l}", []).append(v.reshape(-1, kk).half())
            pending.setdefault(f"idxs.{l}", []).append(i.reshape(-1, kk).to(idx_dtype))
        bar.update(ids.numel())
        batch.clear()

    def spill() -> None:
        if not pending:
            return
        p = work / f"part-{len(parts):05d}.safetensors"
        tmp = p.with_name(f".tmp-{p.name}")
        save_file({k: torch.cat(v).contiguous() for k, v in pending.items()}, str(tmp))
        os.replace(tmp, p)  # whole or absent
        parts.append(p)
        pending.clear()

    bar = counter("indexing features", n_keep * cfg.seq_len, "tokens", enabled=progress)
    with bar:
        bar.resume(min(done, n_keep) * cfg.seq_len)  # the time left counts only this run's rate
        if done < n_keep:
            stream = islice(chunk_stream(model.tokenizer, cfg.corpus, "heldout", cfg.seq_len, cfg.seed, 0), done, None)
            for chunk in stream:
                batch.append(chunk)
                if len(batch) == cfg.batch_size:
                    flush()
                    done += cfg.batch_size
                    if sum(len(x) for x in pending["ids"]) * cfg.seq_len >= PART_TOKENS:
                        spill()
                    if done >= n_keep:
                        break
            if batch and done < n_keep:
                done += len(batch)
                flush()
            spill()
    if not parts:
        raise MechscopeError(f"the held-out split of {cfg.corpus} is too small to index")
    ids = []
    for p in parts:
        with safe_open(str(p), framework="pt") as f:
            ids.append(f.get_tensor("ids"))
    ids_all = torch.cat(ids)[:n_keep].long()
    return Collected(ids_all, parts, ids_all.numel())
