from django.contrib import admin

from apps.audit.models import AuditLog
from apps.core.admin_sites import platform_admin_site, tenant_admin_site


class AuditLogAdmin(admin.ModelAdmin):
    """Read-only: the audit log is written by services only."""

    list_display = ["created_at", "actor_label", "action", "resource_type", "resource_id", "ip_address"]
    list_filter = ["action", "resource_type", ("created_at", admin.DateFieldListFilter), "actor_label"]
    search_fields = ["action", "resource_type", "resource_id", "actor_label"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditLog._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


for site in (platform_admin_site, tenant_admin_site):
    site.register(AuditLog, AuditLogAdmin)
