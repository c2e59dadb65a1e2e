"""/healthz against real services: PostgreSQL (the test database), Redis (a private
redis-server this module may kill) and Milvus Lite (a server started for the session)."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from apps.core.tests.conftest import cache_location, free_port

# HEALTHCHECK_TIMEOUT and the Redis socket timeouts are 1–2 s: a report must come back well
# before a load balancer's probe gives up, even with a service down.
REPORT_WITHIN_SECONDS = 6.0


def healthz(host: str = "acme.localhost"):
    started = time.monotonic()
    response = Client(HTTP_HOST=host).get("/healthz")
    return response, time.monotonic() - started


def services(response) -> dict[str, str]:
    return {name: s["status"] for name, s in response.json()["services"].items()}


@pytest.mark.slow
def test_all_services_ok(db, milvus_up):
    response, elapsed = healthz()

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert services(response) == {"postgres": "ok", "redis": "ok", "milvus": "ok"}
    assert all(isinstance(s["latency_ms"], float) for s in body["services"].values())
    assert elapsed < REPORT_WITHIN_SECONDS


@pytest.mark.slow
def test_redis_killed_is_reported_down(db, milvus_up, redis_server):
    with cache_location(redis_server.url):
        response, _ = healthz()
        assert response.status_code == 200, response.content
        assert services(response)["redis"] == "ok"

        redis_server.kill()
        response, elapsed = healthz()

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert services(response) == {"postgres": "ok", "redis": "down", "milvus": "ok"}
    assert "ConnectionError" in body["services"]["redis"]["error"]
    assert str(redis_server.port) in body["services"]["redis"]["error"]
    assert elapsed < REPORT_WITHIN_SECONDS


@pytest.mark.slow
def test_cache_location_is_restored_after_override(db, milvus_up, redis_server):
    """The private server's settings must not leak into later tests (the pool is per URL)."""
    with cache_location(redis_server.url):
        redis_server.kill()
        assert services(healthz()[0])["redis"] == "down"

    response, _ = healthz()
    assert response.status_code == 200
    assert services(response)["redis"] == "ok"


def test_milvus_is_asked_twice_within_the_budget_before_it_is_reported_down(db, milvus_up, monkeypatch):
    """The first client on a channel the server dropped while idle fails once (see
    check_milvus): that is not an outage."""
    from pymilvus import MilvusClient

    calls = []
    real = MilvusClient.list_collections

    def flaky(self, *args, **kwargs):
        calls.append(kwargs.get("timeout"))
        if len(calls) == 1:
            raise ConnectionError("Fail connecting to server")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "list_collections", flaky)

    response, _ = healthz()

    assert services(response)["milvus"] == "ok"
    assert len(calls) == 2 and calls[1] <= calls[0]  # the second attempt gets what is left


def test_milvus_unreachable_is_reported_down(db, settings):
    settings.MILVUS_URI = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    response, elapsed = healthz()

    assert response.status_code == 503
    body = response.json()
    assert services(response) == {"postgres": "ok", "redis": "ok", "milvus": "down"}
    assert body["services"]["milvus"]["error"]
    assert elapsed < REPORT_WITHIN_SECONDS


@pytest.mark.slow
def test_hung_redis_is_reported_down_within_the_socket_timeout(db, milvus_up, redis_server):
    with cache_location(redis_server.url):
        assert services(healthz()[0])["redis"] == "ok"  # a pooled connection exists
        redis_server.pause()
        try:
            response, elapsed = healthz()
        finally:
            redis_server.resume()

    assert response.status_code == 503
    assert services(response) == {"postgres": "ok", "redis": "down", "milvus": "ok"}
    assert "Timeout" in response.json()["services"]["redis"]["error"]
    assert elapsed < REPORT_WITHIN_SECONDS


@pytest.mark.slow
def test_hung_milvus_is_reported_down_within_the_health_timeout(db, settings, private_milvus):
    settings.MILVUS_URI = private_milvus.url
    assert services(healthz()[0])["milvus"] == "ok"

    private_milvus.pause()
    try:
        response, elapsed = healthz()
    finally:
        private_milvus.resume()

    assert response.status_code == 503
    assert services(response) == {"postgres": "ok", "redis": "ok", "milvus": "down"}
    assert "DEADLINE_EXCEEDED" in response.json()["services"]["milvus"]["error"]
    assert settings.HEALTHCHECK_TIMEOUT <= elapsed < REPORT_WITHIN_SECONDS


@pytest.mark.slow
def test_milvus_killed_is_reported_down(db, settings, private_milvus):
    settings.MILVUS_URI = private_milvus.url
    assert services(healthz()[0])["milvus"] == "ok"

    private_milvus.kill()
    response, elapsed = healthz()

    assert response.status_code == 503
    assert services(response) == {"postgres": "ok", "redis": "ok", "milvus": "down"}
    assert elapsed < REPORT_WITHIN_SECONDS


@pytest.mark.slow
@pytest.mark.parametrize(
    "host",
    [
        "nowhere.example.com",  # no tenant, not even in ALLOWED_HOSTS
        "initech.localhost",  # suspended tenant
        "localhost",  # the platform (public) domain
    ],
)
def test_health_answers_on_any_host(db, milvus_up, host):
    response, _ = healthz(host)

    assert response.status_code == 200, response.content
    assert services(response) == {"postgres": "ok", "redis": "ok", "milvus": "ok"}


@pytest.mark.slow
def test_health_with_trailing_slash(db, milvus_up):
    response = Client(HTTP_HOST="acme.localhost").get("/healthz/")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
