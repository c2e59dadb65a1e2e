from __future__ import annotations

import logging
import uuid

from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.core.context import RequestContext, request_context_reset, request_context_set
from apps.core.exceptions import error_response

logger = logging.getLogger(__name__)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address. X-Forwarded-For is client-controlled, so it is read only when
    the deployment says how many proxies it has (TRUSTED_PROXY_COUNT): the address the
    outermost trusted proxy saw is that many entries from the right."""
    from django.conf import settings

    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if proxies > 0 and forwarded:
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops:
            return hops[-min(proxies, len(hops))]
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """Gives every request an id (echoed as X-Request-ID) and records ip/user agent for
    logging and the audit log."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request.META.get("HTTP_X_REQUEST_ID") or uuid.uuid4().hex
        token = request_context_set(
            RequestContext(
                request_id=request_id[:64],
                ip_address=client_ip(request),
                user_agent=request.META.get("HTTP_USER_AGENT", "")[:1000],
            )
        )
        try:
            response = self.get_response(request)
        finally:
            request_context_reset(token)
        response["X-Request-ID"] = request_id[:64]
        return response


class HealthCheckMiddleware:
    """Serves /healthz before tenant resolution, sessions or auth, so it answers on any
    host and keeps working when Redis (sessions) is down."""

    path = "/healthz"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.rstrip("/") == self.path:
            from apps.core.health import health_report

            report = health_report()
            return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
        return self.get_response(request)


def is_api_request(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


class ApiErrorMiddleware:
    """No HTML error pages from the API: an unexpected exception in any /api/ view becomes
    the JSON error model with code ``internal_error`` (DRF views already go through
    ``api_exception_handler``; this covers everything else)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api_request(request):
            return None
        from django.core.exceptions import PermissionDenied
        from django.http import Http404

        from apps.core.exceptions import BAD_REQUEST_EXCEPTIONS, bad_request_error

        if isinstance(exception, Http404):
            return error_response("not_found", "Not found.", 404)
        if isinstance(exception, PermissionDenied):
            return error_response("permission_denied", "You do not have permission to perform this action.", 403)
        if isinstance(exception, BAD_REQUEST_EXCEPTIONS):
            status, code, message = bad_request_error(exception)
            logger.warning("Bad request on %s: %s", request.path, exception)
            return error_response(code, message, status)
        logger.exception("Unhandled error on %s", request.path, exc_info=exception)
        return error_response("internal_error", "An unexpected error occurred.", 500)
