"""Host → tenant resolution over real HTTP requests (test client through the whole
middleware stack)."""

import pytest
from django.test import Client

from apps.tenancy.services import tenant_reactivate, tenant_soft_delete, tenant_suspend

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def _error(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    return response.json()["error"]


# --- resolution -----------------------------------------------------------------------------


def test_each_domain_is_served_from_its_own_schema(acme, globex, seed_user, client_for):
    for tenant in (acme, globex):
        user = seed_user(tenant, "agent")
        response = client_for(tenant, user).get("/api/v1/me")

        assert response.status_code == 200, response.content
        body = response.json()
        assert body["email"] == f"agent@{tenant.schema_name}.test"
        assert body["tenant"] == {"id": str(tenant.pk), "name": tenant.name, "schema": tenant.schema_name}


def test_a_session_from_one_tenant_is_unknown_on_another(acme, globex, seed_user, client_for):
    on_acme = client_for(acme, seed_user(acme, "tenant_admin"))
    on_globex = Client(HTTP_HOST="globex.localhost")
    on_globex.cookies = on_acme.cookies  # the same session cookie, presented to globex

    response = on_globex.get("/api/v1/me")

    assert response.status_code in (401, 403)
    assert _error(response)["code"] == "not_authenticated"


@pytest.mark.parametrize("host", ["ACME.localhost", "acme.localhost:8000", "www.acme.localhost"])
def test_host_is_normalised_before_lookup(acme, seed_user, client_for, host):
    client = client_for(acme, seed_user(acme, "user"))

    response = client.get("/api/v1/me", HTTP_HOST=host)

    assert response.status_code == 200, response.content
    assert response.json()["tenant"]["schema"] == "acme"


def test_public_domain_serves_the_platform_urls(db):
    response = Client(HTTP_HOST="localhost").get("/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    # the tenant API is not mounted on the platform domain
    assert Client(HTTP_HOST="localhost").get("/api/v1/me").status_code == 404


# --- unknown host -----------------------------------------------------------------------------


def test_unknown_host_on_the_api_is_a_json_404(db):
    response = Client(HTTP_HOST="nobody.localhost").get("/api/v1/me")

    assert response.status_code == 404
    error = _error(response)
    assert error["code"] == "tenant_not_found"
    assert error["details"] == {"host": "nobody.localhost"}
    assert error["message"]


def test_unknown_host_asking_for_json_gets_json(db):
    response = Client(HTTP_HOST="nobody.localhost").get("/admin/", HTTP_ACCEPT="application/json")

    assert response.status_code == 404
    assert _error(response)["code"] == "tenant_not_found"


@pytest.mark.parametrize("path", ["/", "/admin/", "/admin/login/"])
def test_unknown_host_in_a_browser_gets_an_html_page(db, path):
    response = Client(HTTP_HOST="nobody.localhost").get(path, HTTP_ACCEPT=BROWSER_ACCEPT)

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert b"<code>tenant_not_found</code>" in response.content
    assert "tenancy/unavailable.html" in [t.name for t in response.templates]


# --- suspended and deleted tenants ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/me", "/admin/", "/admin/login/", "/", "/api/docs/", "/i18n/setlang/"])
def test_suspended_tenant_answers_every_path_with_tenant_suspended(initech, path):
    response = Client(HTTP_HOST="initech.localhost").get(path, HTTP_ACCEPT="application/json")

    assert response.status_code == 403
    error = _error(response)
    assert error["code"] == "tenant_suspended"
    assert error["details"] == {"status": "suspended"}


def test_suspended_tenant_api_is_json_without_an_accept_header(initech):
    response = Client(HTTP_HOST="initech.localhost").post("/api/v1/auth/login", {"email": "x@y.z", "password": "x"})

    assert response.status_code == 403
    assert _error(response)["code"] == "tenant_suspended"


@pytest.mark.parametrize("path", ["/", "/admin/", "/admin/login/"])
def test_suspended_tenant_in_a_browser_gets_an_html_page(initech, path):
    response = Client(HTTP_HOST="initech.localhost").get(path, HTTP_ACCEPT=BROWSER_ACCEPT)

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
    assert b"<code>tenant_suspended</code>" in response.content


def test_suspended_tenant_refuses_its_own_logged_in_users(initech, seed_user, client_for):
    client = client_for(initech, seed_user(initech, "tenant_admin"))  # the session exists in Redis

    for path in ("/api/v1/me", "/admin/"):
        response = client.get(path, HTTP_ACCEPT="application/json")
        assert response.status_code == 403
        assert _error(response)["code"] == "tenant_suspended"


def test_suspending_a_tenant_cuts_off_open_sessions_and_reactivation_restores_them(acme, seed_user, client_for):
    client = client_for(acme, seed_user(acme, "agent"))
    assert client.get("/api/v1/me").status_code == 200

    tenant_suspend(tenant=acme, actor=None)
    response = client.get("/api/v1/me")
    assert response.status_code == 403
    assert _error(response)["code"] == "tenant_suspended"

    tenant_reactivate(tenant=acme, actor=None)
    response = client.get("/api/v1/me")
    assert response.status_code == 200, response.content
    assert response.json()["email"] == "agent@acme.test"


def test_reactivating_initech_restores_service(initech, seed_user, client_for):
    tenant_reactivate(tenant=initech, actor=None)

    response = client_for(initech, seed_user(initech, "user")).get("/api/v1/me")

    assert response.status_code == 200, response.content
    assert response.json()["tenant"]["schema"] == "initech"


@pytest.mark.parametrize("path", ["/api/v1/me", "/admin/", "/"])
def test_soft_deleted_tenant_answers_tenant_suspended(globex, seed_user, client_for, path):
    client = client_for(globex, seed_user(globex, "tenant_admin"))
    tenant_soft_delete(tenant=globex, actor=None)

    response = client.get(path, HTTP_ACCEPT="application/json")

    assert response.status_code == 403
    error = _error(response)
    assert error["code"] == "tenant_suspended"
    assert error["details"] == {"status": "deleted"}


def test_soft_deleted_tenant_in_a_browser_gets_an_html_page(globex):
    tenant_soft_delete(tenant=globex, actor=None)

    response = Client(HTTP_HOST="globex.localhost").get("/admin/", HTTP_ACCEPT=BROWSER_ACCEPT)

    assert response.status_code == 403
    assert b"<code>tenant_suspended</code>" in response.content


def test_soft_deleted_tenant_comes_back_on_reactivation(globex, seed_user, client_for):
    tenant_soft_delete(tenant=globex, actor=None)
    tenant_reactivate(tenant=globex, actor=None)

    response = client_for(globex, seed_user(globex, "agent")).get("/api/v1/me")

    assert response.status_code == 200, response.content


def test_suspending_one_tenant_leaves_the_others_served(acme, globex, seed_user, client_for):
    tenant_suspend(tenant=acme, actor=None)

    assert client_for(acme).get("/api/v1/me").status_code == 403
    response = client_for(globex, seed_user(globex, "agent")).get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["tenant"]["schema"] == "globex"


# --- the unavailable page speaks the visitor's language -------------------------------------------


def test_unavailable_page_defaults_to_chinese(initech):
    response = Client(HTTP_HOST="initech.localhost").get("/", HTTP_ACCEPT=BROWSER_ACCEPT)

    assert "此工作空间已被暂停。" in response.content.decode()


def test_unavailable_page_follows_accept_language(initech):
    client = Client(HTTP_HOST="initech.localhost")

    english = client.get("/", HTTP_ACCEPT=BROWSER_ACCEPT, HTTP_ACCEPT_LANGUAGE="en")
    chinese = client.get("/", HTTP_ACCEPT=BROWSER_ACCEPT, HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")

    assert "This workspace is suspended." in english.content.decode()
    assert '<html lang="en">' in english.content.decode()
    assert "此工作空间已被暂停。" in chinese.content.decode()


def test_unknown_host_message_follows_the_language_cookie(db):
    client = Client(HTTP_HOST="nobody.localhost")
    client.cookies["django_language"] = "en"

    response = client.get("/api/v1/me")

    assert _error(response)["message"] == "No workspace is served at this address."


# --- /healthz is served before tenant resolution ------------------------------------------------


@pytest.mark.parametrize("host", ["acme.localhost", "initech.localhost", "nobody.localhost", "localhost"])
def test_healthz_answers_on_any_host(db, host):
    response = Client(HTTP_HOST=host).get("/healthz")

    assert response.status_code in (200, 503)
    body = response.json()
    assert set(body["services"]) >= {"postgres", "redis"}
    assert body["services"]["postgres"]["status"] == "ok"
