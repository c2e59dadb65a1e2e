"""Usage metering (seed: usage_records), in the public schema so billing can count every
tenant in one place. Plans, limits and invoices come with the billing issue.

Departures from the seed: ``user_id`` is a plain uuid (users live in tenant schemas, so no
cross-schema foreign key); monthly range partitioning of the table is left for the billing
issue, when invoice queries define the access pattern."""

from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.core.models import UUIDModel


class UsageRecord(UUIDModel):
    class UsageType(models.TextChoices):
        API_CALL = "api_call", _("API call")
        STORAGE = "storage", _("Storage")
        VECTOR_SEARCH = "vector_search", _("Vector search")
        DOCUMENT_PROCESSING = "document_processing", _("Document processing")
        TOKENS = "tokens", _("Tokens")

    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="usage_records")
    user_id = models.UUIDField(null=True, blank=True)
    usage_type = models.CharField(max_length=50, choices=UsageType.choices)
    quantity = models.BigIntegerField(default=1)
    unit = models.CharField(max_length=20)  # count, bytes, tokens, pages
    metadata = models.JSONField(default=dict, blank=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    permission_resource = "billing"

    class Meta:
        verbose_name = _("usage record")
        verbose_name_plural = _("usage records")
        indexes = [
            models.Index(fields=["tenant", "usage_type", "-recorded_at"], name="idx_usage_tenant_type_date"),
            models.Index(fields=["recorded_at"], name="idx_usage_records_date"),
        ]

    def __str__(self) -> str:
        return f"{self.usage_type} {self.quantity} {self.unit}"
