"""Documents, their chunks and processing logs (seed: documents, document_chunks,
document_processing_logs), in each tenant's schema.

Departures from the seed: no tenant_id columns (the schema is the tenant; Milvus rows carry
the tenant key); ``file_url`` → a storage-backed ``file``; ``uploaded_by`` may be empty for
API-key uploads (``uploaded_by_label`` says who); versions: a changed re-upload under the
same name is a new Document whose ``replaces`` points at the old one, swapped in atomically
once it is indexed; ``error_code`` next to ``error_message`` so clients can branch on it;
``token_count`` on chunks."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.core.models import TimeStampedModel, UUIDModel


def document_upload_to(instance: Document, filename: str) -> str:
    from django.db import connection

    return f"{connection.schema_name}/documents/{instance.pk}/{filename}"


class Document(TimeStampedModel):
    class Status(models.TextChoices):
        UPLOADING = "uploading", _("Uploading")
        PROCESSING = "processing", _("Processing")
        INDEXED = "indexed", _("Indexed")
        FAILED = "failed", _("Failed")
        DELETED = "deleted", _("Deleted")

    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="documents"
    )
    uploaded_by_label = models.CharField(max_length=255, blank=True)
    file_name = models.CharField(_("file name"), max_length=500)
    original_name = models.CharField(_("original name"), max_length=500)
    file = models.FileField(_("file"), upload_to=document_upload_to, max_length=1000)
    file_size = models.BigIntegerField(_("size"))
    file_type = models.CharField(_("type"), max_length=50)
    mime_type = models.CharField(_("MIME type"), max_length=100, blank=True)
    title = models.CharField(_("title"), max_length=500, blank=True)
    category = models.CharField(_("category"), max_length=100, blank=True)
    tags = ArrayField(models.CharField(max_length=100), default=list, blank=True, verbose_name=_("tags"))
    language = models.CharField(_("language"), max_length=10, default="zh-CN")
    status = models.CharField(_("status"), max_length=20, choices=Status.choices, default=Status.UPLOADING)
    processing_progress = models.PositiveSmallIntegerField(_("progress"), default=0)
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(_("error"), blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    content_hash = models.CharField(max_length=64, db_index=True)
    version = models.PositiveIntegerField(default=1)
    replaces = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaced_by")
    attempts = models.PositiveSmallIntegerField(default=0)
    indexed_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    permission_resource = "docs"

    class Meta:
        verbose_name = _("document")
        verbose_name_plural = _("documents")
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status"], name="idx_documents_status"),
            models.Index(fields=["category"], name="idx_documents_category"),
            GinIndex(fields=["tags"], name="idx_documents_tags"),
            models.Index(fields=["status", "-created_at"], name="idx_documents_status_created"),
            models.Index(fields=["original_name"], name="idx_documents_original_name"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(processing_progress__gte=0, processing_progress__lte=100),
                name="documents_progress_range",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=["uploading", "processing", "indexed", "failed", "deleted"]),
                name="documents_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.title or self.original_name


class DocumentChunk(UUIDModel):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    chunk_index = models.PositiveIntegerField()
    content = models.TextField()
    content_hash = models.CharField(max_length=64)
    vector_id = models.CharField(max_length=100, blank=True, db_index=True)
    metadata = models.JSONField(default=dict, blank=True)
    word_count = models.PositiveIntegerField(default=0)
    char_count = models.PositiveIntegerField(default=0)
    token_count = models.PositiveIntegerField(default=0)
    # BM25 (apps/knowledge/bm25.py): the chunk's distinct term ids and its length in terms,
    # which triggers add to Bm25Term. NULL: not analysed yet (chunks older than the columns,
    # or written by code that does not know them; vectors_reconcile fills them).
    bm25_terms = ArrayField(models.BigIntegerField(), null=True, blank=True)
    bm25_length = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    permission_resource = "docs"

    class Meta:
        verbose_name = _("chunk")
        verbose_name_plural = _("chunks")
        ordering = ["document", "chunk_index"]
        constraints = [models.UniqueConstraint(fields=["document", "chunk_index"], name="document_chunks_unique_index")]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.chunk_index}"


class Bm25Term(models.Model):
    """The tenant's BM25 statistics: for a term id (≥ 0) the number of chunks that contain
    it; row -1 the number of analysed chunks, row -2 their total length. Written only by
    the triggers on knowledge_documentchunk (migration 0002), read by ``bm25``."""

    term = models.BigIntegerField(primary_key=True)
    count = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = _("BM25 term")
        verbose_name_plural = _("BM25 terms")

    def __str__(self) -> str:
        return f"{self.term}: {self.count}"


class DocumentProcessingLog(UUIDModel):
    class Status(models.TextChoices):
        STARTED = "started", _("Started")
        COMPLETED = "completed", _("Completed")
        FAILED = "failed", _("Failed")

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="processing_logs")
    stage = models.CharField(max_length=50, db_index=True)
    status = models.CharField(max_length=20, choices=Status.choices)
    details = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    permission_resource = "docs"

    class Meta:
        verbose_name = _("processing log")
        verbose_name_plural = _("processing logs")
        ordering = ["started_at"]

    def __str__(self) -> str:
        return f"{self.stage}: {self.status}"
