"""Excel (.xlsx, .xlsm): every sheet, row by row, through openpyxl in read-only mode.

Read-only mode streams each sheet's XML, so memory does not grow with the sheet. Values are
the cached results of formulas (``data_only=True``; a formula never calculated by Excel has
none and reads as empty). Each sheet's declared dimension is ignored
(``reset_dimensions``): a sheet may claim A1:C1048496 while holding 7 rows
(malformed/xlsx_04_inflated.xlsx), and read-only mode would otherwise pad the missing rows.
Rows become ``Header: value; ...`` lines (see ``tables.keyed_row_sections``); progress counts
sheets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl

from ..types import ProgressCallback, Section
from .ooxml import LABELS, check_zip_bomb
from .tables import keyed_row_sections

LABEL = LABELS["xlsx"]


def extract_xlsx(path: Path, progress: ProgressCallback | None) -> Iterator[Section]:
    check_zip_bomb(path, label=LABEL)
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        sheets = workbook.worksheets
        total = len(sheets)
        for number, sheet in enumerate(sheets, start=1):
            if hasattr(sheet, "reset_dimensions"):
                sheet.reset_dimensions()
            rows = (
                (row_number, [format_cell(value) for value in values])
                for row_number, values in enumerate(sheet.iter_rows(values_only=True), start=1)
            )
            yield from keyed_row_sections(rows, metadata={"sheet": sheet.title})
            if progress:
                progress(number, total)
    finally:
        workbook.close()


def format_cell(value: Any) -> str:
    """A cell value as a person reads it: 13 not 13.0, dates without a midnight time."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.15g}"
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0, 0):
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)
