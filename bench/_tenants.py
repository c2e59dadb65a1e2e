"""Throw-away tenants of the benchmarks: find and remove them (shared by every bench script).

Imported after ``django.setup()``."""

from __future__ import annotations

from django.db import connection

from apps.audit.models import AuditLog
from apps.tenancy.models import Tenant


def tenants_drop(schemas: list[str]) -> None:
    """Drop the schemas and delete every public row written for them: the tenant (cascading
    to its domain, subscription and usage records) and its platform audit rows."""
    connection.set_schema_to_public()
    tenants = list(Tenant.objects.filter(schema_name__in=schemas))
    AuditLog.objects.filter(resource_type="tenant", resource_id__in=[str(t.pk) for t in tenants]).delete()
    for tenant in tenants:
        tenant.delete(force_drop=True)  # DROP SCHEMA ... CASCADE, then the rows
    with connection.cursor() as cursor:  # a schema whose tenant row never committed
        for schema in schemas:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def tenant_leftovers(prefix: str) -> list[str]:
    """Schemas or tenant rows named ``<prefix>…`` (left by a killed run)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [prefix + "%"])
        schemas = {row[0] for row in cursor.fetchall()}
    schemas |= set(Tenant.objects.filter(schema_name__startswith=prefix).values_list("schema_name", flat=True))
    return sorted(schemas)
