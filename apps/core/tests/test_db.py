"""apps.core.db: the search's own reads as prepared statements, one per tenant schema."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from apps.core.db import fetchall_prepared, qualified
from apps.knowledge.models import Bm25Term

TERM = 987_654_321


def _count(tenant) -> list[tuple]:
    with schema_context(tenant.schema_name):
        sql = f"SELECT count FROM {qualified('knowledge_bm25term')} WHERE term = %s"
        return fetchall_prepared(sql, [TERM])


def _prepared_for(schema: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [f'%"{schema}".%'])
        return cursor.fetchone()[0]


@pytest.fixture
def counts(acme, globex):
    for tenant, count in ((acme, 1), (globex, 7)):
        with schema_context(tenant.schema_name):
            Bm25Term.objects.create(term=TERM, count=count)


def test_each_tenant_reads_its_own_schema_on_one_connection(acme, globex, counts):
    threshold = connection.connection.prepare_threshold
    assert threshold == 5
    for _ in range(threshold - 1):  # alternating on the same connection, as a chat thread serves tenants
        assert _count(acme) == [(1,)]
        assert _count(globex) == [(7,)]
    assert _prepared_for("acme") == 0  # not yet: preparing costs a round trip of its own
    for _ in range(3):
        assert _count(acme) == [(1,)]
        assert _count(globex) == [(7,)]
    assert _prepared_for("acme") == 1
    assert _prepared_for("globex") == 1


def test_the_statement_names_the_schema_whatever_the_search_path(acme, globex, counts):
    with schema_context(acme.schema_name):
        sql = f"SELECT count FROM {qualified('knowledge_bm25term')} WHERE term = %s"
    with schema_context(globex.schema_name):  # search_path is globex's now
        for _ in range(7):  # prepared from the fifth
            assert fetchall_prepared(sql, [TERM]) == [(1,)]
    assert _prepared_for("acme") == 1


def test_goes_through_djangos_cursor_wrapper(acme, counts):
    with CaptureQueriesContext(connection) as captured:
        assert _count(acme) == [(1,)]
    assert any("knowledge_bm25term" in query["sql"] for query in captured.captured_queries)


def test_unprepared_when_turned_off(acme, globex, counts):
    connection.ensure_connection()
    raw = connection.connection
    raw.prepare_threshold = None  # what DATABASE_PREPARED_STATEMENTS=false gives
    try:
        for _ in range(7):
            assert _count(globex) == [(7,)]
            assert _count(acme) == [(1,)]
        assert _prepared_for("acme") == 0
        assert _prepared_for("globex") == 0
    finally:
        raw.prepare_threshold = 5


def test_the_setting_reaches_the_connection(settings):
    assert settings.DATABASE_PREPARED_STATEMENTS is True
    assert settings.DATABASES["default"]["OPTIONS"]["prepare_threshold"] == 5


def test_bm25_counts_are_one_statement_whatever_the_size_of_the_ids(acme, counts):
    from apps.knowledge import bm25

    with schema_context(acme.schema_name):
        for _ in range(3):
            assert bm25._counts([bm25.CHUNKS_ROW, 5]) == {}
            assert bm25._counts([bm25.LENGTH_ROW, TERM]) == {TERM: 1}
            assert bm25._counts([bm25.MAX_TERM_ID]) == {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ['%"acme".knowledge_bm25term%']
        )
        assert cursor.fetchone()[0] == 1
