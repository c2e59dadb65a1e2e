"""The API's error model over real HTTP requests: every error, whoever raises it (DRF,
Django's URL resolver, the tenant middleware or an unexpected exception), is JSON
``{"error": {"code", "message", "details"}}`` — never an HTML page."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_me_with_a_real_session(acme, seed_user, client_for):
    user = seed_user(acme, "agent")

    response = client_for(acme, user).get("/api/v1/me")

    assert response.status_code == 200, response.content
    assert response.json()["email"] == "agent@acme.test"
    assert response.json()["tenant"]["schema"] == "acme"
    assert response.json()["roles"] == ["agent"]


def test_me_session_is_not_valid_on_another_tenant(acme, globex, seed_user, client_for):
    client = client_for(acme, seed_user(acme, "agent"))  # session cookie made on acme

    response = client.get("/api/v1/me", HTTP_HOST="globex.localhost")

    assert_error(response, 401, "not_authenticated")


def test_unknown_api_path_is_json_404(acme, seed_user, api_for):
    response = api_for(acme, seed_user(acme, "agent")).get("/api/v1/nope")

    error = assert_error(response, 404, "not_found")
    assert error["details"] == {}


def test_unknown_api_path_on_the_platform_domain_is_json_404(db):
    assert_error(Client(HTTP_HOST="localhost").get("/api/v1/nope"), 404, "not_found")


@pytest.mark.parametrize("host", ["acme.localhost", "localhost"])
def test_unknown_api_path_is_json_404_with_debug_on(acme, host, settings):
    settings.DEBUG = True  # Django's technical 404 page would answer an unmatched URL

    response = Client(HTTP_HOST=host).get("/api/v1/nope/deeper")

    assert_error(response, 404, "not_found")


def test_wrong_method_is_405(acme, seed_user, api_for):
    response = api_for(acme, seed_user(acme, "agent")).delete("/api/v1/me")

    error = assert_error(response, 405, "method_not_allowed")
    assert "DELETE" in error["message"]


def test_invalid_json_body_is_parse_error_and_changes_nothing(acme, seed_user, api_for):
    user = seed_user(acme, "agent")

    response = api_for(acme, user).patch("/api/v1/me", data='{"first_name": ', content_type="application/json")

    assert_error(response, 400, "parse_error")
    user_after = seed_user(acme, "agent")
    assert user_after.first_name == user.first_name
    assert user_after.updated_at == user.updated_at


def test_validation_error_lists_the_fields(acme, api_for):
    response = api_for(acme).post("/api/v1/auth/login", data={"email": "not-an-email"}, format="json")

    error = assert_error(response, 400, "validation_error")
    assert set(error["details"]) == {"email", "password"}
    assert all(isinstance(messages, list) and messages for messages in error["details"].values())


def test_unauthenticated_is_401(acme, api_for):
    response = api_for(acme).get("/api/v1/me")

    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Api-Key"


def test_unknown_api_key_is_authentication_failed(acme, api_for):
    response = api_for(acme, api_key="zk_deadbeef_not-a-real-secret").get("/api/v1/me")

    assert_error(response, 401, "authentication_failed")


def test_unknown_host_is_json_tenant_not_found(db):
    response = Client(HTTP_HOST="nowhere.localhost").get("/api/v1/me")

    error = assert_error(response, 404, "tenant_not_found")
    assert error["details"] == {"host": "nowhere.localhost"}


def test_host_outside_allowed_hosts_is_json_400_on_the_api(db):
    """Raised by the tenant middleware (request.get_host()), before any view: handler400."""
    response = Client(HTTP_HOST="evil.example.com", raise_request_exception=False).get("/api/v1/me")

    assert_error(response, 400, "bad_request")


def test_host_outside_allowed_hosts_stays_an_html_page_outside_the_api(db):
    response = Client(HTTP_HOST="evil.example.com", raise_request_exception=False).get("/admin/")

    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")


def test_oversized_body_is_413_not_internal_error(acme, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    client = Client(HTTP_HOST="acme.localhost", raise_request_exception=False)

    response = client.post(
        "/api/v1/auth/login", data={"email": "a@acme.test", "password": "x" * 2000}, content_type="application/json"
    )

    assert_error(response, 413, "payload_too_large")


def test_suspended_tenant_is_json_tenant_suspended(initech, seed_user, api_for):
    response = api_for(initech, seed_user(initech, "tenant_admin")).get("/api/v1/me")

    error = assert_error(response, 403, "tenant_suspended")
    assert error["details"] == {"status": "suspended"}


# --------------------------------------------------------------------------------------
# Unexpected exceptions (views from a test-only URLconf)
# --------------------------------------------------------------------------------------
@pytest.fixture
def failing_client(acme):
    with override_settings(ROOT_URLCONF="apps.core.tests.urls_errors"):
        yield Client(HTTP_HOST="acme.localhost", raise_request_exception=False)


def test_unexpected_exception_in_drf_view_is_json_500(failing_client):
    response = failing_client.get("/api/v1/test/explode")

    error = assert_error(response, 500, "internal_error")
    assert "boom" not in error["message"]  # internals never reach the client
    assert error["details"] == {}


def test_unexpected_exception_in_plain_api_view_is_json_500(failing_client):
    response = failing_client.get("/api/v1/test/explode-plain")

    error = assert_error(response, 500, "internal_error")
    assert "boom" not in error["message"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/v1/test/missing-plain", 404, "not_found"),
        ("/api/v1/test/forbidden-plain", 403, "permission_denied"),
        ("/api/v1/test/suspicious-plain", 400, "bad_request"),
    ],
)
def test_django_http_errors_in_plain_api_views_are_json(failing_client, path, status, code):
    assert_error(failing_client.get(path), status, code)


def test_unexpected_exception_outside_the_api_stays_an_html_page(failing_client):
    response = failing_client.get("/test/explode-page")

    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")


def test_the_test_urlconf_still_serves_the_real_api(failing_client):
    """Guards the fixture: the override keeps the tenant URLs, so the cases above differ
    from production only by the failing views."""
    assert_error(failing_client.get("/api/v1/me"), 401, "not_authenticated")
    assert_error(failing_client.get("/api/v1/nope"), 404, "not_found")
