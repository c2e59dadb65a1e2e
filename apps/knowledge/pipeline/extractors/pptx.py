"""PowerPoint (.pptx, also .pptm/.ppsx/.potx): slide by slide.

python-pptx opens the package and finds the slides and their notes; the shapes are read
from each slide's XML directly rather than through python-pptx's shape classes, which raise
on shape types they do not know (pptx/powerpoint_unrecognized_shape.pptx) and on some
damaged pictures. Per slide: the title first, then the other text frames in the order of
the shape tree (group shapes included), tables as ``kind="table"`` Sections, and the
speaker notes as ``kind="notes"``. Date, footer and slide-number placeholders and charts are
left out. Metadata ``slide`` is 1-based; progress counts slides.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pptx

from ..types import ProgressCallback, Section
from .ooxml import LABELS, check_zip_bomb
from .tables import render_row, table_sections
from .text import normalize_text

A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
P = "{http://schemas.openxmlformats.org/presentationml/2006/main}"
MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
LABEL = LABELS["pptx"]

_TITLE_TYPES = {"title", "ctrTitle"}
_SKIPPED_PLACEHOLDERS = {"dt", "ftr", "sldNum"}


def extract_pptx(path: Path, progress: ProgressCallback | None) -> Iterator[Section]:
    check_zip_bomb(path, label=LABEL)
    presentation = pptx.Presentation(str(path))
    slides = list(presentation.slides)
    total = len(slides)
    for number, slide in enumerate(slides, start=1):
        place = {"slide": number}
        titles: list[str] = []
        texts: list[str] = []
        tables: list[list[list[str]]] = []
        tree = slide.element.find(f"{P}cSld/{P}spTree")
        if tree is not None:
            _collect_shapes(tree, titles, texts, tables)
        body = normalize_text("\n".join([*titles, *texts]))
        if body:
            yield Section(text=body, metadata={**place, "kind": "text"})
        for rows in tables:
            yield from table_sections((render_row(row) for row in rows), metadata=place)
        if slide.has_notes_slide:
            notes = normalize_text(_notes_text(slide.notes_slide.element))
            if notes:
                yield Section(text=notes, metadata={**place, "kind": "notes"})
        if progress:
            progress(number, total)


def _collect_shapes(tree, titles: list[str], texts: list[str], tables: list[list[list[str]]]) -> None:
    for shape in tree:
        tag = shape.tag
        if tag == f"{P}sp":
            placeholder = shape.find(f"{P}nvSpPr/{P}nvPr/{P}ph")
            kind = placeholder.get("type", "body") if placeholder is not None else None
            if kind in _SKIPPED_PLACEHOLDERS:
                continue
            body = shape.find(f"{P}txBody")
            text = _text_body(body) if body is not None else ""
            if text.strip():
                (titles if kind in _TITLE_TYPES else texts).append(text)
        elif tag == f"{P}graphicFrame":
            table = shape.find(f"{A}graphic/{A}graphicData/{A}tbl")
            if table is not None:
                tables.append(_table_rows(table))
        elif tag == f"{P}grpSp":
            _collect_shapes(shape, titles, texts, tables)
        elif tag == f"{MC}AlternateContent":
            choice = shape.find(f"{MC}Choice")
            if choice is None:
                choice = shape.find(f"{MC}Fallback")
            if choice is not None:
                _collect_shapes(choice, titles, texts, tables)
        # p:pic, p:cxnSp, p:contentPart: no text


def _notes_text(notes_slide) -> str:
    """The notes placeholder (``p:ph type="body"``) of a notes slide; the slide image,
    header and page-number placeholders are not notes."""
    texts = []
    for shape in notes_slide.iter(f"{P}sp"):
        placeholder = shape.find(f"{P}nvSpPr/{P}nvPr/{P}ph")
        body = shape.find(f"{P}txBody")
        if placeholder is not None and placeholder.get("type") == "body" and body is not None:
            texts.append(_text_body(body))
    return "\n".join(texts)


def _text_body(body) -> str:
    """Paragraphs of a ``txBody`` (``a:p``), line breaks (``a:br``) kept."""
    paragraphs = []
    for paragraph in body.iter(f"{A}p"):
        parts = []
        for child in paragraph:
            if child.tag in (f"{A}r", f"{A}fld"):
                text = child.find(f"{A}t")
                if text is not None and text.text:
                    parts.append(text.text)
            elif child.tag == f"{A}br":
                parts.append("\n")
        paragraphs.append("".join(parts))
    return "\n".join(paragraphs)


def _table_rows(table) -> list[list[str]]:
    rows = []
    for row in table.iter(f"{A}tr"):
        cells = []
        for cell in row.iter(f"{A}tc"):
            if cell.get("hMerge") in ("1", "true") or cell.get("vMerge") in ("1", "true"):
                continue  # covered by a merged cell
            body = cell.find(f"{A}txBody")
            cells.append(_text_body(body) if body is not None else "")
        rows.append(cells)
    return rows
