"""The error model: every API error is JSON ``{"error": {"code", "message", "details"}}``
with a stable ``code``. Services raise ``ApplicationError`` subclasses; the DRF handler and
the API middleware turn everything (DRF, Django and unexpected errors) into that shape."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import BadRequest, RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    code = "application_error"
    status_code = 400
    default_message = "The request could not be completed."

    def __init__(self, message: str | None = None, *, code: str | None = None, details: Any = None):
        self.message = message or self.default_message
        if code:
            self.code = code
        self.details = details if details is not None else {}
        super().__init__(self.message)


class ValidationFailed(ApplicationError):
    code = "validation_error"
    status_code = 400
    default_message = "The input is not valid."


class NotFound(ApplicationError):
    code = "not_found"
    status_code = 404
    default_message = "Not found."


class PermissionDeniedError(ApplicationError):
    code = "permission_denied"
    status_code = 403
    default_message = "You do not have permission to perform this action."


class Conflict(ApplicationError):
    code = "conflict"
    status_code = 409
    default_message = "The resource is in a conflicting state."


# Stable codes for DRF's own exceptions (their default codes drift between versions).
DRF_CODES: dict[type[Exception], str] = {
    drf_exceptions.ValidationError: "validation_error",
    drf_exceptions.ParseError: "parse_error",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
}


def error_body(code: str, message: str, details: Any = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def error_response(code: str, message: str, status: int, details: Any = None) -> JsonResponse:
    return JsonResponse(error_body(code, message, details), status=status, json_dumps_params={"ensure_ascii": False})


# Django's "bad request" family (oversized body, too many fields, disallowed host...): the
# client's fault, never an ``internal_error``.
BAD_REQUEST_EXCEPTIONS = (SuspiciousOperation, BadRequest)


def bad_request_error(exc: Exception | None) -> tuple[int, str, str]:
    """Status, code and message for a ``BAD_REQUEST_EXCEPTIONS`` exception."""
    if isinstance(exc, RequestDataTooBig):
        return 413, "payload_too_large", "The request body is too large."
    return 400, "bad_request", "The request could not be understood."


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, BAD_REQUEST_EXCEPTIONS):
        status, code, message = bad_request_error(exc)
        logger.warning("Bad API request: %s", exc)
        return Response(error_body(code, message), status=status)
    if isinstance(exc, DjangoValidationError):
        details = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(error_body("validation_error", "The input is not valid.", details), status=400)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()

    from rest_framework.views import exception_handler as drf_default_handler

    response = drf_default_handler(exc, context)
    if response is None:
        logger.exception("Unhandled API error", exc_info=exc)
        return Response(error_body("internal_error", "An unexpected error occurred."), status=500)

    code = next((c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, drf_exceptions.ValidationError):
        message, details = "The input is not valid.", response.data
    else:
        detail = getattr(exc, "detail", "")
        message, details = str(detail), {}
        if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
            details = {"retry_after": exc.wait}
    response.data = error_body(code, message, details)
    return response
