"""The offline text sources: documentation and man pages Debian installs (`builtin`) and WordNet's entities.

See `mechscope.corpus.sources` for how they are named, mixed and split; this module only assembles them, once,
into `$MECHSCOPE_CACHE/corpus/{builtin-v1,wordnet-v1}/{train,heldout}.jsonl`.

>>> build_wordnet()  # doctest: +SKIP
PosixPath('/root/.cache/mechscope/corpus/wordnet-v1')
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import html.parser
import json
import logging
import re
from pathlib import Path
from typing import Iterator

from mechscope.errors import MechscopeError
from mechscope.paths import atomic_write_text, cache_dir

log = logging.getLogger(__name__)
BUILTIN_VERSION = "builtin-v1"
WORDNET_VERSION = "wordnet-v1"
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
# One file (or glob) per package that only that package installs: other packages ship translated man pages
# too (dpkg-dev, passwd, apt), so "some page in /usr/share/man/de" would not show that manpages-de is there.
BUILTIN_REQUIRES = {
    "python3.11-doc": "/usr/share/doc/python3.11/html/index.html",
    "debian-reference-en": "/usr/share/doc/debian-reference-en/**/*.html",
    "fortunes": "/usr/share/games/fortunes/computers",
    "fortunes-de": "/usr/share/games/fortunes/de/*",
    "fortunes-es": "/usr/share/games/fortunes/es/*",
    **{f"manpages-{lang[:2]}": f"/usr/share/man/{lang}/man7/hier.7.gz" for lang in ("fr", "de", "es", "zh_CN", "ja")},
}
APT_PACKAGES = " ".join(BUILTIN_REQUIRES)
PIECE_CHARS = 4000


def is_heldout(doc_id: str) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % 20 == 0


def text_pieces(text: str, limit: int = PIECE_CHARS) -> Iterator[str]:
    buf = ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if buf and len(buf) + len(para) > limit:
            yield buf
            buf = ""
        buf = f"{buf}\n\n{para}" if buf else para[: limit * 2]
    if buf:
        yield buf


class _HTMLText(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("p", "div", "br", "li", "h1", "h2", "h3", "pre", "tr", "dt", "dd"):
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(raw: str) -> str:
    p = _HTMLText()
    p.feed(raw)
    text = "".join(p.parts)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_TROFF_ESC = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\s[+-]?\d+|\\[&|^%]|\\\*(\(..|.)")


def troff_to_text(raw: str) -> str:
    out: list[str] = []
    for line in raw.splitlines():
        if line.startswith(('.\\"', "'\\\"", ".\\}", ".de", ".if", ".ie", ".el", ".ds", ".nr", ".so")):
            continue
        if line.startswith((".SH", ".SS")):
            out.append("\n" + line[3:].strip().strip('"') + "\n")
            continue
        if line.startswith((".PP", ".LP", ".P", ".TP", ".IP", ".sp", ".br")) and len(line.split()[0]) <= 3:
            out.append("")
            rest = line.split(None, 1)
            if len(rest) > 1 and line.startswith(".IP"):
                out.append(rest[1].strip('"'))
            continue
        if line.startswith("."):
            parts = line.split(None, 1)
            line = parts[1] if len(parts) > 1 else ""
            line = line.replace('"', "")
        line = (
            _TROFF_ESC.sub("", line).replace("\\-", "-").replace("\\(em", "—").replace("\\e", "\\").replace("\\ ", " ")
        )
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _builtin_sources() -> Iterator[tuple[str, str]]:
    """(id, text) for every installed document, in a fixed order."""

    def files(pattern: str) -> list[str]:
        return sorted(glob.glob(pattern, recursive=True))

    for f in files("/usr/share/doc/python3.11/html/**/*.html") + files("/usr/share/doc/debian-reference-en/**/*.html"):
        try:
            yield f, html_to_text(Path(f).read_text(errors="replace"))
        except OSError:
            continue
    for lang in ("fr", "de", "es", "zh_CN", "zh_TW", "ja"):
        for f in files(f"/usr/share/man/{lang}/man*/*.gz"):
            try:
                yield f, troff_to_text(gzip.open(f, "rt", errors="replace").read())
            except (OSError, EOFError):
                continue
    for f in files("/usr/share/games/fortunes/**/*") + files("/usr/share/games/fortunes-*/**/*"):
        p = Path(f)
        if p.is_file() and not p.suffix == ".dat" and not p.is_symlink():
            try:
                yield f, p.read_text(errors="replace").replace("\n%\n", "\n\n")
            except (OSError, UnicodeDecodeError):
                continue


def missing_builtin_packages() -> list[str]:
    """The Debian packages of the built-in corpus whose files are not on this machine."""
    return [pkg for pkg, pattern in BUILTIN_REQUIRES.items() if not glob.glob(pattern, recursive=True)]


def build_builtin(force: bool = False) -> Path:
    """Assemble the built-in corpus once; returns its directory.

    Refuses when a source package is missing: a corpus silently built from the rest (a few M characters
    instead of ~53 M) would be cached and reused as if it were the real one.
    """
    out = cache_dir() / "corpus" / BUILTIN_VERSION
    if (out / "train.jsonl").exists() and (out / "heldout.jsonl").exists() and not force:
        return out
    missing = missing_builtin_packages()
    if missing:
        raise MechscopeError(
            f"the built-in corpus needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed; install with: apt-get install {' '.join(missing)}"
        )
    train: list[str] = []
    held: list[str] = []
    n_chars = 0
    for src, text in _builtin_sources():
        for i, piece in enumerate(text_pieces(text)):
            if len(piece) < 200:
                continue
            doc_id = f"{src}#{i}"
            line = json.dumps({"id": doc_id, "text": piece}, ensure_ascii=False)
            (held if is_heldout(doc_id) else train).append(line)
            n_chars += len(piece)
    if not train:
        raise MechscopeError(
            f"the built-in corpus needs Debian documentation; install it with: apt-get install {APT_PACKAGES}"
        )
    atomic_write_text(out / "heldout.jsonl", "\n".join(held) + "\n")
    atomic_write_text(out / "train.jsonl", "\n".join(train) + "\n")
    (out / "stats.json").write_text(
        json.dumps({"pieces_train": len(train), "pieces_heldout": len(held), "chars": n_chars})
    )
    log.info("built-in corpus: %d train / %d held-out pieces, %.1f M chars", len(train), len(held), n_chars / 1e6)
    return out


def wordnet_sentences() -> Iterator[tuple[str, str]]:
    """(synset offset, "Name is gloss.") for every instance synset (pointer '@i') of WordNet's nouns."""
    for line in WORDNET_NOUNS.open(encoding="utf-8", errors="replace"):
        if line.startswith(" ") or " @i " not in line:
            continue
        head, _, gloss = line.partition("|")
        f = head.split()
        n_words = int(f[3], 16)
        names = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        # the fullest everyday name: "Michael Jordan" rather than "Jordan"
        name = max(
            (n for n in names if len(n.split()) <= 4), key=lambda n: (len(n.split()), -names.index(n)), default=names[0]
        )
        name = re.sub(r"\(.*?\)", "", name).strip()
        gloss = gloss.strip().rstrip(";").strip()
        definition, _, examples = gloss.partition('; "')
        text = f"{name} is {definition.strip()}."
        if examples:
            text += " " + examples.replace('"', "").replace(";", ".").strip()
        yield f[0], text


def build_wordnet(force: bool = False) -> Path:
    """Assemble the WordNet entity corpus once (pieces of ~30 sentences in WordNet order); returns its directory."""
    out = cache_dir() / "corpus" / WORDNET_VERSION
    if (out / "train.jsonl").exists() and (out / "heldout.jsonl").exists() and not force:
        return out
    if not WORDNET_NOUNS.exists():
        raise MechscopeError(
            "the wordnet corpus needs WordNet's data files; install them with: apt-get install wordnet-base"
        )
    train: list[str] = []
    held: list[str] = []
    sents = list(wordnet_sentences())
    for i in range(0, len(sents), 30):
        chunk = sents[i : i + 30]
        doc_id = f"wordnet#{chunk[0][0]}"
        line = json.dumps({"id": doc_id, "text": "\n".join(t for _, t in chunk)}, ensure_ascii=False)
        (held if is_heldout(doc_id) else train).append(line)
    atomic_write_text(out / "heldout.jsonl", "\n".join(held) + "\n")
    atomic_write_text(out / "train.jsonl", "\n".join(train) + "\n")
    log.info("wordnet corpus: %d entities in %d train / %d held-out pieces", len(sents), len(train), len(held))
    return out
