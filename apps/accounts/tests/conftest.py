"""Fixtures for the accounts tests: real credentials (knox tokens, API keys, session
logins) on a tenant's host, the JSON error check, and a snapshot of everything accounts
keeps in one schema, so isolation tests can assert that the other tenant did not change."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from conftest import SEED_PASSWORD, tenant_host


def _tenant_state(tenant) -> dict[str, Any]:
    from knox.models import AuthToken

    from apps.accounts.models import ApiKey, Role, User, UserRole
    from apps.audit.models import AuditLog

    with schema_context(tenant.schema_name):
        return {
            "user_count": User.objects.count(),
            "role_count": Role.objects.count(),
            "audit_count": AuditLog.objects.count(),
            "users": list(
                User.objects.order_by("id").values_list(
                    "id", "email", "status", "first_name", "last_name", "password", "email_verified", "last_login"
                )
            ),
            "grants": sorted(UserRole.objects.values_list("user_id", "role__name")),
            "roles": list(
                Role.objects.order_by("name").values_list("name", "display_name", "description", "permissions")
            ),
            "api_keys": list(ApiKey.objects.order_by("prefix").values_list("prefix", "revoked_at", "last_used_at")),
            "tokens": sorted(AuthToken.objects.values_list("digest", flat=True)),
        }


@pytest.fixture
def tenant_state() -> Callable[[Any], dict[str, Any]]:
    """``tenant_state(tenant)`` → users, grants, roles, keys, tokens and audit count of that
    schema, in a form that compares with ``==``."""
    return _tenant_state


@pytest.fixture
def unchanged() -> Callable:
    """``with unchanged(globex): ...`` fails if anything accounts keeps in that schema
    (users, role grants, roles, API keys, tokens, audit rows) changed inside the block."""

    @contextmanager
    def check(tenant) -> Iterator[None]:
        before = _tenant_state(tenant)
        assert before["user_count"] > 0  # the seed users are there to be protected
        yield
        after = _tenant_state(tenant)
        for key in ("user_count", "role_count", "audit_count"):
            assert after[key] == before[key], f"{tenant.schema_name}: {key} changed"
        assert after == before, f"{tenant.schema_name}: accounts data changed"

    return check


def _assert_error(response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def assert_error() -> Callable[..., dict[str, Any]]:
    """``assert_error(response, 403, "permission_denied")`` checks the status and that the
    body is exactly ``{"error": {"code", "message", "details"}}``; returns the error."""
    return _assert_error


@pytest.fixture
def token_for() -> Callable[[Any, Any], str]:
    """``token_for(tenant, user)`` → a real knox token issued in that tenant's schema."""

    def make(tenant, user) -> str:
        from knox.models import AuthToken

        with schema_context(tenant.schema_name):
            _instance, token = AuthToken.objects.create(user)
        return token

    return make


@pytest.fixture
def token_client(token_for) -> Callable[..., APIClient]:
    """``token_client(acme, user, host=globex)`` → an APIClient sending a token issued on
    ``acme`` (``Authorization: Token ...``) to ``host`` (default: the same tenant)."""

    def make(tenant, user, *, host=None) -> APIClient:
        client = APIClient(HTTP_HOST=tenant_host(host or tenant))
        client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(tenant, user)}")
        return client

    return make


@pytest.fixture
def issue_key() -> Callable[..., Any]:
    """``issue_key(tenant, ["agent"], expires_at=...)`` → ``IssuedApiKey`` made by the system."""

    def make(tenant, roles: list[str], **kwargs):
        from apps.accounts.services import api_key_create

        kwargs.setdefault("name", "test key")
        with schema_context(tenant.schema_name):
            return api_key_create(roles=roles, actor=None, **kwargs)

    return make


@pytest.fixture
def key_client() -> Callable[..., APIClient]:
    """``key_client(globex, raw_key, header="x-api-key")`` → an APIClient on that tenant's
    host sending the key as ``Authorization: Api-Key ...`` (default) or ``X-API-Key``."""

    def make(host_tenant, raw_key: str, *, header: str = "authorization") -> APIClient:
        client = APIClient(HTTP_HOST=tenant_host(host_tenant))
        if header == "authorization":
            client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw_key}")
        else:
            client.credentials(HTTP_X_API_KEY=raw_key)
        return client

    return make


@pytest.fixture
def can_log_in() -> Callable[..., bool]:
    """``can_log_in(tenant, email, password)`` → does a real session login succeed there?"""

    def check(tenant, email: str, password: str = SEED_PASSWORD) -> bool:
        with schema_context(tenant.schema_name):
            return Client(HTTP_HOST=tenant_host(tenant)).login(email=email, password=password)

    return check
