"""Services of the accounts app, called directly in a tenant's schema: each write is
atomic, writes its audit row, and refuses what the rules forbid."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone
from django_tenants.utils import schema_context
from knox.models import AuthToken
from rest_framework.exceptions import AuthenticationFailed

from apps.accounts import services
from apps.accounts.authentication import api_key_authenticate
from apps.accounts.models import ApiKey, Role, User, UserRole
from apps.accounts.tests.factories import FACTORY_PASSWORD, RoleFactory, UserFactory
from apps.audit.models import AuditLog
from apps.core.exceptions import Conflict, NotFound, PermissionDeniedError, ValidationFailed
from conftest import seed_email

NEW_PASSWORD = "Brand-New-Pass-2026!"


def _audit(action: str, resource_id) -> list[AuditLog]:
    return list(AuditLog.objects.filter(action=action, resource_id=str(resource_id)))


# --- user_create ---------------------------------------------------------------------------
def test_user_create_grants_roles_and_writes_audit(acme, seed_user, can_log_in):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        user = services.user_create(
            email="Jane.Doe@Example.COM",
            password=NEW_PASSWORD,
            first_name="Jane",
            roles=["agent", "knowledge_manager"],
            actor=admin,
        )
        assert user.email == "Jane.Doe@example.com"  # domain lower-cased, local part kept
        assert user.check_password(NEW_PASSWORD)
        grants = UserRole.objects.filter(user=user).select_related("role")
        assert sorted(g.role.name for g in grants) == ["agent", "knowledge_manager"]
        assert all(g.granted_by_id == admin.pk for g in grants)
        (audit,) = _audit("user.created", user.pk)
        assert audit.actor_id == admin.pk
        assert audit.actor_label == admin.email
        assert audit.resource_type == "user"
        assert audit.new_values["email"] == user.email
        assert audit.new_values["roles"] == ["agent", "knowledge_manager"]
        assert "password" not in audit.new_values
        assert NEW_PASSWORD not in str(audit.new_values)
    assert can_log_in(acme, "jane.doe@example.com", NEW_PASSWORD)  # login is case-insensitive


def test_user_create_by_the_system_is_labelled_system(acme):
    with schema_context(acme.schema_name):
        user = services.user_create(email="sys@example.test", actor=None)
        (audit,) = _audit("user.created", user.pk)
        assert audit.actor_id is None
        assert audit.actor_label == "system"
        assert not user.has_usable_password()


@pytest.mark.parametrize(
    "duplicate", ["dup@example.test", "DUP@example.test", "Dup@EXAMPLE.TEST", " dup@example.test "]
)
def test_user_create_duplicate_email_is_a_conflict_case_insensitively(acme, duplicate):
    with schema_context(acme.schema_name):
        services.user_create(email="dup@example.test", actor=None)
        users, audits = User.objects.count(), AuditLog.objects.count()
        with pytest.raises(Conflict) as exc:
            services.user_create(email=duplicate, actor=None)
        assert exc.value.code == "user_exists"
        assert exc.value.status_code == 409
        assert (User.objects.count(), AuditLog.objects.count()) == (users, audits)


def test_user_create_conflicts_with_a_seed_user_in_any_case(acme):
    with schema_context(acme.schema_name), pytest.raises(Conflict) as exc:
        services.user_create(email=seed_email("agent", "acme").upper(), actor=None)
    assert exc.value.code == "user_exists"


def test_the_same_email_may_exist_in_two_tenants(acme, globex):
    created = {}
    for tenant in (acme, globex):
        with schema_context(tenant.schema_name):
            created[tenant.schema_name] = services.user_create(email="shared@example.test", actor=None)
    assert created["acme"].pk != created["globex"].pk
    for tenant in (acme, globex):
        with schema_context(tenant.schema_name):
            assert User.objects.filter(email="shared@example.test").count() == 1


def test_user_create_rejects_bad_input_without_writing(acme):
    with schema_context(acme.schema_name):
        users, audits = User.objects.count(), AuditLog.objects.count()
        with pytest.raises(ValidationFailed) as exc:
            services.user_create(email="not-an-email", actor=None)
        assert exc.value.code == "validation_error"
        with pytest.raises(ValidationFailed) as exc:
            services.user_create(email="x@example.test", roles=["agent", "wizard"], actor=None)
        assert exc.value.code == "role_not_found"
        assert exc.value.details == {"roles": ["wizard"]}
        with pytest.raises(ValidationFailed) as exc:
            services.user_create(email="x@example.test", password="password", validate=True, actor=None)
        assert exc.value.code == "weak_password"
        assert (User.objects.count(), AuditLog.objects.count()) == (users, audits)


def test_user_create_refuses_roles_beyond_the_actors_own(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        with pytest.raises(PermissionDeniedError) as exc:
            services.user_create(email="climber@example.test", roles=["super_admin"], actor=admin)
        assert exc.value.code == "permission_escalation"
        assert not User.objects.filter(email="climber@example.test").exists()


def test_audit_row_and_change_share_one_transaction(acme, monkeypatch):
    def broken_audit(**kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(services, "audit_log_record", broken_audit)
    with schema_context(acme.schema_name):
        with pytest.raises(RuntimeError):
            services.user_create(email="ghost@example.test", roles=["agent"], actor=None)
        assert not User.objects.filter(email="ghost@example.test").exists()
        assert not UserRole.objects.filter(user__email="ghost@example.test").exists()


# --- invitations ---------------------------------------------------------------------------
def test_invitation_token_works_once(acme, seed_user, can_log_in):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        invitation = services.user_invite(email="invitee@example.test", roles=["user"], actor=admin)
        assert not invitation.user.has_usable_password()
        assert not invitation.user.email_verified
    assert not can_log_in(acme, "invitee@example.test", NEW_PASSWORD)

    with schema_context(acme.schema_name):
        user = services.user_invitation_accept(token=invitation.token, password=NEW_PASSWORD)
        assert user.pk == invitation.user.pk
        user.refresh_from_db()
        assert user.check_password(NEW_PASSWORD)
        assert user.email_verified
        (audit,) = _audit("user.invitation_accepted", user.pk)
        assert audit.actor_id == user.pk
    assert can_log_in(acme, "invitee@example.test", NEW_PASSWORD)

    with schema_context(acme.schema_name):
        with pytest.raises(ValidationFailed) as exc:
            services.user_invitation_accept(token=invitation.token, password="Another-Pass-2026!")
        assert exc.value.code == "invitation_invalid"
        user.refresh_from_db()
        assert user.check_password(NEW_PASSWORD)  # the second use changed nothing


def test_acme_invitation_does_not_work_on_globex(acme, globex, seed_user, unchanged):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        invitation = services.user_invite(email="invitee@example.test", roles=["user"], actor=admin)
    with schema_context(globex.schema_name):
        # the worst case: globex holds a not-yet-activated user with the very same id
        # (schemas restored or cloned from one another), so only the schema binding protects it
        twin = UserFactory(id=invitation.user.pk, email="twin@example.test", password=None)
    with unchanged(globex), schema_context(globex.schema_name):
        with pytest.raises(ValidationFailed) as exc:
            services.user_invitation_accept(token=invitation.token, password=NEW_PASSWORD)
        assert exc.value.code == "invitation_invalid"
        twin.refresh_from_db()
        assert not twin.has_usable_password()
    with schema_context(acme.schema_name):
        invitation.user.refresh_from_db()
        assert not invitation.user.has_usable_password()  # still usable on acme
        services.user_invitation_accept(token=invitation.token, password=NEW_PASSWORD)


def test_invitation_tampered_or_expired(acme, settings):
    with schema_context(acme.schema_name):
        invitation = services.user_invite(email="invitee@example.test", roles=[], actor=None)
        with pytest.raises(ValidationFailed) as exc:
            services.user_invitation_accept(
                token=invitation.token[:-1] + ("A" if invitation.token[-1] != "A" else "B"), password=NEW_PASSWORD
            )
        assert exc.value.code == "invitation_invalid"
        settings.INVITATION_MAX_AGE = -1
        with pytest.raises(ValidationFailed) as exc:
            services.user_invitation_accept(token=invitation.token, password=NEW_PASSWORD)
        assert exc.value.code == "invitation_expired"
        invitation.user.refresh_from_db()
        assert not invitation.user.has_usable_password()


def test_invitation_refuses_weak_password_and_deactivated_user(acme):
    with schema_context(acme.schema_name):
        invitation = services.user_invite(email="invitee@example.test", roles=[], actor=None)
        with pytest.raises(ValidationFailed) as exc:
            services.user_invitation_accept(token=invitation.token, password="12345678")
        assert exc.value.code == "weak_password"
        services.user_deactivate(user=invitation.user, actor=None)
        with pytest.raises(ValidationFailed) as exc:
            services.user_invitation_accept(token=invitation.token, password=NEW_PASSWORD)
        assert exc.value.code == "invitation_invalid"


# --- status --------------------------------------------------------------------------------
def test_user_deactivate(acme, seed_user, can_log_in):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        user = UserFactory(roles=["agent"])
        AuthToken.objects.create(user)
        AuthToken.objects.create(user)
        other = UserFactory(roles=["agent"])
        AuthToken.objects.create(other)
    assert can_log_in(acme, user.email, FACTORY_PASSWORD)

    with schema_context(acme.schema_name):
        services.user_deactivate(user=user, actor=admin)
        user.refresh_from_db()
        assert user.status == User.Status.INACTIVE
        assert not user.is_active
        assert AuthToken.objects.filter(user=user).count() == 0
        assert AuthToken.objects.filter(user=other).count() == 1  # only theirs
        (audit,) = _audit("user.deactivated", user.pk)
        assert audit.actor_id == admin.pk
        assert audit.old_values == {"status": "active"}
        assert audit.new_values == {"status": "inactive"}
    assert not can_log_in(acme, user.email, FACTORY_PASSWORD)

    with schema_context(acme.schema_name):
        services.user_deactivate(user=user, actor=admin)  # already inactive: nothing to record
        assert len(_audit("user.deactivated", user.pk)) == 1
        services.user_reactivate(user=user, actor=admin)
        assert len(_audit("user.reactivated", user.pk)) == 1
    assert can_log_in(acme, user.email, FACTORY_PASSWORD)


def test_user_suspend_also_blocks_login_and_tokens(acme, can_log_in):
    with schema_context(acme.schema_name):
        user = UserFactory(roles=["user"])
        AuthToken.objects.create(user)
        services.user_suspend(user=user, actor=None)
        assert User.objects.get(pk=user.pk).status == User.Status.SUSPENDED
        assert not AuthToken.objects.filter(user=user).exists()
        assert len(_audit("user.suspended", user.pk)) == 1
    assert not can_log_in(acme, user.email, FACTORY_PASSWORD)


def test_cannot_deactivate_yourself(acme, seed_user, can_log_in):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        audits = AuditLog.objects.count()
        for service in (services.user_deactivate, services.user_suspend):
            with pytest.raises(PermissionDeniedError) as exc:
                service(user=admin, actor=admin)
            assert exc.value.code == "cannot_deactivate_self"
        assert User.objects.get(pk=admin.pk).status == User.Status.ACTIVE
        assert AuditLog.objects.count() == audits
    assert can_log_in(acme, admin.email)


# --- user_update ---------------------------------------------------------------------------
def test_user_update_records_only_what_changed(acme, seed_user):
    user = seed_user(acme, "agent")
    with schema_context(acme.schema_name):
        old_last_name = user.last_name
        services.user_update(user=user, actor=user, first_name="Renamed", last_name=old_last_name)
        (audit,) = _audit("user.updated", user.pk)
        assert audit.new_values == {"first_name": "Renamed"}
        assert User.objects.get(pk=user.pk).first_name == "Renamed"
        services.user_update(user=user, actor=user, first_name="Renamed")  # no change, no row
        assert len(_audit("user.updated", user.pk)) == 1
        with pytest.raises(ValidationFailed):
            services.user_update(user=user, actor=user, email="evil@example.test", status="active")
        assert User.objects.get(pk=user.pk).email == seed_email("agent", "acme")


# --- role grants ---------------------------------------------------------------------------
def test_user_role_grant_and_revoke(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        user = UserFactory(roles=["user"])
        grant = services.user_role_grant(user=user, role_name="knowledge_manager", actor=admin)
        assert grant.granted_by_id == admin.pk
        (audit,) = _audit("user.role_granted", user.pk)
        assert audit.new_values == {"role": "knowledge_manager"}
        assert audit.actor_id == admin.pk

        services.user_role_grant(user=user, role_name="knowledge_manager", actor=admin)  # idempotent
        assert UserRole.objects.filter(user=user, role__name="knowledge_manager").count() == 1
        assert len(_audit("user.role_granted", user.pk)) == 1

        services.user_role_revoke(user=user, role_name="knowledge_manager", actor=admin)
        assert not UserRole.objects.filter(user=user, role__name="knowledge_manager").exists()
        (audit,) = _audit("user.role_revoked", user.pk)
        assert audit.old_values == {"role": "knowledge_manager"}

        with pytest.raises(NotFound) as exc:
            services.user_role_revoke(user=user, role_name="knowledge_manager", actor=admin)
        assert exc.value.code == "role_not_granted"
        with pytest.raises(ValidationFailed) as exc:
            services.user_role_grant(user=user, role_name="wizard", actor=admin)
        assert exc.value.code == "role_not_found"
        assert sorted(UserRole.objects.filter(user=user).values_list("role__name", flat=True)) == ["user"]


@pytest.mark.parametrize(
    ("actor_role", "role_name", "allowed"),
    [
        ("tenant_admin", "super_admin", False),
        ("tenant_admin", "tenant_admin", True),
        ("tenant_admin", "agent", True),
        ("super_admin", "super_admin", True),
        ("knowledge_manager", "tenant_admin", False),
        ("knowledge_manager", "agent", False),  # conversations:* is more than conversations:read
        ("agent", "user", True),
    ],
)
def test_user_role_grant_cannot_escalate(acme, seed_user, actor_role, role_name, allowed):
    actor = seed_user(acme, actor_role)
    with schema_context(acme.schema_name):
        user = UserFactory()
        if allowed:
            services.user_role_grant(user=user, role_name=role_name, actor=actor)
        else:
            with pytest.raises(PermissionDeniedError) as exc:
                services.user_role_grant(user=user, role_name=role_name, actor=actor)
            assert exc.value.code == "permission_escalation"
        assert UserRole.objects.filter(user=user, role__name=role_name).exists() is allowed


# --- roles ---------------------------------------------------------------------------------
def test_role_create(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        role = services.role_create(
            name="auditor",
            display_name="Auditor",
            permissions=["audit:read", " users:read ", "audit:read"],
            actor=admin,
        )
        assert role.permissions == ["audit:read", "users:read"]  # cleaned, de-duplicated, sorted
        assert not role.is_system
        (audit,) = _audit("role.created", role.pk)
        assert audit.new_values == {"name": "auditor", "permissions": ["audit:read", "users:read"]}
        with pytest.raises(Conflict) as exc:
            services.role_create(name="auditor", display_name="Again", permissions=[], actor=admin)
        assert exc.value.code == "role_exists"


@pytest.mark.parametrize("bad", ["docs", ":read", "docs:", "docs:read:all", ""])
def test_role_create_rejects_malformed_permissions(acme, bad):
    with schema_context(acme.schema_name):
        with pytest.raises(ValidationFailed) as exc:
            services.role_create(name="bad_role", display_name="Bad", permissions=[bad], actor=None)
        assert exc.value.code == "invalid_permission"
        assert not Role.objects.filter(name="bad_role").exists()


@pytest.mark.parametrize("actor_role", [None, "tenant_admin", "super_admin"])
def test_star_is_never_grantable_to_a_custom_role(acme, seed_user, actor_role):
    actor = seed_user(acme, actor_role) if actor_role else None
    with schema_context(acme.schema_name):
        with pytest.raises(PermissionDeniedError) as exc:
            services.role_create(name="god", display_name="God", permissions=["*"], actor=actor)
        assert exc.value.code == "permission_escalation"
        role = RoleFactory(permissions=["docs:read"])
        with pytest.raises(PermissionDeniedError):
            services.role_update(role=role, permissions=["docs:read", "*"], actor=actor)
        assert not Role.objects.filter(name="god").exists()
        assert Role.objects.get(pk=role.pk).permissions == ["docs:read"]


def test_role_create_and_update_cannot_exceed_the_actors_rights(acme):
    """A role manager (roles:*) must not be able to make a role worth more than they hold —
    least of all one they hold themselves."""
    with schema_context(acme.schema_name):
        manager_role = RoleFactory(permissions=["roles:*", "users:read"])
        manager = UserFactory(roles=[manager_role.name])
        with pytest.raises(PermissionDeniedError) as exc:
            services.role_create(name="bigger", display_name="Bigger", permissions=["tenant:*"], actor=manager)
        assert exc.value.code == "permission_escalation"
        with pytest.raises(PermissionDeniedError) as exc:
            services.role_update(role=manager_role, permissions=["roles:*", "users:*"], actor=manager)
        assert exc.value.code == "permission_escalation"
        assert Role.objects.get(pk=manager_role.pk).permissions == ["roles:*", "users:read"]
        assert not Role.objects.filter(name="bigger").exists()
        # within their own rights it works
        services.role_update(role=manager_role, permissions=["roles:read", "users:read"], actor=manager)
        assert Role.objects.get(pk=manager_role.pk).permissions == ["roles:read", "users:read"]


def test_role_update_protects_system_roles(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        system = Role.objects.get(name="agent")
        with pytest.raises(PermissionDeniedError) as exc:
            services.role_update(role=system, permissions=["conversations:read"], actor=admin)
        assert exc.value.code == "system_role"
        system = Role.objects.get(name="agent")
        assert system.permissions == ["conversations:*", "tools:execute"]
        # the label may change
        services.role_update(role=system, display_name="Support agent", actor=admin)
        assert Role.objects.get(name="agent").display_name == "Support agent"
        (audit,) = _audit("role.updated", system.pk)
        assert audit.new_values["display_name"] == "Support agent"


def test_role_update_custom_permissions_are_audited(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        role = RoleFactory(permissions=["docs:read"])
        services.role_update(role=role, permissions=["docs:*"], actor=admin)
        assert Role.objects.get(pk=role.pk).permissions == ["docs:*"]
        (audit,) = _audit("role.updated", role.pk)
        assert audit.old_values["permissions"] == ["docs:read"]
        assert audit.new_values["permissions"] == ["docs:*"]


def test_role_delete(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        for name in ("super_admin", "tenant_admin", "knowledge_manager", "agent", "user"):
            with pytest.raises(PermissionDeniedError) as exc:
                services.role_delete(role=Role.objects.get(name=name), actor=admin)
            assert exc.value.code == "system_role"
        assert Role.objects.filter(is_system=True).count() == 5

        role = RoleFactory(permissions=["audit:read"])
        holder = UserFactory(roles=[role.name])
        role_id = role.pk
        services.role_delete(role=role, actor=admin)
        assert not Role.objects.filter(pk=role_id).exists()
        assert not UserRole.objects.filter(user=holder).exists()
        (audit,) = _audit("role.deleted", role_id)
        assert audit.old_values == {"name": role.name, "permissions": ["audit:read"]}


# --- API keys ------------------------------------------------------------------------------
def test_api_key_create_shows_the_key_once_and_stores_only_its_hash(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        issued = services.api_key_create(name="CI", roles=["agent"], actor=admin)
        key = issued.key
        stored = ApiKey.objects.get(pk=issued.api_key.pk)
        assert key.startswith(f"zk_{stored.prefix}_")
        assert len(key) > 40
        assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()
        secret = key.split("_", 2)[2]
        row = ApiKey.objects.filter(pk=stored.pk).values().get()
        assert not any(isinstance(v, str) and (key in v or secret in v) for v in row.values())
        assert list(stored.roles.values_list("name", flat=True)) == ["agent"]
        assert stored.created_by_id == admin.pk
        (audit,) = _audit("api_key.created", stored.pk)
        assert audit.new_values["roles"] == ["agent"]
        assert audit.new_values["prefix"] == stored.prefix
        assert secret not in str(audit.new_values)
        # the key works, and only the exact key
        principal = api_key_authenticate(key)
        assert principal.api_key.pk == stored.pk
        assert principal.role_permissions == frozenset(["conversations:*", "tools:execute"])
        with pytest.raises(AuthenticationFailed):
            api_key_authenticate(key[:-1] + ("A" if key[-1] != "A" else "B"))

        second = services.api_key_create(name="CI", roles=["agent"], actor=admin)
        assert second.key != key
        assert second.api_key.prefix != stored.prefix


def test_api_key_create_refuses_escalation(acme, seed_user):
    km = seed_user(acme, "knowledge_manager")
    with schema_context(acme.schema_name):
        keys, audits = ApiKey.objects.count(), AuditLog.objects.count()
        for roles in (["tenant_admin"], ["knowledge_manager", "agent"], ["super_admin"]):
            with pytest.raises(PermissionDeniedError) as exc:
                services.api_key_create(name="sneaky", roles=roles, actor=km)
            assert exc.value.code == "permission_escalation"
        assert (ApiKey.objects.count(), AuditLog.objects.count()) == (keys, audits)
        # what they hold, they may hand on
        issued = services.api_key_create(name="docs bot", roles=["knowledge_manager"], actor=km)
        assert issued.api_key.pk


def test_api_key_create_needs_known_roles(acme):
    with schema_context(acme.schema_name):
        with pytest.raises(ValidationFailed) as exc:
            services.api_key_create(name="k", roles=[], actor=None)
        assert exc.value.code == "roles_required"
        with pytest.raises(ValidationFailed) as exc:
            services.api_key_create(name="k", roles=["wizard"], actor=None)
        assert exc.value.code == "role_not_found"


def test_api_key_revoke(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        issued = services.api_key_create(name="k", roles=["user"], actor=admin)
        assert api_key_authenticate(issued.key)
        services.api_key_revoke(api_key=issued.api_key, actor=admin)
        stored = ApiKey.objects.get(pk=issued.api_key.pk)
        assert stored.revoked_at is not None
        (audit,) = _audit("api_key.revoked", stored.pk)
        assert audit.actor_id == admin.pk
        with pytest.raises(AuthenticationFailed, match="revoked"):
            api_key_authenticate(issued.key)
        revoked_at = stored.revoked_at
        services.api_key_revoke(api_key=stored, actor=admin)  # idempotent
        assert ApiKey.objects.get(pk=stored.pk).revoked_at == revoked_at
        assert len(_audit("api_key.revoked", stored.pk)) == 1


def test_api_key_expiry(acme):
    with schema_context(acme.schema_name):
        past = services.api_key_create(
            name="old", roles=["user"], actor=None, expires_at=timezone.now() + timedelta(minutes=1)
        )
        ApiKey.objects.filter(pk=past.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        with pytest.raises(AuthenticationFailed, match="expired"):
            api_key_authenticate(past.key)
        future = services.api_key_create(
            name="new", roles=["user"], actor=None, expires_at=timezone.now() + timedelta(days=1)
        )
        assert api_key_authenticate(future.key).api_key.pk == future.api_key.pk


def test_acme_api_key_is_unknown_in_globex(acme, globex, unchanged):
    with schema_context(acme.schema_name):
        issued = services.api_key_create(name="k", roles=["tenant_admin"], actor=None)
    with unchanged(globex), schema_context(globex.schema_name), pytest.raises(AuthenticationFailed):
        api_key_authenticate(issued.key)


# --- nobody acts above their own rights ----------------------------------------------------
def test_tenant_admin_cannot_suspend_or_strip_a_super_admin(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    boss = seed_user(acme, "super_admin")
    with schema_context(acme.schema_name):
        with pytest.raises(PermissionDeniedError) as exc:
            services.user_suspend(user=boss, actor=admin)
        assert exc.value.code == "permission_escalation"
        with pytest.raises(PermissionDeniedError):
            services.user_role_revoke(user=boss, role_name="super_admin", actor=admin)
        boss.refresh_from_db()
        assert boss.status == User.Status.ACTIVE
        assert UserRole.objects.filter(user=boss, role__name="super_admin").exists()
        # Within their own rights it works.
        agent = seed_user(acme, "agent")
        services.user_suspend(user=agent, actor=admin)
        agent.refresh_from_db()
        assert agent.status == User.Status.SUSPENDED


def test_api_key_with_past_expiry_is_refused(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        with pytest.raises(ValidationFailed):
            services.api_key_create(
                name="stale", roles=["user"], actor=admin, expires_at=timezone.now() - timedelta(minutes=1)
            )
        assert not ApiKey.objects.filter(name="stale").exists()


def test_login_tokens_expire(acme, seed_user):
    with schema_context(acme.schema_name):
        instance, _token = AuthToken.objects.create(seed_user(acme, "agent"))
        assert instance.expiry is not None
        assert timezone.now() < instance.expiry <= timezone.now() + timedelta(hours=24, minutes=1)
