"""The document admin on acme.localhost for acme's knowledge manager (a real session): the
list with progress bars and filters, multi-file upload, the reprocess and delete actions
(through the services), the detail page with logs and chunks, the polling endpoint; and
the roles that may not enter."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django_tenants.utils import schema_context

from apps.audit.models import AuditLog
from apps.knowledge.models import Document
from apps.knowledge.tests.conftest import as_upload, doc, tenant_key_of
from apps.knowledge.vectorstore import vectors_count

CHANGELIST = "/admin/knowledge/document/"
UPLOAD = f"{CHANGELIST}upload/"
PROGRESS = f"{CHANGELIST}progress/"


@pytest.fixture
def admin_client(acme, client_for, manager):
    return client_for(acme, manager)


@pytest.fixture
def documents(in_acme, upload, process, milvus):
    """Three acme documents: an indexed markdown guide, a failed (encrypted) PDF and a CSV
    still processing."""
    guide = process(upload(doc("md/wiki.md"), category="guides").document)
    locked = process(upload(doc("malformed/password.pdf"), category="legal").document)
    table = upload(doc("csv/stanley-cups.csv"), category="sport").document
    assert (guide.status, locked.status, table.status) == ("indexed", "failed", "processing")
    return {"guide": guide, "locked": locked, "table": table}


def listed(response) -> set[str]:
    assert response.status_code == 200, response.content[:500]
    return {str(d.pk) for d in response.context["cl"].result_list}


def test_the_list_shows_progress_bars(admin_client, documents):
    response = admin_client.get(CHANGELIST)

    assert listed(response) == {str(d.pk) for d in documents.values()}
    page = response.content.decode()
    for document in documents.values():
        assert f'data-document="{document.pk}"' in page
    assert 'style="width:100%"' in page  # the indexed one
    assert 'data-status="processing"' in page
    assert "knowledge/admin_progress.js" in page
    assert UPLOAD in page and PROGRESS in page  # the upload link and the polling URL


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status__exact=indexed", {"guide"}),
        ("status__exact=failed", {"locked"}),
        ("status__exact=processing", {"table"}),
        ("category=guides", {"guide"}),
        ("category=sport", {"table"}),
        ("file_type=pdf", {"locked"}),
        ("file_type=md", {"guide"}),
        ("q=stanley", {"table"}),
    ],
)
def test_filters(admin_client, documents, query, expected):
    response = admin_client.get(f"{CHANGELIST}?{query}")

    assert listed(response) == {str(documents[name].pk) for name in expected}


def test_the_upload_page_accepts_several_files(admin_client, in_acme):
    assert admin_client.get(UPLOAD).status_code == 200

    response = admin_client.post(
        UPLOAD,
        {
            "files": [
                as_upload(doc("md/mixed.md")),
                as_upload(doc("html/table_06.html")),
                SimpleUploadedFile("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100),
            ],
            "category": "manuals",
            "tags": "a, b,,",
        },
    )

    assert response.status_code == 302 and response["Location"] == CHANGELIST
    with schema_context("acme"):
        documents = {d.original_name: d for d in Document.objects.all()}
    assert set(documents) == {"mixed.md", "table_06.html"}
    assert {(d.status, d.category, tuple(d.tags)) for d in documents.values()} == {
        ("processing", "manuals", ("a", "b"))
    }
    notes = [str(m) for m in get_messages(response.wsgi_request)]
    assert any(n.startswith("photo.png:") for n in notes)
    assert any(n.startswith("mixed.md:") for n in notes)


def test_uploading_the_same_file_twice_warns(admin_client, in_acme):
    admin_client.post(UPLOAD, {"files": [as_upload(doc("md/mixed.md"))]})
    response = admin_client.post(UPLOAD, {"files": [as_upload(doc("md/mixed.md"))]})

    with schema_context("acme"):
        assert Document.objects.count() == 1
    assert any("already in the knowledge base" in str(m) for m in get_messages(response.wsgi_request))


def test_the_add_button_leads_to_the_upload_page(admin_client, in_acme):
    response = admin_client.get(f"{CHANGELIST}add/")
    assert response.status_code == 302 and response["Location"] == UPLOAD


def test_the_reprocess_action(admin_client, documents, django_capture_on_commit_callbacks):
    ids = [str(documents["guide"].pk), str(documents["locked"].pk)]

    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(CHANGELIST, {"action": "reprocess", ACTION_CHECKBOX_NAME: ids, "index": 0})

    assert response.status_code == 302
    assert len(callbacks) >= 2  # one processing task each, after commit
    with schema_context("acme"):
        rows = Document.objects.filter(pk__in=ids)
        assert {(d.status, d.processing_progress, d.error_code) for d in rows} == {("processing", 0, "")}
        assert AuditLog.objects.filter(action="document.reprocess_requested", resource_id__in=ids).count() == 2


def test_the_delete_action(admin_client, documents, celery_eager, django_capture_on_commit_callbacks):
    guide = documents["guide"]
    key = tenant_key_of("acme")
    assert vectors_count(tenant_key=key, document_id=str(guide.pk)) > 0

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            CHANGELIST, {"action": "soft_delete", ACTION_CHECKBOX_NAME: [str(guide.pk)], "index": 0}
        )

    assert response.status_code == 302
    with schema_context("acme"):
        guide.refresh_from_db()
        assert guide.status == "deleted" and not guide.chunks.exists()
        assert AuditLog.objects.filter(action="document.deleted", resource_id=str(guide.pk)).exists()
    assert vectors_count(tenant_key=key, document_id=str(guide.pk)) == 0
    assert str(guide.pk) not in listed(admin_client.get(CHANGELIST))


def test_djangos_own_bulk_delete_is_not_offered(admin_client, documents):
    actions = dict(admin_client.get(CHANGELIST).context["action_form"].fields["action"].choices)
    assert "delete_selected" not in actions
    assert {"reprocess", "soft_delete"} <= set(actions)


def test_the_detail_page_shows_logs_and_chunks(admin_client, documents):
    guide = documents["guide"]

    response = admin_client.get(f"{CHANGELIST}{guide.pk}/change/")

    assert response.status_code == 200
    page = response.content.decode()
    stages = re.findall(r'<td class="field-stage">\s*<p>(\w+)</p>', page)
    assert stages == ["upload", "extract", "chunk", "embed", "index"]
    with schema_context("acme"):
        chunks = guide.chunks.count()
    assert len(re.findall(r'<td class="field-content">', page)) == chunks > 0
    assert "International Business Machines Corporation (using the trademark IBM)" in page
    assert re.search(r'<td class="field-location">\s*<p>IBM</p>', page)  # the heading path


def test_saving_the_detail_page_goes_through_the_service(admin_client, documents):
    guide = documents["guide"]
    response = admin_client.post(
        f"{CHANGELIST}{guide.pk}/change/",
        {
            "title": "Ducks",
            "category": "animals",
            "tags": "birds,water",
            "language": "en",
            **{f"{p}-{k}": v for p in ("processing_logs", "chunks") for k, v in _inline_management(p, guide).items()},
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    with schema_context("acme"):
        guide.refresh_from_db()
        assert (guide.title, guide.category, guide.tags, guide.language) == (
            "Ducks",
            "animals",
            ["birds", "water"],
            "en",
        )
        assert AuditLog.objects.filter(action="document.updated", resource_id=str(guide.pk)).exists()


def _inline_management(prefix: str, document) -> dict[str, str]:
    with schema_context("acme"):
        total = (document.processing_logs if prefix == "processing_logs" else document.chunks).count()
    return {"TOTAL_FORMS": str(total), "INITIAL_FORMS": str(total), "MIN_NUM_FORMS": "0", "MAX_NUM_FORMS": "1000"}


def test_the_polling_endpoint(admin_client, documents):
    guide, table = documents["guide"], documents["table"]

    response = admin_client.get(f"{PROGRESS}?id={guide.pk}&id={table.pk}&id=not-a-uuid")

    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    rows = {row["id"]: row for row in response.json()["documents"]}
    assert rows[str(guide.pk)]["status"] == "indexed" and rows[str(guide.pk)]["processing_progress"] == 100
    assert rows[str(table.pk)]["status"] == "processing"
    assert admin_client.get(f"{PROGRESS}?id=not-a-uuid").json() == {"documents": []}
    assert admin_client.get(PROGRESS).json() == {"documents": []}


def test_the_polling_endpoint_shows_nothing_of_another_tenant(globex, client_for, seed_user, documents):
    globex_admin = client_for(globex, seed_user(globex, "knowledge_manager"))

    response = globex_admin.get(f"{PROGRESS}?id={documents['guide'].pk}")

    assert response.status_code == 200 and response.json() == {"documents": []}
    assert globex_admin.get(f"{CHANGELIST}{documents['guide'].pk}/change/").status_code in (302, 404)


@pytest.mark.parametrize("role", ["agent", "user"])
def test_roles_without_docs_rights_cannot_reach_the_document_admin(acme, client_for, seed_user, documents, role):
    client = client_for(acme, seed_user(acme, role))

    for url in (
        CHANGELIST,
        UPLOAD,
        f"{PROGRESS}?id={documents['guide'].pk}",
        f"{CHANGELIST}{documents['guide'].pk}/change/",
    ):
        response = client.get(url)
        assert response.status_code in (302, 403), url
        if response.status_code == 302:
            assert "/admin/login/" in response["Location"]
    response = client.post(UPLOAD, {"files": [as_upload(doc("md/mixed.md"))]})
    assert response.status_code in (302, 403)
    with schema_context("acme"):
        assert not Document.objects.filter(original_name="mixed.md").exists()


def test_anonymous_is_sent_to_the_login(acme, client_for, in_acme):
    response = client_for(acme).get(CHANGELIST)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


# --------------------------------------------------------------------------------------
# The original file
# --------------------------------------------------------------------------------------
def test_an_uploaded_html_file_opens_sandboxed(admin_client, in_acme, upload):
    """Uploaded HTML must never run script on the tenant's origin, where it would ride the
    knowledge manager's admin session."""
    page = b"<html><body><p>Returns policy</p><script>fetch('/admin/')</script></body></html>"
    document = upload(page, "policy.html").document

    response = admin_client.get(f"{CHANGELIST}{document.pk}/file/")

    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("inline")
    assert response["Content-Security-Policy"].startswith("sandbox")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert b"".join(response.streaming_content) == page


def test_a_pdf_opens_unsandboxed_for_the_browsers_viewer(admin_client, in_acme, upload):
    document = upload(doc("pdf/embedded-images-tables.pdf")).document

    response = admin_client.get(f"{CHANGELIST}{document.pk}/file/")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert "Content-Security-Policy" not in response


def test_another_tenants_file_is_not_found(globex, client_for, seed_user, in_acme, upload):
    document = upload(b"acme only", "secret.txt").document
    globex_admin = client_for(globex, seed_user(globex, "knowledge_manager"))

    response = globex_admin.get(f"{CHANGELIST}{document.pk}/file/")

    assert response.status_code == 404
