from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from apps.tenancy.models import Domain, SubscriptionPlan, Tenant, TenantSubscription


def hostname_normalize(host: str) -> str:
    host = (host or "").strip().lower()
    # Drop the port; an IPv6 literal keeps its brackets.
    host = host.split("]")[0] + "]" if host.startswith("[") else host.split(":")[0]
    return host.removeprefix("www.").rstrip(".")


def tenant_get_by_hostname(*, hostname: str) -> Tenant | None:
    domain = Domain.objects.select_related("tenant").filter(domain=hostname_normalize(hostname)).only("tenant").first()
    return domain.tenant if domain else None


def tenant_unavailable_reason(*, tenant: Tenant) -> str | None:
    """None when the tenant may be served; otherwise its status (suspended/deleted)."""
    if tenant.status == Tenant.Status.ACTIVE:
        return None
    return tenant.status


def tenant_list(*, include_deleted: bool = False) -> QuerySet[Tenant]:
    qs = Tenant.objects.exclude(schema_name="public")
    if not include_deleted:
        qs = qs.exclude(status=Tenant.Status.DELETED)
    return qs.order_by("name")


def tenant_current_subscription(*, tenant: Tenant) -> TenantSubscription | None:
    now = timezone.now()
    return (
        TenantSubscription.objects.select_related("plan")
        .filter(
            tenant=tenant,
            status__in=[TenantSubscription.Status.ACTIVE, TenantSubscription.Status.TRIAL],
            current_period_end__gt=now,
        )
        .order_by("-current_period_start")
        .first()
    )


def plan_get_default() -> SubscriptionPlan | None:
    from django.conf import settings

    return SubscriptionPlan.objects.filter(is_active=True, name=settings.DEFAULT_PLAN).first()
