"""Office Open XML containers (docx, xlsx, pptx): what kind a zip is, whether it is safe to
open, and password-protected Office files (which are OLE compound files, not zips).

Decompression bombs are refused from the zip central directory alone, before any parser
inflates anything. That is enough for the parsers we use: they read members through
``zipfile``, which stops each member at its declared uncompressed size (a member that
inflates further fails its CRC check and is a ``BadZipFile``), so declared sizes are an
upper bound on what parsing can inflate.

Limits (see ``check_zip_bomb``): at most 1 GiB uncompressed in total, at most 10,000
members, and no member above 1 MiB with a compression ratio above 100. The ratio rule
skips small members as Apache POI does (its ``MIN_INFLATE_RATIO`` 0.01 applies only past
100 KiB): tiny highly compressible parts (styles, shared strings of a sparse sheet) are
normal and harmless. In the evaluation set ``malformed/ZipBomb.xlsx`` (2.4 MB from 133 KB,
worst member 21:1, a POI false positive) and ``malformed/xlsx_04_inflated.xlsx`` (an honest
zip whose sheet *declares* A1:C1048496 but holds 7 rows; a dimension bomb, handled in the
xlsx extractor) pass this check and extract normally.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import olefile
from lxml import etree

from ..types import ExtractionError

MAX_UNCOMPRESSED_BYTES = 1024 * 1024 * 1024  # 1 GiB in total
MAX_COMPRESSION_RATIO = 100
RATIO_GRACE_BYTES = 1024 * 1024  # members smaller than this are not ratio-checked
MAX_MEMBERS = 10_000

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
ZIP_MAGIC = b"PK\x03\x04"

_CONTENT_TYPES_MAX_BYTES = 1024 * 1024
_CT_NS = "{http://schemas.openxmlformats.org/package/2006/content-types}"

# Main-part content type → (file_type, MIME type of the package).
MAIN_CONTENT_TYPES = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml": (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml": (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.template",
    ),
    "application/vnd.ms-word.document.macroEnabled.main+xml": (
        "docx",
        "application/vnd.ms-word.document.macroEnabled.12",
    ),
    "application/vnd.ms-word.template.macroEnabledTemplate.main+xml": (
        "docx",
        "application/vnd.ms-word.template.macroEnabled.12",
    ),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml": (
        "xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.template.main+xml": (
        "xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.template",
    ),
    "application/vnd.ms-excel.sheet.macroEnabled.main+xml": ("xlsx", "application/vnd.ms-excel.sheet.macroEnabled.12"),
    "application/vnd.ms-excel.template.macroEnabled.main+xml": (
        "xlsx",
        "application/vnd.ms-excel.template.macroEnabled.12",
    ),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml": (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
    "application/vnd.openxmlformats-officedocument.presentationml.slideshow.main+xml": (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.slideshow",
    ),
    "application/vnd.openxmlformats-officedocument.presentationml.template.main+xml": (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.template",
    ),
    "application/vnd.ms-powerpoint.presentation.macroEnabled.main+xml": (
        "pptx",
        "application/vnd.ms-powerpoint.presentation.macroEnabled.12",
    ),
    "application/vnd.ms-powerpoint.slideshow.macroEnabled.main+xml": (
        "pptx",
        "application/vnd.ms-powerpoint.slideshow.macroEnabled.12",
    ),
}
# When [Content_Types].xml is missing or says nothing useful: the conventional part names.
MAIN_PART_NAMES = {
    "word/document.xml": "docx",
    "xl/workbook.xml": "xlsx",
    "ppt/presentation.xml": "pptx",
}
DEFAULT_MIME = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
LABELS = {"docx": "Word (.docx)", "xlsx": "Excel (.xlsx)", "pptx": "PowerPoint (.pptx)"}


def sniff_zip(path: Path) -> tuple[str, str] | None:
    """(file_type, mime) of an OOXML package, None for any other zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            content_types = None
            if "[Content_Types].xml" in names:
                with archive.open("[Content_Types].xml") as member:
                    content_types = member.read(_CONTENT_TYPES_MAX_BYTES)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise ExtractionError(f"the file looks like a zip archive but cannot be read: {exc}", code="corrupt") from exc
    if content_types:
        try:
            root = etree.fromstring(content_types, parser=etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError:
            root = None
        if root is not None:
            for override in root.iter(f"{_CT_NS}Override"):
                found = MAIN_CONTENT_TYPES.get((override.get("ContentType") or "").strip())
                if found:
                    return found
    for part, file_type in MAIN_PART_NAMES.items():
        if part in names:
            return file_type, DEFAULT_MIME[file_type]
    return None


def check_zip_bomb(
    path: Path,
    *,
    label: str,
    max_total: int = MAX_UNCOMPRESSED_BYTES,
    max_ratio: float = MAX_COMPRESSION_RATIO,
    ratio_grace: int = RATIO_GRACE_BYTES,
    max_members: int = MAX_MEMBERS,
) -> None:
    """Raise ExtractionError(code="decompression_bomb") when the central directory promises
    more than the limits allow; code="encrypted" for a password-protected Office file;
    code="corrupt" for something that is not a readable zip."""
    check_not_encrypted_office(path, label=label)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise ExtractionError(
            f"the {label} file is damaged (not a readable zip archive): {exc}", code="corrupt"
        ) from exc
    if len(members) > max_members:
        raise ExtractionError(
            f"the {label} file has {len(members)} parts (the limit is {max_members}); refusing it as a "
            "possible decompression bomb",
            code="decompression_bomb",
        )
    total = 0
    for member in members:
        total += member.file_size
        if total > max_total:
            raise ExtractionError(
                f"the {label} file would expand to more than {_mib(max_total)} when unpacked; refusing it as a "
                "possible decompression bomb",
                code="decompression_bomb",
            )
        if member.file_size > ratio_grace:
            ratio = member.file_size / max(member.compress_size, 1)
            if ratio > max_ratio:
                raise ExtractionError(
                    f"the {label} file contains a part ({member.filename}) that expands {ratio:.0f} times "
                    f"({_mib(member.compress_size)} to {_mib(member.file_size)}); refusing it as a possible "
                    "decompression bomb",
                    code="decompression_bomb",
                )


def check_not_encrypted_office(path: Path, *, label: str) -> None:
    """A password-protected docx/xlsx/pptx is an OLE compound file holding an
    ``EncryptionInfo`` and an ``EncryptedPackage`` stream: refuse it with code="encrypted".
    Any other OLE file here is a legacy binary Office document: code="unsupported_type"."""
    with path.open("rb") as handle:
        if handle.read(len(OLE_MAGIC)) != OLE_MAGIC:
            return
    if is_encrypted_ole(path):
        raise ExtractionError(
            f"the {label} file is password-protected; remove the password and upload it again",
            code="encrypted",
        )
    raise ExtractionError(
        "legacy binary Office documents (.doc, .xls, .ppt) are not supported; save the file as "
        ".docx, .xlsx or .pptx and upload it again",
        code="unsupported_type",
    )


def is_encrypted_ole(path: Path) -> bool:
    try:
        with olefile.OleFileIO(str(path)) as ole:
            return ole.exists("EncryptionInfo") and ole.exists("EncryptedPackage")
    except (OSError, ValueError, IndexError, TypeError, AttributeError):
        # olefile raises OSError ("not an OLE2 structured storage file") and a handful of
        # lower-level errors on damaged files.
        return False


def _mib(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.0f} MiB"
    return f"{size / 1024:.0f} KiB"
