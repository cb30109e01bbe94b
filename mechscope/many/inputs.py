"""Read the prompts of a trace-many run: a text file (one prompt per line), JSON Lines or CSV.

JSONL and CSV rows carry `prompt` and optionally `id`, `targets` (a list, or one string with targets separated
by `|`), `group` and `expect` (the answer the model should give; the catalogue then records whether it did).
Without an id a prompt is named by its line number. Ids become file names (`graphs/<id>.json`), so they use
letters, digits, `.`, `_` and `-` only.

A malformed line is reported with its line number and skipped; the rest runs. Duplicate ids and a file
without prompts are refused (MechscopeError, one line).

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
>>> _ = p.write_text('{"id": "dallas", "prompt": "Dallas is in the state of", "group": "texas"}\\n{"prompt": 3}\\n')
>>> items, bad = read_prompts(p)
>>> items[0].id, items[0].group, bad
('dallas', 'texas', ['line 2: "prompt" must be a non-empty string'])
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from mechscope.errors import MechscopeError

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")  # also a valid graph name for the web page
FIELDS = ("id", "prompt", "targets", "group", "expect")


@dataclass(frozen=True)
class PromptItem:
    """One prompt to trace: its id (file name), 1-based input line, text, target tokens, group, expected answer."""

    id: str
    line: int
    prompt: str
    targets: tuple[str, ...] = field(default=())
    group: str = ""
    expect: str | None = None


class _Bad(ValueError):
    """A malformed line (the message says why; the caller adds the line number)."""


def read_prompts(path: str | Path) -> tuple[list[PromptItem], list[str]]:
    """(prompts in file order, one message per malformed line). Refuses a missing or empty file and duplicate ids.

    The format follows the suffix: `.jsonl`/`.ndjson`, `.csv`, anything else is one prompt per line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark from a spreadsheet is not part of line 1
    except FileNotFoundError:
        raise MechscopeError(f"no prompt file {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MechscopeError(f"cannot read prompt file {path}: {e}") from None
    suffix = path.suffix.lower()
    rows = _jsonl(text) if suffix in (".jsonl", ".ndjson") else _csv(text) if suffix == ".csv" else _txt(text)
    items: list[PromptItem] = []
    bad: list[str] = []
    for line, raw in rows:
        try:
            items.append(_item(line, raw))
        except _Bad as e:
            bad.append(f"line {line}: {e}")
    if not items:
        extra = f" ({len(bad)} malformed line{'s' * (len(bad) != 1)}; first: {bad[0]})" if bad else ""
        raise MechscopeError(f"no prompts in {path}{extra}")
    _refuse_duplicates(items, path)
    return items, bad


def _txt(text: str) -> list[tuple[int, dict | str]]:
    # a blank line is not a prompt, but it keeps its number: ids stay the line numbers an editor shows
    lines = (s.removesuffix("\r") for s in text.split("\n"))
    return [(i, {"prompt": s}) for i, s in enumerate(lines, 1) if s.strip()]


def _jsonl(text: str) -> list[tuple[int, dict | str]]:
    out: list[tuple[int, dict | str]] = []
    for i, s in enumerate(text.split("\n"), 1):
        if not s.strip():
            continue
        try:
            out.append((i, json.loads(s)))
        except ValueError as e:
            out.append((i, f"not valid JSON ({e.msg})"))  # reported by _item
    return out


def _csv(text: str) -> list[tuple[int, dict | str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "prompt" not in cols:
        raise MechscopeError(f"a CSV prompt file needs a 'prompt' column (columns: {', '.join(cols) or 'none'})")
    out: list[tuple[int, dict | str]] = []
    for row in reader:
        line = reader.line_num  # the physical line where this record ends (quoted newlines span lines)
        if None in row:
            out.append((line, f"{len(row[None]) + len(cols)} fields, the header has {len(cols)}"))
            continue
        rec = {k.strip().lower(): v for k, v in row.items() if k is not None}
        if not any((v or "").strip() for v in rec.values()):
            continue
        out.append((line, {k: v for k, v in rec.items() if v not in (None, "")}))
    return out


def _item(line: int, raw: dict | str) -> PromptItem:
    if isinstance(raw, str):
        raise _Bad(raw)
    if not isinstance(raw, dict):
        raise _Bad(f"expected an object with a 'prompt', got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise _Bad(f"unknown field{'s' * (len(unknown) > 1)} {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Bad('"prompt" must be a non-empty string')
    rid = raw.get("id", line)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise _Bad('"id" must be a string or a whole number')
    rid = str(rid).strip()
    if not ID_RE.match(rid):
        raise _Bad(f"id {rid!r} is not usable as a file name (letters, digits, '.', '_', '-'; at most 121)")
    group = raw.get("group", "")
    expect = raw.get("expect")
    if not isinstance(group, str) or (expect is not None and not isinstance(expect, str)):
        raise _Bad('"group" and "expect" must be strings')
    return PromptItem(rid, line, prompt, _targets(raw.get("targets")), group.strip(), expect)


def _targets(t: object) -> tuple[str, ...]:
    if t is None:
        return ()
    if isinstance(t, str):
        # "|" separates targets in a CSV cell or a JSON string; tokens keep their leading space (" Texas")
        return tuple(x for x in t.split("|") if x)
    if isinstance(t, list) and all(isinstance(x, str) and x for x in t):
        return tuple(t)
    raise _Bad('"targets" must be a list of non-empty strings, or one string with targets separated by "|"')


def _refuse_duplicates(items: list[PromptItem], path: Path) -> None:
    first: dict[str, int] = {}
    for it in items:
        if it.id in first:
            raise MechscopeError(
                f"duplicate id {it.id!r} in {path} (lines {first[it.id]} and {it.line}); ids name the graph files"
            )
        first[it.id] = it.line
