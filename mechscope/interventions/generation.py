"""Greedy generation before and after feature edits, reusing the prompt's KV cache (issue #37).

The prompt runs once, its keys and values (edited where the edits say) go into Hugging Face's KV cache, and
each new token runs one position. What an edit does to generated tokens:

* `L/F@P` (a prompt position) edits position P once: its edited keys and values stay in the cache, so every
  generated token attends to the edited prompt; it never applies to a generated position.
* `L/F` (every position) also applies to each generated token, as that token runs.
* a swap's skip patches (`--with-skip`) are at prompt positions, like `L/F@P`.

These are the semantics of recomputing the whole sequence with the edits at every step (what this replaces;
tests/test_generation.py keeps that path as the reference): the model is causal and every edit is positional
(a position's features are read from its own MLP input), so a position's edited state does not change when
tokens are appended, and the cache holds exactly what a recompute would compute again.

The unedited and the edited continuation run as the two rows of one batch (the edits on row 1 only): on a CPU
a decoding step is bound by reading the weights, which two rows read once.

>>> run = prompt_pair(m, ts, ids, [Edit(FeatureRef(3, 17), "set", 20.0)])      # doctest: +SKIP
>>> before, after = continue_pair(m, ts, run, 8)                              # doctest: +SKIP
>>> m.tokenizer.decode(after.tokens)                                           # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mechscope.cancel import checkpoint
from mechscope.edits import Edit, edit_hooks
from mechscope.transcoders.source import Source

if TYPE_CHECKING:  # annotations only: importing the adapter loads transformers (seconds)
    from mechscope.models.adapter import ModelAdapter

EDITED = [1]  # the batch row the edits apply to; row 0 is the unedited model


@dataclass
class PairRun:
    """The prompt run as two rows (0 unedited, 1 edited): the last position's logits and the filled KV cache."""

    logits: Tensor  # [2, vocab] float32
    cache: object  # transformers' Cache, extended in place by each decoding step
    n_prompt: int
    edits: list[Edit]
    skip_patches: dict[int, dict[int, Tensor]] | None = None


@dataclass
class Continuation:
    """One row's greedy tokens (an end-of-sequence token, when reached, is the last) and, when asked, the
    logits [vocab] each token was chosen from."""

    tokens: list[int] = field(default_factory=list)
    logits: list[Tensor] = field(default_factory=list)


@torch.no_grad()
def prompt_pair(
    model: ModelAdapter,
    ts: Source,
    ids: Tensor,
    edits: list[Edit],
    skip_patches: dict[int, dict[int, Tensor]] | None = None,
) -> PairRun:
    """Run the prompt `ids` [n] once unedited and once with `edits` (positions absolute, see `check_edits`), as
    one batch of two rows, keeping the KV cache for `continue_pair`.

    >>> run = prompt_pair(m, ts, m.tokenize("Dallas is in the state of").ids, edits)   # doctest: +SKIP
    >>> run.logits.shape                                                                 # doctest: +SKIP
    torch.Size([2, 262144])
    """
    batch = ids[None].expand(2, -1).to(model.device)
    with model.hooks(edit_hooks(model, ts, edits, skip_patches, rows=EDITED)):
        logits, cache = model.forward_cached(batch)
    return PairRun(logits[:, -1].float(), cache, int(ids.shape[0]), list(edits), skip_patches)


def stop_ids(model: ModelAdapter) -> set[int]:
    """The tokenizer's end-of-sequence id(s): generation stops after emitting one."""
    eos = model.tokenizer.eos_token_id
    return set() if eos is None else set(eos if isinstance(eos, list) else [eos])


@torch.no_grad()
def continue_pair(
    model: ModelAdapter,
    ts: Source,
    run: PairRun,
    n: int,
    keep_logits: bool = False,
    stop: set[int] | None = None,
) -> tuple[Continuation, Continuation]:
    """Greedy continuations of at most `n` tokens of both rows of `run` (unedited, edited), one position per
    step read against the cache; a row ends after a `stop` token (default: the tokenizer's end of sequence).

    >>> before, after = continue_pair(m, ts, prompt_pair(m, ts, ids, edits), 8)   # doctest: +SKIP
    """
    stop = stop_ids(model) if stop is None else stop
    # prompt-position edits and skip patches are in the cache already; only every-position edits still apply
    live = [e for e in run.edits if e.ref.pos is None]
    rows = (Continuation(), Continuation())
    done = [False, False]
    logits, cache = run.logits, run.cache
    for step in range(n):
        if step:
            checkpoint()  # a cancelled server job stops between generated tokens
            # a finished row still takes a position (the batch stays rectangular); its outputs are not read
            nxt = torch.tensor([[r.tokens[-1]] for r in rows], device=model.device)
            hooks = edit_hooks(model, ts, live, offset=run.n_prompt + step - 1, rows=EDITED) if live else {}
            with model.hooks(hooks):
                out, cache = model.forward_cached(nxt, cache)
            logits = out[:, -1].float()
        for i, r in enumerate(rows):
            if done[i]:
                continue
            tok = int(logits[i].argmax())
            r.tokens.append(tok)
            if keep_logits:
                r.logits.append(logits[i].clone())
            done[i] = tok in stop
        if all(done):
            break
    return rows


def generate_pair(
    model: ModelAdapter,
    ts: Source,
    ids: Tensor,
    edits: list[Edit],
    n: int,
    skip_patches: dict[int, dict[int, Tensor]] | None = None,
) -> tuple[str, str]:
    """The greedy continuations (text) of `ids` without and with `edits`: `prompt_pair` then `continue_pair`.

    >>> generate_pair(m, ts, m.tokenize("Dallas is in the state of").ids, edits, 8)   # doctest: +SKIP
    (' Texas, and it is a city that', ' ...')
    """
    before, after = continue_pair(model, ts, prompt_pair(model, ts, ids, edits, skip_patches), n)
    return model.tokenizer.decode(before.tokens), model.tokenizer.decode(after.tokens)
