"""BM25 with each tenant's own statistics (apps/knowledge/bm25.py): the chunks' terms and the
counts the triggers keep follow every way chunks come and go; IDF is the tenant's, whatever
Milvus Lite segment a chunk landed in and whatever other tenants hold; chunks from before
the columns are filled by ``vectors_reconcile``.

Documents go through the real upload and pipeline (``search_fixtures``), each sealed in a
segment of its own at the end of its processing (MILVUS_LITE_SEAL_ROWS=1), as in production."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from apps.knowledge import bm25, services
from apps.knowledge.models import Bm25Term, Document, DocumentChunk

pytest_plugins = ["apps.knowledge.tests.search_fixtures"]  # search_env, index_doc, search...

FILLER = (
    "The pump housing is cast iron and should be inspected every season. Check the impeller "
    "for wear, clear the strainer basket and confirm the motor turns freely before priming."
)


def counted() -> dict[int, int]:
    """knowledge_bm25term of the current schema, rows at zero left out."""
    return {term: count for term, count in Bm25Term.objects.values_list("term", "count") if count}


def recounted() -> dict[int, int]:
    """The same counts, computed from the chunks that exist now."""
    counts: Counter[int] = Counter()
    for terms, length in DocumentChunk.objects.exclude(bm25_terms=None).values_list("bm25_terms", "bm25_length"):
        counts.update(terms)
        counts[bm25.CHUNKS_ROW] += 1
        counts[bm25.LENGTH_ROW] += length
    return {term: count for term, count in counts.items() if count}


def assert_counts_match(tenant) -> None:
    with schema_context(tenant.schema_name):
        for content, terms, length in DocumentChunk.objects.values_list("content", "bm25_terms", "bm25_length"):
            assert (terms, length) == tuple(bm25.chunk_terms(content))
        assert counted() == recounted()


def df(tenant, word: str) -> int:
    with schema_context(tenant.schema_name):
        return counted().get(bm25.term_id(word), 0)


def chunks_in(tenant) -> int:
    with schema_context(tenant.schema_name):
        return counted().get(bm25.CHUNKS_ROW, 0)


# =========================================================================================
# Analysis
# =========================================================================================
def test_analysis_folds_scripts_drops_stop_words_and_punctuation():
    ids, length = bm25.analyze("How do I reset the X200 router? 如何重設「路由器」")
    simplified, _ = bm25.analyze("如何重设路由器")
    assert bm25.term_id("x200") in ids and bm25.term_id("router") in ids
    assert bm25.term_id("the") not in ids and bm25.term_id("how") not in ids  # stop words
    assert bm25.term_id("?") not in ids and bm25.term_id("「") not in ids  # no letter or digit
    assert set(simplified) <= set(ids)  # Traditional folded to Simplified
    assert length == len(ids)
    assert all(0 <= term <= bm25.MAX_TERM_ID for term in ids)
    assert bm25.analyze("🙂 —— ！！") == ((), 0)  # nothing to count (stored as vectorstore.NO_TERMS)


def test_document_weights_saturate_with_tf_and_shrink_with_length():
    short = bm25.document_vector("gasket", avgdl=10)
    repeated = bm25.document_vector("gasket gasket gasket", avgdl=10)
    longer = bm25.document_vector("gasket " + FILLER, avgdl=10)
    g = bm25.term_id("gasket")
    assert short[g] < repeated[g] < bm25.K1 + 1  # more is better, up to k1 + 1
    assert longer[g] < short[g]  # the same tf in a longer chunk weighs less


# =========================================================================================
# The counts follow the chunks
# =========================================================================================
class TestCounts:
    def test_upload_reprocess_new_version_and_delete(
        self, acme, upload_doc, process_doc, index_doc, seed_user, django_capture_on_commit_callbacks
    ):
        manager = seed_user(acme, "knowledge_manager")
        before = chunks_in(acme)
        first = index_doc(acme, "seals.md", f"# Seals\n\nReplace the zephyrine gasket yearly. {FILLER}")
        index_doc(acme, "other.md", f"# Other\n\nThe zephyrine valve sticks in frost. {FILLER}")
        assert_counts_match(acme)
        assert df(acme, "zephyrine") == 2
        assert chunks_in(acme) == before + len(first.chunks) + 1

        with schema_context(acme.schema_name):  # reprocess: the chunks are replaced, not added
            services.document_reprocess(document=first.document, actor=manager)
        process_doc(acme, first.document)
        assert_counts_match(acme)
        assert df(acme, "zephyrine") == 2

        # A new version retires the old one's chunks.
        result = upload_doc(acme, "seals.md", f"# Seals\n\nReplace the nitrile gasket yearly. {FILLER}")
        assert result.document.replaces_id == first.document.pk
        process_doc(acme, result.document)
        assert_counts_match(acme)
        assert df(acme, "zephyrine") == 1 and df(acme, "nitrile") == 1

        with schema_context(acme.schema_name), django_capture_on_commit_callbacks(execute=False):
            services.document_delete(document=Document.objects.get(pk=result.document.pk), actor=manager)
        assert_counts_match(acme)
        assert df(acme, "nitrile") == 0
        assert chunks_in(acme) == before + 1

    def test_a_cascade_and_a_truncate_are_counted_too(self, acme, index_doc):
        indexed = index_doc(acme, "valve.md", f"# Valve\n\nThe zephyrine valve sticks in frost. {FILLER}")
        with schema_context(acme.schema_name):
            Document.objects.filter(pk=indexed.document.pk).delete()  # the chunks go by cascade
            assert counted().get(bm25.term_id("zephyrine"), 0) == 0
            assert counted() == recounted()
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred checks pending
                cursor.execute("TRUNCATE knowledge_documentchunk CASCADE")
            assert counted() == {}

    def test_services_can_take_the_lock_the_triggers_take(self, acme, index_doc):
        """``counts_lock`` (taken first by services that lock documents, then write chunks)
        must be the very lock the triggers take, or it would not keep them from deadlocking."""
        import threading

        from django.db import connections

        indexed = index_doc(acme, "valve.md", f"# Valve\n\nThe zephyrine valve sticks in frost. {FILLER}")
        got: list[bool] = []

        def try_lock(key: str) -> None:
            try:
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key])
                    got.append(cursor.fetchone()[0])
                    cursor.execute("SELECT pg_advisory_unlock_all()")
            finally:
                connections["default"].close()

        with schema_context(acme.schema_name):
            DocumentChunk.objects.filter(document=indexed.document).delete()  # the trigger holds it now
            thread = threading.Thread(target=try_lock, args=(bm25.counts_lock_key(),))
            thread.start()
            thread.join()
        assert got == [False]

    def test_reconcile_fills_chunks_written_before_the_columns(self, acme, index_doc):
        index_doc(acme, "valve.md", f"# Valve\n\nThe zephyrine valve sticks in frost. {FILLER}")
        with schema_context(acme.schema_name):
            filled, chunks = recounted(), DocumentChunk.objects.count()
            DocumentChunk.objects.update(bm25_terms=None, bm25_length=None)  # as older code left them
            assert counted() == {}  # the UPDATE took them out of the counts
            report = services.vectors_reconcile()
            assert report.chunks_analysed == chunks
            assert counted() == recounted() == filled
            assert services.vectors_reconcile().chunks_analysed == 0  # nothing left to do


# =========================================================================================
# Scoring: the tenant's IDF, not a segment's, not another tenant's
# =========================================================================================
COMMON = [f"# Note {n}\n\nThe gasket of pump {n} was checked in spring. {FILLER}" for n in range(6)]
HEAVY = "# Heavy\n\nGasket, gasket, gasket: the gasket kit lists every gasket size. " + FILLER
RARE = "# Rare\n\nThe zephyrine coating needs no primer on cast iron. " + FILLER


class TestScoring:
    @pytest.mark.parametrize("rare_first", [True, False], ids=["rare-first", "rare-last"])
    def test_a_rare_term_outranks_a_common_one_whatever_the_upload_order(self, acme, index_doc, search, rare_first):
        """Every document is sealed in a segment of its own, and Lite merges small segments
        four at a time: uploaded last, the rare document and the one repeating the common
        word were each alone in a segment. With Milvus's BM25 function, scored with each
        segment's own statistics, both terms then had the IDF of a term every chunk holds
        (N = df = 1), and the repeated common word won (rare-last failed before bm25.py)."""
        order = [
            ("rare.md", RARE),
            *((f"n{n}.md", text) for n, text in enumerate(COMMON)),
            ("neutral.md", "# Neutral\n\n" + FILLER),
            ("heavy.md", HEAVY),
        ]
        if not rare_first:
            order = order[1:] + order[:1]
        docs = {name: index_doc(acme, name, text) for name, text in order}

        result = search(acme, "gasket zephyrine", mode="bm25", top_k=10, use_cache=False)
        ranked = [h.document_id for h in result.hits]
        assert ranked[0] == docs["rare.md"].id
        assert ranked[1] == docs["heavy.md"].id  # the common word, many times

    def test_query_weights_are_the_tenants_idf(self, acme, index_doc):
        for name, text in (("rare.md", RARE), ("n0.md", COMMON[0]), ("n1.md", COMMON[1])):
            index_doc(acme, name, text)
        with schema_context(acme.schema_name):
            chunks = DocumentChunk.objects.count()
            weights = bm25.query_vector("gasket zephyrine zephyrine")
            df_gasket = DocumentChunk.objects.filter(bm25_terms__contains=[bm25.term_id("gasket")]).count()
        assert weights[bm25.term_id("gasket")] == pytest.approx(
            math.log(1 + (chunks - df_gasket + 0.5) / (df_gasket + 0.5))
        )
        assert weights[bm25.term_id("zephyrine")] == pytest.approx(2 * math.log(1 + (chunks - 1 + 0.5) / 1.5))
        with schema_context(acme.schema_name):
            assert bm25.query_vector("the of and") == {}  # stop words only: no BM25 search

    def test_another_tenants_documents_never_change_a_tenants_scores(self, acme, globex, index_doc, search):
        index_doc(acme, "rare.md", RARE)
        index_doc(acme, "n0.md", COMMON[0])
        before = search(acme, "gasket zephyrine", mode="bm25", top_k=10, use_cache=False)
        with schema_context(acme.schema_name):
            weights = bm25.query_vector("gasket zephyrine")

        for n in range(4):  # globex: the rare word everywhere
            index_doc(globex, f"z{n}.md", f"# Z {n}\n\nZephyrine {n}, zephyrine everywhere. {FILLER}")

        after = search(acme, "gasket zephyrine", mode="bm25", top_k=10, use_cache=False)
        assert [(h.chunk_id, h.score) for h in after.hits] == [(h.chunk_id, h.score) for h in before.hits]
        with schema_context(acme.schema_name):
            assert bm25.query_vector("gasket zephyrine") == weights
        assert df(globex, "zephyrine") >= 4 and df(acme, "zephyrine") == 1
