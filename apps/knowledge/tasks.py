"""Celery tasks for ingestion: thin, id-based, idempotent; the tenant schema travels with
each task (tenant-schemas-celery). Only transient errors are retried."""

from __future__ import annotations

import logging

from celery import shared_task
from tenant_schemas_celery.task import TenantTask

logger = logging.getLogger(__name__)

RETRY_BACKOFF_MAX = 300


@shared_task(
    base=TenantTask,
    bind=True,
    name="knowledge.document_process",
    acks_late=True,
    max_retries=6,
    ignore_result=True,  # the document's row is the result; nothing reads a stored one
)
def document_process_task(self, document_id: str) -> dict | None:
    from apps.knowledge import services
    from apps.knowledge.models import Document
    from apps.knowledge.pipeline.types import PipelineError

    try:
        document = services.document_process(document_id=document_id)
    except PipelineError as exc:  # transient only: permanent ones already failed the document
        if self.request.retries >= self.max_retries:
            document = Document.objects.filter(pk=document_id).first()
            if document is not None:
                services.document_fail(
                    document=document,
                    code=exc.code,
                    message=f"{exc.message} (gave up after {self.request.retries + 1} attempts)",
                )
            return {"status": "failed", "error": exc.code}
        # Put it back for the retry: document_process claims only documents in processing.
        countdown = min(RETRY_BACKOFF_MAX, 2 ** (self.request.retries + 1))
        logger.warning("Document %s: %s; retrying in %ss", document_id, exc.message, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
    if document is None:
        return None
    return {"status": document.status, "progress": document.processing_progress}


@shared_task(base=TenantTask, bind=True, name="knowledge.document_vectors_delete", acks_late=True, max_retries=8)
def document_vectors_delete_task(self, tenant_key: str, document_id: str, chunk_bound: int | None = None) -> None:
    """Remove a deleted document's vectors: by primary key when the service sent how many
    chunks its runs had (``services.document_chunk_bound``: the ids are deterministic), else
    (a message queued before that was sent) by looking them up in the tenant's partition."""
    from apps.knowledge.pipeline.types import PipelineError
    from apps.knowledge.services import document_vector_ids
    from apps.knowledge.vectorstore import vectors_delete, vectors_delete_ids

    try:
        if chunk_bound is None:
            vectors_delete(tenant_key=tenant_key, document_id=document_id)
        else:
            vectors_delete_ids(tenant_key=tenant_key, ids=document_vector_ids(document_id, chunk_bound))
    except PipelineError as exc:
        if exc.transient:
            raise self.retry(exc=exc, countdown=min(RETRY_BACKOFF_MAX, 2 ** (self.request.retries + 1))) from exc
        raise


@shared_task(name="knowledge.documents_stale_sweep")
def documents_stale_sweep() -> dict[str, dict]:
    """Beat: fan out one stale check per active tenant."""
    from django_tenants.utils import schema_context

    from apps.tenancy.selectors import tenant_list

    results = {}
    for tenant in tenant_list().filter(status="active"):
        with schema_context(tenant.schema_name):
            documents_stale_requeue_task.delay()
        results[tenant.schema_name] = {"queued": 1}
    return results


@shared_task(base=TenantTask, name="knowledge.documents_stale_requeue")
def documents_stale_requeue_task() -> dict[str, int]:
    from apps.knowledge.services import documents_stale_requeue

    return documents_stale_requeue()
