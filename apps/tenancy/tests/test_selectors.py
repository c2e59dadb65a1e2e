from datetime import timedelta

import pytest
from django.utils import timezone

from apps.tenancy.models import SubscriptionPlan, Tenant, TenantSubscription
from apps.tenancy.selectors import (
    hostname_normalize,
    plan_get_default,
    tenant_current_subscription,
    tenant_get_by_hostname,
    tenant_list,
    tenant_unavailable_reason,
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("acme.localhost", "acme.localhost"),
        ("ACME.LocalHost", "acme.localhost"),
        ("acme.localhost:8000", "acme.localhost"),
        ("www.acme.localhost", "acme.localhost"),
        ("acme.localhost.", "acme.localhost"),
        ("  acme.localhost  ", "acme.localhost"),
        ("[::1]:8000", "[::1]"),
        ("", ""),
        (None, ""),
    ],
)
def test_hostname_normalize(host, expected):
    assert hostname_normalize(host) == expected


def test_tenant_get_by_hostname(acme, globex):
    assert tenant_get_by_hostname(hostname="Acme.localhost:8000") == acme
    assert tenant_get_by_hostname(hostname="globex.localhost") == globex
    assert tenant_get_by_hostname(hostname="localhost").schema_name == "public"
    assert tenant_get_by_hostname(hostname="nobody.localhost") is None


def test_tenant_unavailable_reason(acme, initech):
    assert tenant_unavailable_reason(tenant=acme) is None
    assert tenant_unavailable_reason(tenant=initech) == "suspended"
    initech.status = Tenant.Status.DELETED
    assert tenant_unavailable_reason(tenant=initech) == "deleted"


def test_tenant_list(acme, globex, initech):
    tenants = list(tenant_list())

    assert [t.name for t in tenants] == sorted(t.name for t in tenants)
    assert {"acme", "globex", "initech"} <= {t.schema_name for t in tenants}
    assert "public" not in {t.schema_name for t in tenants}


def test_tenant_current_subscription_ignores_expired_and_cancelled(acme):
    trial = tenant_current_subscription(tenant=acme)
    assert trial is not None and trial.status == TenantSubscription.Status.TRIAL

    TenantSubscription.objects.filter(tenant=acme).update(status=TenantSubscription.Status.CANCELLED)
    assert tenant_current_subscription(tenant=acme) is None

    now = timezone.now()
    TenantSubscription.objects.create(
        tenant=acme,
        plan=SubscriptionPlan.objects.get(name="professional"),
        status=TenantSubscription.Status.ACTIVE,
        current_period_start=now - timedelta(days=40),
        current_period_end=now - timedelta(days=10),
    )
    assert tenant_current_subscription(tenant=acme) is None  # period over

    current = TenantSubscription.objects.create(
        tenant=acme,
        plan=SubscriptionPlan.objects.get(name="professional"),
        status=TenantSubscription.Status.ACTIVE,
        current_period_start=now - timedelta(days=1),
        current_period_end=now + timedelta(days=29),
    )
    assert tenant_current_subscription(tenant=acme) == current


def test_plan_get_default(db):
    assert plan_get_default().name == "starter"

    SubscriptionPlan.objects.filter(name="starter").update(is_active=False)

    assert plan_get_default() is None
