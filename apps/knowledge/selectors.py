from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from apps.knowledge.models import Document, DocumentChunk, DocumentProcessingLog


def document_list(
    *,
    status: str | None = None,
    category: str | None = None,
    tags: list[str] | None = None,
    tags_mode: str = "any",
    file_type: str | None = None,
    search: str | None = None,
    include_deleted: bool = False,
) -> QuerySet[Document]:
    qs = Document.objects.select_related("uploaded_by").annotate(chunk_count=Count("chunks"))
    if status:
        qs = qs.filter(status=status)
    elif not include_deleted:
        qs = qs.exclude(status=Document.Status.DELETED)
    if category:
        qs = qs.filter(category=category)
    if tags:
        qs = qs.filter(tags__contains=tags) if tags_mode == "all" else qs.filter(tags__overlap=tags)
    if file_type:
        qs = qs.filter(file_type=file_type)
    if search:
        qs = qs.filter(Q(title__icontains=search) | Q(original_name__icontains=search))
    return qs.order_by("-created_at")


def document_get(*, document_id) -> Document | None:
    return document_list(include_deleted=True).filter(pk=document_id).first()


def document_chunks(*, document: Document) -> QuerySet[DocumentChunk]:
    return DocumentChunk.objects.filter(document=document).order_by("chunk_index")


def document_logs(*, document: Document) -> QuerySet[DocumentProcessingLog]:
    return DocumentProcessingLog.objects.filter(document=document).order_by("started_at")


def document_progress(*, document_ids: list) -> list[dict]:
    return list(
        Document.objects.filter(pk__in=document_ids).values(
            "id", "status", "processing_progress", "error_code", "error_message"
        )
    )
