"""Health checks for the services Zhida depends on, each reported separately so an
operator sees which one is down. Each check is bounded by HEALTHCHECK_TIMEOUT."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection


def _timed(check: Callable[[], None]) -> dict:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
        return {
            "status": "down",
            "error": f"{type(exc).__name__}: {exc}"[:300],
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def check_postgres() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_redis() -> None:
    from django_redis import get_redis_connection

    get_redis_connection("default").ping()


def check_milvus() -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=settings.MILVUS_URI, token=settings.MILVUS_TOKEN, timeout=settings.HEALTHCHECK_TIMEOUT)
    try:
        client.list_collections(timeout=settings.HEALTHCHECK_TIMEOUT)
    finally:
        client.close()


CHECKS: dict[str, Callable[[], None]] = {
    "postgres": check_postgres,
    "redis": check_redis,
    "milvus": check_milvus,
}


def health_report() -> dict:
    services = {name: _timed(check) for name, check in CHECKS.items()}
    status = "ok" if all(s["status"] == "ok" for s in services.values()) else "degraded"
    return {"status": status, "services": services}
