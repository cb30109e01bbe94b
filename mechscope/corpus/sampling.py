"""Sampling the corpus from a model: batched KV-cache generation with temperature + nucleus sampling from one
seeded torch.Generator, filtered (degenerate repetition, duplicates, the lens suite's prompts) into documents.

>>> build_sampled(model, SampleConfig(split="train", chars=60_000, seed=6), "train-s6.jsonl.xz")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_bytes
from mechscope.corpus.sample_config import SampleConfig  # noqa: F401 (re-exported)
from mechscope.corpus.sample_prompts import SAMPLED_VERSION, entity_names, seed_prompts

# top-k before the nucleus (see _top_p_sample); the shipped held-out split predates it (full sort, same
# nucleus, other random draws), so it reproduces with the commit that made it (docs/lens.md)
NUCLEUS_K = 1024
SUITE_FILE = Path(__file__).resolve().parent.parent / "lens" / "suite.yaml"  # the lens suite's prompts


def is_degenerate(text: str, min_chars: int = 40) -> bool:
    """Too short, or repetitive: fewer than 60% of its character 8-grams distinct, or a line repeated 3 times.

    >>> is_degenerate("the cat " * 20), is_degenerate("Dallas is a city in Texas, known for its skyline and its food.")
    (True, False)
    """
    t = text.strip()
    if len(t) < min_chars:
        return True
    grams = [t[i : i + 8] for i in range(len(t) - 7)]
    if len(set(grams)) < 0.6 * len(grams):
        return True
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    return any(lines.count(ln) >= 3 for ln in set(lines))


def suite_prompts() -> list[str]:
    """The lens suite's exact prompts (the text that must stay out of the corpus)."""
    import yaml

    # read as data (transcoders must not import the lens package, which sits downstream of them)
    data = yaml.safe_load(SUITE_FILE.read_text(encoding="utf-8"))
    return sorted({p["prompt"].strip() for p in data["prompts"]})


def strip_suite_prompts(text: str, prompts: list[str]) -> str:
    """`text` without every line that contains one of `prompts` (compared with whitespace collapsed).

    >>> strip_suite_prompts("Dallas is in the state of Texas.\\nIt is big.", ["Dallas is in the state of"])
    'It is big.'
    """
    norm = [re.sub(r"\s+", " ", p) for p in prompts]
    keep = []
    for line in text.split("\n"):
        flat = re.sub(r"\s+", " ", line)
        if not any(p in flat for p in norm):
            keep.append(line)
    # a prompt may also span a line break: check the joined text once more
    out = "\n".join(keep)
    flat = re.sub(r"\s+", " ", out)
    if any(p in flat for p in norm):
        return ""
    return out


def _top_p_sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """One token per row of logits [b, vocab] by nucleus sampling.

    The nucleus is looked for among each row's NUCLEUS_K most probable tokens first (a top-k is ~20× cheaper
    than sorting 262k logits, which took most of the sampling time); a row whose nucleus is wider than that
    is sorted in full, so the nucleus is always the exact smallest prefix whose mass reaches top_p.
    """
    probs = torch.softmax(logits.float() / temperature, -1)  # [b, vocab]
    k = min(NUCLEUS_K, probs.shape[-1])
    sp, si = probs.topk(k, -1)  # [b, k], descending
    wide = sp.sum(-1) < top_p
    if bool(wide.any()):  # rare: a flat distribution; sort those rows in full
        full_p, full_i = probs[wide].sort(-1, descending=True)
        out = torch.empty(probs.shape[0], dtype=torch.long)
        out[~wide] = _nucleus_pick(sp[~wide], si[~wide], top_p, gen)
        out[wide] = _nucleus_pick(full_p, full_i, top_p, gen)
        return out
    return _nucleus_pick(sp, si, top_p, gen)


def _nucleus_pick(sp: torch.Tensor, si: torch.Tensor, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """Draw from sorted probabilities sp [b, n] (token ids si) restricted to the top_p nucleus."""
    sp = sp.clone()
    cum = sp.cumsum(-1)
    sp[(cum - sp) > top_p] = 0  # keep the smallest prefix whose mass reaches top_p
    pick = torch.multinomial(sp / sp.sum(-1, keepdim=True), 1, generator=gen)
    return si.gather(-1, pick).squeeze(-1)


@torch.no_grad()
def sample_batch(model, prompts: list[list[int]], cfg: SampleConfig, gen: torch.Generator) -> list[list[int]]:
    """Continue token lists (any lengths) with the KV cache; returns each row's new tokens (EOS cut).

    Shorter prompts are left-padded; the attention mask hides the padding and explicit position ids count only
    real tokens, so each row's distribution is the one it would have alone (checked in tests/test_sampled.py).
    """
    hf = model.model
    eos = model.tokenizer.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    b, n = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(b, n, dtype=torch.long)  # [b, n]; pad id is irrelevant: masked
    mask = torch.zeros(b, n, dtype=torch.long)  # [b, n]
    for i, p in enumerate(prompts):
        ids[i, n - len(p) :] = torch.tensor(p)
        mask[i, n - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [b, n]
    dev = model.device
    out = hf(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=pos.to(dev),
        use_cache=True,
        logits_to_keep=1,
    )
    cache, logits = out.cache, out.logits[:, -1]
    nxt_pos = pos[:, -1:] + 1  # [b, 1]
    rows: list[list[int]] = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool)
    for _ in range(cfg.max_new_tokens):
        nxt = _top_p_sample(logits.cpu(), cfg.temperature, cfg.top_p, gen)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                if t in eos:
                    done[i] = True
                else:
                    rows[i].append(t)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.long)], dim=1)
        out = hf(
            input_ids=nxt[:, None].to(dev),
            attention_mask=mask.to(dev),
            position_ids=nxt_pos.to(dev),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache, logits = out.cache, out.logits[:, -1]
        nxt_pos = nxt_pos + 1
    return rows


def _batches(model, prompts: Iterator[str], cfg: SampleConfig) -> Iterator[list[list[int]]]:
    """Token-list batches of the prompt stream, in the order `cfg.batching` defines."""
    while True:
        if cfg.batching == "pad":
            yield [model.tokenizer(next(prompts), add_special_tokens=True)["input_ids"] for _ in range(cfg.batch_size)]
            continue
        # a window of prompts, grouped by token length so a batch needs no padding
        groups: dict[int, list[list[int]]] = {}
        for _ in range(cfg.batch_size * 4):
            ids = model.tokenizer(next(prompts), add_special_tokens=True)["input_ids"]
            groups.setdefault(len(ids), []).append(ids)
        for n in sorted(groups):
            for s in range(0, len(groups[n]), cfg.batch_size):
                yield groups[n][s : s + cfg.batch_size]


def generate_documents(model, cfg: SampleConfig, progress: bool = False) -> Iterator[str]:
    """Sampled documents (prompt + continuation), filtered and deduplicated, until cfg.chars are reached."""
    import time

    from tqdm.auto import tqdm

    t0 = time.time()
    names, _ = entity_names()
    prompts = seed_prompts(cfg.split, cfg.seed, names)
    banned = suite_prompts()
    gen = torch.Generator().manual_seed(cfg.seed)
    seen: set[str] = set()
    total = 0
    bar = tqdm(total=cfg.chars, unit="char", disable=not progress, desc="sampling")
    batches = _batches(model, prompts, cfg)
    while total < cfg.chars and not (cfg.budget_s and time.time() - t0 > cfg.budget_s):
        batch = next(batches)
        for ids, new in zip(batch, sample_batch(model, batch, cfg, gen)):
            text = model.tokenizer.decode(ids + new, skip_special_tokens=True).strip()
            text = strip_suite_prompts(text, banned).strip()
            key = hashlib.sha1(re.sub(r"\s+", " ", text.lower()).encode()).hexdigest()
            if is_degenerate(text) or key in seen:
                continue
            seen.add(key)
            total += len(text)
            bar.update(len(text))
            yield text
            if total >= cfg.chars:
                break
    bar.close()


def build_sampled(model, cfg: SampleConfig, out: str | Path, progress: bool = False) -> dict:
    """Write sampled documents as JSON lines to `out` (`.xz` compresses; temp file + rename); return stats.

    >>> build_sampled(m, SampleConfig(split="heldout", chars=300_000), "heldout-gemma3-270m.jsonl.xz")  # doctest: +SKIP
    """
    out = Path(out)
    names, name_source = entity_names()
    lines = [
        json.dumps({"id": f"sampled#{cfg.split}#{i}", "text": t}, ensure_ascii=False)
        for i, t in enumerate(generate_documents(model, cfg, progress))
    ]
    if not lines:
        raise MechscopeError("sampling produced no text (every continuation was filtered out)")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if out.suffix == ".xz":
        data = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    atomic_write_bytes(out, data)
    stats = {
        "version": SAMPLED_VERSION,
        "sampler": f"nucleus within top-{NUCLEUS_K}, full sort when wider",
        "model": model.name,
        "config": asdict(cfg),
        "documents": len(lines),
        "chars": sum(len(json.loads(x)["text"]) for x in lines),
        "entity_names": name_source,
        "n_entity_names": len(names),
    }
    atomic_write_bytes(out.with_name(out.name.split(".")[0] + ".stats.json"), json.dumps(stats, indent=1).encode())
    return stats
