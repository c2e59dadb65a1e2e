"""``core.tenant_ping`` on a real Celery worker process: the tenant schema travels with
the task (tenant-schemas-celery) and the worker sees that tenant's data only."""

from __future__ import annotations

import pytest
from django_tenants.utils import schema_context

from apps.core.tasks import tenant_ping
from conftest import SYSTEM_ROLE_NAMES, seed_email

pytestmark = pytest.mark.slow

RESULT_TIMEOUT = 30


def run_in(schema: str) -> dict:
    with schema_context(schema):
        result = tenant_ping.delay()
    try:
        return result.get(timeout=RESULT_TIMEOUT)
    finally:
        result.forget()


def test_task_runs_in_the_acme_schema(committed_db, celery_worker):
    result = run_in("acme")

    assert result["schema"] == "acme"
    assert {seed_email(role, "acme") for role in SYSTEM_ROLE_NAMES} <= set(result["users"])
    assert result["roles"] >= len(SYSTEM_ROLE_NAMES)


def test_task_runs_in_the_globex_schema_and_sees_no_acme_data(committed_db, celery_worker):
    result = run_in("globex")

    assert result["schema"] == "globex"
    assert {seed_email(role, "globex") for role in SYSTEM_ROLE_NAMES} <= set(result["users"])
    assert not [email for email in result["users"] if email.endswith("@acme.test")]


def test_consecutive_tasks_do_not_leak_the_previous_schema(committed_db, celery_worker):
    """The worker is one process running tasks one after the other: each must switch."""
    schemas = [run_in(schema)["schema"] for schema in ("acme", "globex", "acme")]

    assert schemas == ["acme", "globex", "acme"]


def test_task_sent_from_the_public_schema_runs_in_public(committed_db, celery_worker):
    result = run_in("public")

    assert result["schema"] == "public"
    assert not [email for email in result["users"] if email.endswith(".test")]
