"""Fixtures for the platform side: an operator in the public schema (super_admin) and a
client logged in to the platform admin on the public domain. Both live in the ``db``
transaction and vanish with it."""

from __future__ import annotations

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from conftest import SEED_PASSWORD

PLATFORM_HOST = "localhost"
OPERATOR_EMAIL = "operator@platform.test"


def audit_rows(schema: str, **filters):
    """The audit rows of one schema (``public`` for platform events), newest first."""
    from apps.audit.models import AuditLog

    with schema_context(schema):
        return list(AuditLog.objects.filter(**filters).order_by("-created_at"))


@pytest.fixture
def platform_operator(db):
    from apps.accounts.services import user_create

    with schema_context("public"):
        return user_create(email=OPERATOR_EMAIL, password=SEED_PASSWORD, roles=["super_admin"], email_verified=True)


@pytest.fixture
def platform_client(platform_operator) -> Client:
    client = Client(HTTP_HOST=PLATFORM_HOST)
    with schema_context("public"):
        assert client.login(email=OPERATOR_EMAIL, password=SEED_PASSWORD)
    return client
