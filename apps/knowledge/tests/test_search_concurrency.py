"""Hybrid search sends its BM25 half from a thread pool, beside the query embedding and the
dense search (``search.search_candidates``). What must not change with that: the ranking
(identical to the two searches run one after the other), the tenant (the pool thread gets
the caller's tenant key, and searches of two tenants at once never see each other's
chunks), the database (never touched from a pool thread), errors (a failed BM25 search is
the search's error) and forks (a prefork child makes its own pool).

Real stack: the session's Milvus Lite, the embedding model, PostgreSQL. No test here looks
at how long anything takes."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.backends.utils import CursorWrapper
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.knowledge import search as search_module
from apps.knowledge import vectorstore
from apps.knowledge.search import chunk_search
from apps.knowledge.tests.search_corpus import MANUAL, RETURNS_SIMPLIFIED, hit_documents, tenant_key_of
from apps.knowledge.vectorstore import VectorStoreError

pytest_plugins = ["apps.knowledge.tests.search_fixtures"]  # search_env, index_doc, search...

SHARED_TEXT = (
    "# Onboarding\n\nNew staff receive a Quillfeather badge on their first day; the badge opens the north "
    "entrance and the bike room.\n"
)
QUERIES = (
    "E4471 seal kit",
    "how often must the shaft seal be replaced",
    "轴封多久需要更换一次？",
    "退货多久退款",
    "XR-7731-B",
)


class InlineExecutor:
    """Runs what it is given at once, in the caller's thread: hybrid as it was before the
    pool (BM25 first, then the embedding and the dense search)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future


def ranking(result) -> list[tuple]:
    return [(h.chunk_id, h.score, h.dense_rank, h.bm25_rank, h.dense_score) for h in result.hits]


class TestSameResults:
    def test_hybrid_ranks_exactly_as_the_two_searches_one_after_the_other(self, acme, index_doc, search, monkeypatch):
        index_doc(acme, "manual.md", MANUAL)
        index_doc(acme, "returns.md", RETURNS_SIMPLIFIED)

        concurrent = {q: ranking(search(acme, q, mode="hybrid", top_k=10, use_cache=False)) for q in QUERIES}
        monkeypatch.setattr(search_module, "_milvus_pool", InlineExecutor)
        sequential = {q: ranking(search(acme, q, mode="hybrid", top_k=10, use_cache=False)) for q in QUERIES}

        assert all(concurrent.values())
        assert concurrent == sequential

    def test_each_list_is_what_its_single_mode_fetches(self, acme, index_doc):
        """The candidate lists of a hybrid fetch are those of dense and BM25 alone."""
        index_doc(acme, "manual.md", MANUAL)
        index_doc(acme, "returns.md", RETURNS_SIMPLIFIED)
        with schema_context(acme.schema_name):
            for query in QUERIES:
                dense, bm25, timings = search_module.search_candidates(query=query, mode="hybrid", limit=20)
                assert dense == search_module.search_candidates(query=query, mode="dense", limit=20)[0]
                assert bm25 == search_module.search_candidates(query=query, mode="bm25", limit=20)[1]
                assert set(timings) == {"embed_ms", "sparse_ms", "milvus_ms", "dense_ms", "bm25_ms"}


class TestTenantAndDatabase:
    def test_the_pool_thread_gets_the_callers_tenant_and_never_touches_the_database(
        self, acme, globex, index_doc, search, monkeypatch
    ):
        mine = index_doc(acme, "onboarding.md", SHARED_TEXT)
        theirs = index_doc(globex, "onboarding.md", SHARED_TEXT)
        keys = {"acme": tenant_key_of("acme"), "globex": tenant_key_of("globex")}
        bm25_calls: list[tuple[str, str]] = []
        sql_threads: list[str] = []
        real_bm25 = vectorstore.vectors_search_bm25
        real_execute = CursorWrapper.execute

        def bm25_spy(**kwargs):
            bm25_calls.append((threading.current_thread().name, kwargs["tenant_key"]))
            return real_bm25(**kwargs)

        def execute_spy(self, sql, params=None):
            sql_threads.append(threading.current_thread().name)
            return real_execute(self, sql, params)

        monkeypatch.setattr(vectorstore, "vectors_search_bm25", bm25_spy)
        monkeypatch.setattr(CursorWrapper, "execute", execute_spy)

        for tenant, document in ((acme, mine), (globex, theirs), (acme, mine)):
            result = search(tenant, "Quillfeather badge", mode="hybrid", top_k=50, use_cache=False)
            assert set(hit_documents(result)) == {document.id}
            assert result.hits[0].bm25_rank == 1  # the BM25 list from the pool made it into the fusion

        assert [key for _, key in bm25_calls] == [keys["acme"], keys["globex"], keys["acme"]]
        assert all(name.startswith("search-milvus") for name, _ in bm25_calls)
        assert sql_threads and not any(name.startswith("search-milvus") for name in sql_threads)

    def test_a_failed_bm25_search_is_the_searchs_error(self, acme, index_doc, search, monkeypatch):
        index_doc(acme, "manual.md", MANUAL)

        def down(**kwargs):
            raise VectorStoreError("Milvus unreachable")

        monkeypatch.setattr(vectorstore, "vectors_search_bm25", down)
        with pytest.raises(VectorStoreError):
            search(acme, "shaft seal", mode="hybrid", use_cache=False)
        assert search(acme, "shaft seal", mode="dense", use_cache=False).hits  # dense alone is unaffected


# =========================================================================================
# Two tenants searching at the same time, from many threads (committed data: every thread
# has its own database connection, as concurrent requests do)
# =========================================================================================
@pytest.fixture
def shared_text_committed(committed_documents, celery_eager, seed_user, settings, tmp_path):
    """SHARED_TEXT indexed in acme and in globex, committed: {schema: document id}. The
    documents go with committed_documents; the searches' usage rows are removed here."""
    from apps.billing.models import UsageRecord
    from apps.knowledge import services
    from apps.knowledge.models import Document
    from apps.tenancy.models import Tenant

    settings.MEDIA_ROOT = str(tmp_path / "media")
    started = timezone.now()
    documents = {}
    for schema in ("acme", "globex"):
        tenant = Tenant.objects.get(schema_name=schema)
        actor = seed_user(tenant, "knowledge_manager")
        with schema_context(schema):
            upload = SimpleUploadedFile("onboarding.md", SHARED_TEXT.encode())
            result = services.document_upload(actor=actor, file=upload, original_name="onboarding.md")
            document = Document.objects.get(pk=result.document.pk)
            if document.status != Document.Status.INDEXED:  # the eager task runs on commit
                services.document_process(document_id=document.pk)
                document.refresh_from_db()
            assert document.status == Document.Status.INDEXED, (document.error_code, document.error_message)
            documents[schema] = str(document.pk)
    connection.set_schema_to_public()
    yield documents
    UsageRecord.objects.filter(
        tenant__schema_name__in=["acme", "globex"], usage_type="vector_search", recorded_at__gte=started
    ).delete()


def test_two_tenants_searching_at_once_only_see_their_own(shared_text_committed):
    from apps.tenancy.models import Tenant

    tenants = {t.schema_name: t for t in Tenant.objects.filter(schema_name__in=["acme", "globex"])}
    rounds = 6
    barrier = threading.Barrier(4)
    seen: list[tuple[str, str, frozenset]] = []

    def searcher(schema: str) -> None:
        try:
            barrier.wait(timeout=60)
            for _ in range(rounds):
                for mode in ("hybrid", "bm25", "hybrid", "dense"):
                    result = chunk_search(
                        tenant=tenants[schema], query="Quillfeather badge", mode=mode, top_k=50, use_cache=False
                    )
                    seen.append((schema, mode, frozenset(hit_documents(result))))
        finally:
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(searcher, schema) for schema in ("acme", "globex", "acme", "globex")]
        for future in futures:
            future.result()

    assert len(seen) == 4 * rounds * 4
    for schema, mode, documents in seen:
        assert documents == {shared_text_committed[schema]}, (schema, mode)


# =========================================================================================
# The pool itself
# =========================================================================================
def test_the_pool_is_made_once_per_process_and_again_after_a_fork(monkeypatch, settings):
    settings.SEARCH_THREADS = 3
    monkeypatch.setattr(search_module, "_pool", None)
    pool = search_module._milvus_pool()
    assert search_module._milvus_pool() is pool
    assert pool._max_workers == 3
    pid = search_module.os.getpid()
    monkeypatch.setattr(search_module, "_pool_pid", pid + 1)  # as a prefork child sees its parent's pool
    child_pool = search_module._milvus_pool()
    assert child_pool is not pool
    assert search_module._milvus_pool() is child_pool
    pool.shutdown()
    child_pool.shutdown()
