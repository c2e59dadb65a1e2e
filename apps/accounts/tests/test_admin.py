"""The Django admin asks the same permission rules (``User.is_staff``/``has_perm``/
``has_module_perms`` → ``user_has_permission``), and its writes go through the services."""

from __future__ import annotations

import pytest
from django.contrib import messages
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django_tenants.utils import schema_context

from apps.accounts.models import Role, User
from apps.accounts.tests.factories import RoleFactory, UserFactory
from apps.audit.models import AuditLog
from conftest import SEED_PASSWORD, SYSTEM_ROLE_NAMES, seed_email

STAFF_ROLES = {"super_admin", "tenant_admin", "knowledge_manager"}  # read access to a model the admin shows

# perm → the roles that hold it (``<app>.<view|add|change|delete>_<model>`` →
# ``<model.permission_resource>:<read|write|delete>``; anything unmapped → platform:admin).
DJANGO_PERMS = {
    "audit.view_auditlog": {"super_admin", "tenant_admin"},
    "accounts.view_user": {"super_admin", "tenant_admin"},
    "accounts.change_user": {"super_admin", "tenant_admin"},
    "accounts.add_role": {"super_admin", "tenant_admin"},
    "accounts.delete_apikey": {"super_admin", "tenant_admin"},
    "accounts.view_userrole": {"super_admin", "tenant_admin"},
    "tenancy.view_tenant": {"super_admin"},  # resource "platform"
    "tenancy.change_subscriptionplan": {"super_admin"},
    "auth.view_group": {"super_admin"},  # no permission_resource → platform:admin
    "accounts.frobnicate_user": {"super_admin"},  # unknown action → platform:admin
    "nosuchapp.view_thing": {"super_admin"},
    "knowledge.view_document": {"super_admin", "tenant_admin", "knowledge_manager"},  # resource "docs"
    "knowledge.delete_document": {"super_admin", "tenant_admin", "knowledge_manager"},
}
MODULES = {
    "accounts": {"super_admin", "tenant_admin"},
    "audit": {"super_admin", "tenant_admin"},
    "tenancy": {"super_admin"},
    "knowledge": {"super_admin", "tenant_admin", "knowledge_manager"},
    "nosuchapp": set(),
}


@pytest.mark.parametrize(("perm", "holders"), list(DJANGO_PERMS.items()))
@pytest.mark.parametrize("role", SYSTEM_ROLE_NAMES)
def test_has_perm_follows_roles(acme, seed_user, role, perm, holders):
    user = seed_user(acme, role)
    with schema_context(acme.schema_name):
        assert user.has_perm(perm) is (role in holders)


@pytest.mark.parametrize(("app_label", "holders"), list(MODULES.items()))
@pytest.mark.parametrize("role", SYSTEM_ROLE_NAMES)
def test_has_module_perms_follows_roles(acme, seed_user, role, app_label, holders):
    user = seed_user(acme, role)
    with schema_context(acme.schema_name):
        assert user.has_module_perms(app_label) is (role in holders)


@pytest.mark.parametrize("role", SYSTEM_ROLE_NAMES)
def test_is_staff_and_is_superuser_follow_roles(acme, seed_user, role):
    user = seed_user(acme, role)
    with schema_context(acme.schema_name):
        assert user.is_staff is (role in STAFF_ROLES)
        assert user.is_superuser is (role == "super_admin")
        assert user.has_perms(["accounts.view_user", "audit.view_auditlog"]) is (
            role in {"super_admin", "tenant_admin"}
        )


def test_a_custom_role_maps_to_exactly_its_admin_perms(acme):
    with schema_context(acme.schema_name):
        auditor = RoleFactory(permissions=["audit:read"])
        user = UserFactory(roles=["knowledge_manager", auditor.name])
        assert user.is_staff
        assert user.has_perm("audit.view_auditlog")
        assert not user.has_perm("audit.change_auditlog")
        assert not user.has_perm("accounts.view_user")
        assert user.has_module_perms("audit")
        assert not user.has_module_perms("accounts")


def _logged_in_user_id(client) -> str | None:
    return client.session.get("_auth_user_id")


def test_tenant_admin_logs_in_through_the_admin_login_form(acme, client_for):
    client = client_for(acme)
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": seed_email("tenant_admin", "acme"), "password": SEED_PASSWORD},
    )
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    with schema_context(acme.schema_name):
        admin = User.objects.get(email=seed_email("tenant_admin", "acme"))
        assert _logged_in_user_id(client) == str(admin.pk)
    index = client.get("/admin/")
    assert index.status_code == 200
    assert "/admin/accounts/user/" in index.content.decode()
    assert "/admin/tenancy/" not in index.content.decode()  # the platform's models are not here


def test_knowledge_manager_reaches_the_document_admin_only(acme, seed_user, client_for):
    client = client_for(acme, seed_user(acme, "knowledge_manager"))
    index = client.get("/admin/")
    assert index.status_code == 200
    assert "/admin/knowledge/document/" in index.content.decode()
    assert "/admin/accounts/user/" not in index.content.decode()
    assert client.get("/admin/knowledge/document/").status_code == 200
    assert client.get("/admin/accounts/user/").status_code == 403


@pytest.mark.parametrize("role", ["agent", "user"])
def test_non_staff_roles_cannot_log_in_to_the_admin(acme, client_for, role):
    client = client_for(acme)
    response = client.post(
        "/admin/login/?next=/admin/", {"username": seed_email(role, "acme"), "password": SEED_PASSWORD}
    )
    assert response.status_code == 200  # the form again, with an error
    assert response.context["form"].errors
    with schema_context(acme.schema_name):
        assert _logged_in_user_id(client) is None


@pytest.mark.parametrize("role", ["agent", "user"])
def test_non_staff_session_is_redirected_to_the_admin_login(acme, seed_user, client_for, role):
    client = client_for(acme, seed_user(acme, role))  # logged in, but not staff
    for path in ("/admin/", "/admin/accounts/user/", "/admin/knowledge/document/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/admin/login/"), path


def test_acme_credentials_do_not_open_the_globex_admin(acme, globex, client_for):
    client = client_for(globex)
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": seed_email("tenant_admin", "acme"), "password": SEED_PASSWORD},
    )
    assert response.status_code == 200
    assert response.context["form"].errors
    assert client.get("/admin/").status_code == 302


def test_acme_admin_session_is_not_valid_on_globex_admin(acme, globex, seed_user, client_for):
    acme_client = client_for(acme, seed_user(acme, "tenant_admin"))
    assert acme_client.get("/admin/").status_code == 200
    globex_client = client_for(globex)
    globex_client.cookies = acme_client.cookies  # the same cookie, sent to the other host
    response = globex_client.get("/admin/accounts/user/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize(
    "path", ["/admin/accounts/user/", "/admin/accounts/role/", "/admin/accounts/apikey/", "/admin/audit/auditlog/"]
)
def test_tenant_admin_changelists_load(acme, seed_user, client_for, path):
    client = client_for(acme, seed_user(acme, "tenant_admin"))
    assert client.get(path).status_code == 200


def test_user_changelist_shows_only_this_tenants_users(acme, seed_user, client_for):
    client = client_for(acme, seed_user(acme, "tenant_admin"))
    response = client.get("/admin/accounts/user/")
    assert response.status_code == 200
    shown = {u.email for u in response.context["cl"].result_list}
    with schema_context(acme.schema_name):
        assert shown == set(User.objects.values_list("email", flat=True))
    assert {seed_email(role, "acme") for role in SYSTEM_ROLE_NAMES} <= shown
    assert not any(email.endswith("@globex.test") for email in shown)


def test_user_change_page_loads(acme, seed_user, client_for):
    client = client_for(acme, seed_user(acme, "tenant_admin"))
    target = seed_user(acme, "agent")
    response = client.get(f"/admin/accounts/user/{target.pk}/change/")
    assert response.status_code == 200
    assert seed_email("agent", "acme") in response.content.decode()


def test_admin_add_user_goes_through_the_service(acme, seed_user, client_for):
    admin = seed_user(acme, "tenant_admin")
    client = client_for(acme, admin)
    with schema_context(acme.schema_name):
        km = Role.objects.get(name="knowledge_manager")
    response = client.post(
        "/admin/accounts/user/add/",
        {"email": "New.Person@ACME.test", "first_name": "New", "last_name": "Person", "password": "", "roles": [km.pk]},
    )
    assert response.status_code == 302
    with schema_context(acme.schema_name):
        user = User.objects.get(email__iexact="new.person@acme.test")
        assert user.email == "New.Person@acme.test"  # the service's normalisation
        assert not user.has_usable_password()
        assert [ur.role.name for ur in user.user_roles.all()] == ["knowledge_manager"]
        audit = AuditLog.objects.get(action="user.created", resource_id=str(user.pk))
        assert audit.actor_id == admin.pk


def _changeform_data(response) -> dict:
    """The POST body a browser would send back for an admin change page, unchanged."""
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms += [inline.formset.management_form, *inline.formset.forms]
    data = {}
    for form in forms:
        for name in form.fields:
            value = form[name].value()
            if value is None or value is False:
                continue
            key = form.add_prefix(name)
            if value is True:
                data[key] = "on"
            elif isinstance(value, (list, tuple)):
                data[key] = [str(v) for v in value]
            else:
                data[key] = str(value)
    return data


def _messages(response) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in get_messages(response.wsgi_request)]


def test_admin_add_refused_by_the_service_reports_only_the_refusal(acme, seed_user, client_for, tenant_state):
    client = client_for(acme, seed_user(acme, "tenant_admin"))
    with schema_context(acme.schema_name):
        super_admin = Role.objects.get(name="super_admin")
    before = tenant_state(acme)
    response = client.post(
        "/admin/accounts/user/add/",
        {"email": "climber@acme.test", "first_name": "", "last_name": "", "password": "", "roles": [super_admin.pk]},
        follow=True,
    )
    assert response.status_code == 200
    shown = _messages(response)
    assert [level for level, _ in shown] == [messages.ERROR]  # no "added successfully" beside it
    assert "more rights" in shown[0][1]
    assert tenant_state(acme) == before
    with schema_context(acme.schema_name):
        assert not LogEntry.objects.filter(object_repr="climber@acme.test").exists()


def test_admin_change_refused_by_the_service_changes_nothing(acme, seed_user, client_for, tenant_state):
    client = client_for(acme, seed_user(acme, "tenant_admin"))
    with schema_context(acme.schema_name):
        target = UserFactory(first_name="Before", roles=["agent"])
        super_admin = Role.objects.get(name="super_admin")
    url = f"/admin/accounts/user/{target.pk}/change/"
    data = _changeform_data(client.get(url))
    before = tenant_state(acme)

    ok = client.post(url, {**data, "first_name": "After"}, follow=True)  # the form round-trips
    assert [level for level, _ in _messages(ok)] == [messages.SUCCESS]
    with schema_context(acme.schema_name):
        assert User.objects.get(pk=target.pk).first_name == "After"
        assert AuditLog.objects.filter(action="user.updated", resource_id=str(target.pk)).count() == 1
    before = tenant_state(acme)

    refused = client.post(
        url, {**data, "first_name": "Sneaky", "roles": [*data["roles"], str(super_admin.pk)]}, follow=True
    )
    assert [level for level, _ in _messages(refused)] == [messages.ERROR]
    assert tenant_state(acme) == before  # the rename that ran before the refusal was undone too


def test_admin_status_change_deactivates_through_the_service(acme, seed_user, client_for):
    admin = seed_user(acme, "tenant_admin")
    client = client_for(acme, admin)
    with schema_context(acme.schema_name):
        target = UserFactory(roles=["agent"])
    response = client.post(
        "/admin/accounts/user/",
        {"action": "deactivate_users", "_selected_action": [str(target.pk)]},
    )
    assert response.status_code == 302
    with schema_context(acme.schema_name):
        target.refresh_from_db()
        assert target.status == User.Status.INACTIVE
        audit = AuditLog.objects.get(action="user.deactivated", resource_id=str(target.pk))
        assert audit.actor_id == admin.pk


def test_users_cannot_be_deleted_in_the_admin(acme, seed_user, client_for):
    client = client_for(acme, seed_user(acme, "tenant_admin"))
    target = seed_user(acme, "agent")
    assert client.get(f"/admin/accounts/user/{target.pk}/delete/").status_code == 403
    with schema_context(acme.schema_name):
        assert User.objects.filter(pk=target.pk).exists()


def test_role_admin_change_is_audited_with_the_old_values(acme, seed_user, client_for):
    admin = seed_user(acme, "tenant_admin")
    client = client_for(acme, admin)
    with schema_context(acme.schema_name):
        role = RoleFactory(permissions=["docs:read"])
    url = f"/admin/accounts/role/{role.pk}/change/"
    data = _changeform_data(client.get(url))
    assert data["permissions"] == "docs:read"
    response = client.post(url, {**data, "permissions": "docs:read,docs:write"}, follow=True)
    assert [level for level, _ in _messages(response)] == [messages.SUCCESS]
    with schema_context(acme.schema_name):
        assert Role.objects.get(pk=role.pk).permissions == ["docs:read", "docs:write"]
        audit = AuditLog.objects.get(action="role.updated", resource_id=str(role.pk))
        assert audit.actor_id == admin.pk
        assert audit.old_values["permissions"] == ["docs:read"]
        assert audit.new_values["permissions"] == ["docs:read", "docs:write"]


def test_role_admin_refuses_star_and_platform(acme, seed_user, client_for, tenant_state):
    client = client_for(acme, seed_user(acme, "tenant_admin"))
    before = tenant_state(acme)
    for permissions in ("*", "docs:read,platform:admin"):
        response = client.post(
            "/admin/accounts/role/add/",
            {"name": "climber", "display_name": "Climber", "description": "", "permissions": permissions},
            follow=True,
        )
        assert [level for level, _ in _messages(response)] == [messages.ERROR], permissions
    assert tenant_state(acme) == before


def test_system_role_permissions_are_read_only_in_the_admin(acme, seed_user, client_for):
    client = client_for(acme, seed_user(acme, "tenant_admin"))
    with schema_context(acme.schema_name):
        agent = Role.objects.get(name="agent")
    url = f"/admin/accounts/role/{agent.pk}/change/"
    data = _changeform_data(client.get(url))
    assert "permissions" not in data  # rendered read-only
    response = client.post(url, {**data, "display_name": "Support", "permissions": "tenant:*"}, follow=True)
    assert [level for level, _ in _messages(response)] == [messages.SUCCESS]
    with schema_context(acme.schema_name):
        agent.refresh_from_db()
        assert agent.display_name == "Support"
        assert agent.permissions == ["conversations:*", "tools:execute"]
    assert client.get(f"/admin/accounts/role/{agent.pk}/delete/").status_code == 403
