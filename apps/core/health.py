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


def _milvus_list(timeout: float) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=settings.MILVUS_URI, token=settings.MILVUS_TOKEN, timeout=timeout)
    try:
        client.list_collections(timeout=timeout)
    finally:
        client.close()


def check_milvus() -> None:
    """A new client per check (a cached one could hide a server that went away), asked once
    more within the same budget if the first attempt fails: pymilvus shares one gRPC channel
    per address, Milvus Lite drops it after a quiet minute (``too_many_pings``), and the
    first client on it afterwards fails once while the channel reconnects (bench/README.md,
    ingestion, "Seen on the way")."""
    budget = settings.HEALTHCHECK_TIMEOUT
    started = time.monotonic()
    try:
        _milvus_list(budget)
    except Exception:
        remaining = budget - (time.monotonic() - started)
        if remaining < 0.2:
            raise
        _milvus_list(remaining)


CHECKS: dict[str, Callable[[], None]] = {
    "postgres": check_postgres,
    "redis": check_redis,
    "milvus": check_milvus,
}


def health_report() -> dict:
    services = {name: _timed(check) for name, check in CHECKS.items()}
    status = "ok" if all(s["status"] == "ok" for s in services.values()) else "degraded"
    return {"status": status, "services": services}
