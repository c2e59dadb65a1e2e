"""Tenant lifecycle. Every change writes a platform audit row (public schema) in the same
transaction."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context, schema_exists

from apps.audit.services import platform_audit_record
from apps.core.exceptions import Conflict, ValidationFailed
from apps.tenancy.models import Domain, SubscriptionPlan, Tenant, TenantSubscription
from apps.tenancy.selectors import hostname_normalize, plan_get_default

SCHEMA_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,61}$")
RESERVED_SCHEMAS = {"public", "information_schema", "tenant_template", settings.TENANT_BASE_SCHEMA}
TRIAL_DAYS = 14


def tenant_template_ensure(*, verbosity: int = 0) -> None:
    """Create (if missing) and migrate the template schema new tenants are cloned from.
    Run by ``platform_migrate`` after every deploy so clones always carry the latest
    schema and the seeded system roles."""
    base = settings.TENANT_BASE_SCHEMA
    if not schema_exists(base):
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE SCHEMA "{base}"')
    call_command("migrate_schemas", tenant=True, schema_name=base, interactive=False, verbosity=verbosity)
    connection.set_schema_to_public()


def _tenant_snapshot(tenant: Tenant) -> dict[str, Any]:
    return {"name": tenant.name, "schema_name": tenant.schema_name, "status": tenant.status}


def tenant_create_check(*, schema_name: str, domain: str | None = None) -> tuple[str, str]:
    """Normalise a new tenant's key and domain and raise what ``tenant_create`` would
    (invalid_schema_name, tenant_exists, domain_exists). The admin's add form calls it too,
    so a taken key or domain is a form error instead of a half-reported failure."""
    schema_name = schema_name.strip().lower()
    if not SCHEMA_NAME_RE.match(schema_name) or schema_name in RESERVED_SCHEMAS or schema_name.startswith("pg_"):
        raise ValidationFailed(
            "The tenant key must start with a letter and hold only lowercase letters, digits and _.",
            code="invalid_schema_name",
            details={"schema_name": schema_name},
        )
    domain = hostname_normalize(domain or f"{schema_name.replace('_', '-')}.{settings.TENANT_DOMAIN_SUFFIX}")
    if Tenant.objects.filter(schema_name=schema_name).exists():
        raise Conflict("A tenant with this key already exists.", code="tenant_exists")
    if schema_exists(schema_name):  # a leftover schema holds someone's data: never adopt it
        raise Conflict(
            "A schema with this key already exists.", code="tenant_exists", details={"schema_name": schema_name}
        )
    if Domain.objects.filter(domain=domain).exists():
        raise Conflict("This domain is already in use.", code="domain_exists", details={"domain": domain})
    return schema_name, domain


@transaction.atomic
def tenant_create(
    *,
    name: str,
    schema_name: str,
    domain: str | None = None,
    plan: SubscriptionPlan | None = None,
    billing_cycle: str = TenantSubscription.BillingCycle.MONTHLY,
    trial: bool = True,
    actor: Any = None,
    admin_email: str | None = None,
    admin_password: str | None = None,
    settings_: dict | None = None,
) -> Tenant:
    """Create a tenant: its schema (cloned from the template), its primary domain, a
    subscription (trial by default) and, optionally, its first tenant administrator."""
    schema_name, domain = tenant_create_check(schema_name=schema_name, domain=domain)

    tenant = Tenant(name=name, schema_name=schema_name, settings=settings_ or {})
    tenant.save(verbosity=0)  # creates the schema by cloning TENANT_BASE_SCHEMA
    Domain.objects.create(tenant=tenant, domain=domain, is_primary=True)

    plan = plan or plan_get_default()
    if plan is not None:
        now = timezone.now()
        period = timedelta(days=365 if billing_cycle == TenantSubscription.BillingCycle.ANNUAL else 30)
        TenantSubscription.objects.create(
            tenant=tenant,
            plan=plan,
            status=TenantSubscription.Status.TRIAL if trial else TenantSubscription.Status.ACTIVE,
            billing_cycle=billing_cycle,
            current_period_start=now,
            current_period_end=now + (timedelta(days=TRIAL_DAYS) if trial else period),
            trial_end=now + timedelta(days=TRIAL_DAYS) if trial else None,
        )
    platform_audit_record(
        actor=actor,
        action="tenant.created",
        resource_type="tenant",
        resource_id=tenant.pk,
        new_values={
            **_tenant_snapshot(tenant),
            "domain": domain,
            "plan": plan.name if plan else None,
            "admin_email": admin_email or None,
        },
    )
    if admin_email:
        from apps.accounts.services import user_create

        # The system seeds the first admin; the operator who asked is on the platform row
        # above. Passing the operator (a public-schema user) here would make
        # UserRole.granted_by point at a user the tenant's schema does not have (deferred FK
        # failure at commit), and their roles do not exist in that schema either.
        with schema_context(tenant.schema_name):
            user_create(
                email=admin_email,
                password=admin_password,
                roles=["tenant_admin"],
                actor=None,
                email_verified=bool(admin_password),
            )
    connection.set_schema_to_public()
    return tenant


def _tenant_status_set(*, tenant: Tenant, status: str, actor: Any, action: str, reason: str = "") -> Tenant:
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    old = tenant.status
    if old == status:
        return tenant
    tenant.status = status
    fields = ["status", "updated_at"]
    if status == Tenant.Status.DELETED:
        tenant.deleted_at = timezone.now()
        fields.append("deleted_at")
    elif old == Tenant.Status.DELETED:
        tenant.deleted_at = None
        fields.append("deleted_at")
    tenant.save(update_fields=fields)
    platform_audit_record(
        actor=actor,
        action=action,
        resource_type="tenant",
        resource_id=tenant.pk,
        old_values={"status": old},
        new_values={"status": status, "reason": reason} if reason else {"status": status},
    )
    return tenant


@transaction.atomic
def tenant_suspend(*, tenant: Tenant, actor: Any, reason: str = "") -> Tenant:
    if tenant.status == Tenant.Status.DELETED:
        raise Conflict("A deleted tenant cannot be suspended.", code="tenant_deleted")
    return _tenant_status_set(
        tenant=tenant, status=Tenant.Status.SUSPENDED, actor=actor, action="tenant.suspended", reason=reason
    )


@transaction.atomic
def tenant_reactivate(*, tenant: Tenant, actor: Any) -> Tenant:
    return _tenant_status_set(tenant=tenant, status=Tenant.Status.ACTIVE, actor=actor, action="tenant.reactivated")


@transaction.atomic
def tenant_soft_delete(*, tenant: Tenant, actor: Any, reason: str = "") -> Tenant:
    """Mark deleted: the domain answers ``tenant_suspended`` and nothing is served; the
    schema and data stay until a retention job purges them."""
    if tenant.schema_name == "public":
        raise ValidationFailed("The public tenant cannot be deleted.", code="public_tenant")
    return _tenant_status_set(
        tenant=tenant, status=Tenant.Status.DELETED, actor=actor, action="tenant.deleted", reason=reason
    )


@transaction.atomic
def public_tenant_ensure(*, domain: str | None = None) -> Tenant:
    """The public tenant row (schema ``public``) and its domain, for the platform admin."""
    tenant = Tenant.objects.filter(schema_name="public").first()
    if tenant is None:
        tenant = Tenant(schema_name="public", name="Zhida platform")
        tenant.auto_create_schema = False
        tenant.save(verbosity=0)
    domain = hostname_normalize(domain or settings.PUBLIC_DOMAIN)
    Domain.objects.get_or_create(domain=domain, defaults={"tenant": tenant, "is_primary": True})
    return tenant
