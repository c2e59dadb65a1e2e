"""Audit log (seed: audit_logs). The table exists in every tenant schema (that tenant's
changes) and in the public schema (platform events: tenant created/suspended/...).

Departures from the seed: no tenant_id column (the schema is the tenant); ``actor_label``
keeps who acted even after the user row is gone or when the actor was an API key or the
system; ``user_id`` → ``actor`` with ON DELETE SET NULL so deleting a user never erases
the history of what they did."""

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.core.models import UUIDModel


class AuditLog(UUIDModel):
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,  # the row must survive user deletion and cross-schema writes
    )
    actor_label = models.CharField(_("actor"), max_length=255, blank=True)
    action = models.CharField(_("action"), max_length=100)
    resource_type = models.CharField(_("resource type"), max_length=50)
    resource_id = models.CharField(_("resource id"), max_length=64, blank=True)
    old_values = models.JSONField(_("old values"), null=True, blank=True)
    new_values = models.JSONField(_("new values"), null=True, blank=True)
    ip_address = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    user_agent = models.TextField(_("user agent"), blank=True)
    created_at = models.DateTimeField(_("time"), auto_now_add=True)

    permission_resource = "audit"

    class Meta:
        verbose_name = _("audit log entry")
        verbose_name_plural = _("audit log")
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["actor"], name="idx_audit_logs_user"),
            models.Index(fields=["action"], name="idx_audit_logs_action"),
            models.Index(fields=["resource_type", "resource_id"], name="idx_audit_logs_resource"),
            models.Index(fields=["created_at"], name="idx_audit_logs_created"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label or '-'} {self.action}"
