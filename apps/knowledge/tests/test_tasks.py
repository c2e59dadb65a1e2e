"""Ingestion end to end on real Celery worker processes (solo pool, the test database, the
broker and the session's Milvus Lite server): uploads through the API on acme.localhost are
processed by the worker; a worker killed in the middle of a document leaves it to the
next one; a malformed file does not stop the worker. Data is committed in acme (the worker
is another process) and purged after each test by ``committed_documents``."""

from __future__ import annotations

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.knowledge import services
from apps.knowledge.models import Document
from apps.knowledge.tests.conftest import as_upload, big_docx_bytes, doc, tenant_key_of, tenant_named
from apps.knowledge.vectorstore import VectorStoreError, client_reset, vectors_count
from config.celery_app import app

pytestmark = pytest.mark.slow

BASE = "/api/v1/documents"
DONE = ("indexed", "failed")
WAIT = 120  # seconds; a document here takes a few


def acme_document(document_id) -> Document:
    with schema_context("acme"):
        return Document.objects.get(pk=document_id)


def wait_until(document_id, ready, *, timeout: float = WAIT, what: str = "") -> Document:
    deadline = time.monotonic() + timeout
    while True:
        document = acme_document(document_id)
        if ready(document):
            return document
        if time.monotonic() > deadline:
            pytest.fail(
                f"document {document_id} {what or 'not ready'} after {timeout:.0f} s: "
                f"{document.status} {document.processing_progress}% {document.error_code}"
            )
        time.sleep(0.1)


def finished(document_id, **kwargs) -> Document:
    return wait_until(document_id, lambda d: d.status in DONE, what="not finished", **kwargs)


def vectors_of(document_id) -> int:
    """The count in Milvus, asked from this process. Its cached client sits idle while the
    worker works; pymilvus' keepalive pings on an idle channel can draw a GOAWAY
    ("too_many_pings") from Milvus Lite, after which the first call may fail to reconnect.
    One retry on a fresh client keeps that blip (seen about once in five runs of the kill
    test) from hiding what the worker did."""
    key = tenant_key_of("acme")
    try:
        return vectors_count(tenant_key=key, document_id=str(document_id))
    except VectorStoreError:
        client_reset()
        return vectors_count(tenant_key=key, document_id=str(document_id))


def vectors_gone(document_id, timeout: float = WAIT) -> bool:
    """Whether the document's vectors are all deleted within ``timeout`` (the worker deletes
    them after the commit that the test waits for)."""
    deadline = time.monotonic() + timeout
    while vectors_of(document_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    return vectors_of(document_id) == 0


def chunks_of(document_id) -> int:
    with schema_context("acme"):
        return Document.objects.get(pk=document_id).chunks.count()


def uploaded(client: APIClient, *files) -> list[str]:
    response = client.post(BASE, {"files": list(files)}, format="multipart")
    assert response.status_code == 201, response.content
    return [r["document"]["id"] for r in response.json()["results"]]


@pytest.fixture
def acme_api(committed_documents, api_for, seed_user) -> APIClient:
    """acme's knowledge manager on acme.localhost; what the test uploads is purged after."""
    acme = tenant_named("acme")
    return api_for(acme, seed_user(acme, "knowledge_manager"))


# =========================================================================================
# A worker killed in the middle of a document (a worker of this test's own)
# =========================================================================================
def test_a_document_whose_worker_was_killed_is_finished_by_the_next_worker(acme_api, lone_worker, settings):
    """SIGKILL takes the worker down before it can ack or reject anything: with the Redis
    broker the unacked message comes back only after the visibility timeout (an hour by
    default). The stale sweep (beat, every five minutes in production) is what requeues the
    document; here it runs at once with DOCUMENT_STALE_AFTER=0."""
    first = lone_worker()
    [document_id] = uploaded(acme_api, SimpleUploadedFile("big.docx", big_docx_bytes(600, marker="Killed")))

    # Kill while it embeds (42–90 %): after extraction, before the vector write lock.
    wait_until(document_id, lambda d: 50 <= d.processing_progress < 85, timeout=60, what="never reached embedding")
    first.kill()
    first.wait(timeout=10)

    stuck = acme_document(document_id)
    assert (stuck.status, stuck.attempts) == ("processing", 1)
    assert chunks_of(document_id) == 0  # nothing was swapped in

    lone_worker()
    settings.DOCUMENT_STALE_AFTER = 0
    with schema_context("acme"):
        assert services.documents_stale_requeue() == {"requeued": 1, "failed": 0}

    document = finished(document_id)
    assert (document.status, document.processing_progress, document.attempts) == ("indexed", 100, 2)
    assert chunks_of(document_id) == vectors_of(document_id) > 100
    with schema_context("acme"):
        stages = list(document.processing_logs.order_by("started_at").values_list("stage", "status"))
    assert ("embed", "started") in stages  # the run that was killed
    assert stages[-4:] == [
        ("extract", "completed"),
        ("chunk", "completed"),
        ("embed", "completed"),
        ("index", "completed"),
    ]


# =========================================================================================
# The module's worker (``celery_worker``)
# =========================================================================================
def test_an_upload_is_processed_by_the_worker(acme_api, celery_worker):
    ids = uploaded(
        acme_api,
        as_upload(doc("pdf-zh/issue-71-duplicate-chars.pdf")),
        as_upload(doc("md/人民检察院行政诉讼监督规则（试行）(2016-04-15).md")),
    )

    for document_id in ids:
        document = finished(document_id)
        assert (document.status, document.processing_progress, document.attempts) == ("indexed", 100, 1)
        assert chunks_of(document_id) == vectors_of(document_id) > 0
    with schema_context("acme"):
        law = Document.objects.get(pk=ids[1])
        text = " ".join(law.chunks.values_list("content", flat=True))
        assert "第一条 为了保障和规范人民检察院依法履行行政诉讼监督职责" in text
        assert [log.stage for log in law.processing_logs.all()] == ["upload", "extract", "chunk", "embed", "index"]
    detail = acme_api.get(f"{BASE}/{ids[0]}").json()
    assert detail["status"] == "indexed" and detail["chunk_count"] == vectors_of(ids[0])


def test_the_worker_keeps_serving_after_malformed_files(acme_api, celery_worker):
    bad = uploaded(
        acme_api,
        as_upload(doc("malformed/password.pdf")),
        as_upload(doc("malformed/truncated-multi_page.pdf")),
    )
    [good] = uploaded(acme_api, as_upload(doc("docx/unit_test_headers_numbered.docx")))

    assert [(d.status, d.error_code) for d in map(finished, bad)] == [("failed", "encrypted"), ("failed", "corrupt")]
    assert finished(good).status == "indexed"
    assert chunks_of(good) == vectors_of(good) > 0
    assert app.control.ping(destination=[celery_worker], timeout=2)


def test_a_new_version_replaces_the_old_one_on_the_worker(acme_api, celery_worker):
    [old] = uploaded(acme_api, SimpleUploadedFile("rules.md", b"# Rules\n\nDoors close at ten."))
    assert finished(old).status == "indexed" and vectors_of(old) == 1

    [new] = uploaded(acme_api, SimpleUploadedFile("rules.md", b"# Rules\n\nDoors close at eleven.\n\n## Keys\n\nAsk."))

    assert finished(new).status == "indexed"
    assert acme_document(new).replaces_id is not None
    assert acme_document(old).status == "deleted" and chunks_of(old) == 0  # swapped in one transaction
    # The old version's vectors go right after that commit (search already ignores them: they
    # belong to a deleted document), so the test can look between the two: wait for it.
    assert vectors_gone(old)
    assert chunks_of(new) == vectors_of(new) > 0


def test_deleting_removes_the_vectors_on_the_worker(acme_api, celery_worker):
    [document_id] = uploaded(acme_api, as_upload(doc("md/wiki.md")))
    assert finished(document_id).status == "indexed" and vectors_of(document_id) > 0

    assert acme_api.delete(f"{BASE}/{document_id}").status_code == 204

    assert vectors_gone(document_id)
    assert acme_document(document_id).status == "deleted"
