"""DRF building blocks shared by every app's API."""

from __future__ import annotations

from rest_framework.permissions import BasePermission


class HasPermission(BasePermission):
    """``permission_classes = [HasPermission.of("docs:write")]``, or per HTTP method via
    ``HasPermission.by_method({"GET": "users:read", "POST": "users:write"})``. The check
    itself is ``user_has_permission`` (the only place the rules live)."""

    required: dict[str, str] | str = ""

    @classmethod
    def of(cls, permission: str) -> type[HasPermission]:
        return type(f"HasPermission_{permission}", (cls,), {"required": permission})

    @classmethod
    def by_method(cls, mapping: dict[str, str]) -> type[HasPermission]:
        return type("HasPermissionByMethod", (cls,), {"required": mapping})

    def has_permission(self, request, view) -> bool:
        from apps.accounts.permissions import user_has_permission

        user = request.user
        if not user or not user.is_authenticated:
            return False
        required = self.required
        if isinstance(required, dict):
            perm = required.get(request.method) or required.get("*")
            if perm is None:
                return False
        else:
            perm = required
        return user_has_permission(user, perm)


class HasAnyPermission(BasePermission):
    """``HasAnyPermission.of("docs:read", "conversations:search")``: any one suffices."""

    required: tuple[str, ...] = ()

    @classmethod
    def of(cls, *permissions: str) -> type[HasAnyPermission]:
        return type("HasAnyPermission", (cls,), {"required": permissions})

    def has_permission(self, request, view) -> bool:
        from apps.accounts.permissions import user_has_permission

        user = request.user
        if not user or not user.is_authenticated:
            return False
        return any(user_has_permission(user, perm) for perm in self.required)
