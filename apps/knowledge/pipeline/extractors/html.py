"""HTML: the readable text of a page, through lxml's HTML parser.

- Charset: byte-order mark, UTF-8 when the bytes are valid UTF-8, the ``<meta charset>`` /
  ``http-equiv`` declaration, then charset-normalizer (html/fake-html-cp1252.html declares
  nothing and is cp1252).
- Dropped: ``<head>``, scripts, styles, ``<noscript>``, templates, ``<nav>``, ``<footer>``,
  embedded objects, form controls, elements with ``hidden``/``aria-hidden="true"``/
  ``display:none``, and ARIA navigation/contentinfo/search regions. When the page has one
  ``<main>`` (or ``role="main"``) holding a fair share of the text, only it is read.
- Headings h1–h6 update the heading path (``kind="heading"`` Sections); text between them
  becomes ``kind="text"`` Sections; data tables become ``kind="table"`` Sections with one
  row per line (row/col spans resolved; a cell spanning rows is repeated on each row).
  Layout tables (at most one filled cell per row, or very long cells) are read as text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import lxml.html
from lxml import etree

from ..types import ExtractionError, ProgressCallback, Section
from .tables import render_row, table_sections
from .text import MAX_TEXT_BYTES, HeadingPath, decode, group_blocks, normalize_text, one_line

LABEL = "HTML"

_DROP_TAGS = {
    "head",
    "script",
    "style",
    "noscript",
    "template",
    "nav",
    "footer",
    "iframe",
    "object",
    "embed",
    "svg",
    "canvas",
    "button",
    "select",
    "datalist",
    "map",
    "audio",
    "video",
    "picture",
}
_DROP_ROLES = {"navigation", "contentinfo", "search"}
_BLOCK_TAGS = {
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "caption",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "form",
    "header",
    "hgroup",
    "hr",
    "legend",
    "li",
    "main",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "ul",
}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_SPACES = re.compile(r"\s+")
# A table cell longer than this means the table lays out the page rather than holding data.
_LAYOUT_CELL_CHARS = 2000
_MAX_SPAN = 1000
_MAIN_SHARE = 0.25


def extract_html(path: Path, progress: ProgressCallback | None) -> Iterator[Section]:
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise ExtractionError(
            f"the {LABEL} file is too large ({size // (1024 * 1024)} MiB; the limit is "
            f"{MAX_TEXT_BYTES // (1024 * 1024)} MiB)",
            code="too_large",
        )
    data = path.read_bytes()
    match = _META_CHARSET.search(data[:4096])
    declared = match.group(1).decode("ascii", errors="ignore") if match else None
    sections = html_sections(decode(data, declared=declared))
    for done, section in enumerate(sections, start=1):
        yield section
        if progress:
            progress(done, len(sections))


def html_sections(markup: str) -> list[Section]:
    markup = _XML_DECLARATION.sub("", markup, count=1)  # lxml refuses str input that declares an encoding
    if not markup.strip():
        return []
    try:
        root = lxml.html.document_fromstring(markup)
    except etree.ParserError:  # "Document is empty": nothing but comments or whitespace
        return []
    walker = _Walker()
    walker.walk(_content_root(root))
    return walker.finish()


def _content_root(root):
    mains = root.xpath("//main | //*[@role='main']")
    if len(mains) == 1:
        body = root.find("body")
        whole = len(_SPACES.sub(" ", (body if body is not None else root).text_content()))
        if len(_SPACES.sub(" ", mains[0].text_content())) >= _MAIN_SHARE * whole:
            return mains[0]
    return root


def _dropped(element) -> bool:
    tag = element.tag
    if not isinstance(tag, str):  # comments, processing instructions
        return True
    if tag.lower() in _DROP_TAGS:
        return True
    attrib = element.attrib
    if "hidden" in attrib or attrib.get("aria-hidden", "").lower() == "true":
        return True
    if attrib.get("role", "").lower() in _DROP_ROLES:
        return True
    style = attrib.get("style")
    return bool(style and _HIDDEN_STYLE.search(style))


class _Walker:
    """Walks the tree once (iteratively: deep pages cannot exhaust the stack), collecting
    the text flow, headings and tables into Sections."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.headings = HeadingPath()
        self.pieces: list[str] = []
        self.pre_depth = 0
        self.heading_depth = 0

    def walk(self, root) -> None:
        walker = etree.iterwalk(root, events=("start", "end"))
        skipped: set[int] = set()  # ids of elements whose subtree was skipped
        for event, element in walker:
            tag = element.tag.lower() if isinstance(element.tag, str) else None
            if event == "start":
                if element is not root and _dropped(element):
                    walker.skip_subtree()
                    skipped.add(id(element))
                    continue
                if tag == "table" and self.heading_depth == 0:
                    rows = _table_rows(element)
                    if _is_data_table(rows):
                        self.flush()
                        self.sections.extend(table_sections((render_row(row) for row in rows), metadata=self._place()))
                        walker.skip_subtree()
                        skipped.add(id(element))
                        continue
                self.start(tag, element)
            else:
                if id(element) in skipped:
                    skipped.discard(id(element))
                else:
                    self.end(tag)
                if element is not root and element.tail:
                    self.text(element.tail)

    def start(self, tag: str | None, element) -> None:
        if tag in _HEADINGS and self.heading_depth == 0:
            self.flush()
            self.heading_depth = 1
        elif tag in _HEADINGS:
            self.heading_depth += 1
        if tag == "br":
            self.pieces.append("\n")
        elif tag in _BLOCK_TAGS:
            self.pieces.append("\n")
            if tag == "li":
                self.pieces.append("- ")
        if tag == "pre":
            self.pre_depth += 1
        if element.text:
            self.text(element.text)

    def end(self, tag: str | None) -> None:
        if tag == "pre":
            self.pre_depth -= 1
        if tag in _BLOCK_TAGS:
            self.pieces.append("\n")
        if tag in _HEADINGS:
            self.heading_depth -= 1
            if self.heading_depth == 0:
                heading = one_line("".join(self.pieces))
                self.pieces = []
                if heading:
                    self.headings.enter(_HEADINGS[tag], heading)
                    self.sections.append(Section(text=heading, metadata=self.headings.metadata("heading")))

    def text(self, text: str) -> None:
        self.pieces.append(text if self.pre_depth else _SPACES.sub(" ", text))

    def flush(self) -> None:
        text = normalize_text("".join(self.pieces))
        self.pieces = []
        if text:
            self.sections.extend(group_blocks(text.split("\n"), metadata=self.headings.metadata("text"), sep="\n"))

    def finish(self) -> list[Section]:
        self.flush()
        return self.sections

    def _place(self) -> dict:
        path = self.headings.path
        return {"heading_path": path} if path else {}


def _is_data_table(rows: list[list[str]]) -> bool:
    if not any(sum(1 for cell in row if cell) >= 2 for row in rows):
        return False
    return all(len(cell) <= _LAYOUT_CELL_CHARS for row in rows for cell in row)


def _direct_rows(table) -> Iterator:
    for child in table:
        tag = child.tag.lower() if isinstance(child.tag, str) else None
        if tag == "tr":
            yield child
        elif tag in ("thead", "tbody", "tfoot"):
            for row in child:
                if isinstance(row.tag, str) and row.tag.lower() == "tr":
                    yield row


def _table_rows(table) -> list[list[str]]:
    """Cell texts on a grid: a ``colspan`` cell appears once, a ``rowspan`` cell is repeated
    in each row it covers."""
    rows: list[list[str]] = []
    carried: dict[int, tuple[int, str]] = {}  # column → (rows still covered, text)
    for tr in _direct_rows(table):
        row: list[str] = []
        column = 0
        for cell in tr:
            tag = cell.tag.lower() if isinstance(cell.tag, str) else None
            if tag not in ("td", "th") or _dropped(cell):
                continue
            column = _carry(carried, row, column)
            text = _cell_text(cell)
            row.append(text)
            rowspan = _span(cell.get("rowspan"))
            colspan = _span(cell.get("colspan"))
            if rowspan > 1:
                carried[column] = (rowspan - 1, text)
            column += colspan
        _carry(carried, row, column)
        rows.append(row)
    return rows


def _carry(carried: dict[int, tuple[int, str]], row: list[str], column: int) -> int:
    """Append the texts of cells spanning down from earlier rows into ``column`` (and the
    columns after it); returns the next free column."""
    while column in carried:
        remaining, text = carried[column]
        row.append(text)
        if remaining <= 1:
            del carried[column]
        else:
            carried[column] = (remaining - 1, text)
        column += 1
    return column


def _span(value: str | None) -> int:
    try:
        return min(max(int(value or 1), 1), _MAX_SPAN)
    except ValueError:
        return 1


def _cell_text(cell) -> str:
    parts: list[str] = []
    walker = etree.iterwalk(cell, events=("start", "end"))
    for event, element in walker:
        if event == "start":
            if element is not cell and _dropped(element):
                walker.skip_subtree()
                continue
            tag = element.tag.lower() if isinstance(element.tag, str) else None
            if tag == "br" or tag in _BLOCK_TAGS:
                parts.append(" ")
            if element.text:
                parts.append(element.text)
        else:
            tag = element.tag.lower() if isinstance(element.tag, str) else None
            if tag in _BLOCK_TAGS:
                parts.append(" ")
            if element is not cell and element.tail:
                parts.append(element.tail)
    return one_line("".join(parts))
