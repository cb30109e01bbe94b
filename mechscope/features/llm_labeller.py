"""Plug a language model (local or hosted) into labelling: mechscope writes the prompt and reads the answer.

`LLMLabeller(complete)` takes any function from a prompt to the model's text, so no client library is a
dependency: wrap llama.cpp, an OpenAI-compatible server or a test double. The answer is read line by line
(`input:`, `output:`, `label:`, `confidence:`); an answer without a `label:` line falls back to the built-in
heuristic label, so a flaky model never leaves a feature unlabelled. Dense and dead features never reach it
(the index builder labels them itself).

>>> lab = LLMLabeller(lambda prompt: "input: US state names\\noutput: say Texas\\nlabel: US states\\nconfidence: 0.8")
>>> lab.label(FeatureInfo(7, 331, [(" Texas", 9), (" Ohio", 3)], [(" Texas", 2.0)])).text
'US states'
"""

from __future__ import annotations

import re
from typing import Callable

from mechscope.features.labels import FeatureInfo, HeuristicLabeller, Label, label_keywords

PROMPT = """You label features of a language model. A feature is active on some tokens of text.
Tokens where it is most active (token × count): {tokens}
Contexts, ending at the most active token:
{contexts}
Tokens it makes more likely: {promotes}
Tokens it makes less likely: {suppresses}
Answer in four lines:
input: what it reads, generalised (e.g. "US state names")
output: what it says (e.g. "say Texas"), or "none"
label: a short label of at most six words
confidence: a number from 0 to 1
"""


class LLMLabeller:
    """Labels from a language model: `complete(prompt) -> text` is all it needs.

    name: recorded as the index's `label_method` (say which model labelled it).
    """

    def __init__(self, complete: Callable[[str], str], name: str = "llm", max_contexts: int = 8) -> None:
        self.complete, self.name, self.max_contexts = complete, name, max_contexts
        self._fallback = HeuristicLabeller()

    def prompt(self, info: FeatureInfo) -> str:
        """The prompt sent for one feature (evidence chunks only: the held-out score stays honest)."""
        return PROMPT.format(
            tokens=", ".join(f"{t!r}×{n}" for t, n in info.top_tokens[:12]) or "none",
            contexts="\n".join(f"- {c!r}" for c in info.contexts[: self.max_contexts]) or "- none",
            promotes=", ".join(repr(t) for t, _ in info.top_logits[:10]) or "none",
            suppresses=", ".join(repr(t) for t, _ in info.bottom_logits[:10]) or "none",
        )

    def label(self, info: FeatureInfo) -> Label:
        fields = parse_answer(self.complete(self.prompt(info)))
        if not fields.get("label"):
            return self._fallback.label(info)
        try:
            conf = min(1.0, max(0.0, float(fields.get("confidence", "0.5"))))
        except ValueError:
            conf = 0.5
        out = "" if fields.get("output", "").lower() in ("", "none") else fields["output"]
        text = fields["label"]
        return Label(text, conf, fields.get("input", ""), out, "llm", tuple(sorted(label_keywords(text))))


def parse_answer(text: str) -> dict[str, str]:
    """`key: value` lines of a model's answer (keys lower-cased, surrounding quotes and markup dropped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\W*(input|output|label|confidence)\W*:\s*(.+)$", line.strip(), re.I)
        if m and m.group(1).lower() not in out:
            out[m.group(1).lower()] = m.group(2).strip().strip("*`").strip()
    return out
