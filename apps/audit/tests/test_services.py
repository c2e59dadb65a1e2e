import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django_tenants.utils import schema_context

from apps.accounts.authentication import ApiKeyPrincipal
from apps.accounts.models import ApiKey, User
from apps.accounts.services import api_key_create, user_create
from apps.audit.models import AuditLog
from apps.audit.services import actor_describe, audit_log_record, platform_audit_record
from apps.core.context import RequestContext, request_context_reset, request_context_set
from apps.tenancy.tests.conftest import audit_rows


class Boom(Exception):
    pass


@pytest.fixture
def request_context():
    """Set the per-request context (ip, user agent) as RequestContextMiddleware would."""
    tokens = []

    def set_(**kwargs):
        tokens.append(request_context_set(RequestContext(**kwargs)))

    yield set_
    for token in reversed(tokens):
        request_context_reset(token)


# --- one transaction with the change -----------------------------------------------------------


def test_the_audit_row_is_written_with_the_change(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context("acme"):
        user = user_create(email="new@acme.test", roles=["agent"], actor=admin)
        (row,) = AuditLog.objects.filter(action="user.created", resource_id=str(user.pk))

    assert (row.actor_id, row.actor_label, row.resource_type) == (admin.pk, "tenant_admin@acme.test", "user")
    assert row.new_values["email"] == "new@acme.test" and row.new_values["roles"] == ["agent"]
    assert row.old_values is None
    # written in acme's schema only
    assert audit_rows("globex", resource_id=str(user.pk)) == []
    assert audit_rows("public", resource_id=str(user.pk)) == []


def test_the_audit_row_rolls_back_with_the_change(acme):
    with schema_context("acme"):
        audit_before = AuditLog.objects.count()

        with pytest.raises(Boom), transaction.atomic():
            user = user_create(email="ghost@acme.test", roles=["user"], actor=None)
            assert AuditLog.objects.filter(resource_id=str(user.pk)).exists()  # there inside...
            raise Boom

        assert not User.objects.filter(email="ghost@acme.test").exists()  # ...gone with the user
        assert not AuditLog.objects.filter(resource_id=str(user.pk)).exists()
        assert AuditLog.objects.count() == audit_before


def test_a_failing_service_leaves_no_audit_row(acme):
    with schema_context("acme"):
        audit_before = AuditLog.objects.count()

        with pytest.raises(Exception):  # noqa: B017 - whatever the service raises
            user_create(email="agent@acme.test", roles=["agent"], actor=None)  # already exists

        assert AuditLog.objects.count() == audit_before


def test_audit_log_record_refuses_to_run_outside_a_transaction(committed_db):
    with schema_context("acme"):
        before = AuditLog.objects.count()
        assert not connection.in_atomic_block

        with pytest.raises(RuntimeError, match="inside the changing transaction"):
            audit_log_record(actor=None, action="probe.outside", resource_type="probe")

        assert AuditLog.objects.count() == before
        assert not AuditLog.objects.filter(action="probe.outside").exists()


def test_platform_audit_record_writes_to_public_from_a_tenant_schema(acme):
    with schema_context("acme"):
        row = platform_audit_record(actor=None, action="probe.platform", resource_type="probe", resource_id="p1")
        assert connection.schema_name == "acme"  # the caller's schema is restored
        assert not AuditLog.objects.filter(action="probe.platform").exists()

    assert [r.pk for r in audit_rows("public", action="probe.platform")] == [row.pk]


def test_platform_audit_record_rolls_back_with_the_caller(db):
    with pytest.raises(Boom), transaction.atomic():
        platform_audit_record(actor=None, action="probe.rollback", resource_type="probe")
        raise Boom

    assert audit_rows("public", action="probe.rollback") == []


# --- values -------------------------------------------------------------------------------------


def test_secrets_are_masked_in_old_and_new_values(acme):
    with schema_context("acme"), transaction.atomic():
        row = audit_log_record(
            actor=None,
            action="probe.secrets",
            resource_type="probe",
            old_values={"password": "old-pass", "name": "visible"},
            new_values={
                "password": "hunter22",
                "key": "zk_abc_secret",
                "key_hash": "f" * 64,
                "secret": "s",
                "token": "t",
                "api_key": "zk_x",
                "admin_password": "p",
                "client_secret": "c",
                "access_token": "a",
                "private_key": "-----BEGIN",
                "nested": {"Password": "p", "ok": 1, "items": [{"token": "t", "prefix": "abc"}]},
                "prefix": "abc",
            },
        )
        row.refresh_from_db()

    assert row.old_values == {"password": "***", "name": "visible"}
    assert row.new_values == {
        "password": "***",
        "key": "***",
        "key_hash": "***",
        "secret": "***",
        "token": "***",
        "api_key": "***",
        "admin_password": "***",
        "client_secret": "***",
        "access_token": "***",
        "private_key": "***",
        "nested": {"Password": "***", "ok": 1, "items": [{"token": "***", "prefix": "abc"}]},
        "prefix": "abc",
    }


def test_an_issued_api_key_never_reaches_the_audit_log(acme, seed_user):
    with schema_context("acme"):
        issued = api_key_create(name="ci", roles=["agent"], actor=seed_user(acme, "tenant_admin"))
        (row,) = AuditLog.objects.filter(action="api_key.created", resource_id=str(issued.api_key.pk))

    assert row.new_values["prefix"] == issued.api_key.prefix
    secret = issued.key.rsplit("_", 1)[1]
    assert secret not in str(row.new_values) and issued.api_key.key_hash not in str(row.new_values)


def test_values_are_stored_as_json(acme, seed_user):
    some_id = uuid.uuid4()
    user = seed_user(acme, "agent")
    with schema_context("acme"), transaction.atomic():
        row = audit_log_record(
            actor=None,
            action="probe.json",
            resource_type="probe",
            resource_id=some_id,
            new_values={
                "id": some_id,
                "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                "day": date(2026, 1, 2),
                "price": Decimal("99.90"),
                "user": user,
                "tags": ("a", "b"),
            },
        )
        row.refresh_from_db()

    assert row.resource_id == str(some_id)
    assert row.new_values == {
        "id": str(some_id),
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "price": "99.90",
        "user": str(user.pk),
        "tags": ["a", "b"],
    }


def test_values_that_are_not_json_fail_before_anything_is_written(acme):
    with schema_context("acme"):
        before = AuditLog.objects.count()
        with pytest.raises(TypeError), transaction.atomic():
            audit_log_record(actor=None, action="probe.bad", resource_type="probe", new_values={"x": object()})
        assert AuditLog.objects.count() == before


def test_actor_describe(acme, seed_user):
    user = seed_user(acme, "agent")
    principal = ApiKeyPrincipal(api_key=ApiKey(name="ci", prefix="abcd1234"))

    assert actor_describe(None) == (None, "system")
    assert actor_describe(user) == (user, "agent@acme.test")
    assert actor_describe(principal) == (None, "api_key:ci (abcd1234)")


# --- request context -----------------------------------------------------------------------------


def test_ip_and_user_agent_come_from_the_request(acme, seed_user, api_for):
    user = seed_user(acme, "agent")
    old_first_name = user.first_name

    response = api_for(acme, user).patch(
        "/api/v1/me",
        {"first_name": "Ada"},
        format="json",
        REMOTE_ADDR="203.0.113.7",
        HTTP_USER_AGENT="ZhidaTest/1.0 (audit)",
    )

    assert response.status_code == 200, response.content
    with schema_context("acme"):
        (row,) = AuditLog.objects.filter(action="user.updated", resource_id=str(user.pk))
    assert row.ip_address == "203.0.113.7"
    assert row.user_agent == "ZhidaTest/1.0 (audit)"
    assert (row.actor_id, row.actor_label) == (user.pk, "agent@acme.test")
    assert row.old_values == {"first_name": old_first_name} and row.new_values == {"first_name": "Ada"}
    assert audit_rows("globex", action="user.updated", resource_id=str(user.pk)) == []


def test_forwarded_for_is_ignored_without_trusted_proxies(acme, seed_user, api_for):
    """X-Forwarded-For is client-controlled: with no proxy configured it cannot spoof the IP."""
    user = seed_user(acme, "agent")

    api_for(acme, user).patch(
        "/api/v1/me",
        {"last_name": "Lovelace"},
        format="json",
        HTTP_X_FORWARDED_FOR="198.51.100.9",
        REMOTE_ADDR="203.0.113.7",
    )

    with schema_context("acme"):
        assert AuditLog.objects.get(action="user.updated", resource_id=str(user.pk)).ip_address == "203.0.113.7"


def test_the_address_seen_by_the_trusted_proxy_is_recorded(acme, seed_user, api_for, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    user = seed_user(acme, "agent")

    api_for(acme, user).patch(
        "/api/v1/me", {"last_name": "Lovelace"}, format="json", HTTP_X_FORWARDED_FOR="10.9.9.9, 2001:db8::1"
    )

    with schema_context("acme"):
        assert AuditLog.objects.get(action="user.updated", resource_id=str(user.pk)).ip_address == "2001:db8::1"


def test_a_forwarded_address_that_is_not_an_ip_does_not_break_the_change(acme, seed_user, api_for, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    user = seed_user(acme, "agent")

    response = api_for(acme, user).patch(
        "/api/v1/me", {"last_name": "Lovelace"}, format="json", HTTP_X_FORWARDED_FOR="10.0.0.1, unknown"
    )

    assert response.status_code == 200, response.content
    with schema_context("acme"):
        row = AuditLog.objects.get(action="user.updated", resource_id=str(user.pk))
        assert User.objects.get(pk=user.pk).last_name == "Lovelace"
    assert row.ip_address is None


def test_outside_a_request_there_is_no_ip_or_user_agent(acme):
    with schema_context("acme"), transaction.atomic():
        row = audit_log_record(actor=None, action="probe.cli", resource_type="probe")

    assert (row.ip_address, row.user_agent, row.actor_label) == (None, "", "system")


def test_request_context_is_read_at_write_time(acme, request_context):
    request_context(ip_address="198.51.100.4", user_agent="worker")

    with schema_context("acme"), transaction.atomic():
        row = audit_log_record(actor="api_key:ci", action="probe.ctx", resource_type="probe")
        row.refresh_from_db()

    assert (row.ip_address, row.user_agent, row.actor_label) == ("198.51.100.4", "worker", "api_key:ci")
