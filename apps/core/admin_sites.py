"""Two admin sites: the platform's (public domain: tenants, plans, subscriptions, platform
audit, operators) and each tenant's (its users, roles, keys, audit log; later documents).
Who may enter and what they see comes from roles via ``User.is_staff``/``has_perm``."""

from django.contrib.admin import AdminSite
from django.utils.translation import gettext_lazy as _


class PlatformAdminSite(AdminSite):
    site_header = _("Zhida platform administration")
    site_title = _("Zhida platform")
    index_title = _("Platform")


class TenantAdminSite(AdminSite):
    site_header = _("Zhida administration")
    site_title = _("Zhida")
    index_title = _("Workspace administration")

    def each_context(self, request):
        context = super().each_context(request)
        tenant = getattr(request, "tenant", None)
        if tenant is not None:
            context["site_header"] = f"{self.site_header} · {tenant.name}"
        return context


platform_admin_site = PlatformAdminSite(name="admin")
tenant_admin_site = TenantAdminSite(name="admin")
