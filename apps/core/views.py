from django.http import HttpRequest, HttpResponse
from django.views.defaults import bad_request, page_not_found, server_error

from apps.core.exceptions import bad_request_error, error_response
from apps.core.middleware import is_api_request


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Bad requests raised outside a view (e.g. a Host header not in ALLOWED_HOSTS, seen by
    the tenant middleware) are JSON on the API too."""
    if is_api_request(request):
        status, code, message = bad_request_error(exception)
        return error_response(code, message, status)
    return bad_request(request, exception)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_request(request):
        return error_response("not_found", "Not found.", 404)
    return page_not_found(request, exception)


def api_not_found(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """The last URL pattern under /api/: an unknown API path is JSON whatever DEBUG says
    (with DEBUG on, Django answers an unmatched URL with its HTML technical page and never
    calls handler404)."""
    return error_response("not_found", "Not found.", 404)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_request(request):
        return error_response("internal_error", "An unexpected error occurred.", 500)
    return server_error(request)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    from django.views.defaults import permission_denied

    if is_api_request(request):
        return error_response("permission_denied", "You do not have permission to perform this action.", 403)
    return permission_denied(request, exception)
