"""Fixtures for the retrieval tests (``test_search.py``, ``test_search_api.py``,
``test_hit_test_admin.py``), which load this module with ``pytest_plugins``; the texts
they search are in ``search_corpus.py``.

Documents are made the real way: ``services.document_upload`` then ``services.document_process``
(synchronously) inside a tenant's schema, through the real extractor, chunker, embedding model
and the session's Milvus Lite server. What a ``db`` test writes to PostgreSQL rolls back;
Milvus and Redis do not, so:

* every vector of a document indexed through ``index_doc`` is deleted at teardown;
* the cache keys get a prefix of this test session's own, and each test starts with a fresh
  knowledge version in acme and globex, so a search cached by an earlier test (whose
  documents have rolled back) or by another session can never answer this one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django_tenants.utils import schema_context

from apps.knowledge.tests.search_corpus import tenant_key_of

SEARCH_TENANTS = ("acme", "globex")


def version_bump(schema: str) -> None:
    from apps.knowledge.search import knowledge_version_bump

    with schema_context(schema):
        knowledge_version_bump()


@dataclass
class Indexed:
    """What ``index_doc`` made: the document (reloaded) and its chunks in index order."""

    document: Any
    chunks: list[Any]

    @property
    def id(self) -> str:
        return str(self.document.pk)

    @property
    def chunk_ids(self) -> list[str]:
        return [str(c.pk) for c in self.chunks]


@pytest.fixture
def search_env(db, milvus_up, settings, tmp_path) -> Iterator[None]:
    """The real Milvus Lite server, uploads in a temporary MEDIA_ROOT, a fresh knowledge
    version (search cache generation) in acme and globex, and the vectors of every document
    this test indexed (in either tenant) deleted at teardown."""
    from apps.knowledge.models import Document
    from apps.knowledge.vectorstore import vectors_delete

    settings.MEDIA_ROOT = str(tmp_path / "media")
    # Redis is shared by every test session on this machine (the test databases are not):
    # a key prefix of this session's own keeps another run's knowledge versions and cached
    # searches for "acme" out of this one. Set before any login (sessions live there too).
    default = {**settings.CACHES["default"], "KEY_PREFIX": f"pytest-{os.getpid()}"}
    settings.CACHES = {**settings.CACHES, "default": default}

    def ids(schema: str) -> set[str]:
        with schema_context(schema):
            return {str(pk) for pk in Document.objects.values_list("pk", flat=True)}

    for schema in SEARCH_TENANTS:
        version_bump(schema)
    before = {schema: ids(schema) for schema in SEARCH_TENANTS}
    yield
    for schema in SEARCH_TENANTS:  # the test's transaction is still open: its rows are visible
        key = tenant_key_of(schema)
        for document_id in ids(schema) - before[schema]:
            vectors_delete(tenant_key=key, document_id=document_id)
    connection.set_schema_to_public()


@pytest.fixture
def upload_doc(search_env, seed_user) -> Callable[..., Any]:
    """``upload_doc(tenant, name, content, **fields)`` → the ``UploadResult`` of
    ``services.document_upload`` by that tenant's knowledge manager (``content``: str or bytes)."""
    from apps.knowledge import services

    def run(tenant, name: str, content: str | bytes, **fields) -> Any:
        actor = seed_user(tenant, "knowledge_manager")
        data = content.encode() if isinstance(content, str) else content
        with schema_context(tenant.schema_name):
            return services.document_upload(
                actor=actor, file=SimpleUploadedFile(name, data), original_name=name, **fields
            )

    return run


@pytest.fixture
def process_doc(search_env) -> Callable[..., Indexed]:
    """``process_doc(tenant, document)`` → ``services.document_process`` run on it, asserted
    ``indexed``, with its chunks."""
    from apps.knowledge import services
    from apps.knowledge.models import Document, DocumentChunk

    def run(tenant, document) -> Indexed:
        with schema_context(tenant.schema_name):
            services.document_process(document_id=document.pk)
            document = Document.objects.get(pk=document.pk)
            assert document.status == Document.Status.INDEXED, (document.error_code, document.error_message)
            chunks = list(DocumentChunk.objects.filter(document=document).order_by("chunk_index"))
        return Indexed(document=document, chunks=chunks)

    return run


@pytest.fixture
def index_doc(upload_doc, process_doc) -> Callable[..., Indexed]:
    """``index_doc(tenant, name, content, **fields)`` → uploaded and processed (``Indexed``)."""

    def run(tenant, name: str, content: str | bytes, **fields) -> Indexed:
        result = upload_doc(tenant, name, content, **fields)
        assert not result.duplicate, f"{name}: the same content is already in {tenant.schema_name}"
        return process_doc(tenant, result.document)

    return run


@pytest.fixture
def search() -> Callable[..., Any]:
    """``search(tenant, query, **kwargs)`` → ``chunk_search`` (called from the public schema,
    as the chat and the tests do; it switches to the tenant's schema itself)."""
    from apps.knowledge.search import chunk_search

    def run(tenant, query: str, **kwargs) -> Any:
        connection.set_schema_to_public()
        return chunk_search(tenant=tenant, query=query, **kwargs)

    return run


@pytest.fixture
def tasks_eager() -> Iterator[None]:
    """Celery tasks sent while this is active (e.g. from an on-commit callback) run at once,
    in this process, instead of going to the broker."""
    from config.celery_app import app

    saved = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved
