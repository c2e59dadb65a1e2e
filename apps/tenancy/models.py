"""Platform-level models (public schema).

Departures from the seed, on purpose:
- ``tenants.domain`` moved to its own Domain table (django-tenants; a tenant may have
  several domains, one primary). The domain stays globally unique.
- ``tenants.subscription_plan_id`` is dropped: the plan lives on TenantSubscription only, so
  there is one source of truth for "which plan is this tenant on" (the seed stored it twice).
- Ids are native uuid columns.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _
from django_tenants.models import DomainMixin, TenantMixin

from apps.core.models import TimeStampedModel, UUIDModel


class Tenant(TenantMixin, UUIDModel):
    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        SUSPENDED = "suspended", _("Suspended")
        DELETED = "deleted", _("Deleted")

    name = models.CharField(_("name"), max_length=255)
    status = models.CharField(_("status"), max_length=20, choices=Status.choices, default=Status.ACTIVE)
    settings = models.JSONField(_("settings"), default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    auto_create_schema = True
    auto_drop_schema = False  # soft delete only; data is removed by an explicit retention job

    permission_resource = "platform"

    class Meta:
        verbose_name = _("tenant")
        verbose_name_plural = _("tenants")
        indexes = [models.Index(fields=["status"], name="idx_tenants_status")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "suspended", "deleted"]), name="tenants_status_valid"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.schema_name})"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Domain(DomainMixin, UUIDModel):
    permission_resource = "platform"

    class Meta:
        verbose_name = _("domain")
        verbose_name_plural = _("domains")


class SubscriptionPlan(TimeStampedModel):
    name = models.CharField(_("name"), max_length=100, unique=True)
    display_name = models.CharField(_("display name"), max_length=100)
    description = models.TextField(_("description"), blank=True)
    pricing = models.JSONField(_("pricing"), default=dict, help_text='e.g. {"monthly": 99.99, "annual": 999.99}')
    limits = models.JSONField(
        _("limits"), default=dict, help_text='e.g. {"maxUsers": 100, "maxStorage": "10GB", "maxApiCalls": 50000}'
    )
    features = models.JSONField(_("features"), default=list, blank=True)
    is_active = models.BooleanField(_("active"), default=True)

    permission_resource = "platform"

    class Meta:
        verbose_name = _("subscription plan")
        verbose_name_plural = _("subscription plans")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.display_name


class TenantSubscription(TimeStampedModel):
    class Status(models.TextChoices):
        TRIAL = "trial", _("Trial")
        ACTIVE = "active", _("Active")
        CANCELLED = "cancelled", _("Cancelled")
        EXPIRED = "expired", _("Expired")

    class BillingCycle(models.TextChoices):
        MONTHLY = "monthly", _("Monthly")
        ANNUAL = "annual", _("Annual")

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="subscriptions")
    plan = models.ForeignKey(SubscriptionPlan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(_("status"), max_length=20, choices=Status.choices, default=Status.ACTIVE)
    billing_cycle = models.CharField(
        _("billing cycle"), max_length=20, choices=BillingCycle.choices, default=BillingCycle.MONTHLY
    )
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    trial_end = models.DateTimeField(null=True, blank=True)

    permission_resource = "platform"

    class Meta:
        verbose_name = _("tenant subscription")
        verbose_name_plural = _("tenant subscriptions")
        indexes = [models.Index(fields=["status"], name="idx_tenant_subs_status")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["trial", "active", "cancelled", "expired"]),
                name="tenant_subs_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(billing_cycle__in=["monthly", "annual"]), name="tenant_subs_cycle_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(current_period_end__gt=models.F("current_period_start")),
                name="tenant_subs_period_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant.name}: {self.plan.name} ({self.status})"
