"""``chunk_search`` on the real stack: documents uploaded and processed through the services
in acme's (and globex's) schema, the real embedding model, Milvus Lite (dense and BM25),
PostgreSQL and the Redis cache.

Hybrid against each of its halves (a code only BM25 can find, a paraphrase only the
embedding can), both Chinese scripts, filters, what a hit carries, near-duplicate collapse,
the cache and what invalidates it, metering, tenant isolation, document versions and input
validation. Searches are made from the public schema, as chunk_search switches by itself."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
from django.db import connection
from django_tenants.utils import schema_context

from apps.billing.models import UsageRecord
from apps.core.exceptions import ValidationFailed
from apps.knowledge import services
from apps.knowledge.bm25 import query_vector as bm25_query_vector
from apps.knowledge.models import Document
from apps.knowledge.search import SearchFilters
from apps.knowledge.tests.search_corpus import (
    MANUAL,
    RETURNS_SIMPLIFIED,
    RETURNS_TRADITIONAL,
    hit_documents,
    pdf_bytes,
    tenant_key_of,
)
from apps.knowledge.vectorstore import text_normalize, vectors_count, vectors_search_bm25, vectors_search_dense

RRF_K = 60

pytest_plugins = ["apps.knowledge.tests.search_fixtures"]  # search_env, index_doc, search...


def section_hit(result, heading: str):
    """The hit whose section path ends with ``heading`` (None if absent)."""
    return next((h for h in result.hits if h.section and h.section[-1] == heading), None)


def usage_rows(tenant) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(tenant=tenant, usage_type="vector_search").order_by("recorded_at"))


# =========================================================================================
# Hybrid against dense and BM25 alone
# =========================================================================================
class TestHybrid:
    def test_an_error_code_dense_misses_is_found_by_hybrid(self, acme, index_doc, search):
        index_doc(acme, "manual.md", MANUAL)

        dense = search(acme, "E4471", mode="dense", top_k=10)
        # The embedding model puts the table of look-alike codes (E4417, E7441...) first.
        assert dense.hits[0].section[-1] == "Controller codes"
        assert "E4471" not in dense.hits[0].content
        target = section_hit(dense, "Flow problems")
        assert target is not None and target.rank > 1
        dense_top1 = search(acme, "E4471", mode="dense", top_k=1)
        assert section_hit(dense_top1, "Flow problems") is None  # absent from what a user sees

        bm25 = search(acme, "E4471", mode="bm25", top_k=10)
        assert [h.section[-1] for h in bm25.hits] == ["Flow problems"]  # the only passage with it

        hybrid = search(acme, "E4471", mode="hybrid", top_k=1)
        (hit,) = hybrid.hits
        assert hit.section[-1] == "Flow problems"
        assert hit.bm25_rank == 1
        assert hit.dense_rank == target.rank

    def test_a_part_number_is_found_by_its_exact_token(self, acme, index_doc, search):
        index_doc(acme, "manual.md", MANUAL)

        bm25 = search(acme, "XR-7731-B", mode="bm25", top_k=10)
        assert [h.section[-1] for h in bm25.hits] == ["Shaft seals"]
        hybrid = search(acme, "XR-7731-B", mode="hybrid", top_k=3)
        assert hybrid.hits[0].section[-1] == "Shaft seals"
        assert hybrid.hits[0].bm25_rank == 1
        assert "XR-7731-B" in hybrid.hits[0].content
        # The look-alike part table is no better than second: its codes share no token.
        table = section_hit(hybrid, "Part numbers")
        assert table is None or table.bm25_rank is None

    def test_an_english_question_finds_a_chinese_passage_bm25_cannot(self, acme, index_doc, search):
        index_doc(acme, "manual.md", MANUAL)
        returns = index_doc(acme, "returns.md", RETURNS_SIMPLIFIED)
        question = "How long do I have to return an unused item?"

        bm25 = search(acme, question, mode="bm25", top_k=10)
        assert returns.id not in hit_documents(bm25)  # not one word in common

        hybrid = search(acme, question, mode="hybrid", top_k=3)
        top = hybrid.hits[0]
        assert top.document_id == returns.id
        assert top.bm25_rank is None
        assert top.dense_rank == 1
        assert top.dense_score > 0.3

    def test_a_chinese_question_finds_an_english_passage_bm25_cannot(self, acme, index_doc, search):
        manual = index_doc(acme, "manual.md", MANUAL)
        index_doc(acme, "returns.md", RETURNS_SIMPLIFIED)
        question = "轴封多久需要更换一次？"  # how often must the shaft seal be replaced?

        bm25 = search(acme, question, mode="bm25", top_k=10)
        assert manual.id not in hit_documents(bm25)

        hybrid = search(acme, question, mode="hybrid", top_k=3)
        assert hybrid.hits[0].document_id == manual.id
        assert hybrid.hits[0].section[-1] == "Shaft seals"
        assert hybrid.hits[0].bm25_rank is None

    def test_modes_report_only_their_own_ranks(self, acme, index_doc, search):
        index_doc(acme, "manual.md", MANUAL)
        dense = search(acme, "shaft seal", mode="dense")
        bm25 = search(acme, "shaft seal", mode="bm25")
        assert dense.hits and all(h.bm25_rank is None and h.dense_rank is not None for h in dense.hits)
        assert bm25.hits and all(h.dense_rank is None and h.dense_score is None for h in bm25.hits)
        assert bm25.timings["embed_ms"] == 0.0  # no query embedding for BM25 alone
        assert bm25.timings["sparse_ms"] > 0.0  # but its BM25 weights (jieba, the tenant's IDF)
        assert dense.timings["sparse_ms"] == 0.0

    def test_the_tenants_weights_apply_outside_a_request(self, acme, index_doc, search):
        """chunk_search is called from the public schema here (as the chat does): the tenant's
        own search settings must still apply."""
        index_doc(acme, "manual.md", MANUAL)
        query = "E4471 seal kit"
        bm25_order = [h.chunk_id for h in search(acme, query, mode="bm25", top_k=10).hits]
        assert len(bm25_order) >= 2
        with schema_context("public"):
            acme.settings = {**acme.settings, "search": {"dense_weight": 0.0}}
            acme.save(update_fields=["settings"])
        hybrid = search(acme, query, mode="hybrid", top_k=10, use_cache=False)
        assert [h.chunk_id for h in hybrid.hits][: len(bm25_order)] == bm25_order


# =========================================================================================
# Traditional and Simplified Chinese
# =========================================================================================
class TestChineseScripts:
    def test_a_traditional_query_finds_a_simplified_document(self, acme, index_doc, search):
        index_doc(acme, "manual.md", MANUAL)
        returns = index_doc(acme, "returns.md", RETURNS_SIMPLIFIED)

        for mode in ("bm25", "hybrid"):
            result = search(acme, "無理由退貨", mode=mode, top_k=3)
            assert result.hits[0].document_id == returns.id, mode
            assert result.hits[0].bm25_rank == 1
            assert "<mark>退货</mark>" in result.hits[0].highlighted

    def test_a_simplified_query_finds_a_traditional_document(self, acme, index_doc, search):
        index_doc(acme, "manual.md", MANUAL)
        returns = index_doc(acme, "returns.txt", RETURNS_TRADITIONAL)

        for mode in ("bm25", "hybrid"):
            result = search(acme, "无理由退货", mode=mode, top_k=3)
            hit = result.hits[0]
            assert hit.document_id == returns.id, mode
            assert hit.bm25_rank == 1
            assert hit.content == RETURNS_TRADITIONAL.strip()  # shown as written, not converted
            assert "<mark>退貨</mark>" in hit.highlighted  # marked in the document's own script


# =========================================================================================
# Filters
# =========================================================================================
FILTER_DOCS = {
    "policy.md": (
        "# Zephyr heater warranty\n\nThe Zephyr heater warranty covers parts and labour for two years.\n",
        {"category": "policies", "tags": ["warranty", "faq"], "language": "en"},
    ),
    "faq.txt": (
        "Zephyr heater warranty questions: keep the receipt, the warranty starts on the day of purchase.\n",
        {"category": "policies", "tags": ["faq"], "language": "zh-CN"},
    ),
    "manual.pdf": (
        pdf_bytes([["Zephyr heater manual"], ["Zephyr heater warranty registration is done online."]]),
        {"category": "manuals", "tags": ["warranty"], "language": "en"},
    ),
    "notes.html": (
        "<html><body><h1>Zephyr notes</h1><p>Zephyr heater warranty claims go to the service desk.</p></body></html>",
        {"language": "en"},
    ),
}


@pytest.fixture
def filter_docs(acme, index_doc) -> dict[str, str]:
    return {name: index_doc(acme, name, content, **fields).id for name, (content, fields) in FILTER_DOCS.items()}


class TestFilters:
    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({}, {"policy.md", "faq.txt", "manual.pdf", "notes.html"}),
            ({"category": "policies"}, {"policy.md", "faq.txt"}),
            ({"category": "manuals"}, {"manual.pdf"}),
            ({"tags": ["faq"]}, {"policy.md", "faq.txt"}),
            ({"tags": ["warranty", "faq"]}, {"policy.md", "faq.txt", "manual.pdf"}),
            ({"tags": ["warranty", "faq"], "tags_mode": "any"}, {"policy.md", "faq.txt", "manual.pdf"}),
            ({"tags": ["warranty", "faq"], "tags_mode": "all"}, {"policy.md"}),
            ({"document_ids": ["manual.pdf", "notes.html"]}, {"manual.pdf", "notes.html"}),
            ({"language": "zh-CN"}, {"faq.txt"}),
            ({"language": "en"}, {"policy.md", "manual.pdf", "notes.html"}),
            ({"file_type": "pdf"}, {"manual.pdf"}),
            ({"file_type": "html"}, {"notes.html"}),
            ({"category": "policies", "language": "en"}, {"policy.md"}),
            ({"category": "policies", "file_type": "pdf"}, set()),
            ({"category": "no such category"}, set()),
        ],
        ids=lambda v: repr(v) if isinstance(v, dict) else None,
    )
    def test_filters(self, acme, filter_docs, search, filters, expected):
        if "document_ids" in filters:
            filters = {**filters, "document_ids": [filter_docs[n] for n in filters["document_ids"]]}
        for mode in ("hybrid", "dense", "bm25"):
            result = search(acme, "Zephyr heater warranty", mode=mode, top_k=20, filters=filters)
            names = {name for name, doc_id in filter_docs.items() if doc_id in hit_documents(result)}
            assert names == expected, mode

    def test_a_filter_that_matches_nothing_does_not_ask_milvus(self, acme, filter_docs, search):
        result = search(acme, "Zephyr heater warranty", filters={"category": "nothing"})
        assert result.hits == []
        assert result.timings["milvus_ms"] == 0.0 and result.timings["embed_ms"] == 0.0

    def test_a_document_that_is_not_indexed_is_not_in_a_filtered_search(self, acme, filter_docs, upload_doc, search):
        pending = upload_doc(acme, "pending.md", "# Zephyr heater warranty\n\nStill being processed.\n").document
        result = search(acme, "Zephyr heater warranty", top_k=20, filters={"document_ids": [str(pending.pk)]})
        assert result.hits == []


# =========================================================================================
# What a hit carries
# =========================================================================================
class TestHits:
    def test_a_pdf_hit_carries_its_page(self, acme, index_doc, search):
        pdf = index_doc(
            acme,
            "heater-guide.pdf",
            pdf_bytes(
                [
                    ["Heater guide", "Unpack the heater and read the safety notes."],
                    ["Descaling", "Descale the Zephyr heat exchanger every six months with citric acid."],
                    ["Disposal", "Take the old heater to a recycling centre."],
                ]
            ),
            title="Zephyr heater guide",
        )
        result = search(acme, "descale the heat exchanger with citric acid", top_k=3)
        hit = result.hits[0]
        assert hit.document_id == pdf.id
        assert hit.page == 2
        assert hit.file_type == "pdf"
        assert hit.document_title == "Zephyr heater guide"
        assert hit.original_name == "heater-guide.pdf"
        assert "<mark>citric</mark>" in hit.highlighted

    def test_a_hit_carries_ids_section_text_scores_and_rank(self, acme, index_doc, search):
        from apps.knowledge.pipeline.embed import get_embedder

        manual = index_doc(acme, "manual.md", MANUAL)
        query = "replace the shaft seal"
        result = search(acme, query, mode="hybrid", top_k=5)

        assert [h.rank for h in result.hits] == list(range(1, len(result.hits) + 1))
        assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
        hit = result.hits[0]
        chunk = next(c for c in manual.chunks if str(c.pk) == hit.chunk_id)
        assert hit.document_id == manual.id
        assert hit.document_title == "manual"  # the file name's stem when no title was given
        assert hit.section == ["Pump service manual", "Shaft seals"]
        assert hit.page is None
        assert hit.content == chunk.content
        assert hit.metadata == chunk.metadata
        # Default fusion is score fusion: each list's scores over its best, summed (weights 1),
        # so a hit that leads both lists scores exactly 2.
        assert 0.0 < hit.score <= 2.0
        if hit.dense_rank == 1 and hit.bm25_rank == 1:
            assert hit.score == pytest.approx(2.0, abs=1e-6)
        assert hit.dense_rank is not None and hit.bm25_rank is not None
        # The dense score is the cosine similarity between query and passage embeddings.
        embedder = get_embedder()
        q, c = (np.asarray(v) for v in embedder.embed([text_normalize(query), chunk.content]))
        assert hit.dense_score == pytest.approx(float(q @ c), abs=2e-3)
        assert re.search(r"<mark>replace</mark> it every", hit.highlighted, re.IGNORECASE)
        assert "<mark>shaft</mark> <mark>seal</mark>" in hit.highlighted.lower()
        timings = result.timings
        assert set(timings) == {"embed_ms", "sparse_ms", "milvus_ms", "dense_ms", "bm25_ms", "overhead_ms", "total_ms"}
        assert timings["total_ms"] >= timings["embed_ms"] + timings["sparse_ms"] + timings["milvus_ms"] - 0.03

    def test_highlighting_escapes_html_and_never_marks_inside_an_entity(self, acme, index_doc, search):
        text = (
            "# Lab wiring\n\n"
            'The R&D lab uses a 16 amp fuse for <b>heaters</b> & "quoted" parts; amperes > 16 trip it.\n'
        )
        index_doc(acme, "wiring.md", text)
        hit = search(acme, "16 amp fuse", mode="bm25").hits[0]
        marked = hit.highlighted
        assert "R&amp;D" in marked
        assert "<mark>16</mark> <mark>amp</mark> <mark>fuse</mark> for" in marked
        assert "&lt;b&gt;heaters&lt;/b&gt; &amp; &quot;quoted&quot;" in marked
        assert "<b>" not in marked
        assert "&<mark>" not in marked  # "amp" is not marked inside "&amp;"
        assert "<mark>amp</mark>eres" not in marked  # latin terms on word boundaries
        assert html.unescape(re.sub(r"</?mark>", "", marked)) == hit.content

    def test_a_markup_query_is_escaped_too(self, acme, index_doc, search):
        index_doc(acme, "xss.md", "# Script tags\n\nNever paste <script>alert(1)</script> into the console.\n")
        hit = search(acme, "<script>alert(1)</script>", mode="bm25").hits[0]
        assert "<script>" not in hit.highlighted
        assert "&lt;" in hit.highlighted


# =========================================================================================
# Near-duplicates
# =========================================================================================
BATTERY = (
    "Lithium batteries for the cordless tools must be stored at 40 to 60 percent charge in a cool, dry room "
    "between 10 and 25 degrees. Never store them fully charged or completely empty, keep them away from metal "
    "objects and check the charge every three months; a swollen or hot battery goes to the hazardous waste bin "
    "at once."
)


class TestNearDuplicates:
    def test_the_same_paragraph_in_two_documents_is_one_hit(self, acme, index_doc, search):
        guide = index_doc(acme, "storage-guide.md", f"# Storage guide\n\n{BATTERY}\n")
        rules = index_doc(acme, "warehouse-rules.md", f"# Warehouse rules\n\n{BATTERY} Ask the shift lead.\n")
        exact = index_doc(acme, "battery.txt", f"{BATTERY}\n")
        index_doc(acme, "manual.md", MANUAL)
        copies = {guide.id, rules.id, exact.id}
        query = "how should lithium batteries be stored"

        for mode in ("hybrid", "dense", "bm25"):
            result = search(acme, query, mode=mode, top_k=3)
            assert len([d for d in hit_documents(result) if d in copies]) == 1, mode
            assert result.hits[0].document_id in copies
        assert len(search(acme, query, mode="hybrid", top_k=3).hits) == 3  # the rest of top-k is filled
        # Each copy is indexed and found on its own: only the repeat is dropped.
        for doc_id in copies:
            alone = search(acme, query, filters={"document_ids": [doc_id]})
            assert hit_documents(alone)[0] == doc_id


# =========================================================================================
# Cache
# =========================================================================================
class TestCache:
    def test_the_second_identical_search_is_cached(self, acme, index_doc, search):
        index_doc(acme, "manual.md", MANUAL)
        first = search(acme, "shaft seal", top_k=3)
        second = search(acme, "shaft seal", top_k=3)
        assert first.cached is False and second.cached is True
        assert second.hits == first.hits
        assert set(second.timings) == {"total_ms"}
        assert search(acme, "  shaft seal ", top_k=3).cached is True  # the same query, trimmed
        assert search(acme, "shaft seal", top_k=4).cached is False
        assert search(acme, "shaft seal", top_k=3, mode="bm25").cached is False
        assert search(acme, "shaft seal", top_k=3, filters={"file_type": "md"}).cached is False
        assert search(acme, "shaft seal", top_k=3, use_cache=False).cached is False

    def test_a_new_document_invalidates_once_it_is_indexed(
        self, acme, index_doc, upload_doc, process_doc, search, django_capture_on_commit_callbacks
    ):
        index_doc(acme, "manual.md", MANUAL)
        assert search(acme, "shaft seal").cached is False
        with django_capture_on_commit_callbacks():  # the processing task is not sent
            pending = upload_doc(acme, "seals.md", "# Seal care\n\nWipe the shaft seal with a damp cloth.\n")
        # Nothing searchable changed yet: the new document is still processing.
        assert search(acme, "shaft seal").cached is True
        with django_capture_on_commit_callbacks(execute=True):
            process_doc(acme, pending.document)
        fresh = search(acme, "shaft seal")
        assert fresh.cached is False
        assert str(pending.document.pk) in hit_documents(fresh)

    def test_a_delete_invalidates(
        self, acme, seed_user, index_doc, search, tasks_eager, django_capture_on_commit_callbacks
    ):
        index_doc(acme, "manual.md", MANUAL)
        seals = index_doc(acme, "seals.md", "# Seal care\n\nWipe the shaft seal with a damp cloth.\n")
        assert seals.id in hit_documents(search(acme, "shaft seal"))
        assert search(acme, "shaft seal").cached is True
        with schema_context(acme.schema_name), django_capture_on_commit_callbacks(execute=True):
            services.document_delete(document=seals.document, actor=seed_user(acme, "knowledge_manager"))
        after = search(acme, "shaft seal")
        assert after.cached is False
        assert seals.id not in hit_documents(after)
        with schema_context(acme.schema_name):
            assert vectors_count(tenant_key=services.tenant_key(), document_id=seals.id) == 0

    def test_a_metadata_change_invalidates(
        self, acme, seed_user, index_doc, search, django_capture_on_commit_callbacks
    ):
        manual = index_doc(acme, "manual.md", MANUAL, category="pumps")
        assert search(acme, "shaft seal", filters={"category": "archive"}).hits == []
        assert search(acme, "shaft seal", filters={"category": "archive"}).cached is True
        with schema_context(acme.schema_name), django_capture_on_commit_callbacks(execute=True):
            services.document_update(
                document=manual.document, actor=seed_user(acme, "knowledge_manager"), category="archive"
            )
        after = search(acme, "shaft seal", filters={"category": "archive"})
        assert after.cached is False
        assert hit_documents(after)[0] == manual.id

    def test_a_change_in_one_tenant_leaves_the_others_cache_alone(
        self, acme, globex, seed_user, index_doc, search, django_capture_on_commit_callbacks
    ):
        manual = index_doc(acme, "manual.md", MANUAL)
        theirs = index_doc(globex, "manual.md", MANUAL)
        search(acme, "shaft seal")
        search(globex, "shaft seal")
        assert search(globex, "shaft seal").cached is True
        with schema_context(acme.schema_name), django_capture_on_commit_callbacks(execute=True):
            services.document_update(
                document=manual.document, actor=seed_user(acme, "knowledge_manager"), title="Pump manual v2"
            )
        assert search(acme, "shaft seal").cached is False
        again = search(globex, "shaft seal")
        assert again.cached is True
        assert set(hit_documents(again)) == {theirs.id}

    def test_the_same_search_in_another_tenant_is_not_served_from_the_first_ones_cache(
        self, acme, globex, index_doc, search
    ):
        mine = index_doc(acme, "manual.md", MANUAL)
        theirs = index_doc(globex, "manual.md", MANUAL)
        search(acme, "shaft seal")
        assert search(acme, "shaft seal").cached is True
        other = search(globex, "shaft seal")
        assert other.cached is False
        assert set(hit_documents(other)) == {theirs.id}
        assert mine.id not in hit_documents(other)


# =========================================================================================
# Metering
# =========================================================================================
class TestUsage:
    def test_every_search_writes_one_vector_search_record(self, acme, globex, seed_user, index_doc, search):
        index_doc(acme, "manual.md", MANUAL)
        agent = seed_user(acme, "agent")
        before_acme, before_globex = len(usage_rows(acme)), len(usage_rows(globex))

        first = search(acme, "shaft seal", top_k=2, user_id=agent.pk)
        search(acme, "shaft seal", top_k=2, user_id=agent.pk)  # cached: still a search
        search(acme, "E4471", mode="bm25")

        rows = usage_rows(acme)[before_acme:]
        assert len(rows) == 3
        assert [(r.quantity, r.unit) for r in rows] == [(1, "count")] * 3
        assert [r.metadata for r in rows] == [
            {"mode": "hybrid", "hits": len(first.hits), "cached": False},
            {"mode": "hybrid", "hits": len(first.hits), "cached": True},
            {"mode": "bm25", "hits": 1, "cached": False},
        ]
        assert [r.user_id for r in rows] == [agent.pk, agent.pk, None]
        assert len(usage_rows(globex)) == before_globex

    def test_a_refused_search_is_not_metered(self, acme, search_env, search):
        before = len(usage_rows(acme))
        with pytest.raises(ValidationFailed):
            search(acme, "   ")
        assert len(usage_rows(acme)) == before


# =========================================================================================
# Tenant isolation
# =========================================================================================
SHARED_TEXT = (
    "# Onboarding\n\nNew staff receive a Quillfeather badge on their first day; the badge opens the north "
    "entrance and the bike room.\n"
)


class TestIsolation:
    def test_identical_text_in_two_tenants_is_only_found_in_its_own(self, acme, globex, index_doc, search):
        mine = index_doc(acme, "onboarding.md", SHARED_TEXT)
        theirs = index_doc(globex, "onboarding.md", SHARED_TEXT)
        assert mine.chunks[0].content == theirs.chunks[0].content

        for mode in ("hybrid", "dense", "bm25"):
            in_globex = search(globex, "Quillfeather badge", mode=mode, top_k=50)
            assert in_globex.hits, mode
            assert set(hit_documents(in_globex)) == {theirs.id}, mode
            in_acme = search(acme, "Quillfeather badge", mode=mode, top_k=50, use_cache=False)
            assert set(hit_documents(in_acme)) == {mine.id}, mode

    def test_milvus_itself_returns_only_the_tenants_vectors(self, acme, globex, index_doc):
        from apps.knowledge.pipeline.embed import get_embedder

        mine = index_doc(acme, "onboarding.md", SHARED_TEXT)
        theirs = index_doc(globex, "onboarding.md", SHARED_TEXT)
        vector = get_embedder().embed(["Quillfeather badge"])[0]
        key = tenant_key_of("globex")
        dense = vectors_search_dense(tenant_key=key, vector=vector, limit=50)
        with schema_context("globex"):
            weights = bm25_query_vector("Quillfeather badge")
        bm25 = vectors_search_bm25(tenant_key=key, weights=weights, limit=50)
        assert theirs.id in {h.document_id for h in dense}
        assert {h.document_id for h in bm25} == {theirs.id}
        assert mine.id not in {h.document_id for h in dense + bm25}
        # Even when the other tenant's document id is asked for by name.
        by_id = vectors_search_dense(tenant_key=key, vector=vector, limit=50, document_ids=[mine.id])
        assert by_id == []

    def test_another_tenants_document_id_as_a_filter_finds_nothing(self, acme, globex, index_doc, search):
        mine = index_doc(acme, "onboarding.md", SHARED_TEXT)
        index_doc(globex, "onboarding.md", SHARED_TEXT)
        result = search(globex, "Quillfeather badge", filters={"document_ids": [mine.id]})
        assert result.hits == []


# =========================================================================================
# Versions
# =========================================================================================
V1 = "# Parking\n\nStaff park on level minus two; the Marmoset gate code changes every Monday.\n"
V2 = "# Parking\n\nStaff park in the new Kestrel garage across the street from March on.\n"


class TestVersions:
    def test_a_superseded_version_never_appears(self, acme, index_doc, upload_doc, process_doc, search):
        v1 = index_doc(acme, "parking.md", V1)
        pending = upload_doc(acme, "parking.md", V2).document
        assert pending.version == 2

        # Until the new version is indexed the old one is the searchable one.
        before = search(acme, "Marmoset gate code", mode="bm25", use_cache=False)
        assert hit_documents(before) == [v1.id]
        assert search(acme, "Kestrel garage", mode="bm25", use_cache=False).hits == []

        v2 = process_doc(acme, pending)
        with schema_context(acme.schema_name):
            assert Document.objects.get(pk=v1.id).status == Document.Status.DELETED
            assert vectors_count(tenant_key=services.tenant_key(), document_id=v1.id) == 0
        for mode in ("hybrid", "dense", "bm25"):
            result = search(acme, "Marmoset gate code", mode=mode, top_k=50, use_cache=False)
            assert v1.id not in hit_documents(result), mode
            assert set(v1.chunk_ids).isdisjoint(h.chunk_id for h in result.hits)
        assert hit_documents(search(acme, "Kestrel garage", mode="bm25", use_cache=False)) == [v2.id]

    def test_lingering_vectors_of_a_superseded_version_never_appear(
        self, acme, index_doc, upload_doc, process_doc, search, monkeypatch
    ):
        """The old version's vectors are deleted after the swap commits; until then (or if
        that delete failed) Milvus still returns them, and search must drop them."""
        from apps.knowledge import vectorstore

        v1 = index_doc(acme, "parking.md", V1)
        real_delete = vectorstore.vectors_delete

        def delete_all_but_v1(*, tenant_key, document_id, keep_ids=None):
            if document_id != v1.id:
                real_delete(tenant_key=tenant_key, document_id=document_id, keep_ids=keep_ids)

        monkeypatch.setattr(vectorstore, "vectors_delete", delete_all_but_v1)
        v2 = process_doc(acme, upload_doc(acme, "parking.md", V2).document)
        monkeypatch.undo()
        with schema_context(acme.schema_name):
            assert vectors_count(tenant_key=services.tenant_key(), document_id=v1.id) == len(v1.chunks)
        for mode in ("hybrid", "dense", "bm25"):
            result = search(acme, "Marmoset gate code", mode=mode, top_k=50, use_cache=False)
            assert v1.id not in hit_documents(result), mode
            assert v2.id in hit_documents(result) or mode == "bm25"

    def test_a_version_that_failed_to_swap_in_never_appears(self, acme, index_doc, upload_doc, search, monkeypatch):
        v1 = index_doc(acme, "parking.md", V1)
        pending = upload_doc(acme, "parking.md", V2).document

        def broken_swap(**kwargs):
            raise RuntimeError("database went away")

        monkeypatch.setattr(services, "_document_swap_in", broken_swap)
        with schema_context(acme.schema_name):
            services.document_process(document_id=pending.pk)
            assert Document.objects.get(pk=pending.pk).status == Document.Status.FAILED
            assert vectors_count(tenant_key=services.tenant_key(), document_id=str(pending.pk)) > 0
        assert search(acme, "Kestrel garage", mode="bm25", use_cache=False).hits == []
        assert hit_documents(search(acme, "Marmoset gate code", mode="bm25", use_cache=False)) == [v1.id]


# =========================================================================================
# Input validation
# =========================================================================================
class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "code"),
        [
            ({"query": ""}, "empty_query"),
            ({"query": " \n\t "}, "empty_query"),
            ({"query": None}, "empty_query"),
            ({"query": "x" * 2001}, "query_too_long"),
            ({"query": "退" * 2001}, "query_too_long"),
            ({"query": "seal", "mode": "semantic"}, "invalid_mode"),
            ({"query": "seal", "mode": ""}, "invalid_mode"),
            ({"query": "seal", "top_k": 0}, "invalid_top_k"),
            ({"query": "seal", "top_k": 51}, "invalid_top_k"),
            ({"query": "seal", "top_k": -3}, "invalid_top_k"),
            ({"query": "seal", "top_k": "many"}, "invalid_top_k"),
            ({"query": "seal", "top_k": None}, "invalid_top_k"),
            ({"query": "seal", "filters": {"colour": "red"}}, "invalid_filter"),
            ({"query": "seal", "filters": {"tags": ["a"], "tags_mode": "some"}}, "invalid_filter"),
            ({"query": "seal", "filters": {"tags": "warranty"}}, "invalid_filter"),
            ({"query": "seal", "filters": {"document_ids": "abc"}}, "invalid_filter"),
            ({"query": "seal", "filters": ["category"]}, "invalid_filter"),
        ],
        ids=lambda v: v if isinstance(v, str) else None,
    )
    def test_bad_input_is_refused_with_a_stable_code(self, acme, search_env, search, kwargs, code):
        query = kwargs.pop("query")
        with pytest.raises(ValidationFailed) as excinfo:
            search(acme, query, **kwargs)
        assert excinfo.value.code == code
        assert excinfo.value.status_code == 400

    def test_a_query_of_exactly_the_limit_is_accepted(self, acme, index_doc, search):
        index_doc(acme, "manual.md", MANUAL)
        result = search(acme, ("shaft seal " * 200)[:2000], top_k=1)
        assert len(result.hits) == 1

    @pytest.mark.parametrize("query", ["the", "的", "?", "😀", "\u200b", "a", "((", "OR 1=1 --", "\\"])
    @pytest.mark.parametrize("mode", ["hybrid", "bm25"])
    def test_odd_queries_give_results_or_nothing_never_an_error(self, acme, index_doc, search, query, mode):
        index_doc(acme, "manual.md", MANUAL)
        result = search(acme, query, mode=mode)
        assert isinstance(result.hits, list)

    def test_filters_parse_from_a_dict(self):
        filters = SearchFilters.from_dict({"tags": ["a", 2], "document_ids": [1], "category": "x"})
        assert filters.tags == ["a", "2"] and filters.document_ids == ["1"] and filters.category == "x"
        assert SearchFilters.from_dict(None).is_empty()


def test_the_search_leaves_the_connection_where_it_was(acme, index_doc, search):
    index_doc(acme, "manual.md", MANUAL)
    search(acme, "shaft seal")
    assert connection.schema_name == "public"
