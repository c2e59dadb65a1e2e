"""The agent console's Django side (apps/chat/console.py): sign-in, who may open it, the
language switch, the JavaScript catalog and the original-document view, on each tenant's
own host. The page's behaviour in a real browser: test_console_browser.py."""

from __future__ import annotations

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django_tenants.utils import schema_context

from conftest import SEED_PASSWORD, SYSTEM_ROLE_NAMES, seed_email

CONSOLE = "/console/"
LOGIN = "/console/login/"
PDF = (
    b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
)


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def user_with_role(acme):
    """``user_with_role(permissions)`` → an acme user whose only role grants ``permissions``
    (rolled back with the test)."""
    from apps.accounts.services import role_create, user_create

    def make(permissions: list[str], email: str = "custom@acme.test"):
        name = f"custom-{uuid.uuid4().hex[:8]}"
        with schema_context("acme"):
            role_create(name=name, display_name="Custom", permissions=permissions, actor=None)
            return user_create(email=email, password=SEED_PASSWORD, roles=[name])

    return make


def logged_in(tenant, user) -> Client:
    client = Client(HTTP_HOST=f"{tenant.schema_name}.localhost")
    with schema_context(tenant.schema_name):
        client.force_login(user)
    return client


@pytest.fixture
def acme_document(acme, seed_user):
    """``acme_document(content, name)`` → a stored (not processed) acme document."""
    from apps.knowledge.services import document_upload

    def make(content: bytes = PDF, name: str = "handbook.pdf"):
        with schema_context("acme"):
            return document_upload(
                actor=seed_user(acme, "knowledge_manager"),
                file=SimpleUploadedFile(name, content),
                original_name=name,
            ).document

    return make


def file_url(document) -> str:
    return f"/console/documents/{document.pk}/file/"


# --------------------------------------------------------------------------------------
# Getting in
# --------------------------------------------------------------------------------------
def test_root_redirects_to_the_console(acme, client_for):
    response = client_for(acme).get("/")

    assert response.status_code == 302
    assert response["Location"] == CONSOLE


def test_anonymous_visitor_is_sent_to_the_login_page(acme, client_for):
    response = client_for(acme).get(CONSOLE)

    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next={CONSOLE}"


@pytest.mark.parametrize(
    ("language", "heading", "label"),
    [("en", "Sign in to the agent console", "Password"), ("zh-hans", "登录坐席控制台", "密码")],
)
def test_login_page_speaks_the_visitors_language(acme, client_for, language, heading, label):
    response = client_for(acme).get(LOGIN, HTTP_ACCEPT_LANGUAGE=language)

    assert response.status_code == 200
    html = response.content.decode()
    assert heading in html
    assert label in html
    assert 'name="username"' in html and 'name="password"' in html
    assert f'<html lang="{language}">' in html


def test_agent_signs_in_with_email_and_password_and_reaches_the_console(acme, seed_user, client_for):
    client = client_for(acme)

    response = client.post(LOGIN, {"username": seed_email("agent", "acme"), "password": SEED_PASSWORD})

    assert response.status_code == 302
    assert response["Location"] == CONSOLE
    page = client.get(CONSOLE, HTTP_ACCEPT_LANGUAGE="en")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="console-config"' in html
    assert "/static/console/console.js" in html
    assert "/console/jsi18n/" in html
    assert page["Cache-Control"].startswith("max-age=0")
    client.post("/console/logout/")  # the session lives in Redis: end it


def test_login_page_sends_a_signed_in_user_on_to_the_console(acme, seed_user):
    client = logged_in(acme, seed_user(acme, "agent"))

    response = client.get(LOGIN)

    assert response.status_code == 302
    assert response["Location"] == CONSOLE


def test_wrong_password_shows_an_error_and_no_session(acme, client_for):
    client = client_for(acme)

    response = client.post(
        LOGIN, {"username": seed_email("agent", "acme"), "password": "wrong"}, HTTP_ACCEPT_LANGUAGE="en"
    )

    assert response.status_code == 200
    assert 'role="alert"' in response.content.decode()
    assert client.get(CONSOLE).status_code == 302


def test_globex_user_cannot_sign_in_on_acmes_host(acme, client_for):
    client = client_for(acme)

    response = client.post(LOGIN, {"username": seed_email("agent", "globex"), "password": SEED_PASSWORD})

    assert response.status_code == 200  # the form again: no such user in acme
    assert client.get(CONSOLE).status_code == 302


def test_globex_session_is_anonymous_on_acme(acme, globex, seed_user):
    client = logged_in(globex, seed_user(globex, "agent"))
    client.defaults["HTTP_HOST"] = "acme.localhost"

    response = client.get(CONSOLE)

    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)


@pytest.mark.parametrize("role", SYSTEM_ROLE_NAMES)
def test_every_seed_role_may_open_the_console(acme, seed_user, role):
    """Each seed role holds conversations:create or conversations:read (the knowledge
    manager reads conversations)."""
    response = logged_in(acme, seed_user(acme, role)).get(CONSOLE)

    assert response.status_code == 200


def test_user_without_conversation_permissions_gets_a_403_page(acme, user_with_role):
    user = user_with_role(["docs:read"])

    response = logged_in(acme, user).get(CONSOLE, HTTP_ACCEPT_LANGUAGE="en")

    assert response.status_code == 403
    html = response.content.decode()
    assert "You do not have access to this page" in html
    assert user.email in html
    assert 'action="/console/logout/"' in html
    assert "console-config" not in html


def test_console_config_tells_the_page_what_the_user_may_do(acme, seed_user, user_with_role):
    import json
    import re

    def config(client):
        html = client.get(CONSOLE).content.decode()
        return json.loads(re.search(r'<script id="console-config" type="application/json">(.*?)</script>', html)[1])

    agent = config(logged_in(acme, seed_user(acme, "agent")))
    reader = config(logged_in(acme, user_with_role(["conversations:read"], email="reader@acme.test")))

    assert agent["canCreate"] is True and agent["seesAll"] is True
    assert agent["tenant"] == "acme"
    assert agent["fileUrl"] == f"/console/documents/{agent['filePlaceholder']}/file/"
    assert reader["canCreate"] is False and reader["seesAll"] is False


def test_logout_ends_the_session(acme, seed_user):
    client = logged_in(acme, seed_user(acme, "agent"))

    response = client.post("/console/logout/")

    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert client.get(CONSOLE).status_code == 302


# --------------------------------------------------------------------------------------
# Language
# --------------------------------------------------------------------------------------
def test_language_switch_sets_the_language_for_later_pages(acme, client_for):
    client = client_for(acme)

    response = client.post("/i18n/setlang/", {"language": "en", "next": LOGIN}, HTTP_ACCEPT_LANGUAGE="zh-hans")

    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert "Sign in to the agent console" in client.get(LOGIN, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": LOGIN})
    assert "登录坐席控制台" in client.get(LOGIN).content.decode()


def test_javascript_catalog_carries_the_console_strings_in_chinese(acme, client_for):
    response = client_for(acme).get("/console/jsi18n/", HTTP_ACCEPT_LANGUAGE="zh-hans")

    assert response.status_code == 200
    body = response.content.decode()
    assert "\\u6b63\\u5728\\u68c0\\u7d22\\u77e5\\u8bc6\\u5e93" in body or "正在检索知识库" in body
    assert "Searching the knowledge base" in body


# --------------------------------------------------------------------------------------
# Original documents
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["agent", "user", "knowledge_manager"])
def test_cited_document_opens_inline_for_readers(acme, seed_user, acme_document, role):
    document = acme_document()

    response = logged_in(acme, seed_user(acme, role)).get(file_url(document))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"].startswith("inline")
    assert 'filename="handbook.pdf"' in response["Content-Disposition"]
    assert b"".join(response.streaming_content) == PDF
    assert "Content-Security-Policy" not in response  # Chromium's PDF viewer needs it unsandboxed


def test_docs_reader_without_conversations_may_open_documents(acme, acme_document, user_with_role):
    document = acme_document()

    response = logged_in(acme, user_with_role(["docs:read"])).get(file_url(document))

    assert response.status_code == 200


def test_html_document_is_sandboxed(acme, seed_user, acme_document):
    """An uploaded page must not run script on the tenant's origin (it would ride the agent's
    session)."""
    document = acme_document(b"<html><body><p>Hello</p><script>alert(1)</script></body></html>", "page.html")

    response = logged_in(acme, seed_user(acme, "agent")).get(file_url(document))

    assert response.status_code == 200
    assert response["Content-Security-Policy"].startswith("sandbox")
    assert response["X-Content-Type-Options"] == "nosniff"


def test_user_without_any_reading_permission_gets_403_for_documents(acme, acme_document, user_with_role):
    document = acme_document()

    response = logged_in(acme, user_with_role(["tools:execute"])).get(file_url(document))

    assert response.status_code == 403


def test_anonymous_visitor_is_sent_to_login_for_documents(acme, client_for, acme_document):
    document = acme_document()

    response = client_for(acme).get(file_url(document))

    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)


def test_another_tenants_document_is_not_found(acme, globex, seed_user, acme_document):
    document = acme_document()
    globex_agent = logged_in(globex, seed_user(globex, "agent"))

    response = globex_agent.get(file_url(document))

    assert response.status_code == 404
    assert logged_in(acme, seed_user(acme, "agent")).get(file_url(document)).status_code == 200  # still there


def test_deleted_and_unknown_documents_are_not_found(acme, seed_user, acme_document):
    from apps.knowledge.services import document_delete

    document = acme_document()
    with schema_context("acme"):
        document_delete(document=document, actor=None)
    client = logged_in(acme, seed_user(acme, "agent"))

    assert client.get(file_url(document)).status_code == 404
    assert client.get("/console/documents/6f1c1f7e-0000-4000-8000-000000000000/file/").status_code == 404


def test_document_file_view_only_answers_get(acme, seed_user, acme_document):
    document = acme_document()

    response = logged_in(acme, seed_user(acme, "agent")).post(file_url(document))

    assert response.status_code == 405


# --------------------------------------------------------------------------------------
# Static assets are local (no CDN)
# --------------------------------------------------------------------------------------
def test_console_page_loads_nothing_from_other_hosts(acme, seed_user):
    import re

    html = logged_in(acme, seed_user(acme, "agent")).get(CONSOLE).content.decode()

    assert not re.search(r'(src|href)="(https?:)?//', html)
