"""Ingestion stage 1: file → sections (**extract** → chunk → embed → index).

Two entry points:

- ``sniff(path=..., original_name=...)`` tells the file type from the content (magic bytes,
  the parts of a zip, whether the bytes decode as text); the name's extension only chooses
  between text formats (md, csv, html, txt).
- ``extract(path=..., file_type=..., progress=...)`` yields ``Section``s in reading order,
  lazily: a PDF is read page by page, a spreadsheet or CSV row by row.

Every failure is an ``ExtractionError`` with a stable code: ``empty``, ``unsupported_type``,
``encrypted``, ``corrupt``, ``no_text_layer``, ``decompression_bomb``, ``too_large``. A
parser's own exception never escapes: it becomes ``corrupt`` with a message naming the
format. One module per format lives in ``extractors/``.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

from .extractors import ooxml
from .extractors.csv import extract_csv
from .extractors.docx import extract_docx
from .extractors.html import extract_html
from .extractors.markdown import extract_markdown, extract_txt
from .extractors.pdf import extract_pdf
from .extractors.pptx import extract_pptx
from .extractors.text import bom_encoding, detect_encoding
from .extractors.xlsx import extract_xlsx
from .types import ExtractionError, ProgressCallback, Section

logger = logging.getLogger(__name__)

Extractor = Callable[[Path, ProgressCallback | None], Iterator[Section]]

# file_type → (extractor, label used in messages)
EXTRACTORS: dict[str, tuple[Extractor, str]] = {
    "pdf": (extract_pdf, "PDF"),
    "docx": (extract_docx, ooxml.LABELS["docx"]),
    "xlsx": (extract_xlsx, ooxml.LABELS["xlsx"]),
    "pptx": (extract_pptx, ooxml.LABELS["pptx"]),
    "html": (extract_html, "HTML"),
    "md": (extract_markdown, "Markdown"),
    "txt": (extract_txt, "text"),
    "csv": (extract_csv, "CSV"),
}

TEXT_MIME = {"html": "text/html", "md": "text/markdown", "txt": "text/plain", "csv": "text/csv"}
_MARKDOWN_EXTENSIONS = {".md", ".markdown", ".mdown", ".mkd", ".mkdn"}
_CSV_EXTENSIONS = {".csv", ".tsv", ".tab"}
_HTML_EXTENSIONS = {".html", ".htm", ".xhtml"}

SNIFF_BYTES = 64 * 1024
# Known binary formats we do not read, by their first bytes: (magic, what it is).
_BINARY_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"\x00\x00\x01\x00", "an icon"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"{\\rtf", "an RTF document"),
    (b"\x7fELF", "a program"),
    (b"MZ", "a program"),
    (b"ID3", "an audio file"),
    (b"OggS", "an audio or video file"),
    (b"fLaC", "an audio file"),
    (b"\x1aE\xdf\xa3", "a video file"),
    (b"SQLite format 3\x00", "a database"),
    (b"%!PS", "a PostScript document"),
    (b"AT&TFORM", "a DjVu document"),
)
_ZIP_MAGICS = (ooxml.ZIP_MAGIC, b"PK\x05\x06", b"PK\x07\x08")
_HTML_START = re.compile(
    rb"^\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)[\s>]", re.I | re.S
)
_SVG = re.compile(rb"^\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*(?:<!doctype\s+svg[^>]*>\s*)?<svg[\s>]", re.I | re.S)
# Share of control characters above which decoded "text" is really binary.
_MAX_CONTROL_SHARE = 0.01


def sniff(*, path: Path, original_name: str) -> tuple[str, str]:
    """(file_type, mime_type) from the CONTENT (magic bytes / zip member names / text
    decoding), not trusting the extension; file_type is one of pdf, docx, xlsx, pptx, html,
    md, txt, csv. Raise ExtractionError(code="unsupported_type") for anything else (e.g.
    .doc, images, zip of other stuff), code="empty" for 0-byte files. The extension only
    disambiguates text formats (md vs txt vs csv vs html when content is plain text).

    A password-protected docx/xlsx/pptx (an OLE container, not a zip) raises code="encrypted"."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ExtractionError("the file is empty (0 bytes)", code="empty")
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    extension = Path(original_name or "").suffix.lower()

    if b"%PDF-" in head[:1024]:  # the header may follow up to 1 KiB of junk
        return "pdf", "application/pdf"
    if head.startswith(ooxml.OLE_MAGIC):
        ooxml.check_not_encrypted_office(path, label="Office")  # raises: encrypted or legacy format
    if head.startswith(_ZIP_MAGICS):
        found = ooxml.sniff_zip(path)
        if found:
            return found
        raise ExtractionError(
            "the file is a zip archive but not a Word, Excel or PowerPoint document; upload the documents inside it",
            code="unsupported_type",
        )
    for magic, what in _BINARY_MAGIC:
        if head.startswith(magic):
            raise ExtractionError(
                f"the file is {what}, which is not a supported document type", code="unsupported_type"
            )
    if _SVG.match(head):
        raise ExtractionError(
            "the file is an SVG image, which is not a supported document type", code="unsupported_type"
        )

    if not _looks_like_text(head, complete=len(head) == path.stat().st_size):
        raise ExtractionError("the file is not a supported document type (binary content)", code="unsupported_type")
    if _HTML_START.match(_ascii_view(head)):
        return "html", TEXT_MIME["html"]
    if extension in _HTML_EXTENSIONS:
        return "html", TEXT_MIME["html"]
    if extension in _MARKDOWN_EXTENSIONS:
        return "md", TEXT_MIME["md"]
    if extension in _CSV_EXTENSIONS:
        return "csv", "text/tab-separated-values" if extension == ".tsv" else TEXT_MIME["csv"]
    return "txt", TEXT_MIME["txt"]


def extract(*, path: Path, file_type: str, progress: ProgressCallback | None = None) -> Iterator[Section]:
    """Yield Sections in reading order, lazily (a 600-page PDF must be streamed page by
    page, never all pages in memory). Call progress(done, total) per page/sheet/slide/part.

    Units of progress: pages (pdf), slides (pptx), sheets (xlsx), top-level body blocks
    (docx, reported about 100 times), bytes read (csv), sections (html, md, txt: these are
    parsed whole first). An exception raised by ``progress`` itself propagates unchanged."""
    path = Path(path)
    entry = EXTRACTORS.get(file_type)
    if entry is None:
        raise ExtractionError(f"files of type {file_type!r} are not supported", code="unsupported_type")
    extractor, label = entry
    started = time.monotonic()
    size = path.stat().st_size
    if size == 0:
        raise ExtractionError("the file is empty (0 bytes)", code="empty")

    sections = chars = 0
    try:
        for section in extractor(path, _guarded(progress)):
            if not section.text.strip():
                continue
            sections += 1
            chars += len(section.text)
            yield section
    except ExtractionError as exc:
        logger.info("extract %s failed after %.2fs: %s (%s)", file_type, time.monotonic() - started, exc.code, exc)
        raise
    except _ProgressFailed as exc:
        raise exc.__cause__ from None
    except MemoryError as exc:
        raise ExtractionError(f"the {label} file is too large to process", code="too_large") from exc
    except Exception as exc:
        logger.warning("extract %s: %s parser failed", file_type, label, exc_info=True)
        raise ExtractionError(f"the {label} file is damaged or not valid: {_describe(exc)}", code="corrupt") from exc
    if sections == 0:
        raise ExtractionError(f"no text found in the {label} file", code="empty")
    logger.info(
        "extract %s: %d sections, %d chars from %d bytes in %.2fs",
        file_type,
        sections,
        chars,
        size,
        time.monotonic() - started,
    )


class _ProgressFailed(Exception):
    """Carries an exception raised by the caller's progress callback through the generic
    parser-error handler (it is the caller's, not a sign of a damaged file)."""


def _guarded(progress: ProgressCallback | None) -> ProgressCallback | None:
    if progress is None:
        return None

    def call(done: int, total: int) -> None:
        try:
            progress(done, total)
        except Exception as exc:
            raise _ProgressFailed() from exc

    return call


def _describe(exc: Exception) -> str:
    message = " ".join(str(exc).split())
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _ascii_view(head: bytes) -> bytes:
    """The start of the file as ASCII-compatible bytes (UTF-16/32 re-encoded) so that the
    HTML pattern sees ``<html`` whatever the encoding."""
    encoding = bom_encoding(head)
    if encoding and encoding.startswith(("utf-16", "utf-32")):
        return head.decode(encoding, errors="ignore").encode("utf-8", errors="ignore")
    if encoding == "utf-8-sig":
        return head[3:]
    return head


def _looks_like_text(head: bytes, *, complete: bool) -> bool:
    """The sample decodes as text with hardly any control characters. NUL bytes without a
    byte-order mark mean binary, unless they sit on every other byte (BOM-less UTF-16)."""
    if b"\x00" in head and not bom_encoding(head):
        even, odd = head[0::2], head[1::2]
        nul_even = even.count(0) / max(len(even), 1)
        nul_odd = odd.count(0) / max(len(odd), 1)
        if not ((nul_odd > 0.4 and nul_even < 0.05) or (nul_even > 0.4 and nul_odd < 0.05)):
            return False
        encoding = "utf-16-le" if nul_odd > nul_even else "utf-16-be"
    else:
        encoding = detect_encoding(head, complete=complete)
    try:
        text = head.decode(encoding, errors="replace")
    except LookupError:
        return False
    if not text:
        return False
    controls = sum(1 for char in text if char not in "\t\n\r\f\x1a" and unicodedata.category(char) == "Cc")
    return controls / len(text) <= _MAX_CONTROL_SHARE
