from __future__ import annotations

from django.db.models import Prefetch, Q, QuerySet

from apps.accounts.models import ApiKey, Role, User, UserRole


def user_list(*, search: str | None = None, status: str | None = None, role: str | None = None) -> QuerySet[User]:
    qs = User.objects.prefetch_related(
        Prefetch("user_roles", queryset=UserRole.objects.select_related("role"))
    ).order_by("email")
    if search:
        qs = qs.filter(Q(email__icontains=search) | Q(first_name__icontains=search) | Q(last_name__icontains=search))
    if status:
        qs = qs.filter(status=status)
    if role:
        qs = qs.filter(user_roles__role__name=role)
    return qs


def user_get(*, user_id) -> User | None:
    return user_list().filter(pk=user_id).first()


def user_role_names(*, user: User) -> list[str]:
    return sorted(ur.role.name for ur in user.user_roles.all())


def role_list() -> QuerySet[Role]:
    return Role.objects.order_by("-is_system", "name")


def role_get(*, name: str) -> Role | None:
    return Role.objects.filter(name=name).first()


def api_key_list(*, include_revoked: bool = False) -> QuerySet[ApiKey]:
    qs = ApiKey.objects.prefetch_related("roles").select_related("created_by")
    if not include_revoked:
        qs = qs.filter(revoked_at__isnull=True)
    return qs.order_by("-created_at")
