"""Ingestion on the worker as ``scripts/run.sh`` and the compose file run it: prefork, with
the settings' concurrency (``CELERY_WORKER_CONCURRENCY``, 2 by default), so documents are
processed side by side. Each document still ends indexed once, with as many vectors as
chunks (the vector writes of both processes go through the one write lock).

In a module of its own: ``start_celery_worker`` consumes the ``celery`` queue, as the
solo worker of ``test_tasks.py`` does, and module-scoped workers never overlap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django_tenants.utils import schema_context

from apps.knowledge.models import DocumentProcessingLog
from apps.knowledge.tests.conftest import as_upload, doc
from apps.knowledge.tests.test_tasks import acme_api, chunks_of, finished, uploaded, vectors_of  # noqa: F401

pytestmark = pytest.mark.slow


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.fixture(scope="module")
def prefork_worker(django_db_setup, milvus_server, tmp_path_factory) -> Iterator:
    from apps.core.testing import start_celery_worker, stop_process

    process, _hostname = start_celery_worker(
        tmp_path_factory.mktemp("celery-prefork"), env_extra={"MILVUS_URI": milvus_server}, worker_args=()
    )
    yield process
    stop_process(process, timeout=30)


def test_the_production_worker_processes_documents_side_by_side(acme_api, prefork_worker):  # noqa: F811
    assert settings.CELERY_WORKER_CONCURRENCY >= 2
    assert len(children_of(prefork_worker.pid)) == settings.CELERY_WORKER_CONCURRENCY

    notes = [
        SimpleUploadedFile(f"note-{n}.md", f"# Note {n}\n\nThe door code for floor {n} is {1000 + n}.".encode())
        for n in range(8)
    ]
    ids = uploaded(acme_api, as_upload(doc("md/wiki.md")), *notes)

    for document_id in ids:
        document = finished(document_id)
        assert (document.status, document.processing_progress, document.attempts) == ("indexed", 100, 1)
        assert chunks_of(document_id) == vectors_of(document_id) > 0
    with schema_context("acme"):
        windows = []
        for document_id in ids:
            logs = DocumentProcessingLog.objects.filter(document_id=document_id).exclude(stage="upload")
            windows.append((min(log.started_at for log in logs), max(log.completed_at for log in logs)))
    # Some two documents were in processing at the same time: two processes worked.
    assert any(
        a_start < b_end and b_start < a_end
        for i, (a_start, a_end) in enumerate(windows)
        for b_start, b_end in windows[i + 1 :]
    )
