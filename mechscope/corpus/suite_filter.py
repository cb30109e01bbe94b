"""Keep the lens suite out of corpus text: its exact prompts, and the facts its prompts ask about.

Two checks, both on one line at a time (whitespace collapsed, case ignored):

- a suite prompt ("Dallas is in the state of") anywhere in the line (`strip_suite_prompts` in `sampling` did this
  case-sensitively; the check here is the same rule, compiled into one regular expression);
- a suite fact: the prompt's subject and its answer close together in one line ("Dallas … Texas" within 80
  characters; CJK within 8). A prompt's subject is what differs between the prompts of its category once their
  common start and end are removed ("Dallas" in "Dallas is in the state of", "heiß" in the German antonym
  template, "2+2" in "1+1=2. 2+2="). Antonym pairs count only beside a word such as "opposite" or "Gegenteil"
  (`ANTONYM_CUES`). Prompts without an answer (the made-up entities) have no fact.

>>> f = SuiteFilter(["Dallas is in the state of", "Oakland is in the state of"], [("Dallas", "Texas", "")])
>>> f.clean("Dallas lies in Texas.\\nIt is big.\\nOakland is in the state of California.")
'It is big.'
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

FACT_WINDOW = 80  # characters between a subject and its answer that make a line state the suite's fact
CJK_WINDOW = 8
# an antonym pair states the suite's fact only beside one of these words ("old" and "new" share many a line of
# documentation that says nothing about opposites)
ANTONYM_CUES = r"opposite|antonym|contrari|contraire|contrario|gegenteil|反义|反対|対義"
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# a word boundary for Latin, Greek and Cyrillic letters only: "Dallas" ends before "是" in "Dallas是位于Texas的城市"
_LETTER = r"[0-9A-Za-z_\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff]"


def _bounded(word: str) -> str:
    """A regex for `word` that does not match inside a longer word (boundaries only where `word` has letters)."""
    pat = re.escape(word)
    if re.match(_LETTER, word):
        pat = f"(?<!{_LETTER})" + pat
    if re.match(_LETTER, word[-1:]):
        pat += f"(?!{_LETTER})"
    return pat


def _common_prefix(texts: list[str]) -> str:
    a, b = min(texts), max(texts)
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return a[:i]


def suite_items(suite_file: Path | None = None) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(exact prompts, (subject, answer, cue) facts) of the lens suite YAML; cue is "" or `ANTONYM_CUES`.

    >>> prompts, facts = suite_items()                  # doctest: +SKIP
    >>> ("Dallas", "Texas", "") in facts                # doctest: +SKIP
    True
    """
    import yaml

    from mechscope.corpus.sampling import SUITE_FILE

    data = yaml.safe_load(Path(suite_file or SUITE_FILE).read_text(encoding="utf-8"))
    items = data["prompts"]
    prompts = sorted({_flat(p["prompt"]) for p in items})
    by_cat: dict[str, list[dict]] = {}
    for p in items:
        by_cat.setdefault(p.get("category", ""), []).append(p)
    facts: set[tuple[str, str, str]] = set()
    for cat, group in by_cat.items():
        texts = [_flat(p["prompt"]) for p in group]
        if len(set(texts)) < 2:
            continue  # one prompt: nothing tells its subject from its template
        pre = _common_prefix(texts)
        suf = _common_prefix([t[::-1] for t in texts])[::-1]
        for p, t in zip(group, texts):
            subject = t[len(pre) : len(t) - len(suf)].strip(" .,:;\"'“”„«»")
            answers = [p.get("answer")] + list((p.get("answers") or {}).values())
            for a in answers:
                a = str(a or "").strip(" .,\"'")
                if subject and a:
                    facts.add((subject, a, ANTONYM_CUES if "antonym" in str(cat) else ""))
    return prompts, sorted(facts)


class SuiteFilter:
    """Drops the lines of a text that hold a suite prompt or state a suite fact (see the module docstring)."""

    def __init__(self, prompts: list[str], facts: list[tuple[str, str, str]]) -> None:
        self.prompts = sorted({_flat(p).lower() for p in prompts if p.strip()})
        # subject → (its bounded regex, [(answer regex, cue regex or None)]); plain `in` tests come first
        # because they are ~20x faster than one alternation of every subject
        self._facts: dict[str, tuple[re.Pattern, list[tuple[re.Pattern, re.Pattern | None]]]] = {}
        for subj, ans, cue in facts:
            key = subj.lower()
            pat, pairs = self._facts.setdefault(key, (re.compile(_bounded(key)), []))
            pairs.append((re.compile(_bounded(ans.lower())), re.compile(cue) if cue else None))

    @staticmethod
    @lru_cache(maxsize=1)
    def default() -> "SuiteFilter":
        """The filter of the shipped suite (mechscope/lens/suite.yaml)."""
        return SuiteFilter(*suite_items())

    def _violation(self, flat: str) -> tuple[int, int] | None:
        """The span of the first suite prompt, or of the answer of the first suite fact, in lower-cased `flat`."""
        for p in self.prompts:
            i = flat.find(p)
            if i >= 0:
                return i, i + len(p)
        for subj, (pat, pairs) in self._facts.items():
            if subj not in flat:
                continue
            window = CJK_WINDOW if _CJK.search(subj) else FACT_WINDOW
            for m in pat.finditer(flat):
                lo, hi = max(0, m.start() - window), m.end() + window
                for ans, cue in pairs:
                    a = ans.search(flat, lo, hi)
                    if a and (cue is None or cue.search(flat)):
                        return a.start(), a.end()
        return None

    def line_ok(self, line: str) -> bool:
        """Whether one line is free of every suite prompt and suite fact."""
        flat = _flat(line).lower()
        return not flat or self._violation(flat) is None

    def clean(self, text: str) -> str:
        """`text` without its offending lines: first every line that fails alone, then, while a prompt or fact
        spans a line break ("Q: Where is Dallas?" / "A: In Texas."), the lines that hold its end."""
        keep = [line for line in text.split("\n") if self.line_ok(line)]
        for _ in range(len(keep)):
            flats = [_flat(line).lower() for line in keep]
            joined = " ".join(flats)
            hit = self._violation(joined)
            if hit is None:
                break
            ends, pos = [], 0
            for f in flats:  # which lines the offending span touches
                ends.append((pos, pos + len(f)))
                pos += len(f) + 1
            keep = [line for line, (a, b) in zip(keep, ends) if not (a < hit[1] and hit[0] < b + 1)]
        return "\n".join(keep).strip("\n")
