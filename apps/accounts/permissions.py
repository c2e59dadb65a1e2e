"""The one place the permission rules live.

A permission is ``<resource>:<action>`` (``docs:write``). A role grants a list of patterns:

* ``*``            everything, including the platform itself (``platform:*``);
* ``tenant:*``     everything inside the tenant (every resource except ``platform``): the
                   tenant administrator manages users, roles, keys, audit, documents,
                   conversations, tools, integrations and billing of their own tenant;
* ``<resource>:*`` every action on one resource (``docs:*``);
* ``<resource>:<action>`` exactly that.

Everything that asks "may this principal do X" — DRF permission classes, the Django admin
(through ``User.has_perm``), websocket consumers, services — calls ``user_has_permission``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from django.apps import apps as django_apps

PLATFORM_RESOURCE = "platform"

# Django admin actions → our actions.
ADMIN_ACTIONS = {"view": "read", "add": "write", "change": "write", "delete": "delete"}


def permission_matches(granted: str, required: str) -> bool:
    """Does one granted pattern cover one required ``resource:action`` permission?"""
    if granted == "*":
        return True
    resource, _, _action = required.partition(":")
    if granted == "tenant:*":
        return resource != PLATFORM_RESOURCE
    g_resource, _, g_action = granted.partition(":")
    if g_action == "*":
        return g_resource == resource
    return granted == required


def permissions_grant(granted: Iterable[str], required: str) -> bool:
    return any(permission_matches(g, required) for g in granted)


def pattern_covered(held: Iterable[str], pattern: str) -> bool:
    """Does holding ``held`` cover granting the whole ``pattern`` (used to stop a principal
    handing out more than it has)?"""
    held = set(held)
    if "*" in held:
        return True
    if pattern == "*":
        return False
    if pattern == "tenant:*":
        return "tenant:*" in held
    resource, _, action = pattern.partition(":")
    if action == "*":
        return resource != PLATFORM_RESOURCE and ("tenant:*" in held or pattern in held)
    return permissions_grant(held, pattern)


def principal_permissions(principal: Any) -> frozenset[str]:
    """The set of permission patterns a user or API key principal holds (cached on the
    object for the request; roles are loaded in one query)."""
    cached = getattr(principal, "_zhida_permissions", None)
    if cached is not None:
        return cached
    if principal is None or not getattr(principal, "is_authenticated", False) or not principal.is_active:
        perms: frozenset[str] = frozenset()
    elif hasattr(principal, "role_permissions"):  # API key principal
        perms = frozenset(principal.role_permissions)
    else:
        from apps.accounts.models import Role

        rows = Role.objects.filter(user_roles__user_id=principal.pk).values_list("permissions", flat=True)
        perms = frozenset(p for row in rows for p in row)
    with contextlib.suppress(AttributeError):  # e.g. None: nothing to cache on
        principal._zhida_permissions = perms
    return perms


def permissions_cache_clear(principal: Any) -> None:
    if hasattr(principal, "_zhida_permissions"):
        del principal._zhida_permissions


def user_has_permission(user: Any, permission: str) -> bool:
    """May this user (or API key principal) do ``permission`` (``resource:action``)?"""
    if ":" not in permission:
        raise ValueError(f"Permission must be 'resource:action', got {permission!r}")
    return permissions_grant(principal_permissions(user), permission)


# --- Django admin bridge -----------------------------------------------------------------
def model_resource(app_label: str, model_name: str) -> str | None:
    try:
        model = django_apps.get_model(app_label, model_name)
    except LookupError:
        return None
    return getattr(model, "permission_resource", None)


def user_has_django_perm(user: Any, perm: str) -> bool:
    """``app_label.<view|add|change|delete>_<model>`` → ``<resource>:<read|write|delete>``."""
    app_label, _, codename = perm.partition(".")
    action, _, model_name = codename.partition("_")
    resource = model_resource(app_label, model_name)
    if resource is None or action not in ADMIN_ACTIONS:
        return user_has_permission(user, "platform:admin")
    return user_has_permission(user, f"{resource}:{ADMIN_ACTIONS[action]}")


def _admin_resources(app_label: str | None = None) -> set[str]:
    """Resources of the models the admin sites actually show (a model with a
    ``permission_resource`` but no admin page does not make anyone staff)."""
    from apps.core.admin_sites import platform_admin_site, tenant_admin_site

    if app_label:
        django_apps.get_app_config(app_label)  # LookupError for an unknown app
    models = {*platform_admin_site._registry, *tenant_admin_site._registry}
    return {
        model.permission_resource
        for model in models
        if getattr(model, "permission_resource", None) and (app_label is None or model._meta.app_label == app_label)
    }


def user_has_module_access(user: Any, app_label: str) -> bool:
    try:
        resources = _admin_resources(app_label)
    except LookupError:
        return False
    return any(user_has_permission(user, f"{r}:read") for r in resources)


def user_has_admin_access(user: Any) -> bool:
    """May reach the Django admin at all: holds read access to at least one model in it."""
    return any(user_has_permission(user, f"{r}:read") for r in _admin_resources())
