"""Shared test fixtures: the real PostgreSQL (one schema per tenant) and Redis.

Built once per session and committed: the public tenant, the template schema, and three
tenants — ``acme`` and ``globex`` (active) and ``initech`` (suspended) — each with one
user per system role (``<role>@<schema>.test``, password ``SEED_PASSWORD``). Ordinary tests
use the ``db`` fixture and roll back whatever they change; tests whose code runs on other
threads or processes (websockets, Celery worker) use ``committed_db`` and must only read
or clean up after themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

SEED_PASSWORD = "Seed-Pass-2026!"
SYSTEM_ROLE_NAMES = ["super_admin", "tenant_admin", "knowledge_manager", "agent", "user"]
TEST_TENANTS = {
    "acme": ("Acme Corp", "acme.localhost", "active"),
    "globex": ("Globex Inc", "globex.localhost", "active"),
    "initech": ("Initech", "initech.localhost", "suspended"),
}


def seed_email(role: str, schema: str) -> str:
    return f"{role}@{schema}.test"


def _selection_needs_database(items) -> bool:
    """pytest-django's rule for creating the test database (a selected test uses the
    ``django_db`` marker or the ``db``/``transactional_db``/``live_server`` fixtures)."""
    db_fixtures = {"db", "transactional_db", "live_server"}
    return any(
        item.get_closest_marker("django_db") is not None or db_fixtures & set(getattr(item, "fixturenames", ()))
        for item in items
    )


@pytest.fixture(scope="session")
def _test_database_for_committed_db(request, django_test_environment, django_db_blocker):
    """pytest-django creates the test database only if a selected test asks for ``db``; a run
    of only ``committed_db`` tests would otherwise seed and test the *configured* database
    (DATABASE_URL). Create it ourselves then."""
    if _selection_needs_database(request.session.items) or connection.settings_dict["NAME"].startswith("test_"):
        yield
        return
    from django.test.utils import setup_databases, teardown_databases

    verbosity = request.config.option.verbose
    with django_db_blocker.unblock():
        created = setup_databases(verbosity=verbosity, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        teardown_databases(created, verbosity=verbosity)


@pytest.fixture(scope="session")
def django_db_setup(_test_database_for_committed_db, django_db_setup, django_db_blocker):
    assert connection.settings_dict["NAME"].startswith("test_"), connection.settings_dict["NAME"]
    with django_db_blocker.unblock():
        from apps.accounts.services import user_create
        from apps.tenancy.models import Tenant
        from apps.tenancy.services import (
            public_tenant_ensure,
            tenant_create,
            tenant_suspend,
            tenant_template_ensure,
        )

        public_tenant_ensure(domain="localhost")
        tenant_template_ensure()
        for schema, (name, domain, status) in TEST_TENANTS.items():
            tenant = tenant_create(name=name, schema_name=schema, domain=domain)
            with schema_context(schema):
                for role in SYSTEM_ROLE_NAMES:
                    user_create(email=seed_email(role, schema), password=SEED_PASSWORD, roles=[role])
            if status == "suspended":
                tenant_suspend(tenant=Tenant.objects.get(pk=tenant.pk), actor=None)
        connection.set_schema_to_public()


@pytest.fixture(autouse=True)
def _public_schema_after_test():
    yield
    connection.set_schema_to_public()


@pytest.fixture
def committed_db(django_db_setup, django_db_blocker):
    """Database access without a wrapping transaction (for code on other threads)."""
    with django_db_blocker.unblock():
        yield
    connection.set_schema_to_public()


def _tenant(schema: str):
    from apps.tenancy.models import Tenant

    with schema_context("public"):
        return Tenant.objects.get(schema_name=schema)


@pytest.fixture
def acme(db):
    return _tenant("acme")


@pytest.fixture
def globex(db):
    return _tenant("globex")


@pytest.fixture
def initech(db):
    return _tenant("initech")


def tenant_host(tenant) -> str:
    return TEST_TENANTS[tenant.schema_name][1]


@pytest.fixture
def seed_user():
    """``seed_user(tenant, role)`` → the committed seed user of that role in that tenant."""

    def get(tenant, role: str):
        from apps.accounts.models import User

        with schema_context(tenant.schema_name):
            return User.objects.get(email=seed_email(role, tenant.schema_name))

    return get


@pytest.fixture
def client_for():
    """``client_for(tenant, user=None)`` → a Django test client on that tenant's domain,
    logged in (real session in Redis) when a user is given."""

    def make(tenant, user=None) -> Client:
        client = Client(HTTP_HOST=tenant_host(tenant))
        if user is not None:
            with schema_context(tenant.schema_name):  # auth and the session key are per schema
                assert client.login(email=user.email, password=SEED_PASSWORD), f"login failed for {user.email}"
        return client

    return make


@pytest.fixture
def api_for():
    """``api_for(tenant, user=None, api_key=None)`` → a DRF APIClient on that tenant's domain,
    authenticated by force (user) or with an ``Api-Key`` header."""

    def make(tenant, user=None, api_key: str | None = None) -> APIClient:
        client = APIClient(HTTP_HOST=tenant_host(tenant))
        if user is not None:
            client.force_authenticate(user=user)
        if api_key is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key}")
        return client

    return make


# --------------------------------------------------------------------------------------
# Milvus Lite: one real server per test session, started on first use
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """One Milvus Lite server for the session (never paused or killed); yields its URI."""
    from apps.core.testing import start_milvus

    server = start_milvus(tmp_path_factory.mktemp("milvus"))
    yield server.url
    server.stop()


@pytest.fixture
def milvus_up(settings, milvus_server) -> str:
    settings.MILVUS_URI = milvus_server
    return milvus_server


# --------------------------------------------------------------------------------------
# A real Celery worker (on the test database, broker and Milvus Lite server)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def celery_worker(django_db_setup, milvus_server, tmp_path_factory) -> Iterator[str]:
    """A ``celery worker`` subprocess for this test module; yields its node name."""
    from apps.core.testing import start_celery_worker, stop_process

    process, hostname = start_celery_worker(tmp_path_factory.mktemp("celery"), env_extra={"MILVUS_URI": milvus_server})
    yield hostname
    stop_process(process, timeout=30)


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """channels_redis keeps per-event-loop state (locks, pools) in the layer object, and
    pytest-asyncio gives each test its own loop: a layer made in one test's loop must not be
    reused in the next (RuntimeError: Lock bound to a different event loop)."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()
