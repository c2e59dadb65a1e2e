"""PDF: one Section per page with text, through PDFium (pypdfium2).

PDFium opens the file lazily and each page is loaded, read and closed before the next, so a
600-page PDF never has more than one page in memory. Pages without text are skipped but
counted for progress; if no page has any, the PDF is a scan without a text layer (we do no
OCR). A PDF with only an owner password (copy/print restrictions, e.g.
malformed/copy-protected.pdf) opens without a password and is extracted: the restriction
concerns viewers, and the text is the tenant's own document.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from ..types import ExtractionError, ProgressCallback, Section
from .text import normalize_text

LABEL = "PDF"


def extract_pdf(path: Path, progress: ProgressCallback | None) -> Iterator[Section]:
    document = _open(path)
    try:
        total = len(document)
        if total == 0:
            raise ExtractionError("the PDF has no pages", code="empty")
        found_text = False
        for index in range(total):
            page = document[index]
            try:
                textpage = page.get_textpage()
                try:
                    text = normalize_text(textpage.get_text_range())
                finally:
                    textpage.close()
            finally:
                page.close()
            if text:
                found_text = True
                yield Section(text=text, metadata={"page": index + 1, "kind": "text"})
            if progress:
                progress(index + 1, total)
        if not found_text:
            raise ExtractionError(
                "the PDF has no text layer (scanned images?); OCR is not supported",
                code="no_text_layer",
            )
    finally:
        document.close()


def _open(path: Path) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
            raise ExtractionError(
                "the PDF is password-protected; remove the password and upload it again",
                code="encrypted",
            ) from exc
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_SECURITY:
            raise ExtractionError(
                "the PDF uses an unsupported encryption scheme (password-protected?)",
                code="encrypted",
            ) from exc
        raise ExtractionError(
            f"the PDF is damaged or truncated and cannot be opened (PDFium: {_reason(exc)})",
            code="corrupt",
        ) from exc


def _reason(exc: Exception) -> str:
    message = str(exc)
    # "Failed to load document (PDFium: Data format error)." → "Data format error"
    if "PDFium: " in message:
        return message.split("PDFium: ", 1)[1].rstrip(").")
    return message
