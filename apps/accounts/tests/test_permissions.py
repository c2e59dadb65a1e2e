"""The permission rules (apps/accounts/permissions.py): pattern matching, the matrix of
the five system roles, who may hand out what, and that non-active principals hold nothing."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django_tenants.utils import schema_context

from apps.accounts.authentication import ApiKeyPrincipal
from apps.accounts.models import ApiKey, Role
from apps.accounts.permissions import (
    pattern_covered,
    permission_matches,
    permissions_grant,
    principal_permissions,
    user_has_permission,
)
from apps.accounts.services import user_deactivate, user_role_grant, user_role_revoke
from apps.accounts.tests.factories import RoleFactory, UserFactory
from conftest import SYSTEM_ROLE_NAMES

# The specification of the system roles (migration 0002) — what each one is meant to hold.
SYSTEM_ROLE_PATTERNS = {
    "super_admin": ["*"],
    "tenant_admin": ["tenant:*"],
    "knowledge_manager": ["docs:*", "conversations:read"],
    "agent": ["conversations:*", "tools:execute"],
    "user": ["conversations:create", "conversations:read"],
}

TENANT_PERMISSIONS = [
    "docs:write",
    "docs:read",
    "docs:delete",
    "conversations:create",
    "conversations:read",
    "conversations:delete",
    "tools:execute",
    "tools:configure",
    "users:read",
    "users:write",
    "roles:read",
    "roles:write",
    "audit:read",
    "apikeys:read",
    "apikeys:write",
    "integrations:write",
    "billing:read",
    "tenant:settings",
]
PLATFORM_PERMISSIONS = ["platform:admin", "platform:read"]
ALL_PERMISSIONS = TENANT_PERMISSIONS + PLATFORM_PERMISSIONS

# Expected answers, written out per role (the table a reviewer reads).
GRANTED = {
    "super_admin": set(ALL_PERMISSIONS),
    "tenant_admin": set(TENANT_PERMISSIONS),  # everything but the platform
    "knowledge_manager": {"docs:write", "docs:read", "docs:delete", "conversations:read"},
    "agent": {"conversations:create", "conversations:read", "conversations:delete", "tools:execute"},
    "user": {"conversations:create", "conversations:read"},
}


def test_seeded_system_roles_are_the_specified_ones(acme, globex):
    for tenant in (acme, globex):
        with schema_context(tenant.schema_name):
            roles = {r.name: r for r in Role.objects.filter(is_system=True)}
        assert set(roles) == set(SYSTEM_ROLE_NAMES) == set(SYSTEM_ROLE_PATTERNS)
        for name, patterns in SYSTEM_ROLE_PATTERNS.items():
            assert sorted(roles[name].permissions) == sorted(patterns), name


@pytest.mark.parametrize(
    ("role", "permission"),
    [(role, perm) for role in SYSTEM_ROLE_NAMES for perm in ALL_PERMISSIONS],
)
def test_system_role_matrix(acme, seed_user, role, permission):
    user = seed_user(acme, role)
    with schema_context(acme.schema_name):
        assert user_has_permission(user, permission) is (permission in GRANTED[role])


@pytest.mark.parametrize("role", SYSTEM_ROLE_NAMES)
def test_matrix_is_the_same_in_another_tenant(globex, seed_user, role):
    user = seed_user(globex, role)
    with schema_context(globex.schema_name):
        held = {p for p in ALL_PERMISSIONS if user_has_permission(user, p)}
    assert held == GRANTED[role]


@pytest.mark.parametrize(
    ("granted", "required", "expected"),
    [
        ("*", "docs:read", True),
        ("*", "platform:admin", True),
        ("tenant:*", "docs:write", True),
        ("tenant:*", "users:write", True),
        ("tenant:*", "billing:read", True),
        ("tenant:*", "tenant:settings", True),
        ("tenant:*", "platform:admin", False),
        ("tenant:*", "platform:read", False),
        ("docs:*", "docs:delete", True),
        ("docs:*", "docsx:read", False),
        ("docs:*", "conversations:read", False),
        ("docs:*", "platform:admin", False),
        ("platform:*", "platform:admin", True),
        ("platform:*", "docs:read", False),
        ("docs:read", "docs:read", True),
        ("docs:read", "docs:write", False),
        ("docs:read", "docs:*", False),
        ("conversations:read", "conversations:readall", False),
        ("users:write", "roles:write", False),
    ],
)
def test_permission_matches(granted, required, expected):
    assert permission_matches(granted, required) is expected


def test_permissions_grant_is_any_of_the_patterns():
    assert permissions_grant(["docs:read", "conversations:*"], "conversations:delete")
    assert not permissions_grant(["docs:read", "conversations:*"], "docs:write")
    assert not permissions_grant([], "docs:read")


@pytest.mark.parametrize(
    ("held", "pattern", "expected"),
    [
        ({"*"}, "*", True),
        ({"*"}, "platform:*", True),
        ({"tenant:*"}, "*", False),
        ({"tenant:*"}, "tenant:*", True),
        ({"tenant:*"}, "docs:*", True),
        ({"tenant:*"}, "users:write", True),
        ({"tenant:*"}, "platform:*", False),
        ({"tenant:*"}, "platform:admin", False),
        ({"docs:*"}, "docs:*", True),
        ({"docs:*"}, "docs:write", True),
        ({"docs:*"}, "tenant:*", False),
        ({"docs:*"}, "conversations:read", False),
        ({"docs:read"}, "docs:*", False),
        ({"docs:read", "docs:write"}, "docs:*", False),
        ({"platform:*"}, "platform:*", False),  # only "*" may hand out the platform
    ],
)
def test_pattern_covered(held, pattern, expected):
    assert pattern_covered(held, pattern) is expected


def test_permission_must_be_resource_colon_action(acme, seed_user):
    user = seed_user(acme, "super_admin")
    with pytest.raises(ValueError, match="resource:action"):
        user_has_permission(user, "docs")


def test_anonymous_and_none_hold_nothing():
    for principal in (None, AnonymousUser()):
        assert principal_permissions(principal) == frozenset()
        assert not user_has_permission(principal, "conversations:read")


@pytest.mark.parametrize("status", ["inactive", "suspended"])
@pytest.mark.parametrize("role", ["super_admin", "tenant_admin", "user"])
def test_non_active_user_has_no_permissions(acme, role, status):
    with schema_context(acme.schema_name):
        user = UserFactory(roles=[role], status=status)
        assert user.user_roles.get().role.name == role  # the grant is there ...
        assert principal_permissions(user) == frozenset()  # ... but counts for nothing
        assert not any(user_has_permission(user, p) for p in ALL_PERMISSIONS)
        assert not user.is_staff
        assert not user.is_superuser
        assert not user.has_perm("accounts.view_user")


def test_deactivation_takes_effect_on_the_same_object(acme, seed_user):
    admin = seed_user(acme, "tenant_admin")
    with schema_context(acme.schema_name):
        user = UserFactory(roles=["tenant_admin"])
        assert user_has_permission(user, "users:write")  # computed and cached on the object
        user_deactivate(user=user, actor=admin)
        assert not user_has_permission(user, "users:write")


def test_role_grant_and_revoke_take_effect_on_the_same_object(acme):
    with schema_context(acme.schema_name):
        user = UserFactory(roles=["user"])
        assert not user_has_permission(user, "docs:write")
        user_role_grant(user=user, role_name="knowledge_manager", actor=None)
        assert user_has_permission(user, "docs:write")
        user_role_revoke(user=user, role_name="knowledge_manager", actor=None)
        assert not user_has_permission(user, "docs:write")
        assert user_has_permission(user, "conversations:create")


def test_permissions_are_the_union_of_all_roles(acme):
    with schema_context(acme.schema_name):
        custom = RoleFactory(permissions=["audit:read", "billing:read"])
        user = UserFactory(roles=["user", custom.name])
        assert principal_permissions(user) == frozenset(SYSTEM_ROLE_PATTERNS["user"] + ["audit:read", "billing:read"])
        assert user_has_permission(user, "audit:read")
        assert user_has_permission(user, "conversations:create")
        assert not user_has_permission(user, "audit:write")


def test_api_key_principal_is_checked_by_the_same_rules(acme):
    with schema_context(acme.schema_name):
        key = ApiKey(name="k", prefix="deadbeef")
        principal = ApiKeyPrincipal(api_key=key, role_permissions=frozenset(SYSTEM_ROLE_PATTERNS["agent"]))
        held = {p for p in ALL_PERMISSIONS if user_has_permission(principal, p)}
    assert held == GRANTED["agent"]
