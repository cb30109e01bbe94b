"""Automatic feature labels without an external LLM, behind a pluggable `Labeller` interface.

The built-in `HeuristicLabeller` reads what a feature's evidence shows:
  * input side — the tokens at the activation maximum of its top examples, in this order: one dominant
    token (`"Texas"`); a non-English language or script shared by ≥70% of the contexts (`French text`);
    a small set of tokens (`"Texas" / "Austin"`); a token class (`digits`, `punctuation`); else `mixed: ...`;
  * output side — the direct logit effect: when one token (or a few) dominate, `→ say "Austin"`.
Confidence is the share of top examples the input description covers (times 0.5 for fallbacks).

Honest scoring (`score_token_label`): a token label's keywords are used as a classifier "the feature is
active on this token" over held-out text the label was not built from; the score is F1. Language labels
are scored the same way with a per-token language guess.

Plug in another labeller (e.g. a local LLM) by implementing `Labeller.label(info) -> (label, confidence)`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class FeatureInfo:
    layer: int
    feature: int
    top_tokens: list[tuple[str, int]]  # token at the max position of top examples, with counts
    top_logits: list[tuple[str, float]]
    contexts: list[str] = field(default_factory=list)  # text of top examples (window up to the max token)
    n_examples: int = 0


class Labeller(Protocol):
    name: str

    def label(self, info: FeatureInfo) -> tuple[str, float]: ...


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


class HeuristicLabeller:
    name = "heuristic-v1"

    def label(self, info: FeatureInfo) -> tuple[str, float]:
        total = sum(c for _, c in info.top_tokens) or 1
        merged: dict[str, int] = {}
        shown: dict[str, str] = {}
        for tok, c in info.top_tokens:
            k = norm_token(tok)
            merged[k] = merged.get(k, 0) + c
            shown.setdefault(k, tok.strip() or repr(tok))
        ranked = sorted(merged.items(), key=lambda kv: -kv[1])
        inp, conf = "", 0.0
        if ranked and ranked[0][1] / total >= 0.5 and ranked[0][0]:
            inp, conf = f'"{shown[ranked[0][0]]}"', ranked[0][1] / total
        if not inp and info.contexts:
            # a shared non-English language says more than a handful of its function words
            langs = [guess_language(c) for c in info.contexts]
            best = max(set(langs), key=langs.count)
            if best and best != "English" and langs.count(best) / len(langs) >= 0.7:
                inp, conf = ("code" if best == "code" else f"{best} text"), langs.count(best) / len(langs)
        if not inp and ranked:
            cover = sum(c for _, c in ranked[:3]) / total
            if cover >= 0.6 and all(k for k, _ in ranked[:3]):
                inp, conf = " / ".join(f'"{shown[k]}"' for k, _ in ranked[:3]), cover
        if not inp:
            classes = [token_class(t) for t, c in info.top_tokens for _ in range(c)]
            top_cls = max(set(classes), key=classes.count) if classes else ""
            if top_cls and classes.count(top_cls) / len(classes) >= 0.6:
                inp, conf = top_cls, classes.count(top_cls) / len(classes)
        if not inp and ranked:
            inp, conf = (
                "mixed: " + " / ".join(f'"{shown[k]}"' for k, _ in ranked[:3] if k),
                0.5 * sum(c for _, c in ranked[:3]) / total,
            )
        out = ""
        if info.top_logits:
            vals = [v for _, v in info.top_logits]
            if len(vals) >= 5 and vals[0] > 0 and vals[0] >= 1.5 * vals[4]:
                toks = [t.strip() for t, v in info.top_logits[:2] if v >= 0.7 * vals[0] and t.strip()]
                if toks:
                    out = "say " + " / ".join(f'"{t}"' for t in toks)
        label = f"{inp} → {out}" if inp and out else (inp or out or "unclear")
        return label, round(min(1.0, conf if inp else 0.3), 3)


def label_keywords(label: str) -> set[str]:
    """The normalised tokens a label claims the feature fires on (the part before '→')."""
    inp = label.split("→")[0]
    if inp.startswith("mixed"):
        return set()
    return {norm_token(k) for k in re.findall(r'"([^"]+)"', inp)}


def label_language(label: str) -> str:
    m = re.match(r"^(\w+) text", label.split("→")[0].strip())
    return m.group(1) if m else ""
