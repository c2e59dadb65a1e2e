"""Text helpers shared by the extractors: normalisation, charset detection, grouping.

Normalisation (``normalize_text``): NFC (not NFKC, which would turn Chinese full-width
punctuation such as ，。：（） into ASCII), drop control and non-characters, collapse runs of
horizontal whitespace to one space, strip every line, and keep at most one blank line
between paragraphs. Line breaks survive: the chunker cuts tables between lines and prose at
sentence ends and newlines.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from charset_normalizer import from_bytes

from ..types import ExtractionError, Section

# Text is grouped into Sections of about this many characters (paragraphs and table rows are
# never cut; a single longer one makes a longer Section). The chunker re-cuts by tokens.
SECTION_MAX_CHARS = 4000

# Formats that are read whole (html, md, txt) refuse files larger than this.
MAX_TEXT_BYTES = 100 * 1024 * 1024

# How much of a file the charset detector looks at.
DETECT_SAMPLE_BYTES = 64 * 1024

# U+FFFE marks a line-end hyphenation point in PDFium's text ("ef\ufffeficient").
_DROP_CHARS = {0xFFFE: None, 0xFFFF: None, 0xFEFF: None, 0x00AD: None, 0x200B: None}
_LINE_SEPARATORS = re.compile(r"\r\n?|[\u2028\u2029\x0b\x0c\x85]")
_HSPACE = re.compile(r"\s+")  # applied line by line
_BLANK_LINES = re.compile(r"\n{3,}")
# Everything in Unicode category C (Cc control, Cf format, Cs surrogate, Co private use,
# Cn unassigned) except tab/newline and the format characters that change how text is
# read or rendered (joiners for emoji and Indic scripts, bidi marks).
_KEEP_FORMAT = {"\u200c", "\u200d", "\u200e", "\u200f", "\u2060"}


def _is_dropped(char: str) -> bool:
    if char in "\n\t" or char in _KEEP_FORMAT:
        return False
    return unicodedata.category(char)[0] == "C"


def normalize_text(text: str) -> str:
    """NFC, no control characters, one space for each run of spaces, trimmed lines, at
    most one blank line in a row."""
    if not text:
        return ""
    text = _LINE_SEPARATORS.sub("\n", text).translate(_DROP_CHARS)
    text = unicodedata.normalize("NFC", text)
    lines = []
    for line in text.split("\n"):
        # isprintable() is False for every Unicode "C" character (and for tabs and spaces
        # other than " "), so only those lines pay for the per-character filter.
        if not line.isprintable():
            line = "".join(char for char in line if not _is_dropped(char))
        lines.append(_HSPACE.sub(" ", line).strip())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def one_line(text: str) -> str:
    """``normalize_text`` folded onto one line (table cells, headings)."""
    if text.isascii() and text.isprintable():  # the common cell: nothing to normalise
        return " ".join(text.split())
    return " ".join(normalize_text(text).split())


# --------------------------------------------------------------------------------------
# Charset detection
# --------------------------------------------------------------------------------------
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


# What browsers actually use for these labels (WHATWG Encoding Standard).
_WHATWG_ALIASES = {
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
}


def bom_encoding(data: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return encoding
    return None


def is_utf8(data: bytes, *, complete: bool) -> bool:
    """``data`` is valid UTF-8; with ``complete=False`` a character cut at the end is fine."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(data: bytes, *, complete: bool = True, declared: str | None = None) -> str:
    """The encoding of ``data`` (the whole file, or its start with ``complete=False``).

    Order: byte-order mark; UTF-8 if the bytes are valid UTF-8 (text in another encoding
    almost never is, while pages that declare latin-1 but are UTF-8 are common); a
    ``declared`` charset that decodes the data (HTML's meta charset); then
    charset-normalizer. Among charset-normalizer's equally good
    answers (same chaos, same coherence) cp1252 wins: it tells cp1250 and cp1252 apart badly
    on short Western text (fake-html-cp1252.html comes out as cp1250, with č for è)."""
    bom = bom_encoding(data)
    if bom:
        return bom
    if is_utf8(data, complete=complete):
        return "utf-8"
    if declared:
        declared = _WHATWG_ALIASES.get(declared.lower(), declared)
        try:
            codecs.getincrementaldecoder(declared)().decode(data, final=complete)
        except (LookupError, UnicodeDecodeError):
            pass
        else:
            return declared
    matches = list(from_bytes(data))
    if not matches:
        return "cp1252" if _decodes(data, "cp1252") else "latin-1"
    best = min(matches, key=lambda m: (round(m.chaos, 2), -round(m.coherence, 2)))
    ties = [
        m
        for m in matches
        if round(m.chaos, 2) == round(best.chaos, 2) and round(m.coherence, 2) == round(best.coherence, 2)
    ]
    for match in ties:
        if "cp1252" in match.could_be_from_charset:
            return "cp1252"
    return best.encoding


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def read_text(path: Path, *, label: str, declared: str | None = None) -> str:
    """The whole file decoded (formats that are parsed in one piece: html, md, txt)."""
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise ExtractionError(
            f"the {label} file is too large ({size // (1024 * 1024)} MiB; the limit is "
            f"{MAX_TEXT_BYTES // (1024 * 1024)} MiB)",
            code="too_large",
        )
    data = path.read_bytes()
    return decode(data, declared=declared)


def decode(data: bytes, *, declared: str | None = None) -> str:
    encoding = detect_encoding(data, declared=declared)
    return data.decode(encoding, errors="replace")


# --------------------------------------------------------------------------------------
# Grouping
# --------------------------------------------------------------------------------------
def group_blocks(
    blocks: Iterable[str],
    *,
    metadata: dict[str, Any],
    sep: str = "\n\n",
    max_chars: int = SECTION_MAX_CHARS,
) -> Iterator[Section]:
    """Consecutive text blocks (paragraphs, lines) joined with ``sep`` into Sections of
    about ``max_chars``, never cutting a block; empty blocks are dropped. Each Section gets a
    copy of ``metadata``."""
    buffer: list[str] = []
    size = 0
    for block in blocks:
        if not block:
            continue
        if buffer and size + len(block) + len(sep) > max_chars:
            yield Section(text=sep.join(buffer), metadata=dict(metadata))
            buffer, size = [], 0
        buffer.append(block)
        size += len(block) + len(sep)
    if buffer:
        yield Section(text=sep.join(buffer), metadata=dict(metadata))


class HeadingPath:
    """The headings above the current point, outer first. ``enter(level, text)`` pops the
    headings at the same or a deeper level and pushes the new one."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, text: str) -> None:
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))

    @property
    def path(self) -> list[str]:
        return [text for _, text in self._stack]

    def metadata(self, kind: str) -> dict[str, Any]:
        path = self.path
        return {"kind": kind, "heading_path": path} if path else {"kind": kind}
