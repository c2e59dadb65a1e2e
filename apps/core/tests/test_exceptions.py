"""``api_exception_handler``: each kind of exception → status and stable code."""

from __future__ import annotations

import pytest
from django.core.exceptions import BadRequest, DisallowedHost, RequestDataTooBig, TooManyFieldsSent
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions as drf

from apps.core.exceptions import (
    ApplicationError,
    Conflict,
    NotFound,
    PermissionDeniedError,
    ValidationFailed,
    api_exception_handler,
    error_body,
)


def handle(exc: Exception):
    response = api_exception_handler(exc, {})
    assert response is not None
    return response.status_code, response.data["error"]


@pytest.mark.parametrize(
    ("exc_class", "status", "code"),
    [
        (ApplicationError, 400, "application_error"),
        (ValidationFailed, 400, "validation_error"),
        (NotFound, 404, "not_found"),
        (PermissionDeniedError, 403, "permission_denied"),
        (Conflict, 409, "conflict"),
    ],
)
def test_application_errors_keep_their_status_code_and_default_message(exc_class, status, code):
    assert handle(exc_class()) == (status, {"code": code, "message": exc_class.default_message, "details": {}})


def test_application_error_message_code_and_details_pass_through():
    exc = Conflict("This domain is already in use.", code="domain_exists", details={"domain": "acme.localhost"})

    assert handle(exc) == (
        409,
        {"code": "domain_exists", "message": "This domain is already in use.", "details": {"domain": "acme.localhost"}},
    )
    assert Conflict.code == "conflict"  # the override is per instance, not on the class


def test_subclass_of_a_subclass_inherits_status():
    class RoleInUse(Conflict):
        code = "role_in_use"

    assert handle(RoleInUse("Role is assigned."))[0] == 409
    assert handle(RoleInUse("Role is assigned."))[1]["code"] == "role_in_use"


def test_django_validation_error_with_fields():
    status, error = handle(DjangoValidationError({"email": ["Enter a valid email address."]}))

    assert status == 400
    assert error == {
        "code": "validation_error",
        "message": "The input is not valid.",
        "details": {"email": ["Enter a valid email address."]},
    }


def test_django_validation_error_without_fields():
    status, error = handle(DjangoValidationError("Too short."))

    assert (status, error["code"], error["details"]) == (400, "validation_error", {"non_field_errors": ["Too short."]})


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (Http404("gone"), 404, "not_found"),
        (DjangoPermissionDenied(), 403, "permission_denied"),
        (drf.ParseError(), 400, "parse_error"),
        (drf.AuthenticationFailed(), 401, "authentication_failed"),
        (drf.NotAuthenticated(), 401, "not_authenticated"),
        (drf.PermissionDenied(), 403, "permission_denied"),
        (drf.NotFound(), 404, "not_found"),
        (drf.MethodNotAllowed("PUT"), 405, "method_not_allowed"),
        (drf.NotAcceptable(), 406, "not_acceptable"),
        (drf.UnsupportedMediaType("text/csv"), 415, "unsupported_media_type"),
        (RequestDataTooBig(), 413, "payload_too_large"),
        (TooManyFieldsSent(), 400, "bad_request"),
        (DisallowedHost(), 400, "bad_request"),
        (BadRequest(), 400, "bad_request"),
    ],
)
def test_django_and_drf_exceptions_get_stable_codes(exc, status, code):
    got_status, error = handle(exc)

    assert (got_status, error["code"]) == (status, code)
    assert error["details"] == {}
    assert error["message"]


def test_drf_validation_error_details_are_the_field_errors():
    status, error = handle(drf.ValidationError({"name": ["This field is required."]}))

    assert status == 400
    assert error["code"] == "validation_error"
    assert error["details"] == {"name": ["This field is required."]}


def test_throttled_carries_retry_after():
    response = api_exception_handler(drf.Throttled(wait=12), {})

    assert response.status_code == 429
    assert response.data["error"]["code"] == "rate_limited"
    assert response.data["error"]["details"] == {"retry_after": 12}
    assert response["Retry-After"] == "12"


def test_unexpected_exception_is_internal_error_without_internals(caplog):
    status, error = handle(KeyError("secret-column"))

    assert status == 500
    assert error == {"code": "internal_error", "message": "An unexpected error occurred.", "details": {}}
    assert "secret-column" not in str(error)
    assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)  # logged with the traceback


def test_error_body_defaults_details_to_empty_dict():
    assert error_body("x", "y") == {"error": {"code": "x", "message": "y", "details": {}}}
    assert error_body("x", "y", []) == {"error": {"code": "x", "message": "y", "details": []}}
