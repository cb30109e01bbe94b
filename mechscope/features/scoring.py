"""Held-out label F1: does a label predict where its feature fires on text it was not built from?

The index's odd chunks never feed a label (its evidence comes from even chunks). A label's input side is read
as a classifier over the odd chunks' tokens: a token label (`"Texas"`, `"Texas" / "Austin"`) predicts the
feature is active exactly on those tokens (case and leading space ignored); a category label (`American states:
...`) on every token WordNet puts in the category, seen in the evidence or not; a language label (`French
text`) on every token of a chunk guessed to be in that language; an output-led label (`say "Austin"`, `say
American states: ...`, given when the input side names nothing) predicts the feature is active right before
those tokens (the next token is one of them). F1 against where the feature was active.
Labels that claim nothing checkable (`mixed: ...`, a token class, `dense`, `dead`, `unclear`) get no score, and
count as such in `kinds`. See docs/lens.md, "The label judge".

>>> s = HeldOutScorer(tok_key, keys, n_chunks, T, langs)     # doctest: +SKIP
>>> s.begin_layer(feat, pos); s.score(331, label)            # doctest: +SKIP
0.62
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.features.labels import Label


class HeldOutScorer:
    """F1 of labels on the odd (scoring) chunks; keeps every score and the count of each label kind."""

    def __init__(self, tok_key: Tensor, keys: list[str], n_chunks: int, T: int, lang_of_chunk: list[str]) -> None:
        flat = torch.arange(n_chunks * T)
        odd = ((flat // T) % 2 == 1) & (flat % T != 0)  # position 0 never fires
        self.keys = keys
        self.key_id = {k: i for i, k in enumerate(keys)}
        self.odd_key = tok_key[odd]
        self.key_count = torch.bincount(self.odd_key, minlength=len(keys))
        self.is_odd = odd
        chunk_lang = [lang_of_chunk[int(c)] for c in (flat[odd] // T).tolist()]
        self.lang_count: dict[str, int] = {}
        for g in chunk_lang:
            self.lang_count[g] = self.lang_count.get(g, 0) + 1
        self.lang_of_chunk = lang_of_chunk
        self.T = T
        self.scores: list[float] = []
        self.kinds: dict[str, int] = {}
        self._members: dict[str, Tensor] = {}
        self._bounds = self._pos = None
        self._tok_key = tok_key
        # the token after each position (−1 at a chunk's end): output labels predict it
        nxt = torch.full_like(tok_key, -1)
        same = (flat[1:] // T) == (flat[:-1] // T)
        nxt[:-1] = torch.where(same, tok_key[1:], torch.full_like(tok_key[1:], -1))
        self._next_key = nxt
        self.odd_next_key = nxt[odd]

    def begin_layer(self, feat: Tensor, pos: Tensor) -> None:
        """The layer's active entries (feature, flat position); only those on odd chunks are kept."""
        keep = self.is_odd[pos]
        f, p = feat[keep], pos[keep]
        order = torch.argsort(f, stable=True)
        self._pos = p[order]
        self._bounds = torch.searchsorted(f[order], torch.arange(int(f.max()) + 2 if len(f) else 1)).tolist()

    def _active(self, f: int) -> Tensor:
        if f + 1 >= len(self._bounds):
            return self._pos[:0]
        return self._pos[self._bounds[f] : self._bounds[f + 1]]

    def _category_ids(self, synset: str) -> Tensor:
        if synset not in self._members:
            from mechscope.features.wordnet import WordNet

            wn = WordNet.load()
            ids = [i for i, k in enumerate(self.keys) if wn is not None and synset in wn.categories(k)]
            self._members[synset] = torch.tensor(ids, dtype=torch.long)
        return self._members[synset]

    def score(self, f: int, label: Label) -> float | None:
        """F1 of `label` for feature f of the current layer, or None when the label claims nothing checkable."""
        act = self._active(f)
        lang = label.input[:-5] if label.kind == "language" and label.input.endswith(" text") else ""
        if label.category:
            kind, ids = ("output " if label.side == "output" else "") + "category", self._category_ids(label.category)
        elif label.keys and label.kind not in ("mixed", "dense", "dead"):
            kind = "output token" if label.side == "output" else "token"
            ids = torch.tensor([self.key_id[k] for k in label.keys if k in self.key_id], dtype=torch.long)
        elif lang:
            kind, ids = "language", None
        else:
            self.kinds["other"] = self.kinds.get("other", 0) + 1
            return None
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if ids is not None and label.side == "output":  # "say X": active right before an X
            predicted = int(torch.isin(self.odd_next_key, ids).sum()) if len(ids) else 0
            tp = int(torch.isin(self._next_key[act], ids).sum()) if len(ids) else 0
        elif ids is not None:
            predicted = int(self.key_count[ids].sum()) if len(ids) else 0
            tp = int(torch.isin(self._tok_key[act], ids).sum()) if len(ids) else 0
        else:
            predicted = self.lang_count.get(lang, 0)
            tp = sum(self.lang_of_chunk[c] == lang for c in (act // self.T).tolist())
        if predicted + len(act) == 0:
            return None
        s = 2 * tp / (predicted + len(act))
        self.scores.append(s)
        return s
