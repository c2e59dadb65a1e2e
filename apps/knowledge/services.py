"""Writes for documents: upload (with de-duplication and versions), metadata changes,
delete, reprocess, and the processing pipeline itself (extract → chunk → embed → index)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.db import connection, transaction
from django.db.models import F, Max
from django.db.models.functions import Greatest
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from apps.audit.services import actor_describe, audit_log_record
from apps.billing.services import usage_record
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.knowledge.models import Document, DocumentChunk, DocumentProcessingLog
from apps.knowledge.pipeline.types import ExtractionError, PipelineError

logger = logging.getLogger(__name__)

CHUNK_NAMESPACE = uuid.UUID("6f1c1d52-6b0e-4a5e-9a43-5f8d9a0c2b71")
EDITABLE_FIELDS = ("title", "category", "tags", "language")
# Progress bands: extract+chunk 0–40, embed 40–90, index 90–100.
BANDS = {"extract": (2, 40), "chunk": (40, 42), "embed": (42, 90), "index": (90, 100)}
PROGRESS_INTERVAL = 0.3  # seconds between progress writes (and pushes) of one document
PUSH_TIMEOUT = 2.0  # seconds a progress push may hold up processing (Redis slow or down)


class FileTooLarge(ApplicationError):
    code = "file_too_large"
    status_code = 413


class UnsupportedFileType(ApplicationError):
    code = "unsupported_file_type"
    status_code = 415


@dataclass(frozen=True)
class UploadResult:
    document: Document
    duplicate: bool


_tenant_keys: dict[str, str] = {}


def tenant_key() -> str:
    """The tenant key stored on every vector: the current tenant's id (stable across schema
    renames). Resolved from the schema name, so it works under ``schema_context`` too."""
    schema = connection.schema_name
    if schema not in _tenant_keys:
        from apps.tenancy.models import Tenant

        pk = getattr(connection.tenant, "pk", None) or Tenant.objects.only("pk").get(schema_name=schema).pk
        _tenant_keys[schema] = str(pk)
    return _tenant_keys[schema]


# --------------------------------------------------------------------------------------
# Upload
# --------------------------------------------------------------------------------------
@contextmanager
def _spooled(file: Any) -> Iterator[tuple[Path, str, int]]:
    """Copy an uploaded file to a temp path while hashing it; refuse oversize files early."""
    limit = settings.DOCUMENT_MAX_SIZE
    digest = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(prefix="zhida-upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            if hasattr(file, "seek"):
                file.seek(0)
            for part in file.chunks() if hasattr(file, "chunks") else iter(lambda: file.read(1 << 20), b""):
                size += len(part)
                if size > limit:
                    raise FileTooLarge(
                        f"The file is larger than the {filesizeformat(limit)} limit.",
                        details={"max_bytes": limit},
                    )
                digest.update(part)
                out.write(part)
        yield Path(name), digest.hexdigest(), size
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _clean_tags(tags: list[str] | None) -> list[str]:
    seen: list[str] = []
    for tag in tags or []:
        tag = str(tag).strip()[:100]
        if tag and tag not in seen:
            seen.append(tag)
    return seen


@transaction.atomic
def document_upload(
    *,
    actor: Any,
    file: Any,
    original_name: str | None = None,
    title: str = "",
    category: str = "",
    tags: list[str] | None = None,
    language: str = "",
) -> UploadResult:
    """Store an uploaded file and queue it for processing.

    * The same bytes already in this tenant → the existing document, ``duplicate=True``.
    * Changed bytes under a name already in use → a new version that replaces the old one
      once it is indexed (the old stays searchable until then).
    * Empty, oversize and unsupported files are refused with a clear error."""
    from apps.knowledge.pipeline.extract import sniff

    started = time.perf_counter()
    original_name = os.path.basename(original_name or getattr(file, "name", "") or "document")[:500]
    with _spooled(file) as (path, content_hash, size):
        if size == 0:
            raise ValidationFailed("The file is empty.", code="empty_file", details={"file": original_name})
        try:
            file_type, mime_type = sniff(path=path, original_name=original_name)
        except ExtractionError as exc:
            if exc.code == "empty":
                raise ValidationFailed(
                    "The file is empty.", code="empty_file", details={"file": original_name}
                ) from exc
            if exc.code != "unsupported_type":  # a supported type that cannot be read: encrypted, corrupt
                raise ValidationFailed(
                    f"{original_name}: {exc.message}", code=exc.code, details={"file": original_name}
                ) from exc
            raise UnsupportedFileType(
                f"{original_name}: {exc.message}",
                details={"file": original_name, "allowed": ["pdf", "docx", "xlsx", "pptx", "html", "md", "txt", "csv"]},
            ) from exc

        existing = (
            Document.objects.select_for_update()
            .filter(content_hash=content_hash)
            .exclude(status=Document.Status.DELETED)
            .first()
        )
        if existing is not None:
            return UploadResult(document=existing, duplicate=True)

        previous = (
            Document.objects.select_for_update(of=("self",))
            .filter(original_name=original_name, replaced_by__isnull=True)
            .exclude(status=Document.Status.DELETED)
            .order_by("-version")
            .first()
        )
        user, label = actor_describe(actor)
        language_value, language_source = _upload_language(language, previous)
        document = Document(
            uploaded_by=user,
            uploaded_by_label=label[:255],
            file_name=original_name,
            original_name=original_name,
            file_size=size,
            file_type=file_type,
            mime_type=mime_type,
            title=(title or (previous.title if previous else "") or Path(original_name).stem)[:500],
            category=category or (previous.category if previous else ""),
            tags=_clean_tags(tags) or (previous.tags if previous else []),
            language=language_value,
            metadata={LANGUAGE_SOURCE: language_source},
            status=Document.Status.PROCESSING,
            processing_progress=0,
            content_hash=content_hash,
            version=(previous.version + 1) if previous else 1,
            replaces=previous,
        )
        with path.open("rb") as handle:
            document.file.save(original_name, File(handle), save=False)
        document.save()
    log = DocumentProcessingLog.objects.create(
        document=document,
        stage="upload",
        status=DocumentProcessingLog.Status.COMPLETED,
        details={
            "bytes": size,
            "file_type": file_type,
            "mime_type": mime_type,
            "version": document.version,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    # started_at is stamped by the INSERT (auto_now_add): a completed_at passed to that same
    # INSERT was taken earlier and came out before started_at.
    DocumentProcessingLog.objects.filter(pk=log.pk).update(completed_at=timezone.now())
    audit_log_record(
        actor=actor,
        action="document.uploaded",
        resource_type="document",
        resource_id=document.pk,
        new_values={
            "original_name": original_name,
            "file_type": file_type,
            "file_size": size,
            "content_hash": content_hash,
            "version": document.version,
            "replaces": str(previous.pk) if previous else None,
        },
    )
    usage_record(
        usage_type="storage",
        quantity=size,
        unit="bytes",
        user_id=user.pk if user else None,
        metadata={"document_id": str(document.pk), "event": "upload"},
    )
    _enqueue_on_commit(document)
    return UploadResult(document=document, duplicate=False)


def _search_cache_invalidate_on_commit() -> None:
    """Cached searches of this tenant must not outlive the documents they came from."""
    schema = connection.schema_name

    def bump() -> None:
        from django_tenants.utils import schema_context

        from apps.knowledge.search import knowledge_version_bump

        with schema_context(schema):
            knowledge_version_bump()

    transaction.on_commit(bump)


def _enqueue_on_commit(document: Document) -> None:
    schema = connection.schema_name
    document_id = str(document.pk)

    def send() -> None:
        from django_tenants.utils import schema_context

        from apps.knowledge.tasks import document_process_task

        with schema_context(schema):
            document_process_task.delay(document_id)

    transaction.on_commit(send)


# --------------------------------------------------------------------------------------
# Metadata, delete, reprocess
# --------------------------------------------------------------------------------------
# Document.metadata[LANGUAGE_SOURCE]: where its language came from. "uploader" or "editor":
# a person chose it; "previous": the version it replaces had one a person chose; "default":
# nobody did, so document_process detects it from the text ("detected"), keeping
# DOCUMENT_DEFAULT_LANGUAGE when it cannot tell (pipeline/language.py). Documents from before
# this have no source and are left as they are.
LANGUAGE_SOURCE = "language_source"
LANGUAGE_CHOSEN = ("uploader", "editor", "previous")


def _upload_language(language: str, previous: Document | None) -> tuple[str, str]:
    """(language, source) of a new upload: the uploader's; else the previous version's if a
    person chose it (or it predates detection); else the default, to be detected."""
    if language:
        return language, "uploader"
    if previous is not None and (previous.metadata or {}).get(LANGUAGE_SOURCE, "previous") in LANGUAGE_CHOSEN:
        return previous.language, "previous"
    return settings.DOCUMENT_DEFAULT_LANGUAGE, "default"


@transaction.atomic
def document_update(*, document: Document, actor: Any, **fields: Any) -> Document:
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationFailed("These fields cannot be changed.", details={"fields": sorted(unknown)})
    if "tags" in fields:
        fields["tags"] = _clean_tags(fields["tags"])
    old = {k: getattr(document, k) for k in fields}
    for key, value in fields.items():
        setattr(document, key, value)
    update_fields = [*fields, "updated_at"]
    if "language" in fields and old["language"] != document.language:  # a person's choice: never re-detected
        document.metadata = {**(document.metadata or {}), LANGUAGE_SOURCE: "editor"}
        update_fields.append("metadata")
    document.save(update_fields=update_fields)
    changed = {k: getattr(document, k) for k in fields if old[k] != getattr(document, k)}
    if changed:
        _search_cache_invalidate_on_commit()
        audit_log_record(
            actor=actor,
            action="document.updated",
            resource_type="document",
            resource_id=document.pk,
            old_values={k: old[k] for k in changed},
            new_values=changed,
        )
    return document


@transaction.atomic
def document_delete(*, document: Document, actor: Any) -> Document:
    """Soft delete: gone from search at once (status), chunks removed, vectors removed
    after commit. The row and the file stay for the audit trail until retention purges."""
    from apps.knowledge.bm25 import counts_lock

    counts_lock()  # before any row lock (see there)
    document = Document.objects.select_for_update().get(pk=document.pk)
    if document.status == Document.Status.DELETED:
        return document
    old_status = document.status
    document.status = Document.Status.DELETED
    document.deleted_at = timezone.now()
    document.save(update_fields=["status", "deleted_at", "updated_at"])
    chunk_bound = document_chunk_bound(document)  # before its chunk rows go
    DocumentChunk.objects.filter(document=document).delete()
    usage_record(
        usage_type="storage",
        quantity=-document.file_size,
        unit="bytes",
        metadata={"document_id": str(document.pk), "event": "delete"},
    )
    audit_log_record(
        actor=actor,
        action="document.deleted",
        resource_type="document",
        resource_id=document.pk,
        old_values={"status": old_status},
        new_values={"status": Document.Status.DELETED},
    )
    _vectors_delete_on_commit(document_id=str(document.pk), chunk_bound=chunk_bound)
    _search_cache_invalidate_on_commit()
    transaction.on_commit(lambda: _progress_push(document))  # not for a delete that rolls back
    return document


def _vectors_delete_on_commit(*, document_id: str, chunk_bound: int) -> None:
    schema = connection.schema_name
    key = tenant_key()

    def send() -> None:
        from django_tenants.utils import schema_context

        from apps.knowledge.tasks import document_vectors_delete_task

        with schema_context(schema):
            document_vectors_delete_task.delay(key, document_id, chunk_bound)

    transaction.on_commit(send)


@transaction.atomic
def document_reprocess(*, document: Document, actor: Any) -> Document:
    document = Document.objects.select_for_update().get(pk=document.pk)
    if document.status == Document.Status.DELETED:
        raise ValidationFailed("A deleted document cannot be reprocessed.", code="document_deleted")
    old_status = document.status
    document.status = Document.Status.PROCESSING
    document.processing_progress = 0
    document.error_code = ""
    document.error_message = ""
    document.attempts = 0
    document.save(
        update_fields=["status", "processing_progress", "error_code", "error_message", "attempts", "updated_at"]
    )
    audit_log_record(
        actor=actor,
        action="document.reprocess_requested",
        resource_type="document",
        resource_id=document.pk,
        old_values={"status": old_status},
        new_values={"status": document.status},
    )
    _enqueue_on_commit(document)
    return document


# --------------------------------------------------------------------------------------
# Processing
# --------------------------------------------------------------------------------------
def _progress_push(document: Document) -> None:
    """Tell the tenant's live views (admin list, console) about a document's progress.
    Through the process's long-lived event loop (``apps.core.group_send``): a new loop per
    push, as ``async_to_sync`` makes, also meant a new Redis connection per push."""
    from apps.core.group_send import group_send
    from apps.core.websocket import tenant_group_name

    event = {
        "type": "document.progress",
        "document": {
            "id": str(document.pk),
            "status": document.status,
            "progress": document.processing_progress,
            "error_code": document.error_code,
            "error_message": document.error_message,
        },
    }
    try:
        group_send(tenant_group_name(connection.schema_name, "documents"), event, timeout=PUSH_TIMEOUT)
    except Exception:  # noqa: BLE001 - live updates are best effort; polling still works
        logger.warning("Could not push progress for document %s", document.pk, exc_info=True)


class _Progress:
    """Writes processing_progress as a stage advances: only when the percentage moves, and
    at most once per PROGRESS_INTERVAL (a 1-chunk document would otherwise pay an UPDATE
    and a websocket push per stage). Each write is pushed to the live views. The final
    value is never throttled: the swap-in writes 100 with the status, and the end of
    ``document_process`` pushes it."""

    def __init__(self, document: Document):
        self.document = document
        self.last = document.processing_progress  # the value in the database
        self.written_at = time.monotonic()

    def set(self, percent: int) -> None:
        percent = max(0, min(99, int(percent)))
        if percent <= self.last:
            return
        now = time.monotonic()
        if now - self.written_at < PROGRESS_INTERVAL:
            return
        self.last, self.written_at = percent, now
        Document.objects.filter(pk=self.document.pk).update(processing_progress=percent, updated_at=timezone.now())
        self.document.processing_progress = percent
        _progress_push(self.document)

    def band(self, stage: str) -> Callable[[int, int], None]:
        lo, hi = BANDS[stage]

        def report(done: int, total: int) -> None:
            if total > 0:
                self.set(lo + (hi - lo) * min(done, total) / total)

        return report


@contextmanager
def _stage(document: Document, stage: str) -> Iterator[dict]:
    """Log one stage run (started → completed/failed) with its timing and details."""
    log = DocumentProcessingLog.objects.create(document=document, stage=stage, status="started")
    started = time.perf_counter()
    details: dict[str, Any] = {}
    try:
        yield details
    except Exception as exc:
        details["seconds"] = round(time.perf_counter() - started, 3)
        message = exc.message if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
        code = getattr(exc, "code", None)
        details["error_code"] = code if isinstance(code, str) else "internal_error"
        DocumentProcessingLog.objects.filter(pk=log.pk).update(
            status="failed", details=details, error_message=message[:2000], completed_at=timezone.now()
        )
        raise
    details["seconds"] = round(time.perf_counter() - started, 3)
    DocumentProcessingLog.objects.filter(pk=log.pk).update(
        status="completed", details=details, completed_at=timezone.now()
    )


@contextmanager
def _local_copy(document: Document) -> Iterator[Path]:
    """A local path for the stored file (remote storages are copied to a temp file)."""
    try:
        yield Path(document.file.path)
        return
    except NotImplementedError:
        pass
    suffix = Path(document.original_name).suffix
    with tempfile.NamedTemporaryFile(prefix="zhida-doc-", suffix=suffix) as tmp:
        with document.file.open("rb") as src:
            shutil.copyfileobj(src, tmp)
        tmp.flush()
        yield Path(tmp.name)


def chunk_uuid(document_id: Any, chunk_index: int) -> uuid.UUID:
    """Deterministic chunk id (and vector id): reprocessing upserts the same rows."""
    return uuid.uuid5(CHUNK_NAMESPACE, f"{document_id}:{chunk_index}")


def document_claim(*, document_id: Any) -> Document | None:
    """Take a document for processing: only one in ``processing``; counts the attempt."""
    updated = Document.objects.filter(pk=document_id, status=Document.Status.PROCESSING).update(
        attempts=F("attempts") + 1, processing_progress=Greatest(F("processing_progress"), 1), updated_at=timezone.now()
    )
    if not updated:
        return None
    return Document.objects.get(pk=document_id)


def document_chunk_bound(document: Document) -> int:
    """The most chunks any run of this document had so far: its vectors can only have the
    ids ``chunk_uuid(document, i)`` for i below that, so they can be deleted by primary key
    without asking Milvus (a query by document scans the tenant's whole collection). Every
    run that wrote a vector logged its chunk count first (the chunk stage ends before the
    embed stage starts). 0 before a document's first processing: nothing of it can be in
    Milvus yet."""
    logged = DocumentProcessingLog.objects.filter(document=document, stage="chunk").values_list("details", flat=True)
    bound = max((int((details or {}).get("chunks") or 0) for details in logged), default=0)
    if document.indexed_at is not None:  # swapped in before: its chunk rows say so too
        top = DocumentChunk.objects.filter(document=document).aggregate(top=Max("chunk_index"))["top"]
        bound = max(bound, top + 1 if top is not None else 0)
    return bound


def document_vector_ids(document_id: Any, chunk_bound: int) -> list[str]:
    return [str(chunk_uuid(document_id, i)) for i in range(chunk_bound)]


def _document_language_detect(*, document: Document, sections: list[Any]) -> str | None:
    """Set the language of a document nobody chose one for from its text (see
    LANGUAGE_SOURCE); the detected language, or None when it was chosen or cannot be told."""
    from apps.knowledge.pipeline.language import SAMPLE_CHARS, language_detect

    if (document.metadata or {}).get(LANGUAGE_SOURCE) != "default":
        return None
    sample, size = [], 0
    for section in sections:
        sample.append(section.text)
        size += len(section.text)
        if size >= SAMPLE_CHARS:
            break
    detected = language_detect("\n".join(sample))
    if detected is None:
        return None
    document.language = detected
    document.metadata = {**(document.metadata or {}), LANGUAGE_SOURCE: "detected"}
    # Only these two columns: the progress writes update the same row meanwhile.
    Document.objects.filter(pk=document.pk).update(language=detected, metadata=document.metadata)
    return detected


def document_process(*, document_id: Any) -> Document | None:
    """Run the whole pipeline for one document. Idempotent: a document that is not in
    ``processing`` is left alone; a rerun produces the same chunk ids and vectors.
    Bad input ends as ``failed`` with a readable message; transient errors (Milvus or the
    embedding provider unreachable) propagate as ``PipelineError(transient=True)`` for the
    task to retry.

    Vectors are written while the next batch is embedded (``VectorWriter``: a background
    thread, through the same serialised write path); the chunk rows are swapped in once
    every vector is written, so searchers see the old version or the new one."""
    from apps.knowledge.bm25 import document_vector, tenant_avgdl
    from apps.knowledge.pipeline.chunk import chunk_sections
    from apps.knowledge.pipeline.embed import embed_texts, get_embedder
    from apps.knowledge.pipeline.extract import extract
    from apps.knowledge.vectorstore import VectorRow, VectorWriter, vectors_commit, vectors_delete, vectors_delete_ids

    document = document_claim(document_id=document_id)
    if document is None:
        return None
    _progress_push(document)  # a worker has it
    progress = _Progress(document)
    earlier_chunks = document_chunk_bound(document)
    replaced: list[Document] | None = None
    try:
        with _local_copy(document) as path, _stage(document, "extract") as details:
            sections = list(extract(path=path, file_type=document.file_type, progress=progress.band("extract")))
            details.update(
                sections=len(sections),
                chars=sum(len(s.text) for s in sections),
                pages=len({s.metadata.get("page") for s in sections if s.metadata.get("page")}),
            )
            detected = _document_language_detect(document=document, sections=sections)
            if detected:
                details.update(language=detected)
        with _stage(document, "chunk") as details:
            chunks = list(
                chunk_sections(
                    sections, max_tokens=settings.CHUNK_MAX_TOKENS, overlap_tokens=settings.CHUNK_OVERLAP_TOKENS
                )
            )
            if not chunks:
                raise ExtractionError("No text found in the document.", code="empty")
            details.update(chunks=len(chunks), tokens=sum(c.token_count for c in chunks))
            progress.band("chunk")(1, 1)
        key = tenant_key()
        document_key = str(document.pk)
        ids = [str(chunk_uuid(document.pk, c.index)) for c in chunks]
        avgdl = tenant_avgdl(texts=[c.content for c in chunks])  # BM25 length normalisation

        def rows(start: int, vectors: list[list[float]]) -> list[VectorRow]:
            return [
                VectorRow(
                    id=ids[i],
                    document_id=document_key,
                    chunk_id=ids[i],
                    vector=vector,
                    content=chunks[i].content,
                    metadata=chunks[i].metadata,
                    sparse=document_vector(chunks[i].content, avgdl=avgdl),
                )
                for i, vector in enumerate(vectors, start=start)
            ]

        with VectorWriter(tenant_key=key) as writer:
            with _stage(document, "embed") as details:
                embedder = get_embedder()
                vectors = embed_texts(
                    [c.content for c in chunks],
                    progress=progress.band("embed"),
                    on_batch=lambda start, batch: writer.put(rows(start, batch)),
                )
                details.update(provider=embedder.name, dimension=embedder.dimension, vectors=len(vectors))
            with _stage(document, "index") as details:
                waited = time.perf_counter()
                writer.close()
                # Vectors of an earlier run with more chunks (only if the chunker or its
                # settings changed in between: the bytes of a document never do).
                stale = document_vector_ids(document.pk, earlier_chunks)[len(chunks) :]
                vectors_delete_ids(tenant_key=key, ids=stale)
                vectors_commit(tenant_key=key)  # Lite: sealed before it is searchable (see there)
                replaced = _document_swap_in(document=document, chunks=chunks)
                details.update(
                    vectors=writer.rows_written,
                    upserts=writer.upserts,
                    upsert_seconds=round(writer.seconds, 3),  # in the background, mostly during embed
                    upsert_wait_seconds=round(time.perf_counter() - waited, 3),
                    stale_deleted=len(stale),
                    replaced=[str(old.pk) for old in replaced or []],
                )
        if replaced is None and Document.objects.filter(pk=document.pk, status=Document.Status.DELETED).exists():
            # Deleted while we worked: its delete task may have run before our upserts.
            vectors_delete_ids(tenant_key=key, ids=document_vector_ids(document.pk, max(len(ids), earlier_chunks)))
        for old in replaced or []:
            # By lookup: an older version's runs are not this run's to know (and this is
            # once per new version, not per document).
            vectors_delete(tenant_key=key, document_id=str(old.pk))
    except PipelineError as exc:
        if exc.transient:
            raise
        document_fail(document=document, code=exc.code, message=exc.message)
        return document
    except Exception as exc:  # noqa: BLE001 - never crash the worker; say what happened
        logger.exception("Processing document %s failed", document.pk)
        document_fail(
            document=document, code="internal_error", message=f"Processing failed: {type(exc).__name__}: {exc}"
        )
        return document
    if replaced is None:  # not swapped in (deleted or reset meanwhile): say what it is now
        document.refresh_from_db()
    _progress_push(document)
    return document


@transaction.atomic
def _document_swap_in(*, document: Document, chunks: list) -> list[Document] | None:
    """Make the new chunks (and, for a new version, the new document) the searchable ones in
    one transaction: search maps vector hits back to indexed documents, so readers see the
    old version until this commits and the new one after. Returns the older versions it
    retired, or None when the document was no longer ``processing`` (nothing swapped in).
    The caller's ``document`` gets the new status and progress."""
    from apps.knowledge.bm25 import chunk_terms, counts_lock

    counts_lock()  # before any row lock (see there)
    caller, document = document, Document.objects.select_for_update().get(pk=document.pk)
    if document.status != Document.Status.PROCESSING:
        return None  # deleted or reset while we worked
    DocumentChunk.objects.filter(document=document).delete()
    terms = [chunk_terms(c.content) for c in chunks]  # counted by the BM25 statistics' triggers
    DocumentChunk.objects.bulk_create(
        [
            DocumentChunk(
                id=chunk_uuid(document.pk, c.index),
                document=document,
                chunk_index=c.index,
                content=c.content,
                content_hash=c.content_hash,
                vector_id=str(chunk_uuid(document.pk, c.index)),
                metadata=c.metadata,
                word_count=c.word_count,
                char_count=c.char_count,
                token_count=c.token_count,
                bm25_terms=term_ids,
                bm25_length=length,
            )
            for c, (term_ids, length) in zip(chunks, terms, strict=True)
        ],
        batch_size=500,
    )
    document.status = Document.Status.INDEXED
    document.processing_progress = 100
    document.indexed_at = timezone.now()
    document.error_code = ""
    document.error_message = ""
    document.save(
        update_fields=["status", "processing_progress", "indexed_at", "error_code", "error_message", "updated_at"]
    )
    replaced = []
    if document.replaces_id:
        # Every older version still live, not only the one this replaces: that one may be a
        # failed or unfinished upload standing in front of the version readers still see.
        older = (
            Document.objects.select_for_update()
            .filter(original_name=document.original_name, version__lt=document.version)
            .exclude(status=Document.Status.DELETED)
            .order_by("version")
        )
        for old in older:
            old.status = Document.Status.DELETED
            old.deleted_at = timezone.now()
            old.save(update_fields=["status", "deleted_at", "updated_at"])
            DocumentChunk.objects.filter(document=old).delete()
            audit_log_record(
                actor=None,
                action="document.superseded",
                resource_type="document",
                resource_id=old.pk,
                new_values={"replaced_by": str(document.pk), "version": document.version},
            )
            replaced.append(old)
    _search_cache_invalidate_on_commit()
    usage_record(
        usage_type="document_processing",
        quantity=1,
        unit="count",
        metadata={
            "document_id": str(document.pk),
            "chunks": len(chunks),
            "tokens": sum(c.token_count for c in chunks),
            "pages": len({c.metadata.get("page") for c in chunks if c.metadata.get("page")}),
        },
    )
    audit_log_record(
        actor=None,
        action="document.indexed",
        resource_type="document",
        resource_id=document.pk,
        new_values={"chunks": len(chunks), "version": document.version},
    )
    for field in ("status", "processing_progress", "indexed_at", "error_code", "error_message", "updated_at"):
        setattr(caller, field, getattr(document, field))
    return replaced


@transaction.atomic
def document_fail(*, document: Document, code: str, message: str) -> Document:
    updated = Document.objects.filter(pk=document.pk, status=Document.Status.PROCESSING).update(
        status=Document.Status.FAILED, error_code=code[:50], error_message=message[:4000], updated_at=timezone.now()
    )
    document.refresh_from_db()
    if updated:
        audit_log_record(
            actor=None,
            action="document.failed",
            resource_type="document",
            resource_id=document.pk,
            new_values={"error_code": code, "error_message": message[:500]},
        )
        transaction.on_commit(lambda: _progress_push(document))
    return document


def documents_stale_requeue() -> dict[str, int]:
    """Documents stuck in ``processing`` (a worker died, a message was lost): queue them
    again, or fail them after DOCUMENT_MAX_ATTEMPTS tries. Runs per tenant from beat."""
    cutoff = timezone.now() - timedelta(seconds=settings.DOCUMENT_STALE_AFTER)
    stale = list(Document.objects.filter(status=Document.Status.PROCESSING, updated_at__lt=cutoff))
    requeued = failed = 0
    for document in stale:
        if document.attempts >= settings.DOCUMENT_MAX_ATTEMPTS:
            document_fail(
                document=document,
                code="processing_stalled",
                message=f"Processing stopped responding {document.attempts} times; giving up. Reprocess to try again.",
            )
            failed += 1
        else:
            with transaction.atomic():
                Document.objects.filter(pk=document.pk).update(updated_at=timezone.now())
                _enqueue_on_commit(document)
            requeued += 1
    return {"requeued": requeued, "failed": failed}


@dataclass
class ReconcileReport:
    documents_checked: int = 0
    vectors_restored: int = 0
    vectors_removed: int = 0
    documents_repaired: list[str] | None = None
    chunks_analysed: int = 0


def vectors_reconcile(*, dry_run: bool = False, progress: Callable[[int, int], None] | None = None) -> ReconcileReport:
    """Compare this tenant's chunks in PostgreSQL with its vectors in Milvus and repair
    drift: vectors missing for an indexed document's chunks are re-embedded from the stored
    chunk text and upserted; vectors with no chunk behind them (deleted or superseded
    documents, lost updates) are removed. First, chunks without BM25 terms (made before
    they existed) get them (``chunks_bm25_fill``), so the tenant's statistics are whole
    before any vector is weighted with them.

    Moving to a new collection (an outdated one is refused, see
    ``vectorstore.collection_ensure``): point MILVUS_COLLECTION at it and run this; every
    vector is missing there, so every chunk is re-embedded."""
    from apps.knowledge.bm25 import document_vector, tenant_avgdl
    from apps.knowledge.pipeline.embed import embed_texts, get_embedder
    from apps.knowledge.vectorstore import (
        VectorRow,
        vectors_commit,
        vectors_delete_ids,
        vectors_ids_by_document,
        vectors_upsert,
    )

    key = tenant_key()
    report = ReconcileReport(documents_repaired=[])
    report.chunks_analysed = chunks_bm25_fill(dry_run=dry_run)
    avgdl: float | None = None
    in_milvus = vectors_ids_by_document(tenant_key=key)
    expected: dict[str, set[str]] = {}
    for doc_id, vector_id in DocumentChunk.objects.filter(document__status=Document.Status.INDEXED).values_list(
        "document_id", "vector_id"
    ):
        expected.setdefault(str(doc_id), set()).add(vector_id)
    doc_ids = sorted(set(expected) | set(in_milvus))
    for done, doc_id in enumerate(doc_ids, start=1):
        report.documents_checked += 1
        want, have = expected.get(doc_id, set()), in_milvus.get(doc_id, set())
        missing, extra = want - have, have - want
        if missing or extra:
            report.documents_repaired.append(doc_id)
        if extra:
            report.vectors_removed += len(extra)
            if not dry_run:
                vectors_delete_ids(tenant_key=key, ids=sorted(extra))
        if missing:
            report.vectors_restored += len(missing)
            if not dry_run:
                chunks = list(DocumentChunk.objects.filter(document_id=doc_id, vector_id__in=missing))
                embedder = get_embedder()
                vectors = embed_texts([c.content for c in chunks])
                avgdl = tenant_avgdl() if avgdl is None else avgdl
                rows = [
                    VectorRow(
                        id=c.vector_id,
                        document_id=doc_id,
                        chunk_id=str(c.pk),
                        vector=v,
                        content=c.content,
                        metadata=c.metadata,
                        sparse=document_vector(c.content, avgdl=avgdl),
                    )
                    for c, v in zip(chunks, vectors, strict=True)
                ]
                vectors_upsert(tenant_key=key, rows=rows, dimension=embedder.dimension)
        if progress:
            progress(done, len(doc_ids))
    if report.vectors_restored and not dry_run:
        vectors_commit(tenant_key=key)
    return report


def chunks_bm25_fill(*, dry_run: bool = False, batch_size: int = 500) -> int:
    """Give the current tenant's chunks that have none their BM25 terms and length (chunks
    written before bm25.py); the triggers add them to the tenant's statistics. Returns how
    many chunks needed it. One transaction per batch, so a big tenant can be filled while it
    is in use, and a second run resumes where the first stopped."""
    from apps.knowledge.bm25 import chunk_terms, counts_lock

    todo = DocumentChunk.objects.filter(bm25_terms__isnull=True)
    if dry_run:
        return todo.count()
    done = 0
    while True:
        with transaction.atomic():
            counts_lock()  # before the chunk row locks (see there)
            batch = list(todo.only("id", "content").select_for_update(skip_locked=True)[:batch_size])
            if not batch:
                return done
            for chunk in batch:
                chunk.bm25_terms, chunk.bm25_length = chunk_terms(chunk.content)
            DocumentChunk.objects.bulk_update(batch, ["bm25_terms", "bm25_length"])
        done += len(batch)
