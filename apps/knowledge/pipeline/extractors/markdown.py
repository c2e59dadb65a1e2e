"""Markdown, split at its headings; and plain text, split into paragraphs.

Markdown is not rendered: a small line scanner follows the CommonMark rules that matter
for structure. ATX (``# Title``) and setext (``Title`` over ``===``/``---``) headings update
the heading path, except inside fenced code blocks. Pipe tables (a row followed by a
``|---|`` delimiter row) become ``kind="table"`` Sections with one row per line. Raw HTML
blocks (``<table>``, ``<div>``... up to the next blank line) go through the HTML extractor,
so an HTML table keeps its rows too. A YAML front matter block is kept as text. Everything
else is text, grouped by paragraph.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..types import ProgressCallback, Section
from .html import html_sections
from .tables import render_row, table_sections
from .text import HeadingPath, group_blocks, normalize_text, one_line, read_text

LABEL = "Markdown"

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-{2,})[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TABLE_DELIMITER = re.compile(r"^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_NOT_SETEXT_PARAGRAPH = re.compile(r"^(?: {0,3}(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)| {0,3}>| {4}|\t)")
_HTML_BLOCK = re.compile(
    r"^ {0,3}<(?:/?(?:address|article|aside|blockquote|center|details|dialog|div|dl|fieldset|figcaption|figure|"
    r"footer|form|h[1-6]|header|hr|main|nav|ol|p|pre|section|summary|table|tbody|td|tfoot|th|thead|tr|ul)"
    r"(?:[\s/>]|$)|!--)",
    re.IGNORECASE,
)


def extract_markdown(path: Path, progress: ProgressCallback | None) -> Iterator[Section]:
    sections = markdown_sections(read_text(path, label=LABEL))
    yield from _with_progress(sections, progress)


def extract_txt(path: Path, progress: ProgressCallback | None) -> Iterator[Section]:
    sections = text_sections(read_text(path, label="text"))
    yield from _with_progress(sections, progress)


def text_sections(text: str) -> list[Section]:
    paragraphs = normalize_text(text).split("\n\n")
    return list(group_blocks(paragraphs, metadata={"kind": "text"}))


def _with_progress(sections: list[Section], progress: ProgressCallback | None) -> Iterator[Section]:
    for done, section in enumerate(sections, start=1):
        yield section
        if progress:
            progress(done, len(sections))


def markdown_sections(text: str) -> list[Section]:
    return _MarkdownScanner(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).scan()


class _MarkdownScanner:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.sections: list[Section] = []
        self.headings = HeadingPath()
        self.body: list[str] = []  # lines of text since the last heading/table/HTML block
        self.paragraph_start = 0  # index in body of the current paragraph's first line
        self.paragraph_ok = True  # the current paragraph could become a setext heading

    def scan(self) -> list[Section]:
        lines = self.lines
        index = self._front_matter()
        while index < len(lines):
            line = lines[index]
            fence = _FENCE.match(line)
            if fence:
                index = self._fenced_block(index, fence.group(1))
                continue
            atx = _ATX.match(line)
            if atx:
                self._heading(len(atx.group(1)), atx.group(2) or "")
                index += 1
                continue
            setext = _SETEXT.match(line)
            if setext and self._setext_candidate():
                title = " ".join(self.body[self.paragraph_start :])
                del self.body[self.paragraph_start :]
                self._heading(1 if setext.group(1).startswith("=") else 2, title)
                index += 1
                continue
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if "|" in line and "|" in following and _TABLE_DELIMITER.match(following):
                index = self._table(index)
                continue
            if _HTML_BLOCK.match(line) and not self._in_paragraph():
                index = self._html_block(index)
                continue
            self._text_line(line)
            index += 1
        self._flush()
        return self.sections

    # -- blocks ------------------------------------------------------------------------
    def _front_matter(self) -> int:
        if not self.lines or self.lines[0].strip() != "---":
            return 0
        for index in range(1, min(len(self.lines), 200)):
            if self.lines[index].strip() in ("---", "..."):
                self.body.extend(self.lines[1:index])
                self._text_line("")
                return index + 1
        return 0

    def _fenced_block(self, index: int, marker: str) -> int:
        self._text_line(self.lines[index])
        self.paragraph_ok = False
        index += 1
        while index < len(self.lines):
            line = self.lines[index]
            self.body.append(line)
            index += 1
            if line.strip().startswith(marker[0] * len(marker)) and not line.strip().strip(marker[0]):
                break
        self._text_line("")
        return index

    def _heading(self, level: int, text: str) -> None:
        self._flush()
        title = one_line(text)
        if title:
            self.headings.enter(level, title)
            self.sections.append(Section(text=title, metadata=self.headings.metadata("heading")))

    def _table(self, index: int) -> int:
        self._flush()
        rows = [_pipe_cells(self.lines[index])]
        index += 2  # the header row and the delimiter row
        while index < len(self.lines) and self.lines[index].strip() and "|" in self.lines[index]:
            rows.append(_pipe_cells(self.lines[index]))
            index += 1
        self.sections.extend(table_sections((render_row(row) for row in rows), metadata=self._place()))
        return index

    def _html_block(self, index: int) -> int:
        self._flush()
        start = index
        while index < len(self.lines) and self.lines[index].strip():
            index += 1
        outer = self.headings.path
        for section in html_sections("\n".join(self.lines[start:index])):
            inner = section.metadata.get("heading_path", [])
            if outer or inner:
                section.metadata["heading_path"] = [*outer, *inner]
            self.sections.append(section)
        return index

    # -- text --------------------------------------------------------------------------
    def _text_line(self, line: str) -> None:
        if not line.strip():
            self.body.append("")
            self.paragraph_start = len(self.body)
            self.paragraph_ok = True
            return
        if self.paragraph_start == len(self.body) and _NOT_SETEXT_PARAGRAPH.match(line):
            self.paragraph_ok = False
        self.body.append(line)

    def _in_paragraph(self) -> bool:
        return len(self.body) > self.paragraph_start

    def _setext_candidate(self) -> bool:
        return self._in_paragraph() and self.paragraph_ok

    def _flush(self) -> None:
        blocks = [normalize_text(block) for block in "\n".join(self.body).split("\n\n")]
        self.sections.extend(group_blocks(blocks, metadata=self.headings.metadata("text")))
        self.body = []
        self.paragraph_start = 0
        self.paragraph_ok = True

    def _place(self) -> dict:
        path = self.headings.path
        return {"heading_path": path} if path else {}


def _pipe_cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(line)]
