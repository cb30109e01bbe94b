"""Activations replayed from memory: more training per forward pass of the model.

With `--cache-gb G --cache-epochs E`, the batches of activations the model produces are kept in a block of at most G
GiB (per process; at least one batch) and, once the block is full, trained on E − 1 more times, each pass in a
fresh order of its tokens, before the next block is read. The first pass trains on each batch as it arrives, so
nothing waits for the block to fill. `--tokens` counts every pass (it sets the optimizer's steps); the summary's
`distinct_tokens` counts the tokens the model produced.

Where the data stands is a `Position`: the corpus chunks read before the current block and the batches of that
block already trained. A checkpoint inside a block resumes by reading the block again and skipping what was trained;
at a block's end the position is the next block's start, so a run stopped there can continue with any cache size.

>>> import torch
>>> raw = ((torch.full((1, 2, 1), float(i)), torch.zeros(1, 2, 1), 10 * (i + 1)) for i in range(2))
>>> [(float(x[0, 0, 0]), p.fresh) for x, _, p in replay(raw, 2, 2, epochs=2, seed=0)]  # doctest: +ELLIPSIS
[(0.0, True), (1.0, True), (..., False), (..., False)]
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from torch import Tensor

from mechscope.errors import MechscopeError

#: a cache may take at most this share of the memory available when training starts (the model, the trainer and
#: the optimizer need the rest)
MAX_SHARE = 0.75


class Position(NamedTuple):
    """chunks: corpus chunks read before the current block (all of them without a cache); in_block: batches of
    that block trained so far; fresh: this batch comes straight from the model (not a replay)."""

    chunks: int
    in_block: int
    fresh: bool


def available_memory(device: torch.device) -> int:
    """Bytes free for a cache on `device`: the GPU's free memory, or MemAvailable from /proc/meminfo (psutil's
    figure where /proc is missing)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # not on Linux: a dependency of the server extra, asked for only here

    return int(psutil.virtual_memory().available)


def check_cache_fits(cache_gb: float, device: torch.device) -> None:
    """Refuse, in one line, a cache larger than MAX_SHARE of the memory available (before anything loads).

    >>> check_cache_fits(1e6, torch.device("cpu"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    mechscope.errors.MechscopeError: --cache-gb 1e+06 does not fit: ...
    """
    if cache_gb <= 0:
        return
    free = available_memory(device)
    if cache_gb * 2**30 > MAX_SHARE * free:
        raise MechscopeError(
            f"--cache-gb {cache_gb:g} does not fit: {free / 2**30:.1f} GiB of {device.type} memory is available and "
            f"a cache may take at most {MAX_SHARE:.0%} of it"
        )


def block_batches(cache_gb: float, n_layers: int, tokens_per_batch: int, d_model: int, bytes_per_value: int) -> int:
    """Batches of [L, N, d] inputs and outputs that fit in `cache_gb` GiB (at least one).

    >>> block_batches(1.0, 18, 1016, 640, 4)  # gemma3-270m's 18 layers, 8 × 127 tokens, float32
    11
    """
    per_batch = 2 * n_layers * tokens_per_batch * d_model * bytes_per_value
    return max(1, int(cache_gb * 2**30 // per_batch))


def passthrough(batches: Iterator[tuple[Tensor, Tensor, int]]) -> Iterator[tuple[Tensor, Tensor, Position]]:
    """No cache: every batch fresh, the position after it is the chunks read."""
    for xs, ys, consumed in batches:
        yield xs, ys, Position(consumed, 0, True)


def replay(
    batches: Iterator[tuple[Tensor, Tensor, int]],
    block_batches: int,
    tokens_per_batch: int,
    epochs: int,
    seed: int,
    start_chunks: int = 0,
    skip: int = 0,
) -> Iterator[tuple[Tensor, Tensor, Position]]:
    """Blocks of `block_batches` batches from `batches` (xs, ys [L, N, d], chunks consumed; N at most
    `tokens_per_batch`), each trained on `epochs` times; see the module. `start_chunks`: the chunks read before the first block; `skip`: batches of the
    first block trained before a resume (read again, not yielded)."""
    store: tuple[Tensor, Tensor] | None = None
    while True:
        sizes: list[int] = []
        end_chunks = start_chunks
        for xs, ys, consumed in batches:
            if store is None:  # one allocation for the whole run: the bound is what --cache-gb says
                L, _, d = xs.shape
                cap = block_batches * tokens_per_batch
                store = tuple(xs.new_empty(L, cap, d) for _ in range(2))  # type: ignore[assignment]
            at = sum(sizes)
            n = xs.shape[1]
            store[0][:, at : at + n] = xs
            store[1][:, at : at + n] = ys
            sizes.append(n)
            end_chunks = consumed
            if len(sizes) > skip:
                yield xs, ys, _after(len(sizes), len(sizes) * epochs, start_chunks, end_chunks, True)
            if len(sizes) == block_batches:
                break
        if not sizes:
            return
        yield from _replays(store, sizes, epochs, seed, start_chunks, end_chunks, skip)  # type: ignore[arg-type]
        start_chunks, skip = end_chunks, 0


def _replays(
    store: tuple[Tensor, Tensor], sizes: list[int], epochs: int, seed: int, start: int, end: int, skip: int
) -> Iterator[tuple[Tensor, Tensor, Position]]:
    """Passes 2..epochs over a filled block, each in a fresh order of its tokens, cut into batches as read."""
    total = sum(sizes)
    n_b = len(sizes)
    X, Y = store
    for epoch in range(1, epochs):
        # the order depends on the block and the pass only, so a resume replays the same batches
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start * 7919 + epoch)
        perm = torch.randperm(total, generator=gen).to(X.device)
        for j, part in enumerate(perm.tensor_split(n_b)):
            done = epoch * n_b + j + 1
            if done > skip:
                yield X[:, part], Y[:, part], _after(done, epochs * n_b, start, end, False)


def _after(done: int, of: int, start: int, end: int, fresh: bool) -> Position:
    # the last batch of a block leaves the data at the next block's start
    return Position(end, 0, fresh) if done == of else Position(start, done, fresh)
