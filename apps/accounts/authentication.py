"""API-key authentication for machine clients.

``Authorization: Api-Key zk_<prefix>_<secret>`` (or ``X-API-Key: ...``). The key resolves
to an ``ApiKeyPrincipal`` that carries the key's role permissions, so every permission check
(``user_has_permission``) treats people and machines alike. Keys live in the tenant schema,
so another tenant's key is simply unknown here."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from django.utils import timezone
from rest_framework import authentication, exceptions

from apps.accounts.models import ApiKey
from apps.accounts.services import API_KEY_PREFIX, api_key_hash

KEYWORD = "Api-Key"


@dataclass
class ApiKeyPrincipal:
    api_key: ApiKey
    role_permissions: frozenset[str] = field(default_factory=frozenset)

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    @property
    def pk(self):
        return self.api_key.pk

    @property
    def id(self):
        return self.api_key.pk

    @property
    def email(self) -> str:
        return ""

    def __str__(self) -> str:
        return f"api_key:{self.api_key.name} ({self.api_key.prefix})"


def api_key_from_request(request) -> str | None:
    header = authentication.get_authorization_header(request).decode("latin-1")
    if header:
        keyword, _, value = header.partition(" ")
        if keyword.lower() == KEYWORD.lower():
            return value.strip()
    return request.META.get("HTTP_X_API_KEY") or None


def api_key_authenticate(raw_key: str) -> ApiKeyPrincipal:
    """Resolve a raw key in the current schema, or raise AuthenticationFailed."""
    parts = raw_key.removeprefix(API_KEY_PREFIX).split("_", 1) if raw_key.startswith(API_KEY_PREFIX) else []
    if len(parts) != 2:
        raise exceptions.AuthenticationFailed("Invalid API key.")
    api_key = ApiKey.objects.filter(prefix=parts[0]).prefetch_related("roles").first()
    if api_key is None or not hmac.compare_digest(api_key.key_hash, api_key_hash(raw_key)):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    now = timezone.now()
    if api_key.revoked_at is not None:
        raise exceptions.AuthenticationFailed("This API key has been revoked.")
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise exceptions.AuthenticationFailed("This API key has expired.")
    # Touch last_used_at at most once a minute to keep the hot path write-free.
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    perms = frozenset(p for role in api_key.roles.all() for p in role.permissions)
    return ApiKeyPrincipal(api_key=api_key, role_permissions=perms)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        raw = api_key_from_request(request)
        if not raw:
            return None
        principal = api_key_authenticate(raw)
        return principal, principal.api_key

    def authenticate_header(self, request) -> str:
        return KEYWORD
