"""Automatic feature labels with two sides, without an external LLM, behind a pluggable `Labeller` interface.

A `Label` says what a feature reads (`input`), what it says (`output`), a combined short `text` and a
`confidence`. The built-in `HeuristicLabeller`:
  * input side, from the tokens at the activation maximum of its top examples, in this order: one token
    covering ≥80% (`"Texas"`); a WordNet category covering most of them (`American states: "Texas" / "Ohio"`,
    `features.wordnet`); one token covering ≥50%; a non-English language or script shared by ≥70% of the
    contexts (`French text`); a few tokens (`"Texas" / "Austin"`); a token class (`digits`); else `mixed: ...`;
  * output side, from the logit effects relative to the mean unembedding with case / space variants merged
    (`features.logits`): one or two dominant tokens (`say "Austin"`), else a category the top ones share.
When the input side names nothing (function words, `mixed`, a class) and the output side does, the output
side leads (`say "Austin" (reads "of")`) and is what the held-out score checks (the token after a firing).
Confidence is the share of top examples the input side covers (times 0.5 for `mixed` or an output-led label). Dense features (active
on more than `DENSE_DENSITY` of tokens) and dead ones get `dense_label` / `dead_label` from the index builder,
whatever the labeller: they are never given an entity label.

Honest scoring (in the index builder): a label's input side is used as a classifier "the feature is active on
this token" over held-out text the label was not built from (a category predicts all of its members); the
score is F1. Language labels are scored the same way with a per-token language guess.

Plug in another labeller (e.g. a local or hosted LLM) with `LLMLabeller(complete)`, or by implementing
`Labeller.label(info) -> Label` (a `(text, confidence)` tuple is accepted too).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterator, Protocol

from mechscope.features.words import FREQUENT_TOKENS


DENSE_DENSITY = 0.10  # active on more than this share of tokens: "dense", never an entity label or a search match


@dataclass
class FeatureInfo:
    """What a labeller sees of one feature (evidence from the label chunks only, never the scoring ones)."""

    layer: int
    feature: int
    top_tokens: list[tuple[str, int]]  # token at the max position of top examples, with counts
    top_logits: list[tuple[str, float]]  # promoted tokens, relative to the mean unembedding, variants merged
    contexts: list[str] = field(default_factory=list)  # text of top examples (window up to the max token)
    n_examples: int = 0
    density: float | None = None
    bottom_logits: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Label:
    """A two-sided label. Unpacks as `(text, confidence)`, the tuple labellers returned before.

    >>> Label('"Texas" → say "Austin"', 0.9, input='"Texas"', output='say "Austin"', kind="token", keys=("texas",))
    ... # doctest: +ELLIPSIS
    Label(text='"Texas" → say "Austin"', confidence=0.9, ...)
    """

    text: str
    confidence: float
    input: str = ""
    output: str = ""
    kind: str = ""  # token, tokens, category, language, class, mixed, output, unclear, dense, dead, custom
    keys: tuple[str, ...] = ()  # normalised tokens the input side names (held-out scoring predicts them)
    category: str = ""  # a category label's WordNet synset (held-out scoring predicts all its members)
    side: str = "input"  # which side `keys` / `category` describe: "output" labels predict the *next* token

    def __iter__(self) -> Iterator:
        return iter((self.text, self.confidence))

    def public(self) -> dict:
        """The fields a dashboard shows."""
        return {
            "input": self.input,
            "output": self.output,
            "kind": self.kind,
            "category": self.category,
            "side": self.side,
        }


class Labeller(Protocol):
    """Anything with a `name` and `label(info)`; see `LLMLabeller` for plugging in a language model."""

    name: str

    def label(self, info: FeatureInfo) -> "Label | tuple[str, float]": ...


def as_label(x: "Label | tuple[str, float]") -> Label:
    """A labeller's answer as a `Label` (a bare `(text, confidence)` names its tokens in quotes, if any)."""
    if isinstance(x, Label):
        return x
    text, conf = x
    inp, _, out = text.partition("→")
    return Label(text, float(conf), inp.strip(), out.strip(), "custom", tuple(sorted(label_keywords(text))))


def dense_label(density: float) -> Label:
    """The label of a feature active on more than DENSE_DENSITY of tokens (it says little about any of them)."""
    return Label(f"dense (active on {density:.0%} of tokens)", 1.0, kind="dense")


def dead_label() -> Label:
    return Label("dead (never active on held-out text)", 1.0, kind="dead")


def is_content(key: str) -> bool:
    """A normalised token that can name a concept: not a function word, a lone character or a number."""
    long_enough = len(key) > 1 or (len(key) == 1 and ord(key) >= 0x2E80)  # a CJK character is a word
    return long_enough and key not in FREQUENT_TOKENS and any(c.isalnum() for c in key) and not key.isdigit()


def norm_token(tok: str) -> str:
    return unicodedata.normalize("NFKC", tok).strip().lower()


_STOP = {
    "French": {"le", "la", "les", "des", "est", "une", "du", "et", "pour", "dans", "sur", "qui", "pas", "ce"},
    "German": {"der", "die", "das", "und", "ist", "nicht", "mit", "den", "ein", "eine", "für", "wird", "von", "sie"},
    "Spanish": {"el", "los", "las", "que", "es", "una", "por", "para", "con", "del", "se", "como", "su"},
    "English": {"the", "is", "and", "of", "to", "in", "that", "for", "with", "this", "are", "be", "it"},
}


def guess_language(text: str) -> str:
    """A crude language/script guess, enough to name "French text" or "Japanese text"."""
    if re.search(r"[\u3040-\u30ff]", text):
        return "Japanese"
    if re.search(r"[\u4e00-\u9fff]", text):
        return "Chinese"
    if re.search(r"[\u0400-\u04ff]", text):
        return "Cyrillic"
    words = re.findall(r"[a-zäöüßéèêàçñáíóú]+", text.lower())
    if len(words) < 3:
        return ""
    scores = {lang: sum(w in sw for w in words) for lang, sw in _STOP.items()}
    best = max(scores, key=scores.get)
    if scores[best] == 0:
        return "code" if re.search(r"[{}();=<>_/\\]", text) else ""
    return best


def token_class(tok: str) -> str:
    t = tok.strip()
    if not t:
        return "whitespace" if tok else ""
    if t.isdigit():
        return "digits"
    if all(unicodedata.category(c).startswith("P") or unicodedata.category(c).startswith("S") for c in t):
        return "punctuation"
    return ""


def _quoted(shown: dict[str, str], keys) -> str:
    return " / ".join(f'"{shown[k]}"' for k in keys)


def _wordlike(tok: str) -> bool:
    """A whole word rather than a piece of one: led by a space, or capitalised ("Texas" opening a line)."""
    t = tok.strip()
    return bool(t) and (tok[:1].isspace() or (t[:1].isupper() and len(t) >= 4))


class HeuristicLabeller:
    """The default labeller: rules over the evidence tokens, WordNet categories and logit effects (no LLM).

    >>> HeuristicLabeller().label(FeatureInfo(7, 331, [(" Texas", 20), (" Austin", 4)], [])).text
    '"Texas"'
    """

    name = "heuristic-v2"

    def __init__(self, wordnet: "object | None | bool" = True) -> None:
        self._wn = wordnet  # True: load WordNet on first use (None when it is not installed); None/False: off

    @property
    def wordnet(self):
        if self._wn is True:
            from mechscope.features.wordnet import WordNet

            self._wn = WordNet.load()
        return self._wn or None

    def label(self, info: FeatureInfo) -> Label:
        inp = self.input_side(info)
        out = self.output_label(info)
        if out.output and not _names_content(inp):
            # it reads nothing nameable ("of", mixed tokens) but says something: the output side leads, and the
            # held-out score asks whether the token after its firings is what it says
            text = out.output + (f" (reads {inp.input})" if inp.input else "")
            conf = 0.5 * (inp.confidence or 1.0)
            return Label(text, round(conf, 3), inp.input, out.output, "output", out.keys, out.category, "output")
        text = f"{inp.input} → {out.output}" if inp.input and out.output else (inp.input or out.output or "unclear")
        kind = inp.kind or "unclear"
        conf = inp.confidence if inp.input else 0.3
        return Label(text, round(min(1.0, conf), 3), inp.input, out.output, kind, inp.keys, inp.category)

    def input_side(self, info: FeatureInfo) -> Label:
        """What the feature reads, from the tokens at its top examples' maxima (and their contexts)."""
        total = sum(c for _, c in info.top_tokens) or 1
        merged: dict[str, int] = {}
        shown: dict[str, str] = {}
        words: dict[str, int] = {}
        for tok, c in info.top_tokens:
            k = norm_token(tok)
            merged[k] = merged.get(k, 0) + c
            shown.setdefault(k, tok.strip() or repr(tok))
            if _wordlike(tok):
                words[k] = words.get(k, 0) + c
        ranked = [(k, c) for k, c in sorted(merged.items(), key=lambda kv: -kv[1]) if k]
        top_share = ranked[0][1] / total if ranked else 0.0
        if ranked and top_share >= 0.8:
            return Label("", top_share, f'"{shown[ranked[0][0]]}"', kind="token", keys=(ranked[0][0],))
        cat = self.wordnet.best_category(words) if self.wordnet is not None and len(words) >= 2 else None
        if cat is not None and cat.cover * sum(words.values()) / total >= 0.5:
            from mechscope.features.wordnet import plural

            text = f"{plural(cat.name)}: {_quoted(shown, cat.members[:2])}"
            return Label("", cat.cover, text, kind="category", keys=cat.members, category=cat.synset)
        if ranked and top_share >= 0.5:
            return Label("", top_share, f'"{shown[ranked[0][0]]}"', kind="token", keys=(ranked[0][0],))
        if info.contexts:
            # a shared non-English language says more than a handful of its function words
            langs = [guess_language(c) for c in info.contexts]
            best = max(set(langs), key=langs.count)
            if best and best != "English" and langs.count(best) / len(langs) >= 0.7:
                name = "code" if best == "code" else f"{best} text"
                return Label("", langs.count(best) / len(langs), name, kind="language")
        cover = sum(c for _, c in ranked[:3]) / total
        if ranked and cover >= 0.6:
            keys = tuple(k for k, _ in ranked[:3])
            return Label("", cover, _quoted(shown, keys), kind="tokens", keys=keys)
        classes = [token_class(t) for t, c in info.top_tokens for _ in range(c)]
        top_cls = max(set(classes), key=classes.count) if classes else ""
        if top_cls and classes.count(top_cls) / len(classes) >= 0.6:
            return Label("", classes.count(top_cls) / len(classes), top_cls, kind="class")
        if ranked:
            return Label("", 0.5 * cover, "mixed: " + _quoted(shown, [k for k, _ in ranked[:3]]), kind="mixed")
        return Label("", 0.0)

    def output_side(self, info: FeatureInfo) -> str:
        """What the feature says: `say "X"` when one or two promoted tokens dominate, else a category they share."""
        return self.output_label(info).output

    def output_label(self, info: FeatureInfo) -> Label:
        """The output side as a Label: its text in `output`, the tokens (or category) it says in `keys`."""
        tops = [(t.strip(), v) for t, v in info.top_logits if t.strip()]
        vals = [v for _, v in tops]
        if len(vals) >= 5 and vals[0] > 0 and vals[0] >= 1.5 * vals[4]:
            toks = [t for t, v in tops[:2] if v >= 0.7 * vals[0]]
            keys = tuple(norm_token(t) for t in toks)
            return Label("", 1.0, output="say " + " / ".join(f'"{t}"' for t in toks), keys=keys, side="output")
        if len(tops) >= 5 and self.wordnet is not None:
            counts = {norm_token(t): 1 for t, _ in tops[:5] if _wordlike(" " + t)}
            cat = self.wordnet.best_category(counts, min_cover=0.6) if len(counts) >= 3 else None
            if cat is not None:
                from mechscope.features.wordnet import plural

                first = next(t for t, _ in tops if norm_token(t) == cat.members[0])
                text = f'say {plural(cat.name)}: "{first}"'
                return Label("", 1.0, output=text, keys=cat.members, category=cat.synset, side="output")
        return Label("", 0.0)


def _names_content(side: Label) -> bool:
    """Whether an input side names something: a category, a language, or a content token."""
    if side.kind in ("category", "language"):
        return True
    return side.kind in ("token", "tokens") and any(is_content(k) for k in side.keys)


def label_keywords(label: str) -> set[str]:
    """The normalised tokens a label claims the feature fires on (the part before '→')."""
    inp = label.split("→")[0]
    if inp.startswith("mixed"):
        return set()
    return {norm_token(k) for k in re.findall(r'"([^"]+)"', inp)}


def label_language(label: str) -> str:
    m = re.match(r"^(\w+) text", label.split("→")[0].strip())
    return m.group(1) if m else ""
