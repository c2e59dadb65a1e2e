"""The documents API (/api/v1/documents...) on acme.localhost: multi-file upload with its
refusals, list filters, detail, metadata changes, delete, reprocess and chunks; who may do
what; and, on every theme, globex trying the same thing on an acme document and failing
with acme's document, chunks, vectors and audit trail unchanged.

A request switches the connection to its tenant's schema (the tenant middleware), so the
ORM checks here name their schema explicitly."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.knowledge import services
from apps.knowledge.models import Document
from apps.knowledge.tests.conftest import acme_state, as_upload, assert_error, doc, tenant_key_of
from apps.knowledge.vectorstore import vectors_count
from conftest import tenant_host

BASE = "/api/v1/documents"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


def md(name: str, text: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, text.encode(), content_type="text/markdown")


def post_files(client: APIClient, *files, **fields):
    return client.post(BASE, {"files": list(files), **fields}, format="multipart")


def in_acme_db(function, *args, **kwargs):
    with schema_context("acme"):
        return function(*args, **kwargs)


def vectors_of(document_id, schema: str = "acme") -> int:
    return vectors_count(tenant_key=tenant_key_of(schema), document_id=str(document_id))


def process(document_id) -> Document:
    with schema_context("acme"):
        services.document_process(document_id=document_id)
        return Document.objects.get(pk=document_id)


@pytest.fixture
def api(acme, api_for, manager) -> APIClient:
    """acme's knowledge manager on acme.localhost."""
    return api_for(acme, manager)


@pytest.fixture
def globex_api(globex, api_for, seed_user) -> APIClient:
    """globex's knowledge manager on globex.localhost: full docs rights, in globex."""
    return api_for(globex, seed_user(globex, "knowledge_manager"))


@pytest.fixture
def acme_document(indexed):
    """An indexed acme document (created before any request switches the schema)."""
    with schema_context("acme"):
        return indexed(doc("md/大模型推理优化策略.md"), category="llm", tags=["inference"])


# =========================================================================================
# Upload
# =========================================================================================
class TestUpload:
    def test_several_files_at_once(self, api, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks() as callbacks:
            response = post_files(
                api,
                as_upload(doc("md/wiki.md")),
                as_upload(doc("csv/stanley-cups.csv")),
                category="sport",
                tags=["a", "b"],
            )

        assert response.status_code == 201, response.content
        body = response.json()
        assert body["errors"] == []
        assert [r["duplicate"] for r in body["results"]] == [False, False]
        documents = [r["document"] for r in body["results"]]
        assert [d["original_name"] for d in documents] == ["wiki.md", "stanley-cups.csv"]
        assert [d["file_type"] for d in documents] == ["md", "csv"]
        for document in documents:
            assert (document["status"], document["progress"], document["version"]) == ("processing", 0, 1)
            assert (document["category"], document["tags"]) == ("sport", ["a", "b"])
            assert document["uploaded_by"] == "knowledge_manager@acme.test"
        assert len(callbacks) >= 2  # one processing task per new document, after commit
        with schema_context("acme"):
            assert {str(pk) for pk in Document.objects.values_list("pk", flat=True)} == {d["id"] for d in documents}

    def test_the_same_bytes_again_return_the_existing_document(self, api, django_capture_on_commit_callbacks):
        first = post_files(api, as_upload(doc("md/mixed.md"))).json()["results"][0]["document"]

        with django_capture_on_commit_callbacks() as callbacks:
            response = post_files(api, as_upload(doc("md/mixed.md").read_bytes(), "renamed.md"))

        assert response.status_code == 200, response.content
        [result] = response.json()["results"]
        assert result["duplicate"] is True
        assert result["document"]["id"] == first["id"]
        assert callbacks == []  # nothing is processed again
        with schema_context("acme"):
            assert Document.objects.count() == 1

    def test_a_changed_file_under_the_same_name_is_a_new_version(self, api, milvus):
        old = post_files(api, md("faq.md", "# FAQ\n\nOpening hours: 9 to 5.")).json()["results"][0]["document"]
        assert process(old["id"]).status == "indexed"

        response = post_files(api, md("faq.md", "# FAQ\n\nOpening hours: 8 to 6.\n\n## Parking\n\nFree."))

        assert response.status_code == 201, response.content
        new = response.json()["results"][0]["document"]
        assert response.json()["results"][0]["duplicate"] is False
        assert (new["version"], new["replaces"]) == (2, old["id"])
        new_doc = process(new["id"])
        assert new_doc.status == "indexed"
        assert_error(api.get(f"{BASE}/{old['id']}"), 404, "document_not_found")  # superseded
        with schema_context("acme"):
            assert Document.objects.get(pk=old["id"]).status == "deleted"
            assert not Document.objects.get(pk=old["id"]).chunks.exists()
        assert vectors_of(old["id"]) == 0
        detail = api.get(f"{BASE}/{new['id']}").json()
        assert detail["chunk_count"] == vectors_of(new["id"]) > 0
        assert [d["id"] for d in api.get(BASE).json()["results"]] == [new["id"]]

    def test_an_empty_file_is_400(self, api):
        error = assert_error(post_files(api, SimpleUploadedFile("empty.md", b"")), 400, "empty_file")
        assert error["details"] == {"file": "empty.md"}

    def test_a_file_over_the_limit_is_413(self, api, settings):
        settings.DOCUMENT_MAX_SIZE = 100

        error = assert_error(post_files(api, md("long.md", "x" * 101)), 413, "file_too_large")

        assert error["details"] == {"max_bytes": 100}
        with schema_context("acme"):
            assert not Document.objects.exists()

    @pytest.mark.parametrize(
        "upload",
        [
            pytest.param(lambda: SimpleUploadedFile("photo.png", PNG, content_type="image/png"), id="png"),
            pytest.param(
                lambda: SimpleUploadedFile(
                    "old.doc",
                    doc("malformed/password_protected.xlsx")
                    .read_bytes()
                    .replace("EncryptionInfo".encode("utf-16-le"), "EncryptionInfX".encode("utf-16-le")),
                ),
                id="legacy-doc",
            ),
        ],
    )
    def test_an_unsupported_type_is_415(self, api, upload):
        file = upload()
        error = assert_error(post_files(api, file), 415, "unsupported_file_type")
        assert error["details"]["file"] == file.name
        with schema_context("acme"):
            assert not Document.objects.exists()

    def test_an_encrypted_office_file_is_400_encrypted(self, api):
        error = assert_error(post_files(api, as_upload(doc("malformed/password_protected.xlsx"))), 400, "encrypted")
        assert "password-protected" in error["message"]

    def test_one_bad_file_among_several_is_reported_and_the_others_accepted(self, api, settings):
        settings.DOCUMENT_MAX_SIZE = 2000
        response = post_files(
            api,
            md("good.md", "# Good\n\nAccepted."),
            SimpleUploadedFile("empty.txt", b""),
            SimpleUploadedFile("photo.png", PNG),
            md("huge.md", "y" * 2001),
            md("also-good.md", "# Also good\n\nAccepted too."),
        )

        assert response.status_code == 201, response.content
        body = response.json()
        assert [r["document"]["original_name"] for r in body["results"]] == ["good.md", "also-good.md"]
        assert [(e["file"], e["error"]["code"]) for e in body["errors"]] == [
            ("empty.txt", "empty_file"),
            ("photo.png", "unsupported_file_type"),
            ("huge.md", "file_too_large"),
        ]
        assert all(e["error"]["message"] for e in body["errors"])
        with schema_context("acme"):
            assert sorted(Document.objects.values_list("original_name", flat=True)) == ["also-good.md", "good.md"]

    def test_no_files_is_a_validation_error(self, api):
        assert_error(api.post(BASE, {"category": "x"}, format="multipart"), 400, "validation_error")

    def test_an_api_key_with_the_knowledge_manager_role_can_upload(self, acme, api_for):
        from apps.accounts.services import api_key_create

        with schema_context("acme"):
            issued = api_key_create(name="ingest bot", roles=["knowledge_manager"], actor=None)

        response = post_files(api_for(acme, api_key=issued.key), md("bot.md", "# Bot\n\nUploaded by a key."))

        assert response.status_code == 201, response.content
        document = response.json()["results"][0]["document"]
        assert "ingest bot" in document["uploaded_by"]
        with schema_context("acme"):
            assert Document.objects.get(pk=document["id"]).uploaded_by is None


# =========================================================================================
# Read, change, delete, reprocess
# =========================================================================================
class TestDocuments:
    def test_list_filters(self, api, upload):
        with schema_context("acme"):
            a = upload(doc("md/wiki.md"), category="wiki", tags=["animals", "birds"]).document
            b = upload(doc("csv/stanley-cups.csv"), category="sport", tags=["hockey"]).document
            c = upload(doc("md/codeblock.md"), category="wiki", tags=["code"]).document
            Document.objects.filter(pk=b.pk).update(status="indexed")
            Document.objects.filter(pk=c.pk).update(status="failed")

        def ids(query: str = "") -> set[str]:
            response = api.get(f"{BASE}{query}")
            assert response.status_code == 200, response.content
            return {d["id"] for d in response.json()["results"]}

        a, b, c = str(a.pk), str(b.pk), str(c.pk)
        assert ids() == {a, b, c}
        assert ids("?status=indexed") == {b}
        assert ids("?status=failed") == {c}
        assert ids("?category=wiki") == {a, c}
        assert ids("?file_type=csv") == {b}
        assert ids("?tags=birds,hockey") == {a, b}
        assert ids("?tags=animals,birds&tags_mode=all") == {a}
        assert ids("?tags=animals,hockey&tags_mode=all") == set()
        assert ids("?search=STANLEY") == {b}
        body = api.get(BASE).json()
        assert body["count"] == 3 and "chunk_count" in body["results"][0]

    def test_list_queries_do_not_grow_with_the_documents(self, api, upload):
        def queries() -> int:
            from django.db import connection

            with CaptureQueriesContext(connection) as captured:
                assert api.get(BASE).status_code == 200
            return len(captured)

        with schema_context("acme"):
            for i in range(2):
                upload(f"# Doc {i}\n\nText {i}.".encode(), f"doc{i}.md")
        queries()  # the first request also fills per-process caches
        few = queries()
        with schema_context("acme"):
            for i in range(2, 8):
                upload(f"# Doc {i}\n\nText {i}.".encode(), f"doc{i}.md")
        assert queries() == few

    def test_detail_has_the_processing_logs(self, api, acme_document):
        body = api.get(f"{BASE}/{acme_document.pk}").json()

        assert (body["status"], body["progress"], body["category"]) == ("indexed", 100, "llm")
        assert body["chunk_count"] == vectors_of(acme_document.pk) > 0
        assert [log["stage"] for log in body["processing_logs"]] == ["upload", "extract", "chunk", "embed", "index"]
        assert all(log["status"] == "completed" and "seconds" in log["details"] for log in body["processing_logs"])

    def test_chunks_in_order_with_their_metadata(self, api, acme_document):
        body = api.get(f"{BASE}/{acme_document.pk}/chunks").json()

        assert body["count"] == acme_document.chunks.count()
        assert [c["chunk_index"] for c in body["results"]] == list(range(body["count"]))
        assert "PagedAttention" in " ".join(c["content"] for c in body["results"])
        assert body["results"][0]["metadata"]["heading_path"][0] == "大模型推理优化策略"

    def test_patch_changes_metadata_only(self, api, acme_document):
        response = api.patch(
            f"{BASE}/{acme_document.pk}",
            {"title": "推理优化", "tags": ["llm", "llm"], "status": "deleted"},
            format="json",
        )

        assert response.status_code == 200, response.content
        assert (response.json()["title"], response.json()["tags"], response.json()["status"]) == (
            "推理优化",
            ["llm"],
            "indexed",
        )
        assert_error(
            api.patch(f"{BASE}/{acme_document.pk}", {"tags": "x" * 200}, format="json"), 400, "validation_error"
        )

    def test_delete_removes_it_from_the_list_and_its_vectors(
        self, api, acme_document, celery_eager, django_capture_on_commit_callbacks
    ):
        url = f"{BASE}/{acme_document.pk}"
        with django_capture_on_commit_callbacks(execute=True):
            response = api.delete(url)

        assert response.status_code == 204
        assert str(acme_document.pk) not in {d["id"] for d in api.get(BASE).json()["results"]}
        assert_error(api.get(url), 404, "document_not_found")
        assert_error(api.get(f"{url}/chunks"), 404, "document_not_found")
        assert_error(api.delete(url), 404, "document_not_found")
        assert vectors_of(acme_document.pk) == 0
        with schema_context("acme"):
            assert Document.objects.get(pk=acme_document.pk).status == "deleted"

    def test_reprocess_reindexes(self, api, acme_document, celery_eager, django_capture_on_commit_callbacks):
        before = acme_state(acme_document.pk)
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(f"{BASE}/{acme_document.pk}/reprocess")

        assert response.status_code == 202, response.content
        assert (response.json()["status"], response.json()["progress"]) == ("processing", 0)
        after = acme_state(acme_document.pk)
        assert (after["status"], after["processing_progress"], after["attempts"]) == ("indexed", 100, 1)
        assert after["chunks"] == before["chunks"] and after["vectors"] == len(after["chunks"])

    def test_unknown_document_is_404(self, api):
        missing = "00000000-0000-0000-0000-000000000000"
        for method, url in [
            ("get", f"{BASE}/{missing}"),
            ("patch", f"{BASE}/{missing}"),
            ("delete", f"{BASE}/{missing}"),
            ("post", f"{BASE}/{missing}/reprocess"),
            ("get", f"{BASE}/{missing}/chunks"),
        ]:
            assert_error(getattr(api, method)(url), 404, "document_not_found")


# =========================================================================================
# Who may do what
# =========================================================================================
class TestPermissions:
    @pytest.mark.parametrize("role", ["agent", "user"])
    def test_roles_without_docs_rights_get_403(self, acme, api_for, seed_user, acme_document, role):
        client = api_for(acme, seed_user(acme, role))
        before = acme_state(acme_document.pk)
        url = f"{BASE}/{acme_document.pk}"

        assert_error(client.get(BASE), 403, "permission_denied")
        assert_error(post_files(client, md("no.md", "# No\n\nNot allowed.")), 403, "permission_denied")
        assert_error(client.get(url), 403, "permission_denied")
        assert_error(client.patch(url, {"title": "x"}, format="json"), 403, "permission_denied")
        assert_error(client.delete(url), 403, "permission_denied")
        assert_error(client.post(f"{url}/reprocess"), 403, "permission_denied")
        assert_error(client.get(f"{url}/chunks"), 403, "permission_denied")
        assert acme_state(acme_document.pk) == before
        with schema_context("acme"):
            assert Document.objects.count() == 1

    def test_anonymous_gets_401(self, acme):
        assert_error(APIClient(HTTP_HOST=tenant_host(acme)).get(BASE), 401, "not_authenticated")

    def test_an_api_key_with_an_agent_role_cannot_upload(self, acme, api_for):
        from apps.accounts.services import api_key_create

        with schema_context("acme"):
            issued = api_key_create(name="chat bot", roles=["agent"], actor=None)

        client = api_for(acme, api_key=issued.key)
        assert_error(post_files(client, md("bot.md", "# x\n\ny")), 403, "permission_denied")
        assert_error(client.get(BASE), 403, "permission_denied")


# =========================================================================================
# Tenant isolation: globex against an acme document
# =========================================================================================
class TestIsolation:
    def test_globex_cannot_list_an_acme_document(self, globex_api, acme_document):
        before = acme_state(acme_document.pk)
        response = globex_api.get(BASE)
        assert response.status_code == 200
        assert response.json()["results"] == []
        assert globex_api.get(f"{BASE}?search=推理").json()["results"] == []
        assert acme_state(acme_document.pk) == before

    @pytest.mark.parametrize(
        ("method", "suffix", "data"),
        [
            ("get", "", None),
            ("patch", "", {"title": "pwned", "tags": ["x"]}),
            ("delete", "", None),
            ("post", "/reprocess", None),
            ("get", "/chunks", None),
        ],
        ids=["retrieve", "patch", "delete", "reprocess", "chunks"],
    )
    def test_globex_cannot_touch_an_acme_document(
        self, globex_api, acme_document, celery_eager, django_capture_on_commit_callbacks, method, suffix, data
    ):
        before = acme_state(acme_document.pk)
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            response = getattr(globex_api, method)(f"{BASE}/{acme_document.pk}{suffix}", data, format="json")

        assert_error(response, 404, "document_not_found")
        assert callbacks == []
        assert acme_state(acme_document.pk) == before

    def test_a_globex_api_key_is_unknown_on_acme(self, acme, globex, api_for, acme_document):
        from apps.accounts.services import api_key_create

        with schema_context("globex"):
            issued = api_key_create(name="globex bot", roles=["knowledge_manager"], actor=None)
        before = acme_state(acme_document.pk)
        client = api_for(acme, api_key=issued.key)

        assert_error(client.get(BASE), 401, "authentication_failed")
        assert_error(client.get(f"{BASE}/{acme_document.pk}"), 401, "authentication_failed")
        assert_error(client.delete(f"{BASE}/{acme_document.pk}"), 401, "authentication_failed")
        assert_error(post_files(client, md("in.md", "# In\n\nSneaking in.")), 401, "authentication_failed")
        assert acme_state(acme_document.pk) == before
        with schema_context("acme"):
            assert Document.objects.count() == 1

    def test_acme_vectors_carry_acme_key_and_live_in_acme_collection(self, acme_document, milvus):
        from apps.knowledge.vectorstore import _client, collection_name

        acme_key, globex_key = tenant_key_of("acme"), tenant_key_of("globex")
        document_id = str(acme_document.pk)
        chunks = acme_document.chunks.count()
        assert vectors_of(document_id, "acme") == chunks > 0
        assert vectors_of(document_id, "globex") == 0

        client = _client()
        acme, globex = collection_name(tenant_key=acme_key), collection_name(tenant_key=globex_key)
        assert acme != globex  # Lite: one collection per tenant
        rows = client.query(acme, filter=f'document_id == "{document_id}"', output_fields=["tenant_id"])
        assert len(rows) == chunks and {r["tenant_id"] for r in rows} == {acme_key}
        if client.has_collection(globex):
            assert client.query(globex, filter=f'document_id == "{document_id}"', output_fields=["id"]) == []
