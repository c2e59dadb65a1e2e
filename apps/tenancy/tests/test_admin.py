"""The platform admin (public domain): tenants list, actions and the add form all go
through the tenancy services, so they are audited like any other change."""

from django.contrib.messages import get_messages
from django.test import Client
from django_tenants.utils import schema_context, schema_exists

from apps.accounts.models import User
from apps.tenancy.models import Tenant
from apps.tenancy.tests.conftest import OPERATOR_EMAIL, audit_rows

CHANGELIST = "/admin/tenancy/tenant/"


def _listed(response) -> set[str]:
    assert response.status_code == 200, response.status_code
    return {tenant.schema_name for tenant in response.context["cl"].result_list}


def _action(client: Client, action: str, *tenants):
    return client.post(CHANGELIST, {"action": action, "_selected_action": [str(t.pk) for t in tenants]})


def test_tenant_list_shows_every_tenant_but_the_public_one(platform_client):
    response = platform_client.get(CHANGELIST)

    assert {"acme", "globex", "initech"} <= _listed(response)
    assert "public" not in _listed(response)
    assert "Acme Corp" in response.content.decode()


def test_tenant_list_filters_by_status(platform_client):
    assert _listed(platform_client.get(CHANGELIST, {"status__exact": "suspended"})) == {"initech"}


def test_tenant_list_searches_by_domain(platform_client):
    assert _listed(platform_client.get(CHANGELIST, {"q": "globex.localhost"})) == {"globex"}


def test_platform_admin_needs_a_login(db):
    response = Client(HTTP_HOST="localhost").get(CHANGELIST)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_tenant_users_cannot_reach_the_platform_admin(acme, seed_user, client_for):
    client = client_for(acme, seed_user(acme, "tenant_admin"))

    # their own admin has no tenant model, and their session does not exist on the platform
    assert client.get(CHANGELIST).status_code == 404
    assert client.get(CHANGELIST, HTTP_HOST="localhost").status_code == 302
    with schema_context("public"):
        assert not User.objects.filter(email="tenant_admin@acme.test").exists()


def test_suspend_action_suspends_and_audits(platform_client, platform_operator, acme, globex):
    response = _action(platform_client, "suspend", acme, globex)

    assert response.status_code == 302
    assert set(Tenant.objects.filter(pk__in=[acme.pk, globex.pk]).values_list("status", flat=True)) == {"suspended"}
    for tenant in (acme, globex):
        (row,) = audit_rows("public", action="tenant.suspended", resource_id=str(tenant.pk))
        assert (row.actor_id, row.actor_label) == (platform_operator.pk, OPERATOR_EMAIL)
        assert row.old_values == {"status": "active"}
    # and the suspended tenant stops answering
    assert Client(HTTP_HOST="acme.localhost").get("/api/v1/me").status_code == 403


def test_reactivate_action(platform_client, initech):
    _action(platform_client, "reactivate", initech)

    assert Tenant.objects.get(pk=initech.pk).status == Tenant.Status.ACTIVE
    (row,) = audit_rows("public", action="tenant.reactivated", resource_id=str(initech.pk))
    assert row.actor_label == OPERATOR_EMAIL


def test_soft_delete_action(platform_client, globex):
    _action(platform_client, "soft_delete", globex)

    stored = Tenant.objects.get(pk=globex.pk)
    assert stored.status == Tenant.Status.DELETED and stored.deleted_at is not None
    assert schema_exists("globex")
    assert len(audit_rows("public", action="tenant.deleted", resource_id=str(globex.pk))) == 1


def test_suspend_action_reports_a_refused_tenant_and_continues(platform_client, acme, globex):
    from apps.tenancy.services import tenant_soft_delete

    tenant_soft_delete(tenant=globex, actor=None)

    response = _action(platform_client, "suspend", globex, acme)

    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("Globex" in m for m in messages), messages
    assert Tenant.objects.get(pk=globex.pk).status == Tenant.Status.DELETED
    assert Tenant.objects.get(pk=acme.pk).status == Tenant.Status.SUSPENDED


def test_tenants_cannot_be_hard_deleted_from_the_admin(platform_client, acme):
    assert platform_client.get(f"{CHANGELIST}{acme.pk}/delete/").status_code == 403
    response = platform_client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [str(acme.pk)]})

    assert response.status_code in (200, 302)
    assert Tenant.objects.filter(pk=acme.pk).exists()


def test_add_form_creates_the_tenant_through_the_service(platform_client, platform_operator):
    response = platform_client.post(
        f"{CHANGELIST}add/",
        {
            "name": "Hooli",
            "schema_name": "hooli",
            "domain": "hooli.localhost",
            "admin_email": "gavin@hooli.example",
            "admin_password": "Hooli-Admin-2026!",
            "_save": "Save",
        },
    )

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    tenant = Tenant.objects.get(schema_name="hooli")
    assert tenant.get_primary_domain().domain == "hooli.localhost"
    assert schema_exists("hooli")
    with schema_context("hooli"):
        admin = User.objects.get(email="gavin@hooli.example")
        assert list(admin.user_roles.values_list("role__name", flat=True)) == ["tenant_admin"]
    (row,) = audit_rows("public", action="tenant.created", resource_id=str(tenant.pk))
    assert row.actor_label == OPERATOR_EMAIL
    # the new tenant's admin can log in on the new domain right away
    client = Client(HTTP_HOST="hooli.localhost")
    with schema_context("hooli"):
        assert client.login(email="gavin@hooli.example", password="Hooli-Admin-2026!")
    assert client.get("/api/v1/me").json()["tenant"]["schema"] == "hooli"


def test_add_form_rejects_an_existing_key(platform_client):
    response = platform_client.post(f"{CHANGELIST}add/", {"name": "Acme 2", "schema_name": "acme", "_save": "Save"})

    assert response.status_code == 200
    assert "schema_name" in response.context["adminform"].form.errors
    assert Tenant.objects.filter(schema_name="acme").count() == 1


def test_add_form_rejects_a_domain_in_use_without_claiming_success(platform_client):
    from django.contrib.admin.models import LogEntry

    response = platform_client.post(
        f"{CHANGELIST}add/",
        {"name": "Hooli", "schema_name": "hooli", "domain": "GLOBEX.localhost", "_save": "Save"},
    )

    assert response.status_code == 200  # the form again, not a redirect to a tenant that does not exist
    assert response.context["adminform"].form.errors["domain"] == ["This domain is already in use."]
    assert not Tenant.objects.filter(schema_name="hooli").exists()
    assert not schema_exists("hooli")
    assert not LogEntry.objects.filter(object_repr__contains="hooli").exists()


def test_add_form_rejects_an_invalid_key(platform_client):
    response = platform_client.post(f"{CHANGELIST}add/", {"name": "Bad", "schema_name": "pg_bad", "_save": "Save"})

    assert response.status_code == 200
    assert "schema_name" in response.context["adminform"].form.errors
    assert not Tenant.objects.filter(schema_name="pg_bad").exists()
