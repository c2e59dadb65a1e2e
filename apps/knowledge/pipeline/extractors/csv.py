"""CSV (and TSV): streamed row by row, header-aware like Excel sheets.

The encoding is decided from the first 64 KiB (byte-order mark, UTF-8, then
charset-normalizer: UTF-16 with a BOM, GBK, cp1252...). The delimiter comes from
``csv.Sniffer`` restricted to , ; tab |, and when it cannot tell, from whichever of those
splits the first lines into the same number of fields most consistently. Ragged rows are
fine: extra cells are kept without a header, missing ones are simply absent. Progress is in
bytes of the file read so far.
"""

from __future__ import annotations

import csv
import io
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..types import ProgressCallback, Section
from .tables import keyed_row_sections
from .text import DETECT_SAMPLE_BYTES, detect_encoding

LABEL = "CSV"
DELIMITERS = ",;\t|"
# The csv module's default limit on one field (128 KiB) is too small for long text cells.
FIELD_SIZE_LIMIT = 16 * 1024 * 1024
_SNIFF_LINES = 50


def extract_csv(path: Path, progress: ProgressCallback | None) -> Iterator[Section]:
    total = path.stat().st_size
    with path.open("rb") as raw:
        sample = raw.read(DETECT_SAMPLE_BYTES)
    complete = len(sample) == total
    encoding = detect_encoding(sample, complete=complete)
    sample_text = sample.decode(encoding, errors="replace")
    if not complete:
        sample_text = sample_text[: sample_text.rfind("\n") + 1] or sample_text  # whole lines only
    dialect = sniff_dialect(sample_text)
    if csv.field_size_limit() < FIELD_SIZE_LIMIT:
        csv.field_size_limit(min(FIELD_SIZE_LIMIT, sys.maxsize))

    with path.open("rb") as raw:
        counter = _CountingReader(raw)
        text = io.TextIOWrapper(counter, encoding=encoding, errors="replace", newline="")
        reader = csv.reader(text, dialect)
        rows = ((number, row) for number, row in enumerate(reader, start=1))
        for section in keyed_row_sections(rows, metadata={}):
            yield section
            if progress:
                progress(min(counter.count, total), total)
        if progress:
            progress(total, total)


def sniff_dialect(sample: str) -> type[csv.Dialect]:
    """Excel's dialect with the sniffed delimiter. Only the delimiter is taken from
    ``csv.Sniffer``: its quote-character guess is unreliable (on
    langchain-ChatGLM_closed.csv it answers ``'`` with no double quotes, and cells quoted
    with ``"`` then split at their commas)."""
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        delimiter = None
    if delimiter not in tuple(DELIMITERS):
        delimiter = _consistent_delimiter(sample)
    return type("SniffedDialect", (csv.excel,), {"delimiter": delimiter})


def _consistent_delimiter(sample: str) -> str:
    """The candidate that appears in the most lines with the same count (ties: the order of
    ``DELIMITERS``); a comma when none appears at all."""
    lines = [line for line in sample.splitlines()[:_SNIFF_LINES] if line.strip()]
    best, best_score = ",", 0
    for delimiter in DELIMITERS:
        counts = Counter(line.count(delimiter) for line in lines)
        counts.pop(0, None)
        if not counts:
            continue
        _, score = counts.most_common(1)[0]
        if score > best_score:
            best, best_score = delimiter, score
    return best


class _CountingReader(io.RawIOBase):
    """A binary reader that counts the bytes handed out (the progress of a text stream)."""

    def __init__(self, raw) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)
