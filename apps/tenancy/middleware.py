from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import translation
from django.utils.translation import gettext_lazy as _
from django_tenants.middleware.main import TenantMainMiddleware

from apps.core.exceptions import error_response
from apps.tenancy.selectors import hostname_normalize, tenant_get_by_hostname, tenant_unavailable_reason


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.META.get("HTTP_ACCEPT", "")


def tenant_error_response(request: HttpRequest, *, code: str, message: str, status: int, details=None) -> HttpResponse:
    # This runs before LocaleMiddleware: choose the visitor's language (cookie,
    # Accept-Language) here, or the page comes out in whatever language the previous request
    # on this thread left active.
    with translation.override(translation.get_language_from_request(request)):
        if _wants_json(request):
            return error_response(code, str(message), status, details)
        return render(
            request,
            "tenancy/unavailable.html",
            {"code": code, "message": message, "details": details or {}},
            status=status,
        )


class TenantMiddleware(TenantMainMiddleware):
    """django-tenants' host → schema resolution, plus: unknown hosts get a clear 404 (JSON
    on the API) and suspended/deleted tenants answer every request with ``tenant_suspended``
    before any session, auth or view code runs in their schema."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        connection.set_schema_to_public()
        hostname = hostname_normalize(request.get_host())
        tenant = tenant_get_by_hostname(hostname=hostname)
        if tenant is None:
            return tenant_error_response(
                request,
                code="tenant_not_found",
                message=_("No workspace is served at this address."),
                status=404,
                details={"host": hostname},
            )
        reason = tenant_unavailable_reason(tenant=tenant)
        if reason is not None:
            message = (
                _("This workspace has been deleted.") if reason == "deleted" else _("This workspace is suspended.")
            )
            return tenant_error_response(
                request, code="tenant_suspended", message=message, status=403, details={"status": reason}
            )
        tenant.domain_url = hostname
        request.tenant = tenant
        connection.set_tenant(tenant)
        self.setup_url_routing(request)
        return None
