import logging

from django.db import connection

from apps.core.context import request_context_get


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` and ``tenant`` (the active schema) to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_context_get().request_id
        try:
            record.tenant = getattr(connection, "schema_name", "-")
        except Exception:  # noqa: BLE001 - logging must never fail
            record.tenant = "-"
        return True
