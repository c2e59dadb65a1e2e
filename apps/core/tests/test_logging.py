"""Structured logging: with LOG_FORMAT=json every record is one JSON object carrying the
request id and the tenant schema; every response carries X-Request-ID."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.test import Client, override_settings
from django_tenants.utils import schema_context

from apps.core.context import RequestContext, request_context_get, request_context_reset, request_context_set


def json_handler(stream: io.StringIO) -> logging.Handler:
    """A handler built from the ``json`` formatter and ``context`` filter exactly as the
    LOGGING setting declares them (without reconfiguring the process's logging)."""
    configurator = logging.config.DictConfigurator(settings.LOGGING)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(configurator.configure_formatter(dict(settings.LOGGING["formatters"]["json"])))
    handler.addFilter(configurator.configure_filter(dict(settings.LOGGING["filters"]["context"])))
    return handler


@contextmanager
def captured(logger_name: str) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = json_handler(stream)
    logger = logging.getLogger(logger_name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # each line parses on its own


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "env", "expected"),
    [
        ("config.settings.production", {}, "json"),  # the default
        ("config.settings.local", {"LOG_FORMAT": "json"}, "json"),
        ("config.settings.local", {}, "plain"),
    ],
)
def test_settings_choose_the_formatter_from_log_format(module, env, expected):
    """A fresh process with the given settings logs one line through the configured
    console handler (the test process's own LOGGING was changed to plain by test.py)."""
    code = (
        "import django, logging; django.setup(); logging.getLogger('zhida.test').warning('hello from %s', 'settings')"
    )
    environment = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    environment.update(
        DJANGO_SETTINGS_MODULE=module, DJANGO_SECRET_KEY="test-only", PYTHONPATH=str(settings.BASE_DIR), **env
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=60, check=True
    )

    [line] = [line for line in proc.stderr.splitlines() if "hello from settings" in line]
    if expected == "json":
        record = json.loads(line)
        assert record["message"] == "hello from settings"
        assert record["level"] == "WARNING"
        assert record["request_id"] == "-"
        assert record["tenant"] == "public"
    else:
        assert "[public -] hello from settings" in line


def test_record_is_one_json_object_with_request_id_and_tenant():
    token = request_context_set(RequestContext(request_id="req-123", ip_address="10.0.0.1"))
    try:
        with captured("zhida.test") as stream, schema_context("acme"):
            logging.getLogger("zhida.test").info("document %s indexed", "d1")
    finally:
        request_context_reset(token)

    [record] = lines(stream)
    assert record["message"] == "document d1 indexed"
    assert record["request_id"] == "req-123"
    assert record["tenant"] == "acme"
    assert record["level"] == "INFO"
    assert record["logger"] == "zhida.test"
    assert record["ts"]


def test_outside_a_request_the_fields_are_still_present():
    assert request_context_get().request_id == "-"
    with captured("zhida.test") as stream:
        logging.getLogger("zhida.test").warning("background work")

    [record] = lines(stream)
    assert record["request_id"] == "-"
    assert record["tenant"] == "public"


def test_multiline_messages_and_tracebacks_stay_on_one_line():
    with captured("zhida.test") as stream:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            logging.getLogger("zhida.test").exception("first line\nsecond line")

    [record] = lines(stream)
    assert record["message"] == "first line\nsecond line"
    assert "ValueError: bad" in record["exc_info"]


# --------------------------------------------------------------------------------------
# X-Request-ID on responses
# --------------------------------------------------------------------------------------
def test_response_gets_a_generated_request_id(acme, seed_user, client_for):
    response = client_for(acme, seed_user(acme, "agent")).get("/api/v1/me")

    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


def test_each_request_gets_its_own_id(acme, api_for):
    client = api_for(acme)
    first, second = client.get("/api/v1/me"), client.get("/api/v1/me")

    assert first["X-Request-ID"] != second["X-Request-ID"]


def test_incoming_request_id_is_echoed_and_bounded(acme, api_for):
    client = api_for(acme)

    assert client.get("/api/v1/me", HTTP_X_REQUEST_ID="trace-abc")["X-Request-ID"] == "trace-abc"
    assert client.get("/api/v1/me", HTTP_X_REQUEST_ID="x" * 500)["X-Request-ID"] == "x" * 64


@pytest.mark.parametrize("host", ["nowhere.localhost", "initech.localhost"])
def test_tenant_error_responses_carry_a_request_id(db, host):
    response = Client(HTTP_HOST=host).get("/api/v1/me")

    assert response.status_code in (403, 404)
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


def test_error_log_of_a_request_carries_its_id_and_tenant(acme):
    client = Client(HTTP_HOST="acme.localhost", raise_request_exception=False)
    with (
        override_settings(ROOT_URLCONF="apps.core.tests.urls_errors"),
        captured("apps.core.middleware") as stream,
    ):
        response = client.get("/api/v1/test/explode-plain", HTTP_X_REQUEST_ID="trace-500")

    assert response.status_code == 500
    assert response["X-Request-ID"] == "trace-500"
    [record] = lines(stream)
    assert record["level"] == "ERROR"
    assert record["request_id"] == "trace-500"
    assert record["tenant"] == "acme"
    assert "RuntimeError: boom" in record["exc_info"]
    assert request_context_get().request_id == "-"  # reset after the request
