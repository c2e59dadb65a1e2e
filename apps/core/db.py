"""Hot reads of our own, run as prepared statements on the current connection.

A search sends two small statements of its own to PostgreSQL (the query terms' BM25
statistics, and its chunks read back with their documents). Planning the read-back's join
took about half of its 0.35 ms; prepared on a connection that runs it often, it is planned
once there. Django
disables psycopg's prepared statements (``prepare_threshold=None``) to keep transaction
poolers working; ``DATABASE_PREPARED_STATEMENTS`` (on by default) turns them back on for
these statements only: Django's own cursors bind on the client and never prepare.

PostgreSQL re-parses a prepared statement whenever ``search_path`` differs from when it was
prepared, which in a process serving many tenants is most of the time; so callers name
their tables with the tenant's schema (``qualified``) and each tenant gets statements of its
own (psycopg keeps up to ``prepared_max`` per connection, least recently used dropped).
Behind PgBouncer in transaction mode (before 1.21, or without ``max_prepared_statements``)
set ``DATABASE_PREPARED_STATEMENTS=false``: the same statements then run unprepared."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.db.backends.postgresql.base import ServerBindingCursor


class _ServerBoundCursor(ServerBindingCursor):
    """A server-binding cursor (Django's own bind on the client and never prepare): psycopg
    prepares a statement once it has run it ``prepare_threshold`` times on the connection
    (5; ``DATABASE_PREPARED_STATEMENTS``), not at once: preparing costs a round trip of its
    own, which a tenant searched once in a while would pay for nothing. ``logged``: keep the
    statement where Django's debug wrapper reads it (psycopg records it only when it sends a
    statement unprepared), so captured queries and DEBUG's ``connection.queries`` show it."""

    logged = False

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None):
        super().execute(query, params, prepare=prepare, binary=binary)
        if self.logged and self._query is None:
            self._query = self._convert_query(query, params)
        return self


def qualified(table: str) -> str:
    """``"<current schema>".<table>``: the table in the current tenant's schema, named so a
    prepared statement does not depend on ``search_path``."""
    return f"{connection.ops.quote_name(connection.schema_name)}.{table}"


def fetchall_prepared(sql: str, params: Sequence[Any]) -> list[tuple]:
    """``sql`` with ``params`` (``%s`` placeholders, bound on the server), every row. Goes
    through Django's cursor wrapper like any query (execute wrappers, query capture)."""
    connection.ensure_connection()
    if connection.connection.prepare_threshold is None:  # DATABASE_PREPARED_STATEMENTS off
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    # Django's own wrapping (thread-sharing check, debug capture) of a cursor it did not make.
    cursor = _ServerBoundCursor(connection.connection)
    cursor.logged = connection.queries_logged
    with connection._prepare_cursor(cursor) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()
