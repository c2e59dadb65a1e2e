"""The one entry point for metering: every billable event goes through ``usage_record``."""

from __future__ import annotations

from typing import Any

from django.db import connection

from apps.billing.models import UsageRecord


def _current_tenant_id() -> Any:
    from apps.tenancy.models import Tenant

    tenant = getattr(connection, "tenant", None)
    pk = getattr(tenant, "pk", None)
    if pk is not None:
        return pk
    return Tenant.objects.only("pk").get(schema_name=connection.schema_name).pk


def usage_record(
    *,
    usage_type: str,
    quantity: int,
    unit: str,
    tenant_id: Any = None,
    user_id: Any = None,
    metadata: dict | None = None,
) -> UsageRecord:
    """Record one usage event for a tenant (the current one by default). The table is in the
    public schema, which is always on the search path, so this works from any schema and
    joins the caller's transaction."""
    return UsageRecord.objects.create(
        tenant_id=tenant_id or _current_tenant_id(),
        user_id=user_id,
        usage_type=usage_type,
        quantity=quantity,
        unit=unit,
        metadata=metadata or {},
    )
