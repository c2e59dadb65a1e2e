"""The audit log in both admin sites: read-only, filterable, and each site shows only its
own schema's rows."""

import pytest
from django.db import transaction
from django.test import RequestFactory
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.accounts.services import user_create
from apps.audit.admin import AuditLogAdmin
from apps.audit.models import AuditLog
from apps.audit.services import audit_log_record
from apps.core.admin_sites import platform_admin_site, tenant_admin_site

CHANGELIST = "/admin/audit/auditlog/"


def _rows(response) -> list[AuditLog]:
    assert response.status_code == 200, response.status_code
    return list(response.context["cl"].result_list)


def _probe(schema: str, action: str) -> AuditLog:
    with schema_context(schema), transaction.atomic():
        return audit_log_record(actor=None, action=action, resource_type="probe", resource_id=schema)


@pytest.fixture
def acme_admin_client(acme, seed_user, client_for):
    return client_for(acme, seed_user(acme, "tenant_admin"))


def test_tenant_admin_sees_the_tenant_audit_log(acme, acme_admin_client):
    rows = _rows(acme_admin_client.get(CHANGELIST))

    seed_emails = {f"{role}@acme.test" for role in ("super_admin", "tenant_admin", "agent")}
    assert seed_emails <= {r.new_values["email"] for r in rows if r.action == "user.created"}


def test_filter_by_action(acme, acme_admin_client):
    with schema_context("acme"):
        user = user_create(email="filtered@acme.test", roles=["user"], actor=None)

    rows = _rows(acme_admin_client.get(CHANGELIST, {"action": "user.created"}))
    assert rows and {r.action for r in rows} == {"user.created"}
    assert str(user.pk) in {r.resource_id for r in rows}

    assert _rows(acme_admin_client.get(CHANGELIST, {"action": "tenant.suspended"})) == []


@pytest.mark.parametrize(
    "query",
    [
        {"resource_type": "user"},
        {"actor_label": "system"},
        {"q": "user.created"},
        {"action": "user.created", "resource_type": "user", "o": "-1"},
    ],
)
def test_other_filters_and_search_load(acme, acme_admin_client, query):
    rows = _rows(acme_admin_client.get(CHANGELIST, query))

    assert rows and all(r.resource_type == "user" for r in rows)


def test_date_filter_and_date_hierarchy(acme, acme_admin_client):
    row = _probe("acme", "probe.date")
    changelist = acme_admin_client.get(CHANGELIST)
    cl = changelist.context["cl"]
    (date_filter,) = [spec for spec in cl.filter_specs if getattr(spec, "field_path", None) == "created_at"]
    today = next(c["query_string"] for c in date_filter.choices(cl) if "created_at__lt" in c["query_string"])

    assert row in _rows(acme_admin_client.get(f"{CHANGELIST}{today}"))

    local = timezone.localtime(row.created_at)
    drill = {"created_at__year": local.year, "created_at__month": local.month, "created_at__day": local.day}
    assert row in _rows(acme_admin_client.get(CHANGELIST, drill))
    assert _rows(acme_admin_client.get(CHANGELIST, {**drill, "created_at__year": local.year - 1})) == []


def test_each_tenant_sees_only_its_own_rows(acme, globex, acme_admin_client):
    mine = _probe("acme", "probe.mine")
    _probe("globex", "probe.theirs")
    platform = _probe("public", "probe.platform")

    assert _rows(acme_admin_client.get(CHANGELIST, {"action": "probe.mine"})) == [mine]
    assert _rows(acme_admin_client.get(CHANGELIST, {"action": "probe.theirs"})) == []
    assert _rows(acme_admin_client.get(CHANGELIST, {"action": "probe.platform"})) == []
    assert acme_admin_client.get(f"{CHANGELIST}{platform.pk}/change/").status_code == 302  # "does not exist"


def test_the_audit_log_is_read_only(acme, acme_admin_client):
    row = _probe("acme", "probe.readonly")
    detail = f"{CHANGELIST}{row.pk}/change/"

    view = acme_admin_client.get(detail)
    assert view.status_code == 200
    assert "probe.readonly" in view.content.decode()
    assert view.context["has_change_permission"] is False
    assert acme_admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert acme_admin_client.post(f"{CHANGELIST}add/", {"action": "forged"}).status_code == 403
    assert acme_admin_client.post(detail, {"action": "tampered"}).status_code == 403
    assert acme_admin_client.get(f"{CHANGELIST}{row.pk}/delete/").status_code == 403
    assert acme_admin_client.post(f"{CHANGELIST}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    response = acme_admin_client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [str(row.pk)]})
    assert response.status_code in (200, 302)

    with schema_context("acme"):
        stored = AuditLog.objects.get(pk=row.pk)
    assert stored.action == "probe.readonly"


def test_the_changelist_offers_no_bulk_actions(acme, acme_admin_client):
    response = acme_admin_client.get(CHANGELIST)

    assert response.context["action_form"] is None  # not even delete_selected
    assert 'name="action"' not in response.content.decode()


@pytest.mark.parametrize("site", [platform_admin_site, tenant_admin_site])
def test_model_admin_refuses_add_change_delete_to_everyone(site, platform_operator):
    model_admin = site._registry[AuditLog]
    request = RequestFactory().get("/")
    request.user = platform_operator  # holds "*"

    assert isinstance(model_admin, AuditLogAdmin)
    assert model_admin.has_view_permission(request)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)


@pytest.mark.parametrize("role", ["knowledge_manager", "agent", "user"])
def test_roles_without_audit_access_are_refused(acme, seed_user, client_for, role):
    client = client_for(acme, seed_user(acme, role))

    response = client.get(CHANGELIST)

    # 302 to the login page while the role reaches no admin model at all, 403 once it does
    assert response.status_code in (302, 403)
    assert "cl" not in (response.context or {})


# --- platform admin ----------------------------------------------------------------------------


def test_platform_operator_sees_tenants_and_the_platform_audit_log(platform_client, acme, initech):
    tenants = platform_client.get("/admin/tenancy/tenant/")
    assert tenants.status_code == 200
    assert {"acme", "initech"} <= {t.schema_name for t in tenants.context["cl"].result_list}

    created = _rows(platform_client.get(CHANGELIST, {"action": "tenant.created"}))
    assert {str(acme.pk), str(initech.pk)} <= {r.resource_id for r in created}

    suspended = _rows(platform_client.get(CHANGELIST, {"action": "tenant.suspended"}))
    assert str(initech.pk) in {r.resource_id for r in suspended}
    assert str(acme.pk) not in {r.resource_id for r in suspended}


def test_platform_audit_log_does_not_show_tenant_rows(platform_client, acme):
    _probe("acme", "probe.tenant_only")

    assert _rows(platform_client.get(CHANGELIST, {"action": "probe.tenant_only"})) == []
    # tenant users' creation rows live in the tenants' schemas
    assert _rows(platform_client.get(CHANGELIST, {"action": "user.created", "q": "acme.test"})) == []


def test_platform_action_rows_show_up_in_the_platform_audit_log(platform_client, platform_operator, globex):
    platform_client.post("/admin/tenancy/tenant/", {"action": "suspend", "_selected_action": [str(globex.pk)]})

    (row,) = _rows(platform_client.get(CHANGELIST, {"action": "tenant.suspended", "q": str(globex.pk)}))
    assert row.actor_label == platform_operator.email
    assert row.resource_id == str(globex.pk)
