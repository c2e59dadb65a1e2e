"""Writing audit rows. Call these from inside the service's ``transaction.atomic`` block:
the row then commits or rolls back together with the change it describes."""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django_tenants.utils import schema_context

from apps.audit.models import AuditLog
from apps.core.context import request_context_get

SECRET_FIELDS = {"password", "key", "key_hash", "secret", "token", "api_key"}
# ``admin_password``, ``client_secret``, ``access_token``, ``private_key``...: masked too.
SECRET_SUFFIXES = ("password", "secret", "token", "_key", "key_hash")


def _is_secret(name: Any) -> bool:
    name = str(name).lower()
    return name in SECRET_FIELDS or name.endswith(SECRET_SUFFIXES)


def _ip_or_none(value: str | None) -> str | None:
    """The request's address is client-influenced (X-Forwarded-For): a value that is not an
    IP address is dropped rather than failing the change being audited (inet column)."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _jsonable(values: dict[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None

    def convert(value: Any) -> Any:
        if isinstance(value, (uuid.UUID, Decimal)):
            return str(value)
        if isinstance(value, (datetime, date)):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: ("***" if _is_secret(k) else convert(v)) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [convert(v) for v in value]
        if hasattr(value, "pk"):
            return str(value.pk)
        return value

    converted = convert(values)
    json.dumps(converted)  # fail loudly here, not at commit time
    return converted


def actor_describe(actor: Any) -> tuple[Any, str]:
    """(user instance or None, label) for a user, an API key principal or the system."""
    if actor is None:
        return None, "system"
    from apps.accounts.models import User

    if isinstance(actor, User):
        return actor, actor.email
    return None, str(actor)


def audit_log_record(
    *,
    actor: Any,
    action: str,
    resource_type: str,
    resource_id: Any = "",
    old_values: dict[str, Any] | None = None,
    new_values: dict[str, Any] | None = None,
) -> AuditLog:
    """Record one change in the current schema's audit log. Must run inside the caller's
    atomic block (enforced) so that the audit row and the change share one transaction."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_log_record must be called inside the changing transaction")
    user, label = actor_describe(actor)
    ctx = request_context_get()
    return AuditLog.objects.create(
        actor=user,
        actor_label=label[:255],
        action=action,
        resource_type=resource_type,
        resource_id=str(resource_id or "")[:64],
        old_values=_jsonable(old_values),
        new_values=_jsonable(new_values),
        ip_address=_ip_or_none(ctx.ip_address),
        user_agent=ctx.user_agent,
    )


@transaction.atomic
def platform_audit_record(
    *,
    actor: Any,
    action: str,
    resource_type: str,
    resource_id: Any = "",
    old_values: dict[str, Any] | None = None,
    new_values: dict[str, Any] | None = None,
) -> AuditLog:
    """Record a platform-level event in the public schema's audit log (same connection, so
    still the caller's transaction)."""
    with schema_context("public"):
        return audit_log_record(
            actor=actor,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            old_values=old_values,
            new_values=new_values,
        )
