"""Word (.docx, also .docm/.dotx): body text in reading order.

python-docx opens the package; the body XML is then walked directly, in document order, so
that tables come where they are and text that python-docx's ``Paragraph.text`` leaves out
is kept: content controls (``w:sdt``), tracked insertions, text boxes (once: the DrawingML
version of an ``mc:AlternateContent``, not its VML fallback), equations. Headers, footers,
footnotes and comments are left out.

Headings (styles "Heading 1".."Heading 9", "Title", or an outline level) update the
heading path and are emitted as ``kind="heading"`` Sections; paragraphs between headings
are grouped into ``kind="text"`` Sections; tables go through ``tables.table_sections``.
Progress counts top-level body blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from docx.opc.constants import RELATIONSHIP_TYPE as RT
from docx.oxml.parser import parse_xml
from docx.package import Package

from ..types import ExtractionError, ProgressCallback, Section
from .ooxml import LABELS, check_zip_bomb
from .tables import render_row, table_sections
from .text import SECTION_MAX_CHARS, HeadingPath, normalize_text, one_line

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
M = "{http://schemas.openxmlformats.org/officeDocument/2006/math}"
LABEL = LABELS["docx"]

_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*(\d)$", re.IGNORECASE)
# Elements whose children are read as if they were in the parent's place.
_TRANSPARENT = {
    f"{W}hyperlink",
    f"{W}ins",
    f"{W}moveTo",
    f"{W}smartTag",
    f"{W}customXml",
    f"{W}fldSimple",
    f"{W}dir",
    f"{W}bdo",
    f"{W}sdtContent",
    f"{W}sdt",
}
_PROGRESS_STEPS = 100
# A "heading" longer than this is a paragraph styled as a heading: kept as text.
HEADING_MAX_CHARS = 300


def extract_docx(path: Path, progress: ProgressCallback | None) -> Iterator[Section]:
    check_zip_bomb(path, label=LABEL)
    # Package.open rather than docx.Document(), which refuses .docm/.dotx/.dotm: for those
    # python-docx has no part class, so their XML is parsed here from the part's bytes.
    package = Package.open(str(path))
    document_part = package.part_related_by(RT.OFFICE_DOCUMENT)
    body = _element(document_part).find(f"{W}body")
    if body is None:
        raise ExtractionError(f"the {LABEL} file has no document body", code="corrupt")
    try:
        styles = _StyleLevels(_element(document_part.part_related_by(RT.STYLES)))
    except KeyError:  # no styles part: no headings by style, outline levels still count
        styles = _StyleLevels(None)
    blocks = list(_iter_blocks(body))
    total = len(blocks)
    step = max(1, total // _PROGRESS_STEPS)

    headings = HeadingPath()
    paragraphs: list[str] = []
    size = 0

    def flush() -> Iterator[Section]:
        nonlocal paragraphs, size
        if paragraphs:
            yield Section(text="\n".join(paragraphs), metadata=headings.metadata("text"))
        paragraphs, size = [], 0

    for done, block in enumerate(blocks, start=1):
        if block.tag == f"{W}tbl":
            yield from flush()
            yield from table_sections((render_row(row) for row in _table_rows(block)), metadata=_place(headings))
        else:
            text = normalize_text(_paragraph_text(block))
            level = styles.level(block) if text and len(text) <= HEADING_MAX_CHARS else None
            if level is not None:
                yield from flush()
                heading = one_line(text)
                headings.enter(level, heading)
                yield Section(text=heading, metadata=headings.metadata("heading"))
            elif text:
                if paragraphs and size + len(text) + 1 > SECTION_MAX_CHARS:
                    yield from flush()
                paragraphs.append(text)
                size += len(text) + 1
        if progress and (done % step == 0 or done == total):
            progress(done, total)
    yield from flush()


def _element(part):
    """A part's XML root: python-docx's own for the parts it knows, parsed otherwise."""
    element = getattr(part, "element", None)
    return element if element is not None else parse_xml(part.blob)


def _place(headings: HeadingPath) -> dict:
    path = headings.path
    return {"heading_path": path} if path else {}


def _iter_blocks(parent) -> Iterator:
    """``w:p`` and ``w:tbl`` children in document order, looking inside content controls
    and custom XML wrappers."""
    for child in parent:
        tag = child.tag
        if tag == f"{W}p" or tag == f"{W}tbl":
            yield child
        elif tag in (f"{W}sdt", f"{W}sdtContent", f"{W}customXml"):
            yield from _iter_blocks(child)
        elif tag == f"{MC}AlternateContent":
            yield from _iter_blocks(_alternate_choice(child))


def _alternate_choice(element):
    """The first ``mc:Choice`` of an ``mc:AlternateContent`` (the modern rendition), or its
    ``mc:Fallback`` when there is no choice: reading both would duplicate the content."""
    choice = element.find(f"{MC}Choice")
    if choice is None:
        choice = element.find(f"{MC}Fallback")
    return choice if choice is not None else []


def _paragraph_text(paragraph) -> str:
    parts: list[str] = []
    boxes: list[str] = []
    _collect_inline(paragraph, parts, boxes)
    text = "".join(parts)
    if boxes:
        text = "\n".join([text, *boxes]) if text.strip() else "\n".join(boxes)
    return text


def _collect_inline(element, parts: list[str], boxes: list[str]) -> None:
    for child in element:
        tag = child.tag
        if tag == f"{W}r":
            _collect_run(child, parts, boxes)
        elif tag in _TRANSPARENT:
            _collect_inline(child, parts, boxes)
        elif tag == f"{M}oMathPara" or tag == f"{M}oMath":
            parts.append("".join(t.text or "" for t in child.iter(f"{M}t")))
        elif tag == f"{MC}AlternateContent":
            _collect_inline(_alternate_choice(child), parts, boxes)
        # w:pPr, w:del, w:moveFrom, bookmarks, proofing marks: no visible text


def _collect_run(run, parts: list[str], boxes: list[str]) -> None:
    for child in run:
        tag = child.tag
        if tag == f"{W}t":
            parts.append(child.text or "")
        elif tag == f"{W}tab" or tag == f"{W}ptab":
            parts.append("\t")
        elif tag == f"{W}br" or tag == f"{W}cr":
            parts.append("\n")
        elif tag == f"{W}noBreakHyphen":
            parts.append("-")
        elif tag == f"{MC}AlternateContent":
            _collect_run(_alternate_choice(child), parts, boxes)
        elif tag == f"{W}drawing" or tag == f"{W}pict":
            for box in child.iter(f"{W}txbxContent"):
                text = _blocks_text(box)
                if text:
                    boxes.append(text)


def _blocks_text(container) -> str:
    """Plain text of the paragraphs and tables inside a text box or a table cell."""
    lines = []
    for block in _iter_blocks(container):
        if block.tag == f"{W}tbl":
            lines.extend(render_row(row) for row in _table_rows(block))
        else:
            lines.append(_paragraph_text(block))
    return normalize_text("\n".join(lines))


def _table_rows(table) -> Iterator[list[str]]:
    """Cell texts row by row. A horizontally merged cell (``gridSpan``) is one cell; a
    vertically merged one repeats the text of the cell it continues, so that every row
    stands on its own."""
    above: dict[int, str] = {}  # grid column → text of the last vMerge="restart" cell
    for row in _iter_children(table, f"{W}tr"):
        cells: list[str] = []
        column = 0
        for cell in _iter_children(row, f"{W}tc"):
            properties = cell.find(f"{W}tcPr")
            span, merge = 1, None
            if properties is not None:
                grid_span = properties.find(f"{W}gridSpan")
                if grid_span is not None:
                    span = _int(grid_span.get(f"{W}val"), 1)
                v_merge = properties.find(f"{W}vMerge")
                if v_merge is not None:
                    merge = v_merge.get(f"{W}val") or "continue"
            if merge == "continue":
                text = above.get(column, "")
            else:
                text = one_line(_blocks_text(cell))
                if merge == "restart":
                    above[column] = text
            cells.append(text)
            column += max(span, 1)
        yield cells


def _iter_children(parent, tag: str) -> Iterator:
    for child in parent:
        if child.tag == tag:
            yield child
        elif child.tag in (f"{W}sdt", f"{W}sdtContent", f"{W}customXml"):
            yield from _iter_children(child, tag)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


class _StyleLevels:
    """Heading level of a paragraph from its style (looked up once per style id, following
    ``basedOn``) or its own outline level. 0 for "Title", 1.. for headings, None for body."""

    def __init__(self, styles) -> None:
        self._levels: dict[str, int | None] = {}
        self._default: str | None = None
        self._styles = {}
        if styles is not None:
            for style in styles.iter(f"{W}style"):
                if style.get(f"{W}type") not in (None, "paragraph"):
                    continue
                style_id = style.get(f"{W}styleId")
                if not style_id:
                    continue
                self._styles[style_id] = style
                if style.get(f"{W}default") in ("1", "true", "on"):
                    self._default = style_id

    def level(self, paragraph) -> int | None:
        properties = paragraph.find(f"{W}pPr")
        style_id = self._default
        if properties is not None:
            outline = properties.find(f"{W}outlineLvl")
            if outline is not None:
                return _outline_level(outline)
            style = properties.find(f"{W}pStyle")
            if style is not None and style.get(f"{W}val"):
                style_id = style.get(f"{W}val")
        if style_id is None:
            return None
        if style_id not in self._levels:
            self._levels[style_id] = self._style_level(style_id, depth=0)
        return self._levels[style_id]

    def _style_level(self, style_id: str, *, depth: int) -> int | None:
        style = self._styles.get(style_id)
        if style is None or depth > 10:
            return None
        name_element = style.find(f"{W}name")
        name = (name_element.get(f"{W}val") if name_element is not None else None) or style_id
        match = _HEADING_STYLE.match(name.strip())
        if match:
            return int(match.group(1))
        if name.strip().lower() == "title":
            return 0
        properties = style.find(f"{W}pPr")
        if properties is not None:
            outline = properties.find(f"{W}outlineLvl")
            if outline is not None:
                return _outline_level(outline)
        based_on = style.find(f"{W}basedOn")
        if based_on is not None and based_on.get(f"{W}val"):
            return self._style_level(based_on.get(f"{W}val"), depth=depth + 1)
        return None


def _outline_level(element) -> int | None:
    level = _int(element.get(f"{W}val"), 9)
    return level + 1 if 0 <= level < 9 else None
