"""Tables as text: one row per line, rows never cut.

Two renderings:

- ``table_sections`` (docx, pptx, html, md): each row is ``cell | cell | cell``; the first
  row is taken as the header. A long table becomes several Sections, each starting with the
  header line and flagged ``metadata["header"] = True`` so the chunker repeats it too.
- ``keyed_row_sections`` (xlsx, csv): each data row is ``Header1: v1; Header2: v2`` so that
  every line stands on its own. The header is the first non-empty row, except that title
  rows above the table (a sheet title, "In millions of CHF", a period line) are kept as a
  text Section instead: among the first ``TITLE_ROWS_MAX`` non-empty rows, the header is the
  first one with at least half as many filled cells as the widest (and at least two).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..types import Section
from .text import SECTION_MAX_CHARS, one_line

# How many non-empty rows are looked at to find the header.
TITLE_ROWS_MAX = 10


def render_row(cells: Iterable[str]) -> str:
    """``cell | cell | cell``: cells on one line, trailing empty cells dropped (a ragged
    row stays ragged, but does not gain a tail of empty separators)."""
    values = [one_line(cell) for cell in cells]
    while values and not values[-1]:
        values.pop()
    return " | ".join(values).strip()  # an empty first cell leaves a leading "| "


def table_sections(
    rows: Iterable[str], *, metadata: dict[str, Any], max_chars: int = SECTION_MAX_CHARS
) -> Iterator[Section]:
    """Rendered rows (see ``render_row``) as ``kind="table"`` Sections of about
    ``max_chars``; ``rows`` metadata is [first, last] (1-based, counting the header row).
    Empty rows are skipped."""
    header: str | None = None
    header_number = 0
    buffer: list[str] = []
    first = last = 0
    size = 0

    def section() -> Section:
        lines = buffer if first == header_number or header is None else [header, *buffer]
        meta = {**metadata, "kind": "table", "rows": [first, last]}
        if header is not None:
            meta["header"] = True
        return Section(text="\n".join(lines), metadata=meta)

    for number, row in enumerate(rows, start=1):
        if not row:
            continue
        if header is None:
            header, header_number = row, number
        if buffer and size + len(row) + 1 > max_chars:
            yield section()
            buffer, size = [], len(header) + 1
        if not buffer:
            first = number
        buffer.append(row)
        last = number
        size += len(row) + 1
    if buffer:
        if len(buffer) == 1 and first == header_number:
            # A one-row table is a line of text, not a header without rows.
            yield Section(text=buffer[0], metadata={**metadata, "kind": "table", "rows": [first, first]})
        else:
            yield section()


def keyed_row_sections(
    rows: Iterable[tuple[int, list[str]]],
    *,
    metadata: dict[str, Any],
    max_chars: int = SECTION_MAX_CHARS,
) -> Iterator[Section]:
    """``(row_number, cells)`` pairs (cells already formatted strings; empty rows allowed)
    as ``Header: value; ...`` lines grouped into ``kind="table"`` Sections, ``rows`` metadata
    being [first, last] row numbers of the lines in the Section."""
    pending: list[tuple[int, list[str]]] = []  # non-empty rows seen before the header
    header: list[str] | None = None
    header_number = 0
    buffer: list[str] = []
    first = last = 0  # first stays 0 until a data row has been added
    size = 0

    def flush() -> Section:
        return Section(text="\n".join(buffer), metadata={**metadata, "kind": "table", "rows": [first, last]})

    def add(number: int, line: str) -> Iterator[Section]:
        nonlocal buffer, first, last, size
        if buffer and size + len(line) + 1 > max_chars:
            yield flush()
            buffer, size = [], 0
        if not buffer:
            first = number
        buffer.append(line)
        last = number
        size += len(line) + 1

    def take_header() -> Iterator[Section]:
        """Decide the header from ``pending``, emit the title rows, then its data rows."""
        nonlocal header, header_number
        widest = max(_filled(cells) for _, cells in pending)
        wide_enough = max(2, (widest + 1) // 2)
        index = next((i for i, (_, cells) in enumerate(pending) if _filled(cells) >= wide_enough), 0)
        titles, (header_number, header), data = pending[:index], pending[index], pending[index + 1 :]
        if titles:
            yield Section(
                text="\n".join(" ".join(c for c in cells if c) for _, cells in titles),
                metadata={**metadata, "kind": "text", "rows": [titles[0][0], titles[-1][0]]},
            )
        for number, cells in data:
            yield from add(number, _keyed(header, cells))

    for number, raw_cells in rows:
        cells = [one_line(cell) for cell in raw_cells]
        if not any(cells):
            continue
        if header is None:
            pending.append((number, cells))
            if len(pending) >= TITLE_ROWS_MAX:
                yield from take_header()
            continue
        if all(not cell or (i < len(header) and cell == header[i]) for i, cell in enumerate(cells)):
            continue  # the header repeated (printed tables, concatenated exports)
        yield from add(number, _keyed(header, cells))
    if header is None and pending:
        yield from take_header()
    if header is not None and not buffer and not first:
        # Nothing but the header row: it is the content.
        yield Section(text=render_row(header), metadata={**metadata, "kind": "table", "rows": [header_number] * 2})
    if buffer:
        yield flush()


def _filled(cells: list[str]) -> int:
    return sum(1 for cell in cells if cell)


def _keyed(header: list[str], cells: list[str]) -> str:
    """``Header: value; ...``; a value whose column has no header (or that lies beyond the
    header's width) appears alone."""
    parts = []
    for index, value in enumerate(cells):
        if not value:
            continue
        key = header[index] if index < len(header) else ""
        parts.append(f"{key}: {value}" if key else value)
    return "; ".join(parts)
