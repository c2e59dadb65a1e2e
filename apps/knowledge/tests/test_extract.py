"""Extraction stage: sniff() and extract() on the evaluation documents and on files made
here. Pure Python: no database."""

from __future__ import annotations

import resource
import shutil
import time
import tracemalloc
import unicodedata
import zipfile
from pathlib import Path

import pytest

from apps.core.testing import shared_eval_dir
from apps.knowledge.pipeline.extract import extract, sniff
from apps.knowledge.pipeline.extractors import ooxml
from apps.knowledge.pipeline.extractors.text import normalize_text
from apps.knowledge.pipeline.types import ExtractionError, Section

DOCS = shared_eval_dir() / "docs"
MISSING = f"evaluation documents not found at {DOCS}"

# directory → the file_type sniff() must find there
FORMAT_DIRS = {
    "pdf": "pdf",
    "pdf-zh": "pdf",
    "docx": "docx",
    "xlsx": "xlsx",
    "pptx": "pptx",
    "html": "html",
    "md": "md",
    "csv": "csv",
}
# Files in those directories that have no text, and what they end with.
NO_TEXT = {
    "pdf/single_table.pdf": "no_text_layer",  # an image of a table, no text layer
    "xlsx/empty.xlsx": "empty",
}
# Every file in malformed/, after looking at what it is: the error code it must end with,
# or None where the damage does not touch the text and extraction succeeds.
MALFORMED = {
    "empty.pdf": "empty",  # 0 bytes
    "password.pdf": "encrypted",  # user password
    "password-example.pdf": "encrypted",  # user password ("test")
    "password_protected.xlsx": "encrypted",  # OLE container with EncryptedPackage
    "truncated-multi_page.pdf": "corrupt",  # first half of multi_page.pdf: no xref, no trailer
    "copy-protected.pdf": None,  # owner password only: opens without one
    "failure-after-repair.pdf": None,  # breaks pdfminer; PDFium reads all 76 pages
    "invalid-pdf-structure-pdfminer-one-page.pdf": None,  # PDFium repairs it
    "malformed-from-issue-932.pdf": None,  # a scanned page whose only text objects are "2021 3 31"
    "fake-power-point-malformed.pptx": None,  # broken date placeholder (left out anyway)
    "powerpoint_malformed_pictures.pptx": None,  # broken pictures, the text is fine
    "xlsx_04_inflated.xlsx": None,  # declares A1:C1048496, holds 7 rows: dimension ignored
    "ZipBomb.xlsx": None,  # 133 KB → 2.4 MB, worst part 21:1: a POI false positive, benign
}
KINDS = {"text", "table", "notes", "heading"}


def doc(relative: str) -> Path:
    path = DOCS / relative
    if not path.exists():
        pytest.skip(MISSING)
    return path


def files_in(*directories: str) -> list:
    if not DOCS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING), id="missing")]
    return [
        pytest.param(path, id=f"{directory}/{path.name}")
        for directory in directories
        for path in sorted((DOCS / directory).iterdir())
        if path.is_file()
    ]


def run(path: Path, *, name: str | None = None, progress=None) -> list[Section]:
    file_type, _ = sniff(path=path, original_name=name or path.name)
    return list(extract(path=path, file_type=file_type, progress=progress))


def lines_of(sections: list[Section]) -> list[str]:
    return [line for section in sections for line in section.text.split("\n")]


def error_of(path: Path, *, name: str | None = None) -> ExtractionError:
    with pytest.raises(ExtractionError) as caught:
        run(path, name=name)
    return caught.value


# --------------------------------------------------------------------------------------
# Every evaluation document
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", files_in(*FORMAT_DIRS))
def test_every_document_extracts_to_sections(path):
    relative = f"{path.parent.name}/{path.name}"
    file_type, mime = sniff(path=path, original_name=path.name)
    assert file_type == FORMAT_DIRS[path.parent.name]
    assert mime
    if relative in NO_TEXT:
        with pytest.raises(ExtractionError) as caught:
            list(extract(path=path, file_type=file_type))
        assert caught.value.code == NO_TEXT[relative]
        return

    progress: list[tuple[int, int]] = []
    sections = list(
        extract(path=path, file_type=file_type, progress=lambda done, total: progress.append((done, total)))
    )

    assert sections
    assert progress and progress[-1][0] == progress[-1][1]
    for section in sections:
        assert section.text and section.text == section.text.strip()
        assert unicodedata.is_normalized("NFC", section.text)
        assert not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in section.text)
        assert section.metadata.get("kind") in KINDS
        if "heading_path" in section.metadata:
            path_ = section.metadata["heading_path"]
            assert path_ and all(isinstance(h, str) and h for h in path_)
        if "rows" in section.metadata:
            first, last = section.metadata["rows"]
            assert 1 <= first <= last
    if file_type == "pdf":
        pages = [section.metadata["page"] for section in sections]
        assert pages == sorted(set(pages)) and pages[0] >= 1
    if file_type == "pptx":
        slides = [section.metadata["slide"] for section in sections]
        assert slides == sorted(slides) and slides[0] >= 1
    if file_type == "xlsx":
        assert all(section.metadata.get("sheet") for section in sections)


@pytest.mark.parametrize("path", files_in("malformed"))
def test_malformed_documents_end_as_decided(path):
    assert path.name in MALFORMED, f"decide what {path.name} should give and add it to MALFORMED"
    expected = MALFORMED[path.name]
    if expected is None:
        assert run(path)
    else:
        error = error_of(path)
        assert error.code == expected
        assert error.message and not error.transient


def test_malformed_messages_are_readable():
    assert "password-protected" in error_of(doc("malformed/password.pdf")).message
    assert "password-protected" in error_of(doc("malformed/password_protected.xlsx")).message
    truncated = error_of(doc("malformed/truncated-multi_page.pdf"))
    assert "PDF" in truncated.message and "damaged" in truncated.message
    assert "empty" in error_of(doc("malformed/empty.pdf")).message
    scan = error_of(doc("pdf/single_table.pdf"))
    assert scan.message == "the PDF has no text layer (scanned images?); OCR is not supported"


def test_encrypted_xlsx_is_refused_by_extract_too():
    with pytest.raises(ExtractionError) as caught:
        list(extract(path=doc("malformed/password_protected.xlsx"), file_type="xlsx"))
    assert caught.value.code == "encrypted"


# --------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------
def test_pdf_pages_in_order_with_known_text():
    sections = run(doc("pdf/multi_page.pdf"))
    assert [s.metadata["page"] for s in sections] == [1, 2, 3, 4, 5]
    assert sections[0].text.startswith("The Evolution of the Word Processor")


def test_pdf_line_end_hyphenation_is_joined():
    text = run(doc("pdf/multi-column.pdf"))[0].text
    assert "Dense Passage Retrieval for Open-Domain Question Answering" in text
    assert "efficient passage retrieval" in text  # PDFium gives "ef\ufffeficient"
    assert "\ufffe" not in text


def test_chinese_pdf_comes_out_as_chinese():
    sections = run(doc("pdf-zh/issue-67-example.pdf"))
    first = sections[0].text
    assert "东北电气发展股份有限公司" in first
    assert "2018 年第一季度报告" in first
    cjk = sum(1 for s in sections for c in s.text if "\u4e00" <= c <= "\u9fff")
    assert cjk > 5000
    land = run(doc("pdf-zh/issue-336-example.pdf"))[0].text
    assert "安徽省建设用地使用标准（2020 年版）" in land  # full-width brackets kept


def test_pdf_progress_counts_pages_without_text():
    calls: list[tuple[int, int]] = []
    with pytest.raises(ExtractionError):
        list(extract(path=doc("pdf/single_table.pdf"), file_type="pdf", progress=lambda d, t: calls.append((d, t))))
    assert calls == [(1, 1)]


# --------------------------------------------------------------------------------------
# DOCX
# --------------------------------------------------------------------------------------
def test_docx_heading_paths_outer_to_inner():
    sections = run(doc("docx/unit_test_headers_numbered.docx"))
    paths = [s.metadata.get("heading_path") for s in sections]
    assert ["Test Document", "Section 1", "Section 1.2", "Section 1.2.3"] in paths
    deep = next(
        s
        for s in sections
        if s.metadata.get("heading_path", [])[-1:] == ["Section 1.2.3"] and s.metadata["kind"] == "text"
    )
    assert "Paragraph 1.2.3.1" in deep.text
    # a new chapter pops the deeper headings
    assert ["Test Document", "Section 2"] in paths


def test_docx_body_order_and_table_rows():
    sections = run(doc("docx/docx-tables.docx"))
    assert [s.metadata["kind"] for s in sections] == ["text", "table", "text", "table", "text", "table"]
    assert sections[0].text == "Simple uniform table"
    assert sections[1].text.split("\n") == ["Header Col 1 | Header Col 2", "Lorem ipsum | A link example"]
    assert sections[1].metadata["header"] is True

    tables = run(doc("docx/word_tables.docx"))
    lines = lines_of([s for s in tables if s.metadata["kind"] == "table"])
    assert "Cell 1.0 | Merged Cell 1.1 1.2 | Cell 1.3" in lines  # horizontal span: one cell
    assert lines.count("Cell 2.0 | Merged Cell 1.1 2.1 | Cell 2.2") >= 1  # vertical span repeated


def test_docx_macro_enabled_variant(tmp_path):
    docm = tmp_path / "macro.docm"
    with zipfile.ZipFile(doc("docx/word_sample.docx")) as source, zipfile.ZipFile(docm, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "[Content_Types].xml":
                data = data.replace(
                    b"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
                    b"application/vnd.ms-word.document.macroEnabled.main+xml",
                )
            target.writestr(item, data)
    assert sniff(path=docm, original_name="macro.docm") == ("docx", "application/vnd.ms-word.document.macroEnabled.12")
    assert [s.text for s in run(docm)] == [s.text for s in run(doc("docx/word_sample.docx"))]


def test_docx_textboxes_once_and_large_handbook(capsys):
    textbox = run(doc("docx/textbox.docx"))
    text = "\n".join(s.text for s in textbox)
    assert text.count("Student falls ill") == 1  # DrawingML text box, not also its VML fallback
    assert "＊ Fever" in text

    started = time.perf_counter()
    progress: list[tuple[int, int]] = []
    sections = run(doc("docx/handbook-872p.docx"), progress=lambda d, t: progress.append((d, t)))
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        chars = sum(len(s.text) for s in sections)
        print(f"\nhandbook-872p.docx: {len(sections)} sections, {chars} chars in {elapsed:.2f}s")
    assert len(sections) > 500
    assert ["CHAPTER 1 – INTRODUCTION", "A. PURPOSE"] in [s.metadata.get("heading_path") for s in sections]
    assert 50 <= len(progress) <= 110  # throttled to about 100 calls
    assert progress[-1][0] == progress[-1][1]


# --------------------------------------------------------------------------------------
# XLSX
# --------------------------------------------------------------------------------------
def test_xlsx_rows_are_header_aware():
    sections = run(doc("xlsx/stanley-cups.xlsx"))
    title, table = sections[0], sections[1]
    assert title.text == "Stanley Cups" and title.metadata["kind"] == "text"
    assert table.metadata == {"sheet": "Stanley Cups", "kind": "table", "rows": [3, 5]}
    assert table.text.split("\n")[-1] == "Team: Maple Leafs; Location: TOR; Stanley Cups: 13"
    assert {s.metadata["sheet"] for s in sections} == {"Stanley Cups", "Stanley Cups Since 67"}


def test_xlsx_values_dates_and_chinese():
    sales = lines_of(run(doc("xlsx/xlsx_02_sample_sales_data.xlsm")))
    assert "Product: Widget A; Date: 2024-01-01; Quantity: 5; Revenue: 5000" in sales
    issues = run(doc("xlsx/langchain-ChatGLM_closed.xlsx"))
    assert "title: 加油~以及一些建议" in issues[0].text
    assert all(len(s.text) < 10_000 for s in issues)  # grouped into bounded sections
    ranges = [s.metadata["rows"] for s in issues]
    assert ranges == sorted(ranges) and ranges[-1][1] == 173


def test_xlsx_title_rows_do_not_become_the_header():
    sections = run(doc("xlsx/2023-half-year-analyses-by-segment.xlsx"))
    first_sheet = [s for s in sections if s.metadata["sheet"] == "OS-Rev.and results 30 06 2023"]
    assert first_sheet[0].metadata["kind"] == "text" and "3.1 Operating segments" in first_sheet[0].text
    assert lines_of(first_sheet[1:])[0].startswith("Zone NA; Sales (a): 12553;")


# --------------------------------------------------------------------------------------
# PPTX
# --------------------------------------------------------------------------------------
def test_pptx_titles_tables_and_notes():
    sections = run(doc("pptx/powerpoint_sample.pptx"))
    slide2 = [s for s in sections if s.metadata["slide"] == 2]
    assert slide2[0].text.startswith("Second slide title\n")
    assert slide2[-1].metadata == {"slide": 2, "kind": "notes"}
    assert slide2[-1].text == "Some notes on the second slide."

    table = run(doc("pptx/fake-power-point-table.pptx"))[1]
    assert table.metadata["kind"] == "table"
    assert table.text.split("\n")[:2] == ["Column 1 | Column 2 | Column 3", "Red | Green | Blue"]


def test_pptx_unknown_shape_types_are_read():
    text = "\n".join(s.text for s in run(doc("pptx/powerpoint_unrecognized_shape.pptx")))
    assert "Text in an unrecognized shape" in text


# --------------------------------------------------------------------------------------
# HTML, Markdown, CSV, TXT
# --------------------------------------------------------------------------------------
def test_html_scripts_styles_dropped_headings_kept():
    sections = run(doc("html/example-with-scripts.html"))
    text = "\n".join(s.text for s in sections)
    for noise in ("switchTo5x", "GoogleAnalyticsObject", "jQuery", "@import", "getElementsByTagName"):
        assert noise not in text
    assert "Russian milbloggers accused the Russian Ministry of Defense" in text
    assert sections[0].metadata == {
        "kind": "heading",
        "heading_path": ["Russian Offensive Campaign Assessment, December 13"],
    }


def test_html_cp1252_decoded():
    text = "\n".join(s.text for s in run(doc("html/fake-html-cp1252.html")))
    assert "Die schöne Frau" in text
    assert "L'été était très chaud cette année" in text
    assert "El niño comió paella" in text
    assert "15,50 €" in text


def test_html_tables_row_per_line():
    lines = lines_of(run(doc("html/kvp_data_example.html")))
    assert "Nr. | Item Description | Quantity" in lines
    assert "II | Lunch | 2" in lines
    wiki = run(doc("html/wiki_duck.html"))
    assert ["Duck", "Etymology"] in [s.metadata.get("heading_path") for s in wiki]


def test_markdown_headings_and_tables():
    wiki = run(doc("md/wiki.md"))
    assert [s.metadata.get("heading_path") for s in wiki if s.metadata["kind"] == "heading"] == [
        ["IBM"],
        ["IBM", "1910s–1950s"],
        ["IBM", "1960s–1980s"],
    ]
    table = run(doc("md/simple-table.md"))
    assert table[0].metadata["kind"] == "table" and table[0].metadata["header"] is True
    assert table[0].text.split("\n") == ["Item | Price | # In stock", "Juicy Apples | 1.99 | 739", "Bananas | 1.89 | 6"]
    mixed = lines_of(run(doc("md/mixed.md")))  # a raw HTML <table> keeps its rows too
    assert "Scrooge McDuck | Dagobert Duck | Balthazar Picsou | Paperone" in mixed
    law = run(doc("md/人民检察院行政诉讼监督规则（试行）(2016-04-15).md"))
    assert ["人民检察院行政诉讼监督规则（试行）", "第一章 总 则"] in [s.metadata.get("heading_path") for s in law]
    latin1 = "\n".join(s.text for s in run(doc("md/umlauts-non-utf8.md")))
    assert "können" in latin1 and "äöüß" in latin1


def test_markdown_setext_headings_and_fences(tmp_path):
    source = tmp_path / "notes.md"
    source.write_text(
        "Guide\n=====\n\nIntro.\n\nPart\n----\n\n```\n# not a heading\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    sections = run(source)
    assert [s.metadata.get("heading_path") for s in sections if s.metadata["kind"] == "heading"] == [
        ["Guide"],
        ["Guide", "Part"],
    ]
    assert "# not a heading" in sections[3].text
    assert sections[-1].text == "a | b\n1 | 2"


def test_csv_utf16_semicolon_pipe_and_ragged_rows():
    utf16 = lines_of(run(doc("csv/stanley-cups-utf-16.csv")))
    assert "Team: Maple Leafs; Location: TOR; Stanley Cups: 13" in utf16
    semicolon = lines_of(run(doc("csv/semicolon-delimited.csv")))
    assert semicolon[0] == "Lorem, ipsum: consectetur; dolor sit: adipiscing; amet: elit"
    pipe = lines_of(run(doc("csv/csv-pipe.csv")))
    assert pipe[0].startswith("Index: 1; Customer Id: DD37Cf93aecA6Dc; First Name: Sheryl;")
    ragged = lines_of(run(doc("csv/csv-too-many-columns.csv")))
    assert "1: a; 2: b; 3: c; 4: d; e" in ragged
    short_header = lines_of(run(doc("csv/csv-inconsistent-header.csv")))
    assert short_header[0] == "1: a; 2: b; 3: c; d"
    quoted = "\n".join(s.text for s in run(doc("csv/langchain-ChatGLM_closed.csv")))
    assert "detail: Hi Panda, I saw the `pip install -r requirements` command" in quoted


def test_csv_tab_delimited_and_progress_in_bytes(tmp_path):
    source = tmp_path / "people.tsv"
    source.write_text("name\tcity\nAda\tLondon\nLin\t北京\textra\n\nBo\n", encoding="utf-8")
    calls: list[tuple[int, int]] = []
    sections = run(source, progress=lambda d, t: calls.append((d, t)))
    assert lines_of(sections) == ["name: Ada; city: London", "name: Lin; city: 北京; extra", "name: Bo"]
    assert calls[-1] == (source.stat().st_size, source.stat().st_size)


def test_txt_paragraphs_and_gb18030(tmp_path):
    text = (
        "第一段：人工智能正在改变知识管理的方式。\n它帮助团队更快地找到答案。\n\n\n"
        "第二段，讨论检索增强生成（RAG）的作用。"
    )
    source = tmp_path / "notes.txt"
    source.write_bytes((text * 3).encode("gb18030"))
    sections = run(source)
    joined = "\n\n".join(s.text for s in sections)
    assert "人工智能正在改变知识管理的方式。" in joined
    assert "检索增强生成（RAG）" in joined
    assert "\n\n\n" not in joined


# --------------------------------------------------------------------------------------
# sniff()
# --------------------------------------------------------------------------------------
def test_sniff_trusts_content_not_extension(tmp_path):
    fake_pdf = tmp_path / "report.pdf"
    shutil.copy(doc("docx/word_sample.docx"), fake_pdf)
    assert sniff(path=fake_pdf, original_name="report.pdf") == (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    )
    assert run(fake_pdf)  # and extracts as a Word file
    fake_docx = tmp_path / "scan.docx"
    shutil.copy(doc("pdf/multi_page.pdf"), fake_docx)
    assert sniff(path=fake_docx, original_name="scan.docx") == ("pdf", "application/pdf")
    fake_txt = tmp_path / "slides.txt"
    shutil.copy(doc("pptx/sample-presentation.pptx"), fake_txt)
    assert sniff(path=fake_txt, original_name="slides.txt")[0] == "pptx"
    page = tmp_path / "page.txt"
    shutil.copy(doc("html/fake-html-cp1252.html"), page)
    assert sniff(path=page, original_name="page.txt") == ("html", "text/html")
    xlsm = doc("xlsx/xlsx_02_sample_sales_data.xlsm")
    assert sniff(path=xlsm, original_name="data.bin") == ("xlsx", "application/vnd.ms-excel.sheet.macroEnabled.12")


def test_sniff_extension_only_chooses_among_text_formats(tmp_path):
    source = tmp_path / "data"
    source.write_text("a,b\n1,2\n")
    assert sniff(path=source, original_name="data.csv") == ("csv", "text/csv")
    assert sniff(path=source, original_name="data.md") == ("md", "text/markdown")
    assert sniff(path=source, original_name="data.html") == ("html", "text/html")
    assert sniff(path=source, original_name="data.txt") == ("txt", "text/plain")
    assert sniff(path=source, original_name="data") == ("txt", "text/plain")
    utf16 = tmp_path / "utf16"
    utf16.write_bytes("plain text without a byte-order mark\n".encode("utf-16-le"))
    assert sniff(path=utf16, original_name="x.txt") == ("txt", "text/plain")


def test_sniff_refuses_other_types(tmp_path):
    def code(data: bytes, name: str) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ExtractionError) as caught:
            sniff(path=path, original_name=name)
        return caught.value.code

    assert code(b"", "empty.txt") == "empty"
    assert code(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "picture.pdf") == "unsupported_type"
    assert code(b"\xff\xd8\xff\xe0" + b"\x00" * 100, "photo.docx") == "unsupported_type"
    assert code(bytes(range(256)) * 20, "blob.txt") == "unsupported_type"
    assert (
        code(b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>', "logo.html")
        == "unsupported_type"
    )
    archive = tmp_path / "bundle.docx"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ExtractionError) as caught:
        sniff(path=archive, original_name="bundle.docx")
    assert caught.value.code == "unsupported_type"


def test_sniff_legacy_office_is_unsupported(tmp_path):
    # The encrypted xlsx is an OLE compound file; renaming its EncryptionInfo stream makes
    # it an ordinary OLE file, i.e. what a legacy .doc/.xls looks like to sniff().
    data = doc("malformed/password_protected.xlsx").read_bytes()
    legacy = tmp_path / "old.xls"
    legacy.write_bytes(data.replace("EncryptionInfo".encode("utf-16-le"), "EncryptionInfX".encode("utf-16-le")))
    with pytest.raises(ExtractionError) as caught:
        sniff(path=legacy, original_name="old.xls")
    assert caught.value.code == "unsupported_type"
    assert ".doc" in caught.value.message


# --------------------------------------------------------------------------------------
# Decompression bombs and damaged containers
# --------------------------------------------------------------------------------------
XLSX_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/></Types>'
)


def test_zip_bomb_is_refused_before_parsing(tmp_path):
    bomb = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", XLSX_CONTENT_TYPES)
        zf.writestr("xl/workbook.xml", "<workbook/>")
        with zf.open("xl/worksheets/sheet1.xml", "w") as member:
            block = b"\x00" * (1024 * 1024)
            for _ in range(32):
                member.write(block)
    assert bomb.stat().st_size < 200_000
    assert sniff(path=bomb, original_name="bomb.xlsx")[0] == "xlsx"
    error = error_of(bomb)
    assert error.code == "decompression_bomb"
    assert "xl/worksheets/sheet1.xml" in error.message


def test_zip_bomb_total_size_limit_is_an_argument():
    path = doc("docx/handbook-872p.docx")  # 5.5 MB unpacked
    ooxml.check_zip_bomb(path, label="Word (.docx)")  # fine with the defaults
    with pytest.raises(ExtractionError) as caught:
        ooxml.check_zip_bomb(path, label="Word (.docx)", max_total=1024 * 1024)
    assert caught.value.code == "decompression_bomb"


def test_damaged_office_files_are_corrupt(tmp_path):
    truncated = tmp_path / "half.pptx"
    data = doc("pptx/sample-presentation.pptx").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExtractionError) as caught:
        list(extract(path=truncated, file_type="pptx"))
    assert caught.value.code == "corrupt" and "PowerPoint" in caught.value.message

    broken = tmp_path / "broken.docx"
    with zipfile.ZipFile(doc("docx/word_sample.docx")) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            body = source.read(item.filename)
            target.writestr(item, b"<w:document><unclosed" if item.filename == "word/document.xml" else body)
    assert sniff(path=broken, original_name="broken.docx")[0] == "docx"
    error = error_of(broken)
    assert error.code == "corrupt" and "Word" in error.message


def test_unknown_file_type_and_empty_text(tmp_path):
    with pytest.raises(ExtractionError) as caught:
        list(extract(path=doc("md/wiki.md"), file_type="rtf"))
    assert caught.value.code == "unsupported_type"
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n \u200b\n")
    assert error_of(blank).code == "empty"


def test_progress_callback_errors_propagate_unchanged():
    class Stop(Exception):
        pass

    def progress(done, total):
        raise Stop

    with pytest.raises(Stop):
        list(extract(path=doc("pdf/multi_page.pdf"), file_type="pdf", progress=progress))


# --------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------
def test_normalize_text():
    assert normalize_text("Cafe\u0301  au\t\tlait\x07") == "Café au lait"
    chinese = "  一、总则：（试行）。\r\n\r\n\r\n\r\n第二条，“引号”！  "
    assert normalize_text(chinese) == "一、总则：（试行）。\n\n第二条，“引号”！"
    assert normalize_text("ef\ufffeficient\u00a0use\u3000of") == "efficient use of"
    assert normalize_text("emoji 👩\u200d💻 ok") == "emoji 👩\u200d💻 ok"


# --------------------------------------------------------------------------------------
# A 600-page PDF is streamed
# --------------------------------------------------------------------------------------
def build_pdf(path: Path, *, pages: int, lines_per_page: int = 50) -> int:
    """A plain PDF with ``pages`` pages of Helvetica text; returns the characters written."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in below
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    written = 0
    for page in range(1, pages + 1):
        lines = [
            f"Page {page} line {line} lorem ipsum dolor sit amet consectetur adipiscing"
            for line in range(lines_per_page)
        ]
        written += sum(len(line) for line in lines)
        stream = "BT /F1 9 Tf 40 800 Td 11 TL " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
        content = stream.encode("ascii")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
        content_ref = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % content_ref
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), pages)

    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return written


def resident_bytes() -> int:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def test_600_page_pdf_is_streamed_page_by_page(tmp_path, capsys):
    pdf = tmp_path / "big.pdf"
    written = build_pdf(pdf, pages=600)
    assert sniff(path=pdf, original_name="big.bin") == ("pdf", "application/pdf")

    calls: list[tuple[int, int]] = []
    pages: list[int] = []
    chars = 0
    rss_start = rss_peak = resident_bytes()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        for section in extract(path=pdf, file_type="pdf", progress=lambda d, t: calls.append((d, t))):
            pages.append(section.metadata["page"])
            chars += len(section.text)
            del section
            rss_peak = max(rss_peak, resident_bytes())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        # tracemalloc sees Python objects only; the resident set also covers PDFium's own memory.
        print(
            f"\n600-page PDF: {chars} chars in {elapsed:.2f}s; Python peak while iterating "
            f"{peak / 1024:.0f} KiB (text total {written / 1024:.0f} KiB); "
            f"resident memory grew at most {(rss_peak - rss_start) / 2**20:.1f} MiB"
        )
    assert pages == list(range(1, 601))
    assert calls == [(page, 600) for page in range(1, 601)]
    assert chars >= written * 0.9
    # Holding every page would need at least the whole text (~2 MB); streaming stays far below.
    assert peak < written / 4
