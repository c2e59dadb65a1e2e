"""Tenant resolution and authentication for websockets (django-tenants has no ASGI
middleware).

Every database touch runs inside ``tenant_context`` in its own ``database_sync_to_async``
call: that thread is shared by every consumer in the process, so a schema set in one call
must never be relied on in the next."""

from __future__ import annotations

from importlib import import_module

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.http.cookie import parse_cookie
from django.utils.crypto import constant_time_compare
from django_tenants.utils import schema_context, tenant_context

# Close codes (4000–4999 are the application's): documented for the web console.
CLOSE_UNKNOWN_TENANT = 4404
CLOSE_TENANT_SUSPENDED = 4403
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4003


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""


def _tenant_for_host(host: str):
    from apps.tenancy.selectors import tenant_get_by_hostname

    with schema_context("public"):
        tenant = tenant_get_by_hostname(hostname=host)
    connection.set_schema_to_public()
    return tenant


def _user_from_session(tenant, session_key: str | None):
    if not session_key:
        return AnonymousUser()
    engine = import_module(settings.SESSION_ENGINE)
    with tenant_context(tenant):
        session = engine.SessionStore(session_key)
        user_id = session.get(SESSION_KEY)
        backend_path = session.get(BACKEND_SESSION_KEY)
        if not user_id or backend_path not in settings.AUTHENTICATION_BACKENDS:
            return AnonymousUser()
        from apps.accounts.models import User

        user = User.objects.filter(pk=user_id).first()
        if user is None or not user.is_active:
            return AnonymousUser()
        if not constant_time_compare(session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()):
            return AnonymousUser()
        user._zhida_schema = tenant.schema_name
        return user


def _user_from_api_key(tenant, raw_key: str):
    from rest_framework.exceptions import AuthenticationFailed

    from apps.accounts.authentication import api_key_authenticate

    with tenant_context(tenant):
        try:
            return api_key_authenticate(raw_key)
        except AuthenticationFailed:
            return AnonymousUser()


class TenantWebsocketMiddleware:
    """Puts ``tenant`` and ``user`` in the scope. Unknown hosts and suspended/deleted tenants
    are refused before the consumer runs (close codes above); anonymous users reach the
    consumer, which decides (most refuse)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        host = _header(scope, b"host")
        tenant = await database_sync_to_async(_tenant_for_host)(host)
        if tenant is None:
            return await self._deny(receive, send, CLOSE_UNKNOWN_TENANT)
        if tenant.status != "active":
            return await self._deny(receive, send, CLOSE_TENANT_SUSPENDED)
        # Django's parser, as for HTTP requests: SimpleCookie stops at the first cookie it
        # dislikes (a space or a quote in some other cookie), losing the session cookie.
        session_key = parse_cookie(_header(scope, b"cookie")).get(settings.SESSION_COOKIE_NAME)
        api_key = _header(scope, b"x-api-key")
        if api_key:
            user = await database_sync_to_async(_user_from_api_key)(tenant, api_key)
        else:
            user = await database_sync_to_async(_user_from_session)(tenant, session_key)
        scope = dict(scope, tenant=tenant, user=user, schema_name=tenant.schema_name)
        return await self.app(scope, receive, send)

    @staticmethod
    async def _deny(receive, send, code: int):
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": code})


def tenant_group_name(schema_name: str, *parts: str) -> str:
    """Channel-layer group names always carry the tenant: ``t.<schema>.<parts>``."""
    return ".".join(["t", schema_name, *parts])
