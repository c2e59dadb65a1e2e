"""Fixtures for the knowledge tests: uploads through the service in a tenant's schema, the
real Milvus Lite server (with the vectors a test made removed afterwards, since Milvus does
not roll back with PostgreSQL), eager Celery, generated Office files (a zip bomb, a big
document), committed data for the worker and websocket tests (removed afterwards), and
websocket credentials.

What a ``db`` test writes to PostgreSQL rolls back; its files go to a temporary MEDIA_ROOT
and its vectors are deleted here. Tests with a real worker process keep the configured
MEDIA_ROOT, which the worker shares, and clean up through ``committed_documents``."""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context

from apps.core.testing import shared_eval_dir
from conftest import SEED_PASSWORD, seed_email

DOCS = shared_eval_dir() / "docs"
MISSING = f"evaluation documents not found at {DOCS}"
TENANTS = ("acme", "globex")


def doc(relative: str) -> Path:
    path = DOCS / relative
    if not path.exists():
        pytest.skip(MISSING)
    return path


def as_upload(source: Path | bytes, name: str | None = None) -> SimpleUploadedFile:
    """A Django upload of a file on disk or of bytes (``name`` required then)."""
    if isinstance(source, Path):
        return SimpleUploadedFile(name or source.name, source.read_bytes())
    assert name, "bytes need a file name"
    return SimpleUploadedFile(name, source)


def tenant_named(schema: str):
    """The committed Tenant row (for tests on ``committed_db``, where ``acme`` cannot be used)."""
    from apps.tenancy.models import Tenant

    with schema_context("public"):
        return Tenant.objects.get(schema_name=schema)


def tenant_key_of(schema: str) -> str:
    from apps.knowledge.services import tenant_key

    with schema_context(schema):
        return tenant_key()


# --------------------------------------------------------------------------------------
# Media and Milvus hygiene
# --------------------------------------------------------------------------------------
WORKER_FIXTURES = {"celery_worker", "lone_worker", "prefork_worker"}


@pytest.fixture(autouse=True)
def _media_in_tmp(request, tmp_path):
    """Uploaded files of in-process tests land in a temporary MEDIA_ROOT. A real worker
    reads the configured one, so tests with a worker keep it (and purge what they made)."""
    if WORKER_FIXTURES & set(request.fixturenames):
        yield
        return
    request.getfixturevalue("settings").MEDIA_ROOT = str(tmp_path / "media")
    yield


def _document_ids(schema: str) -> set[str]:
    from apps.knowledge.models import Document

    with schema_context(schema):
        return {str(pk) for pk in Document.objects.values_list("pk", flat=True)}


@pytest.fixture
def milvus(db, milvus_up) -> Iterator[str]:
    """The session's Milvus Lite server. Vectors of documents that appeared during the test
    (in acme and globex) are deleted afterwards, while the test's transaction still shows
    those documents: PostgreSQL rolls back, Milvus would not."""
    from apps.knowledge.vectorstore import vectors_delete

    before = {schema: _document_ids(schema) for schema in TENANTS}
    yield milvus_up
    for schema in TENANTS:
        key = tenant_key_of(schema)
        for document_id in _document_ids(schema) - before[schema]:
            vectors_delete(tenant_key=key, document_id=document_id)
    connection.set_schema_to_public()


# --------------------------------------------------------------------------------------
# Uploading and processing through the services, inside acme
# --------------------------------------------------------------------------------------
@pytest.fixture
def in_acme(acme) -> Iterator[Any]:
    """The test body runs in acme's schema (the ``db`` transaction still wraps it)."""
    with schema_context(acme.schema_name):
        yield acme


@pytest.fixture
def manager(acme, seed_user):
    return seed_user(acme, "knowledge_manager")


@pytest.fixture
def upload(manager) -> Callable[..., Any]:
    """``upload(path_or_bytes, name=None, actor=manager, **fields)`` → UploadResult, through
    ``services.document_upload`` in the current schema."""
    from apps.knowledge import services

    def run(source: Path | bytes, name: str | None = None, *, actor=None, **fields):
        file = as_upload(source, name)
        return services.document_upload(actor=actor or manager, file=file, original_name=file.name, **fields)

    return run


@pytest.fixture
def process() -> Callable[[Any], Any]:
    """``process(document)`` → the document after ``services.document_process`` ran on it."""
    from apps.knowledge import services
    from apps.knowledge.models import Document

    def run(document):
        services.document_process(document_id=document.pk)
        return Document.objects.get(pk=document.pk)

    return run


@pytest.fixture
def indexed(in_acme, milvus, upload, process) -> Callable[..., Any]:
    """``indexed(path_or_bytes, name=None)`` → an uploaded and processed acme document that
    is ``indexed`` (asserted)."""

    def run(source: Path | bytes, name: str | None = None, **fields):
        result = upload(source, name, **fields)
        document = process(result.document)
        assert document.status == "indexed", (document.error_code, document.error_message)
        return document

    return run


@pytest.fixture
def celery_eager() -> Iterator[None]:
    """Tasks sent while this is active run at once, in this process (tenant-schemas-celery
    stamps and switches the schema for eager tasks too)."""
    from config.celery_app import app

    saved = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


# --------------------------------------------------------------------------------------
# Generated documents
# --------------------------------------------------------------------------------------
def docx_bytes(paragraphs: list[str], *, heading: str | None = None) -> bytes:
    import docx

    document = docx.Document()
    if heading:
        document.add_heading(heading, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def big_docx_bytes(paragraphs: int, *, marker: str) -> bytes:
    """A Word document with ``paragraphs`` distinct paragraphs of ~60 words (about ten
    chunks per hundred paragraphs): long enough to be caught mid-way."""
    words = ["knowledge", "base", "ingestion", "pipeline", "worker", "vector", "chunk", "embedding", "tenant", "schema"]
    body = [
        f"{marker} paragraph {i}: " + " ".join(words[(i + j) % len(words)] + str(j % 7) for j in range(60))
        for i in range(paragraphs)
    ]
    return docx_bytes(body, heading=f"{marker} handbook")


def zip_bomb_docx_bytes(*, megabytes: int = 200) -> bytes:
    """A valid .docx (it opens in python-docx) that also carries ``megabytes`` MB of zeros,
    deflated to a few hundred KB."""
    source = io.BytesIO(docx_bytes(["A perfectly ordinary paragraph."]))
    out = io.BytesIO()
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        for item in original.infolist():
            bomb.writestr(item, original.read(item.filename))
        with bomb.open("word/media/padding.bin", "w") as member:
            block = b"\x00" * (1024 * 1024)
            for _ in range(megabytes):
                member.write(block)
    return out.getvalue()


# --------------------------------------------------------------------------------------
# Committed data (worker and websocket tests)
# --------------------------------------------------------------------------------------
def purge_documents(schema: str, document_ids: set[str]) -> None:
    """Remove committed documents completely: vectors, files, rows (chunks and logs
    cascade), and the audit and usage rows they caused."""
    from apps.audit.models import AuditLog
    from apps.billing.models import UsageRecord
    from apps.knowledge.models import Document
    from apps.knowledge.vectorstore import vectors_delete

    if not document_ids:
        return
    key = tenant_key_of(schema)
    with schema_context(schema):
        for document in Document.objects.filter(pk__in=document_ids):
            vectors_delete(tenant_key=key, document_id=str(document.pk))
            if document.file:
                folder = Path(document.file.path).parent
                document.file.delete(save=False)
                with contextlib.suppress(OSError):
                    folder.rmdir()
        Document.objects.filter(pk__in=document_ids).update(replaces=None)
        Document.objects.filter(pk__in=document_ids).delete()
        AuditLog.objects.filter(resource_type="document", resource_id__in=document_ids).delete()
    UsageRecord.objects.filter(metadata__document_id__in=list(document_ids)).delete()


@pytest.fixture
def committed_documents(committed_db, milvus_up) -> Iterator[None]:
    """Every acme/globex document created during the test (committed) is purged afterwards
    (found by comparing the ids before and after)."""
    before = {schema: _document_ids(schema) for schema in TENANTS}
    yield
    for schema in TENANTS:
        purge_documents(schema, _document_ids(schema) - before[schema])
    connection.set_schema_to_public()


@pytest.fixture
def session_cookie_for(committed_db) -> Iterator[Callable[[str, str], str]]:
    """``session_cookie_for(schema, role)`` → the ``sessionid`` of a real login of that seed
    user; logged out and ``last_login`` restored afterwards."""
    from apps.accounts.models import User

    made: list[tuple[str, Client, Any]] = []

    def login(schema: str, role: str) -> str:
        with schema_context(schema):
            user = User.objects.get(email=seed_email(role, schema))
            client = Client(HTTP_HOST=f"{schema}.localhost")
            assert client.login(email=user.email, password=SEED_PASSWORD)
        made.append((schema, client, user))
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    yield login
    for schema, client, user in made:
        with schema_context(schema):
            client.logout()
            User.objects.filter(pk=user.pk).update(last_login=user.last_login)


# --------------------------------------------------------------------------------------
# API helpers
# --------------------------------------------------------------------------------------
def assert_error(response, status: int, code: str) -> dict[str, Any]:
    """The response is ``status`` with exactly ``{"error": {"code", "message", "details"}}``
    and that ``code``; returns the error."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def acme_state(document_id) -> dict[str, Any]:
    """What a foreign request must not change about an acme document: the row, its chunks,
    its vectors and acme's audit trail."""
    from apps.audit.models import AuditLog
    from apps.knowledge.models import Document, DocumentChunk
    from apps.knowledge.vectorstore import vectors_count

    key = tenant_key_of("acme")
    with schema_context("acme"):
        row = Document.objects.values(
            "status", "title", "category", "tags", "processing_progress", "attempts", "updated_at"
        ).get(pk=document_id)
        return {
            **row,
            "chunks": sorted(
                str(pk) for pk in DocumentChunk.objects.filter(document_id=document_id).values_list("pk", flat=True)
            ),
            "vectors": vectors_count(tenant_key=key, document_id=str(document_id)),
            "audit": AuditLog.objects.count(),
        }


# --------------------------------------------------------------------------------------
# A worker of a test's own (which the test may kill)
# --------------------------------------------------------------------------------------
def start_worker_on_queue(workdir: Path, queue: str):
    """A real ``celery worker`` subprocess (solo pool) consuming only ``queue``, on the
    test database, broker and Milvus Lite server; returns (process, node name) once it
    answers a ping. ``apps.core.testing.start_celery_worker`` always consumes ``celery``:
    a private queue keeps this worker's tasks away from any other worker on the broker."""
    import os
    import subprocess
    import uuid

    from apps.core.testing import BASE_DIR, STARTUP_TIMEOUT, VENV_BIN, wait_for, worker_database_url
    from config.celery_app import app

    hostname = f"pytest-lone-{uuid.uuid4().hex[:8]}@localhost"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{hostname.split('@')[0]}.log"
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=worker_database_url(),
        MILVUS_URI=settings.MILVUS_URI,
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "celery"),
                "-A",
                "config",
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "-Q",
                queue,
                "-n",
                hostname,
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(
        lambda: bool(app.control.ping(destination=[hostname], timeout=0.5)),
        timeout=STARTUP_TIMEOUT,
        what="Celery worker",
        process=process,
        log=log,
    )
    return process, hostname


@pytest.fixture
def lone_worker(committed_documents, tmp_path, monkeypatch) -> Iterator[Callable[[], Any]]:
    """``lone_worker()`` starts a worker (call it again for another) on a queue of this test's
    own; every ``document_process_task`` sent during the test goes to that queue. Workers
    still running at the end are stopped."""
    import uuid

    from apps.core.testing import stop_process
    from apps.knowledge.tasks import document_process_task

    queue = f"pytest-knowledge-{uuid.uuid4().hex[:8]}"
    send = document_process_task.apply_async
    monkeypatch.setattr(document_process_task, "delay", lambda *args, **kwargs: send(args, kwargs, queue=queue))
    started = []

    def start():
        process, _hostname = start_worker_on_queue(tmp_path / "workers", queue)
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process, timeout=30)
    broker_queue_forget(queue)


def broker_queue_forget(queue: str) -> None:
    """Remove what a private queue leaves on the Redis broker: its bindings, its list, and
    the deliveries a killed worker never acked (kombu would restore those to the queue an
    hour later, where nobody would ever read them)."""
    import json

    import redis

    from config.celery_app import app

    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        for tag, entry in client.hgetall("unacked").items():
            with contextlib.suppress(ValueError, TypeError, IndexError):
                if json.loads(entry)[2] == queue:
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    finally:
        client.close()
