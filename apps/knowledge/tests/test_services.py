"""The knowledge services on the real PostgreSQL (acme's schema) and the real Milvus Lite
server: upload (duplicates, versions, refusals), the pipeline on every evaluation document,
malformed files and zip bombs, idempotency, delete, reprocess, the stale sweep and a vector
store that is down. ``document_process`` is called directly: in a ``db`` test the on-commit
task never runs (unless captured with ``celery_eager``, which runs it in this process)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from apps.audit.models import AuditLog
from apps.billing.models import UsageRecord
from apps.core.exceptions import ValidationFailed
from apps.core.testing import free_port
from apps.knowledge import selectors, services
from apps.knowledge.models import Document, DocumentChunk, DocumentProcessingLog
from apps.knowledge.tests.conftest import DOCS, MISSING, doc, docx_bytes, zip_bomb_docx_bytes
from apps.knowledge.vectorstore import VectorStoreError, vectors_count

FORMAT_DIRS = ("pdf", "pdf-zh", "docx", "xlsx", "pptx", "html", "md", "csv")
STAGES = ["upload", "extract", "chunk", "embed", "index"]
# Valid files without any text: they end failed with this code.
NO_TEXT = {"pdf/single_table.pdf": "no_text_layer", "xlsx/empty.xlsx": "empty"}
# Left out of the per-file run: 619 pages → 1,168 chunks, about 40 s here, testing nothing
# that the 872-page handbook below does not (its extraction is in test_extract.py; the
# worker tests kill a worker on a generated big document instead).
LEFT_OUT = {"pdf/DA-619p.pdf"}
# Phrases read in the files themselves, one or more per format.
PHRASES = {
    "pdf/multi_page.pdf": ["The Evolution of the Word Processor"],
    "pdf/multi-column.pdf": ["Dense Passage Retrieval for Open-Domain Question Answering"],
    "pdf-zh/issue-67-example.pdf": ["东北电气发展股份有限公司", "2018 年第一季度报告"],
    "pdf-zh/issue-336-example.pdf": ["安徽省建设用地使用标准（2020 年版）"],
    "docx/unit_test_headers_numbered.docx": ["Paragraph 1.2.3.1"],
    "docx/word_tables.docx": ["Cell 1.0 | Merged Cell 1.1 1.2 | Cell 1.3"],
    "xlsx/xlsx_02_sample_sales_data.xlsm": ["Product: Widget A; Date: 2024-01-01; Quantity: 5; Revenue: 5000"],
    "xlsx/langchain-ChatGLM_closed.xlsx": ["title: 加油~以及一些建议"],
    "pptx/powerpoint_unrecognized_shape.pptx": ["Text in an unrecognized shape"],
    "html/fake-html-cp1252.html": ["Die schöne Frau", "15,50 €"],
    "html/kvp_data_example.html": ["II | Lunch | 2"],
    "md/mixed.md": ["Scrooge McDuck | Dagobert Duck | Balthazar Picsou | Paperone"],
    "md/大模型推理优化策略.md": ["PagedAttention", "显存优化"],
    "md/人民检察院行政诉讼监督规则（试行）(2016-04-15).md": ["第一条 为了保障和规范人民检察院依法履行行政诉讼监督职责"],
    "csv/stanley-cups-utf-16.csv": ["Team: Maple Leafs; Location: TOR; Stanley Cups: 13"],
}
# Every file in malformed/: what the upload or the processing ends with. "indexed": the
# damage does not touch the text (see test_extract.py, which reads them all).
MALFORMED = {
    "empty.pdf": ("refused", "empty_file"),
    "password_protected.xlsx": ("refused", "encrypted"),  # an OLE container: known at upload
    "password.pdf": ("failed", "encrypted"),
    "password-example.pdf": ("failed", "encrypted"),
    "truncated-multi_page.pdf": ("failed", "corrupt"),
    "copy-protected.pdf": ("indexed", None),
    "failure-after-repair.pdf": ("indexed", None),
    "invalid-pdf-structure-pdfminer-one-page.pdf": ("indexed", None),
    "malformed-from-issue-932.pdf": ("indexed", None),
    "fake-power-point-malformed.pptx": ("indexed", None),
    "powerpoint_malformed_pictures.pptx": ("indexed", None),
    "xlsx_04_inflated.xlsx": ("indexed", None),
    "ZipBomb.xlsx": ("indexed", None),
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


def evaluation_files() -> list:
    if not DOCS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING), id="missing")]
    params = []
    for directory in FORMAT_DIRS:
        for path in sorted((DOCS / directory).iterdir()):
            relative = f"{directory}/{path.name}"
            if path.is_file() and relative not in LEFT_OUT:  # handbook-872p.docx: three index batches
                params.append(pytest.param(relative, id=relative))
    return params


def vectors_of(document) -> int:
    return vectors_count(tenant_key=services.tenant_key(), document_id=str(document.pk))


def chunk_ids(document) -> list[str]:
    return [str(pk) for pk in DocumentChunk.objects.filter(document=document).values_list("pk", flat=True)]


def usage(document, usage_type: str) -> list[UsageRecord]:
    return list(
        UsageRecord.objects.filter(
            tenant__schema_name=connection.schema_name, usage_type=usage_type, metadata__document_id=str(document.pk)
        ).order_by("recorded_at")
    )


def markdown(text: str) -> bytes:
    return text.encode()


# =========================================================================================
# Upload
# =========================================================================================
class TestUpload:
    def test_upload_stores_the_file_and_queues_processing(
        self, in_acme, upload, manager, django_capture_on_commit_callbacks
    ):
        data = doc("md/wiki.md").read_bytes()
        with django_capture_on_commit_callbacks() as callbacks:
            result = upload(data, "wiki.md", category="guides", tags=["a", " a ", "b", ""])

        document = result.document
        assert result.duplicate is False
        assert len(callbacks) == 1  # the processing task, sent after commit
        assert document.status == "processing" and document.processing_progress == 0
        assert (document.file_type, document.mime_type) == ("md", "text/markdown")
        assert document.file_size == len(data)
        assert document.content_hash == hashlib.sha256(data).hexdigest()
        assert (document.version, document.replaces_id) == (1, None)
        assert (document.title, document.category, document.tags) == ("wiki", "guides", ["a", "b"])
        assert document.uploaded_by == manager
        assert document.file.name.startswith("acme/documents/")
        with document.file.open("rb") as stored:
            assert stored.read() == data
        [log] = DocumentProcessingLog.objects.filter(document=document)
        assert (log.stage, log.status) == ("upload", "completed")
        assert log.details["bytes"] == len(data) and log.details["seconds"] >= 0
        assert log.completed_at >= log.started_at
        assert AuditLog.objects.filter(action="document.uploaded", resource_id=str(document.pk)).exists()
        [storage] = usage(document, "storage")
        assert (storage.quantity, storage.unit, storage.user_id) == (len(data), "bytes", manager.pk)

    def test_the_queued_callback_processes_the_document(
        self, in_acme, milvus, upload, celery_eager, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            document = upload(markdown("# Eager\n\nProcessed by the task itself."), "eager.md").document

        document.refresh_from_db()
        assert document.status == "indexed"
        assert vectors_of(document) == document.chunks.count() == 1

    def test_same_bytes_again_return_the_existing_document_and_queue_nothing(
        self, in_acme, upload, django_capture_on_commit_callbacks
    ):
        data = doc("md/codeblock.md").read_bytes()
        first = upload(data, "codeblock.md").document
        counts = (Document.objects.count(), DocumentProcessingLog.objects.count(), UsageRecord.objects.count())

        with django_capture_on_commit_callbacks() as callbacks:
            again = upload(data, "another name.md")

        assert again.duplicate is True
        assert again.document.pk == first.pk
        assert callbacks == []
        assert (Document.objects.count(), DocumentProcessingLog.objects.count(), UsageRecord.objects.count()) == counts

    def test_same_bytes_as_a_deleted_document_are_a_new_document(self, in_acme, upload, manager):
        data = markdown("# Gone\n\nThen back again.")
        first = upload(data, "gone.md").document
        services.document_delete(document=first, actor=manager)

        again = upload(data, "gone.md")

        assert again.duplicate is False
        assert again.document.pk != first.pk
        assert again.document.replaces_id is None  # the deleted one is not a previous version

    def test_changed_bytes_under_the_same_name_are_a_new_version(self, indexed, upload, process):
        old = indexed(markdown("# Leave policy\n\nTwenty days of annual leave."), "policy.md", category="hr")
        old_chunks = chunk_ids(old)
        assert vectors_of(old) == len(old_chunks) == 1

        result = upload(
            markdown("# Leave policy\n\nTwenty-five days of annual leave.\n\n## Sick leave\n\nTen."), "policy.md"
        )

        new = result.document
        assert result.duplicate is False
        assert (new.version, new.replaces_id, new.category, new.title) == (2, old.pk, "hr", "policy")
        old.refresh_from_db()
        assert old.status == "indexed" and vectors_of(old) == 1  # searchable until the new one is in

        new = process(new)

        assert new.status == "indexed"
        old.refresh_from_db()
        assert old.status == "deleted" and old.deleted_at is not None
        assert not DocumentChunk.objects.filter(document=old).exists()
        assert vectors_of(old) == 0
        assert vectors_of(new) == new.chunks.count() > 0
        assert "Twenty-five days" in " ".join(new.chunks.values_list("content", flat=True))
        assert AuditLog.objects.filter(action="document.superseded", resource_id=str(old.pk)).exists()
        assert [d.pk for d in selectors.document_list(search="policy")] == [new.pk]

        third = upload(markdown("# Leave policy\n\nThirty days."), "policy.md").document
        assert (third.version, third.replaces_id) == (3, new.pk)

    def test_a_new_version_that_fails_leaves_the_old_one_searchable(self, indexed, upload, process):
        old = indexed(markdown("# Handbook\n\nThe real text."), "handbook.md")

        new = process(upload(b" \n\t\n", "handbook.md").document)  # whitespace only: no text

        assert (new.status, new.error_code) == ("failed", "empty")
        old.refresh_from_db()
        assert old.status == "indexed"
        assert vectors_of(old) == old.chunks.count() == 1

    def test_a_version_indexed_after_a_failed_one_retires_every_older_version(self, indexed, upload, process):
        first = indexed(markdown("# Menu\n\nSoup of the day: tomato."), "menu.md")
        failed = process(upload(b" \n", "menu.md").document)
        assert (failed.status, failed.replaces_id) == ("failed", first.pk)

        third = process(upload(markdown("# Menu\n\nSoup of the day: lentils."), "menu.md").document)

        assert third.status == "indexed" and third.version == 3
        assert set(Document.objects.filter(original_name="menu.md").values_list("pk", "status")) == {
            (first.pk, "deleted"),
            (failed.pk, "deleted"),
            (third.pk, "indexed"),
        }
        assert vectors_of(first) == 0 and not first.chunks.exists()
        assert vectors_of(third) == third.chunks.count() == 1
        assert [d.pk for d in selectors.document_list(search="menu")] == [third.pk]

    def test_an_older_version_finishing_late_does_not_come_back(self, indexed, upload, process):
        first = indexed(markdown("# Rota\n\nMonday: Ann."), "rota.md")
        second = upload(markdown("# Rota\n\nMonday: Bob."), "rota.md").document
        third = process(upload(markdown("# Rota\n\nMonday: Cy."), "rota.md").document)
        assert third.replaces_id == second.pk

        second = process(second)  # its worker was slow

        assert (second.status, vectors_of(second)) == ("deleted", 0)
        first.refresh_from_db()
        assert (first.status, vectors_of(first)) == ("deleted", 0)
        assert vectors_of(third) == third.chunks.count() == 1

    def test_empty_file_is_refused(self, in_acme, upload):
        with pytest.raises(ValidationFailed) as caught:
            upload(b"", "empty.pdf")

        assert caught.value.code == "empty_file"
        assert caught.value.details == {"file": "empty.pdf"}
        assert not Document.objects.exists()

    def test_file_over_the_size_limit_is_refused(self, in_acme, upload, settings):
        settings.DOCUMENT_MAX_SIZE = 1024

        with pytest.raises(services.FileTooLarge) as caught:
            upload(b"x" * 1025, "big.txt")

        assert (caught.value.code, caught.value.status_code) == ("file_too_large", 413)
        assert caught.value.details == {"max_bytes": 1024}
        assert not Document.objects.exists()
        assert not any(Path(settings.MEDIA_ROOT).rglob("big*"))
        upload(b"x" * 1024, "limit.txt")  # exactly the limit is fine

    @pytest.mark.parametrize(
        ("data", "name"),
        [
            pytest.param(PNG, "scan.png", id="png"),
            pytest.param(PNG, "scan.pdf", id="png-named-pdf"),
            pytest.param(b"\x7fELF" + b"\x00" * 64, "tool.docx", id="program"),
            pytest.param(None, "old.doc", id="legacy-doc"),
        ],
    )
    def test_unsupported_types_are_refused(self, in_acme, upload, data, name):
        if data is None:  # an OLE compound file that is not encrypted: a legacy .doc/.xls
            encrypted = doc("malformed/password_protected.xlsx").read_bytes()
            data = encrypted.replace("EncryptionInfo".encode("utf-16-le"), "EncryptionInfX".encode("utf-16-le"))

        with pytest.raises(services.UnsupportedFileType) as caught:
            upload(data, name)

        assert (caught.value.code, caught.value.status_code) == ("unsupported_file_type", 415)
        assert caught.value.message.startswith(f"{name}: ")
        assert "pdf" in caught.value.details["allowed"]
        assert not Document.objects.exists()

    def test_encrypted_office_file_is_refused_with_its_own_code(self, in_acme, upload):
        """An encrypted .xlsx is a supported type that cannot be read: not a 415."""
        with pytest.raises(ValidationFailed) as caught:
            upload(doc("malformed/password_protected.xlsx"))

        assert caught.value.code == "encrypted"
        assert "password-protected" in caught.value.message
        assert not Document.objects.exists()


# =========================================================================================
# Processing
# =========================================================================================
class TestLanguage:
    """A document nobody gave a language gets it from its text; a person's choice stands."""

    ENGLISH = markdown(
        "# Zephyr heater\n\nTo reset the heater, switch it off at the wall and hold the power button for "
        "ten seconds. The display shows the factory settings when the reset is done."
    )
    CHINESE = markdown(
        "# 退货政策\n\n自签收之日起七天内，商品未经使用、包装完好，可申请无理由退货。退款将原路返回至支付账户。"
    )
    FRENCH = markdown(
        "# Chauffage\n\nPour réinitialiser le chauffage, coupez-le au mur et maintenez le bouton pendant dix "
        "secondes. Les paramètres d'usine sont rétablis."
    )

    def test_detected_when_the_uploader_gave_none(self, indexed, settings):
        from apps.knowledge.search import chunk_search

        document = indexed(self.ENGLISH, "heater.md")

        assert document.language == "en" != settings.DOCUMENT_DEFAULT_LANGUAGE
        assert document.metadata["language_source"] == "detected"
        extract_log = DocumentProcessingLog.objects.get(document=document, stage="extract")
        assert extract_log.details["language"] == "en"
        tenant = connection.tenant
        hits = chunk_search(tenant=tenant, query="reset the heater", filters={"language": "en"}, use_cache=False).hits
        assert [h.document_id for h in hits] == [str(document.pk)]
        assert not chunk_search(tenant=tenant, query="reset the heater", filters={"language": "zh-CN"}).hits

    def test_the_uploaders_language_stands(self, indexed):
        document = indexed(self.ENGLISH, "heater.md", language="zh-CN")

        assert (document.language, document.metadata["language_source"]) == ("zh-CN", "uploader")

    def test_the_default_when_it_cannot_tell(self, indexed, settings):
        document = indexed(self.FRENCH, "chauffage.md")

        assert (document.language, document.metadata["language_source"]) == (
            settings.DOCUMENT_DEFAULT_LANGUAGE,
            "default",
        )

    def test_a_new_version_is_detected_again_unless_a_person_chose(self, indexed, upload, process, manager):
        first = indexed(self.ENGLISH, "notice.md")
        assert first.language == "en"

        second = process(upload(self.CHINESE, "notice.md").document)  # the notice was translated
        assert (second.version, second.language, second.metadata["language_source"]) == (2, "zh-CN", "detected")

        services.document_update(document=second, actor=manager, language="zh-TW")
        second.refresh_from_db()
        assert second.metadata["language_source"] == "editor"
        audit = AuditLog.objects.get(action="document.updated", resource_id=str(second.pk))
        assert audit.new_values == {"language": "zh-TW"}

        third = process(upload(self.ENGLISH, "notice.md").document)
        assert (third.version, third.language, third.metadata["language_source"]) == (3, "zh-TW", "previous")

    def test_documents_from_before_detection_keep_theirs(self, indexed, upload, process):
        old = indexed(self.ENGLISH, "legacy.md", language="zh-CN")
        Document.objects.filter(pk=old.pk).update(metadata={})  # uploaded before language_source existed

        new = process(upload(self.CHINESE, "legacy.md").document)

        assert (new.language, new.metadata["language_source"]) == ("zh-CN", "previous")


class TestProcessing:
    @pytest.mark.parametrize("relative", evaluation_files())
    def test_every_evaluation_document(self, indexed, upload, process, acme, relative):
        path = doc(relative)
        if relative in NO_TEXT:
            document = process(upload(path).document)
            assert (document.status, document.error_code) == ("failed", NO_TEXT[relative])
            assert document.error_message and vectors_of(document) == 0
            return

        document = indexed(path)

        chunks = list(document.chunks.order_by("chunk_index"))
        assert chunks and [c.chunk_index for c in chunks] == list(range(len(chunks)))
        assert vectors_of(document) == len(chunks)
        assert all(c.vector_id == str(c.pk) == str(services.chunk_uuid(document.pk, c.chunk_index)) for c in chunks)
        assert all(c.content and c.token_count > 0 for c in chunks)
        text = "\n".join(c.content for c in chunks)
        for phrase in PHRASES.get(relative, []):
            assert phrase in text
        if document.file_type == "pdf":
            assert all("page" in c.metadata or "pages" in c.metadata for c in chunks)
        assert (document.processing_progress, document.error_code, document.error_message) == (100, "", "")
        assert document.indexed_at is not None and document.attempts == 1

        logs = list(document.processing_logs.order_by("started_at"))
        assert [log.stage for log in logs] == STAGES
        assert {log.status for log in logs} == {"completed"}
        for log in logs:
            assert log.details["seconds"] >= 0
            assert log.completed_at >= log.started_at
        details = {log.stage: log.details for log in logs}
        assert details["chunk"]["chunks"] == details["embed"]["vectors"] == details["index"]["vectors"] == len(chunks)

        [processing] = usage(document, "document_processing")
        assert processing.tenant_id == acme.pk
        assert (processing.quantity, processing.metadata["chunks"]) == (1, len(chunks))
        [storage] = usage(document, "storage")
        assert storage.quantity == document.file_size == path.stat().st_size

    def test_pdf_chunks_carry_their_pages(self, indexed):
        document = indexed(doc("pdf/multi_page.pdf"))

        pages = set()
        for chunk in document.chunks.all():
            pages.update(chunk.metadata.get("pages") or [chunk.metadata["page"]])
        assert pages == {1, 2, 3, 4, 5}
        first = document.chunks.get(chunk_index=0)
        assert first.metadata.get("page") == 1 or 1 in first.metadata["pages"]
        assert first.content.startswith("The Evolution of the Word Processor")

    def test_every_malformed_file_is_decided(self):
        if not DOCS.is_dir():
            pytest.skip(MISSING)
        assert sorted(p.name for p in (DOCS / "malformed").iterdir()) == sorted(MALFORMED)

    @pytest.mark.parametrize(
        "name", [name for name, (outcome, _) in MALFORMED.items() if outcome != "indexed"], ids=str
    )
    def test_malformed_files_fail_with_a_code_and_a_readable_message(self, in_acme, milvus, upload, process, name):
        outcome, code = MALFORMED[name]
        path = doc(f"malformed/{name}")
        if outcome == "refused":
            with pytest.raises(ValidationFailed) as caught:
                upload(path)
            assert caught.value.code == code
            assert not Document.objects.exists()
            return

        document = process(upload(path).document)

        assert (document.status, document.error_code) == ("failed", code)
        assert len(document.error_message) > 20 and "Traceback" not in document.error_message
        assert not document.chunks.exists() and vectors_of(document) == 0
        failed = document.processing_logs.get(stage="extract")
        assert (failed.status, failed.details["error_code"]) == ("failed", code)
        assert failed.error_message == document.error_message
        assert AuditLog.objects.filter(action="document.failed", resource_id=str(document.pk)).exists()

    def test_zip_bomb_docx_is_refused(self, in_acme, milvus, upload, process):
        bomb = zip_bomb_docx_bytes(megabytes=200)
        assert len(bomb) < 1024 * 1024

        document = upload(bomb, "bomb.docx").document
        assert document.file_type == "docx"  # a real Word document as far as the upload can tell
        document = process(document)

        assert (document.status, document.error_code) == ("failed", "decompression_bomb")
        assert "word/media/padding.bin" in document.error_message
        assert not document.chunks.exists() and vectors_of(document) == 0

    def test_processing_twice_keeps_the_same_chunks_and_vectors(self, indexed, process):
        document = indexed(doc("pdf/reliance.pdf"))
        ids, count = chunk_ids(document), vectors_of(document)

        assert services.document_process(document_id=document.pk) is None  # indexed: not claimed again
        Document.objects.filter(pk=document.pk).update(status="processing")  # a redelivered task
        document = process(document)

        assert document.status == "indexed" and document.attempts == 2
        assert chunk_ids(document) == ids
        assert vectors_of(document) == count == len(ids)

    def test_a_rerun_with_fewer_chunks_drops_the_leftover_vectors(self, indexed, process, settings):
        settings.CHUNK_MAX_TOKENS, settings.CHUNK_OVERLAP_TOKENS = 64, 8
        document = indexed(doc("md/wiki.md"))
        many = document.chunks.count()
        assert vectors_of(document) == many

        settings.CHUNK_MAX_TOKENS, settings.CHUNK_OVERLAP_TOKENS = 512, 64
        Document.objects.filter(pk=document.pk).update(status="processing")
        document = process(document)

        assert document.chunks.count() < many
        assert vectors_of(document) == document.chunks.count()

    def test_a_vector_store_that_is_down_is_transient(self, in_acme, milvus, upload, process, settings):
        document = upload(markdown("# Later\n\nIndexed once Milvus is back."), "later.md").document
        settings.MILVUS_URI, settings.MILVUS_TIMEOUT = f"http://127.0.0.1:{free_port()}", 1.0

        with pytest.raises(VectorStoreError) as caught:
            services.document_process(document_id=document.pk)

        assert caught.value.transient is True
        document.refresh_from_db()
        assert document.status == "processing"  # the task retries it
        assert document.processing_logs.get(stage="index").details["error_code"] == "vector_store_unavailable"
        assert not document.chunks.exists()

        settings.MILVUS_URI = milvus
        document = process(document)
        assert document.status == "indexed" and document.attempts == 2
        assert vectors_of(document) == document.chunks.count()

    def test_a_document_deleted_while_it_is_processed_leaves_no_vectors(
        self, in_acme, milvus, upload, manager, monkeypatch
    ):
        from apps.knowledge.pipeline import embed

        document = upload(doc("md/wiki.md")).document
        real_embed = embed.embed_texts

        def embed_then_delete(texts, **kwargs):
            vectors = real_embed(texts, **kwargs)
            services.document_delete(document=document, actor=manager)  # a user, meanwhile
            return vectors

        monkeypatch.setattr(embed, "embed_texts", embed_then_delete)
        services.document_process(document_id=document.pk)

        document.refresh_from_db()
        assert document.status == "deleted" and not document.chunks.exists()
        assert vectors_of(document) == 0  # not left behind by the run that was overtaken

    def test_unknown_and_finished_documents_are_left_alone(self, indexed, manager):
        import uuid

        assert services.document_process(document_id=uuid.uuid4()) is None
        document = indexed(markdown("# Done\n\nAlready indexed."), "done.md")
        services.document_delete(document=document, actor=manager)
        assert services.document_process(document_id=document.pk) is None
        document.refresh_from_db()
        assert document.status == "deleted"

    def test_tenant_keys_are_the_tenant_ids(self, acme, globex):
        from django_tenants.utils import schema_context

        with schema_context("acme"):
            assert services.tenant_key() == str(acme.pk)
        with schema_context("globex"):
            assert services.tenant_key() == str(globex.pk)


# =========================================================================================
# Delete and reprocess
# =========================================================================================
class TestDeleteAndReprocess:
    def test_delete_hides_the_document_and_removes_chunks_and_vectors(
        self, indexed, manager, celery_eager, django_capture_on_commit_callbacks
    ):
        document = indexed(doc("md/wiki.md"))
        assert vectors_of(document) == document.chunks.count() > 0

        with django_capture_on_commit_callbacks(execute=True):
            services.document_delete(document=document, actor=manager)
            assert vectors_of(document) > 0  # the vectors go after commit

        document.refresh_from_db()
        assert document.status == "deleted" and document.deleted_at is not None
        assert not document.chunks.exists()
        assert vectors_of(document) == 0
        assert document not in selectors.document_list()
        assert document in selectors.document_list(include_deleted=True)
        assert [u.quantity for u in usage(document, "storage")] == [document.file_size, -document.file_size]
        assert AuditLog.objects.filter(action="document.deleted", resource_id=str(document.pk)).exists()

        with django_capture_on_commit_callbacks() as again:
            services.document_delete(document=document, actor=manager)  # already deleted: nothing
        assert again == []
        assert len(usage(document, "storage")) == 2

    def test_the_delete_task_removes_only_that_documents_vectors(self, indexed):
        from apps.knowledge.tasks import document_vectors_delete_task

        keep = indexed(doc("md/mixed.md"))
        gone = indexed(doc("md/wiki.md"))

        document_vectors_delete_task.apply(args=[services.tenant_key(), str(gone.pk)]).get()

        assert vectors_of(gone) == 0
        assert vectors_of(keep) == keep.chunks.count() > 0

    def test_reprocess_resets_and_reindexes(self, indexed, manager, celery_eager, django_capture_on_commit_callbacks):
        document = indexed(doc("md/mixed.md"))
        ids = chunk_ids(document)

        with django_capture_on_commit_callbacks(execute=True):
            services.document_reprocess(document=document, actor=manager)
            document.refresh_from_db()
            assert (document.status, document.processing_progress, document.attempts) == ("processing", 0, 0)

        document.refresh_from_db()
        assert (document.status, document.processing_progress, document.attempts) == ("indexed", 100, 1)
        assert chunk_ids(document) == ids
        assert vectors_of(document) == len(ids)
        stages = list(document.processing_logs.order_by("started_at").values_list("stage", flat=True))
        assert stages == STAGES + STAGES[1:]
        assert AuditLog.objects.filter(action="document.reprocess_requested", resource_id=str(document.pk)).exists()

    def test_a_failed_document_can_be_reprocessed(self, in_acme, upload, process, manager):
        document = process(upload(doc("malformed/password.pdf")).document)
        assert document.status == "failed"

        document = services.document_reprocess(document=document, actor=manager)

        assert (document.status, document.error_code, document.error_message) == ("processing", "", "")

    def test_a_deleted_document_cannot_be_reprocessed(self, in_acme, upload, manager):
        document = upload(markdown("# x\n\ny"), "x.md").document
        services.document_delete(document=document, actor=manager)

        with pytest.raises(ValidationFailed) as caught:
            services.document_reprocess(document=document, actor=manager)

        assert caught.value.code == "document_deleted"

    def test_update_changes_only_the_editable_fields(self, in_acme, upload, manager):
        document = upload(markdown("# x\n\ny"), "x.md").document

        services.document_update(document=document, actor=manager, title="New", tags=["t", "t", " u "])

        document.refresh_from_db()
        assert (document.title, document.tags) == ("New", ["t", "u"])
        with pytest.raises(ValidationFailed):
            services.document_update(document=document, actor=manager, status="indexed")


# =========================================================================================
# Stale documents
# =========================================================================================
def test_stale_documents_are_requeued_or_given_up(
    in_acme, milvus, upload, settings, celery_eager, django_capture_on_commit_callbacks
):
    settings.DOCUMENT_STALE_AFTER, settings.DOCUMENT_MAX_ATTEMPTS = 60, 3
    stuck = upload(markdown("# Stuck\n\nA worker died here."), "stuck.md").document
    hopeless = upload(markdown("# Hopeless\n\nDied three times."), "hopeless.md").document
    fresh = upload(markdown("# Fresh\n\nStill being worked on."), "fresh.md").document
    long_ago = timezone.now() - timedelta(minutes=5)
    Document.objects.filter(pk=stuck.pk).update(updated_at=long_ago, attempts=1)
    Document.objects.filter(pk=hopeless.pk).update(updated_at=long_ago, attempts=3)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = services.documents_stale_requeue()

    assert result == {"requeued": 1, "failed": 1}
    assert callbacks  # the requeue ran after commit (eagerly here)
    stuck.refresh_from_db()
    assert (stuck.status, stuck.attempts) == ("indexed", 2)
    hopeless.refresh_from_db()
    assert (hopeless.status, hopeless.error_code) == ("failed", "processing_stalled")
    assert "3 times" in hopeless.error_message
    fresh.refresh_from_db()
    assert fresh.status == "processing" and fresh.attempts == 0


def test_docx_made_here_is_indexed(indexed):
    document = indexed(docx_bytes(["Alpha paragraph.", "Beta paragraph."], heading="Made here"), "made.docx")
    assert "Alpha paragraph." in document.chunks.get().content


# =========================================================================================
# Vector writes without lookups, in the background; throttled progress
# =========================================================================================
@pytest.fixture
def milvus_calls(monkeypatch) -> dict[str, list]:
    """Every query and delete sent to Milvus during the test: {"query": [filter...],
    "delete": [ids...]} (the calls still go through)."""
    from pymilvus import MilvusClient

    calls: dict[str, list] = {"query": [], "delete": []}
    real_query, real_delete = MilvusClient.query, MilvusClient.delete

    def query(self, collection_name, filter="", *args, **kwargs):  # noqa: A002 - pymilvus' name
        calls["query"].append(filter)
        return real_query(self, collection_name, filter, *args, **kwargs)

    def delete(self, collection_name, ids=None, *args, **kwargs):
        calls["delete"].extend(ids or [])
        return real_delete(self, collection_name, ids, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "query", query)
    monkeypatch.setattr(MilvusClient, "delete", delete)
    return calls


def many_chunks_markdown(sections: int = 12) -> bytes:
    body = "\n\n".join(
        f"## Part {i}\n\n" + " ".join(f"Clause {i}.{j} of the stock handbook says nothing new." for j in range(8))
        for i in range(sections)
    )
    return f"# Handbook\n\n{body}".encode()


class TestVectorWrites:
    def test_a_first_processing_asks_milvus_nothing_and_deletes_nothing(self, in_acme, milvus, upload, milvus_calls):
        document = upload(doc("md/wiki.md")).document

        document = services.document_process(document_id=document.pk)

        assert document.status == "indexed"
        assert milvus_calls == {"query": [], "delete": []}
        assert vectors_of(document) == document.chunks.count() > 0
        index = document.processing_logs.get(stage="index").details
        assert (index["stale_deleted"], index["vectors"]) == (0, document.chunks.count())

    def test_the_vectors_are_sealed_in_the_tenants_own_collection_before_the_document_is_searchable(
        self, in_acme, milvus, upload, monkeypatch, settings
    ):
        settings.MILVUS_LITE_SEAL_ROWS = 1  # the default: every document
        from pymilvus import MilvusClient

        from apps.knowledge.vectorstore import collection_name

        flushes: list[tuple[str, str, int]] = []
        real_flush = MilvusClient.flush

        def flush(self, collection_name, *args, **kwargs):
            status = Document.objects.get(pk=document.pk).status
            flushes.append((collection_name, status, DocumentChunk.objects.filter(document=document).count()))
            return real_flush(self, collection_name, *args, **kwargs)

        monkeypatch.setattr(MilvusClient, "flush", flush)
        document = upload(doc("md/wiki.md")).document

        document = services.document_process(document_id=document.pk)

        assert document.status == "indexed"
        # Once, on acme's collection, after every vector and before the swap-in (still
        # processing, no chunk rows yet: no search can map a hit to it).
        assert flushes == [(collection_name(tenant_key=services.tenant_key()), "processing", 0)]
        assert vectors_of(document) == document.chunks.count() > 0

    def test_a_rerun_with_fewer_chunks_deletes_exactly_the_surplus_by_id(
        self, indexed, process, settings, milvus_calls
    ):
        settings.CHUNK_MAX_TOKENS, settings.CHUNK_OVERLAP_TOKENS = 64, 8
        document = indexed(doc("md/wiki.md"))
        many = document.chunks.count()
        settings.CHUNK_MAX_TOKENS, settings.CHUNK_OVERLAP_TOKENS = 512, 64
        Document.objects.filter(pk=document.pk).update(status="processing")

        document = process(document)

        few = document.chunks.count()
        assert 0 < few < many
        assert milvus_calls["query"] == []  # no lookup: the ids are known
        assert sorted(milvus_calls["delete"]) == sorted(
            str(services.chunk_uuid(document.pk, i)) for i in range(few, many)
        )
        assert vectors_of(document) == few
        assert chunk_ids(document) == [str(services.chunk_uuid(document.pk, i)) for i in range(few)]

    def test_a_rerun_after_a_run_that_died_after_writing_more_chunks_removes_them(
        self, in_acme, milvus, upload, process, settings
    ):
        """The earlier run never swapped in (no chunk rows): its logged chunk count is what
        tells which vectors it may have left."""
        settings.CHUNK_MAX_TOKENS, settings.CHUNK_OVERLAP_TOKENS = 64, 8
        document = upload(doc("md/wiki.md")).document
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(services, "_document_swap_in", lambda **kwargs: (_ for _ in ()).throw(SystemExit))
            with pytest.raises(SystemExit):  # the worker died right before swapping in
                services.document_process(document_id=document.pk)
        many = document.processing_logs.get(stage="chunk").details["chunks"]
        assert vectors_of(document) == many and not document.chunks.exists()

        settings.CHUNK_MAX_TOKENS, settings.CHUNK_OVERLAP_TOKENS = 512, 64
        document = process(document)

        assert document.status == "indexed"
        assert vectors_of(document) == document.chunks.count() < many
        assert services.document_chunk_bound(document) == many  # what a delete will remove

    def test_delete_removes_the_vectors_by_id_without_a_lookup(
        self, indexed, manager, celery_eager, django_capture_on_commit_callbacks, milvus_calls
    ):
        document = indexed(doc("md/wiki.md"))
        ids = chunk_ids(document)

        with django_capture_on_commit_callbacks(execute=True):
            services.document_delete(document=document, actor=manager)

        assert milvus_calls["query"] == []
        assert sorted(milvus_calls["delete"]) == sorted(ids)
        assert vectors_of(document) == 0

    def test_the_delete_task_of_an_older_message_still_looks_the_ids_up(self, indexed):
        from apps.knowledge.tasks import document_vectors_delete_task

        document = indexed(doc("md/wiki.md"))

        document_vectors_delete_task.apply(args=[services.tenant_key(), str(document.pk)]).get()

        assert vectors_of(document) == 0

    def test_vectors_are_written_while_the_next_batch_is_embedded(self, in_acme, milvus, upload, settings, monkeypatch):
        from apps.knowledge import vectorstore
        from apps.knowledge.pipeline import embed

        settings.EMBEDDING_BATCH_SIZE, settings.CHUNK_MAX_TOKENS, settings.CHUNK_OVERLAP_TOKENS = 2, 64, 8
        events: list[str] = []
        real_upsert, real_embed = vectorstore.vectors_upsert, embed.LocalEmbedder.embed

        def upsert(**kwargs):
            events.append("upsert")
            return real_upsert(**kwargs)

        def embedding(self, texts):
            events.append("embed")
            return real_embed(self, texts)

        monkeypatch.setattr(vectorstore, "vectors_upsert", upsert)
        monkeypatch.setattr(embed.LocalEmbedder, "embed", embedding)
        document = upload(many_chunks_markdown(), "handbook.md").document

        document = services.document_process(document_id=document.pk)

        assert document.status == "indexed"
        assert vectors_of(document) == document.chunks.count() > 6
        assert events.index("upsert") < len(events) - 1 - events[::-1].index("embed")  # before the last batch
        index = document.processing_logs.get(stage="index").details
        assert index["vectors"] == document.chunks.count() and index["upserts"] >= 2

    @pytest.mark.parametrize("transient", [True, False])
    def test_an_upsert_error_in_the_writer_thread_fails_or_retries_the_document(
        self, in_acme, milvus, upload, settings, monkeypatch, transient
    ):
        from apps.knowledge import vectorstore
        from apps.knowledge.pipeline import embed

        settings.EMBEDDING_BATCH_SIZE, settings.CHUNK_MAX_TOKENS, settings.CHUNK_OVERLAP_TOKENS = 2, 64, 8
        real_upsert, real_embed = vectorstore.vectors_upsert, embed.embed_texts
        upserts: list[int] = []
        batches: list[int] = []

        def failing_upsert(**kwargs):
            upserts.append(len(kwargs["rows"]))
            if len(upserts) == 2:
                raise VectorStoreError("Milvus went away", transient=transient)
            return real_upsert(**kwargs)

        def counted_embed(texts, **kwargs):
            on_batch = kwargs.pop("on_batch")
            return real_embed(texts, on_batch=lambda start, v: (batches.append(start), on_batch(start, v)), **kwargs)

        monkeypatch.setattr(vectorstore, "vectors_upsert", failing_upsert)
        monkeypatch.setattr(embed, "embed_texts", counted_embed)
        document = upload(many_chunks_markdown(30), "handbook.md").document

        if transient:
            with pytest.raises(VectorStoreError):
                services.document_process(document_id=document.pk)
            document.refresh_from_db()
            assert (document.status, document.attempts) == ("processing", 1)  # the task retries it
        else:
            document = services.document_process(document_id=document.pk)
            assert (document.status, document.error_code) == ("failed", "vector_store_unavailable")
            assert "Milvus went away" in document.error_message
        assert not document.chunks.exists()
        written = len(upserts)
        chunks = document.processing_logs.get(stage="chunk").details["chunks"]
        assert len(batches) * settings.EMBEDDING_BATCH_SIZE < chunks  # embedding stopped early
        failed = document.processing_logs.filter(status="failed").get()
        assert failed.details["error_code"] == "vector_store_unavailable"
        import time

        time.sleep(0.2)
        assert len(upserts) == written  # nothing written after document_process returned

        if transient:  # the retry indexes it all
            monkeypatch.setattr(vectorstore, "vectors_upsert", real_upsert)
            document = services.document_process(document_id=document.pk)
            assert document.status == "indexed" and document.attempts == 2
            assert vectors_of(document) == document.chunks.count() == chunks

    def test_progress_is_throttled_and_ends_at_100(self, in_acme, milvus, upload, settings, monkeypatch):
        import time

        settings.EMBEDDING_BATCH_SIZE, settings.CHUNK_MAX_TOKENS, settings.CHUNK_OVERLAP_TOKENS = 2, 64, 8
        monkeypatch.setattr(services, "PROGRESS_INTERVAL", 0.2)
        pushed: list[tuple[float, str, int]] = []
        written: list[float] = []
        monkeypatch.setattr(
            services,
            "_progress_push",
            lambda d: pushed.append((time.monotonic(), d.status, d.processing_progress)),
        )
        real_set = services._Progress.set

        def recording_set(self, percent):
            before = self.last
            real_set(self, percent)
            if self.last != before:
                # The instant the throttle took the write, not after it: the UPDATE and the push
                # take a varying time, and two writes 0.2 s apart may finish closer than that.
                written.append(self.written_at)

        monkeypatch.setattr(services._Progress, "set", recording_set)
        # Each batch takes at least 20 ms, so processing outlasts the interval whatever the
        # machine (the figures below are about the throttle, not about this CPU).
        from apps.knowledge.pipeline.embed import LocalEmbedder

        real_embed = LocalEmbedder.embed

        def slow_embed(self, texts):
            time.sleep(0.02)
            return real_embed(self, texts)

        monkeypatch.setattr(LocalEmbedder, "embed", slow_embed)
        document = upload(many_chunks_markdown(30), "handbook.md").document

        started = time.monotonic()
        document = services.document_process(document_id=document.pk)
        took = time.monotonic() - started

        assert document.status == "indexed"
        document.refresh_from_db()
        assert document.processing_progress == 100
        assert (pushed[-1][1], pushed[-1][2]) == ("indexed", 100)
        assert [p for _, _, p in pushed] == sorted(p for _, _, p in pushed)
        assert all(later - earlier >= 0.2 for earlier, later in zip(written, written[1:], strict=False))
        assert len(written) <= took / 0.2 + 1
        assert len(written) >= 2  # it still moves while the document is processed


class TestWriteLock:
    def test_the_lock_is_renewed_while_held_and_freed_soon_after_its_holder_died(self, settings, monkeypatch):
        import threading
        import time

        from django_redis import get_redis_connection

        from apps.knowledge import vectorstore

        monkeypatch.setattr(vectorstore, "LOCK_LEASE", 0.6)
        settings.MILVUS_TIMEOUT = 0.25  # waiters give up after 1 s
        held = threading.Event()
        release = threading.Event()

        def holder():
            with vectorstore.vector_write_lock():
                held.set()
                release.wait(5)

        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert held.wait(5)
            started = time.monotonic()
            with pytest.raises(VectorStoreError, match="write lock"), vectorstore.vector_write_lock():
                pass  # held 1 s beyond its 0.6 s lease: renewed
            assert time.monotonic() - started >= 0.9
        finally:
            release.set()
            thread.join()
        with vectorstore.vector_write_lock():
            pass  # released

        # a holder that died (no release, no renewal): the key expires with its lease
        get_redis_connection("default").set("zhida:milvus:write", "dead-worker", px=600)
        started = time.monotonic()
        with vectorstore.vector_write_lock():
            assert time.monotonic() - started < 1.0
