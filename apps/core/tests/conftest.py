"""Fixtures for apps/core: real service processes (Milvus Lite, a private Redis, a Celery
worker) on free ports, and websocket credentials (a logged-in session cookie, an API key).

Every process is started by the fixture that owns it and ended by that fixture, by its
own pid. What these fixtures write to the committed database or to Redis (sessions, API
keys and their audit rows) is removed afterwards."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings
from django_tenants.utils import schema_context

from apps.core.testing import (
    STARTUP_TIMEOUT,
    ServiceProcess,
    free_port,
    start_milvus,
    wait_for,
)
from conftest import SEED_PASSWORD, seed_email


# --------------------------------------------------------------------------------------
# Milvus Lite
# --------------------------------------------------------------------------------------
@pytest.fixture
def private_milvus(tmp_path) -> Iterator[ServiceProcess]:
    """A Milvus Lite server of this test's own, which the test may pause or kill."""
    server = start_milvus(tmp_path)
    yield server
    server.stop()


# --------------------------------------------------------------------------------------
# A private Redis server (so a test may kill it)
# --------------------------------------------------------------------------------------
@pytest.fixture
def redis_server(tmp_path) -> Iterator[ServiceProcess]:
    """A private ``redis-server`` (no persistence) that the test may pause or kill."""
    import redis

    port = free_port()
    log = tmp_path / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    wait_for(
        lambda: redis.Redis(port=port, socket_timeout=1).ping(),
        timeout=STARTUP_TIMEOUT,
        what="redis-server",
        process=process,
        log=log,
    )
    server = ServiceProcess(process=process, port=port, url=f"redis://127.0.0.1:{port}/0")
    yield server
    server.stop()


@contextmanager
def cache_location(url: str) -> Iterator[None]:
    """Point the default cache (django-redis) at ``url``.

    ``override_settings(CACHES=...)`` makes Django drop its cache handlers (the
    ``setting_changed`` receiver), so the next ``caches["default"]`` builds a new
    django-redis client. That client's connection pool comes from
    ``ConnectionFactory._pools``, a process-wide dict keyed by URL: the pool for ``url`` is
    disconnected and forgotten on exit so no later test inherits its dead sockets."""
    from django_redis.pool import ConnectionFactory

    caches = copy.deepcopy(settings.CACHES)
    caches["default"]["LOCATION"] = url
    try:
        with override_settings(CACHES=caches):
            yield
    finally:
        pool = ConnectionFactory._pools.pop(url, None)
        if pool is not None:
            pool.disconnect()


# --------------------------------------------------------------------------------------
# Websocket credentials (committed: the consumer reads them on another thread)
# --------------------------------------------------------------------------------------
@pytest.fixture
def session_cookie_for(committed_db) -> Iterator[Callable[[str, str], str]]:
    """``session_cookie_for(schema, role)`` → the ``sessionid`` of a real login (django.test
    Client on the tenant's host, session in Redis). Logged out and ``last_login`` restored
    afterwards."""
    from apps.accounts.models import User

    made: list[tuple[str, Client, User]] = []

    def login(schema: str, role: str) -> str:
        with schema_context(schema):
            user = User.objects.get(email=seed_email(role, schema))
            client = Client(HTTP_HOST=f"{schema}.localhost")
            assert client.login(email=user.email, password=SEED_PASSWORD)
        made.append((schema, client, user))
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    yield login
    for schema, client, user in made:
        with schema_context(schema):
            client.logout()
            User.objects.filter(pk=user.pk).update(last_login=user.last_login)


@pytest.fixture
def acme_api_key(committed_db) -> Iterator[str]:
    """A committed API key (role ``agent``) in acme; deleted with its audit rows afterwards."""
    from apps.accounts.models import ApiKey
    from apps.accounts.services import api_key_create
    from apps.audit.models import AuditLog

    with schema_context("acme"):
        issued = api_key_create(name="ws-test", roles=["agent"], actor=None)
    yield issued.key
    with schema_context("acme"):
        AuditLog.objects.filter(resource_type="api_key", resource_id=str(issued.api_key.pk)).delete()
        ApiKey.objects.filter(pk=issued.api_key.pk).delete()
