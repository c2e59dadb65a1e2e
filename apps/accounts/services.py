"""Writes for users, roles and API keys. Each is atomic and writes its audit row in the
same transaction."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apps.accounts.models import ApiKey, Role, User, UserRole
from apps.accounts.permissions import pattern_covered, permissions_cache_clear, principal_permissions
from apps.audit.services import audit_log_record
from apps.core.exceptions import Conflict, NotFound, PermissionDeniedError, ValidationFailed

USER_AUDIT_FIELDS = ("email", "first_name", "last_name", "avatar_url", "status", "email_verified", "preferences")
API_KEY_PREFIX = "zk_"
INVITATION_SALT = "zhida.accounts.invitation"


def _user_snapshot(user: User) -> dict[str, Any]:
    return {f: getattr(user, f) for f in USER_AUDIT_FIELDS}


def _roles_get(names: list[str]) -> list[Role]:
    roles = list(Role.objects.filter(name__in=names))
    missing = sorted(set(names) - {r.name for r in roles})
    if missing:
        raise ValidationFailed("Unknown role.", code="role_not_found", details={"roles": missing})
    return roles


def _email_clean(email: str) -> str:
    email = (email or "").strip()
    try:
        validate_email(email)
    except DjangoValidationError as exc:
        raise ValidationFailed("Enter a valid email address.", details={"email": exc.messages}) from exc
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def _grantable_check(actor: Any, permissions: list[str], *, message: str, details: dict | None = None) -> None:
    """Nobody hands out (to a user, a role or a key) rights they do not hold themselves.
    ``actor=None`` is the system (migrations, seeding, management commands). Checked here,
    not in the views, so the API and the admin cannot drift apart."""
    if actor is None:
        return
    held = principal_permissions(actor)
    if not all(pattern_covered(held, perm) for perm in permissions):
        raise PermissionDeniedError(message, code="permission_escalation", details=details or {})


def _roles_grantable_check(actor: Any, roles: list[Role]) -> None:
    for role in roles:
        _grantable_check(
            actor,
            role.permissions,
            message="You cannot grant a role with more rights than you hold.",
            details={"role": role.name},
        )


def _password_check(password: str, user: User | None = None) -> None:
    try:
        validate_password(password, user)
    except DjangoValidationError as exc:
        raise ValidationFailed(
            "The password is too weak.", code="weak_password", details={"password": exc.messages}
        ) from exc


@transaction.atomic
def user_create(
    *,
    email: str,
    password: str | None = None,
    first_name: str = "",
    last_name: str = "",
    roles: list[str] | None = None,
    actor: Any = None,
    email_verified: bool = False,
    validate: bool = False,
    **extra: Any,
) -> User:
    """Create a user in the current tenant with the given roles. Without a password the
    user cannot log in until they accept an invitation (see ``user_invite``)."""
    email = _email_clean(email)
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict("A user with this email already exists.", code="user_exists", details={"email": email})
    role_objs = _roles_get(roles or [])
    _roles_grantable_check(actor, role_objs)
    user = User(email=email, first_name=first_name, last_name=last_name, email_verified=email_verified, **extra)
    if password:
        if validate:
            _password_check(password, user)
        user.set_password(password)
    else:
        user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as exc:
        raise Conflict("A user with this email already exists.", code="user_exists", details={"email": email}) from exc
    granted_by = actor if isinstance(actor, User) else None
    UserRole.objects.bulk_create([UserRole(user=user, role=r, granted_by=granted_by) for r in role_objs])
    audit_log_record(
        actor=actor,
        action="user.created",
        resource_type="user",
        resource_id=user.pk,
        new_values={**_user_snapshot(user), "roles": [r.name for r in role_objs]},
    )
    return user


@dataclass(frozen=True)
class Invitation:
    user: User
    token: str


def user_invite(*, email: str, roles: list[str], actor: Any, first_name: str = "", last_name: str = "") -> Invitation:
    """Create a user without a password and return a signed invitation token (valid for
    INVITATION_MAX_AGE seconds, bound to this tenant's schema) for them to set one."""
    user = user_create(email=email, first_name=first_name, last_name=last_name, roles=roles, actor=actor)
    token = signing.dumps({"uid": str(user.pk), "schema": connection.schema_name}, salt=INVITATION_SALT)
    return Invitation(user=user, token=token)


@transaction.atomic
def user_invitation_accept(*, token: str, password: str) -> User:
    try:
        data = signing.loads(token, salt=INVITATION_SALT, max_age=settings.INVITATION_MAX_AGE)
    except signing.SignatureExpired as exc:
        raise ValidationFailed("This invitation has expired.", code="invitation_expired") from exc
    except signing.BadSignature as exc:
        raise ValidationFailed("This invitation is not valid.", code="invitation_invalid") from exc
    if data.get("schema") != connection.schema_name:
        raise ValidationFailed("This invitation is not valid.", code="invitation_invalid")
    user = User.objects.select_for_update().filter(pk=data.get("uid")).first()
    if user is None or user.has_usable_password() or user.status != User.Status.ACTIVE:
        raise ValidationFailed("This invitation has already been used.", code="invitation_invalid")
    _password_check(password, user)
    user.set_password(password)
    user.email_verified = True
    user.save(update_fields=["password", "email_verified", "updated_at"])
    audit_log_record(actor=user, action="user.invitation_accepted", resource_type="user", resource_id=user.pk)
    return user


@transaction.atomic
def user_update(*, user: User, actor: Any, **fields: Any) -> User:
    allowed = {"first_name", "last_name", "avatar_url", "preferences"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationFailed("These fields cannot be changed here.", details={"fields": sorted(unknown)})
    old = _user_snapshot(user)
    for name, value in fields.items():
        setattr(user, name, value)
    user.save(update_fields=[*fields, "updated_at"])
    changed = {k: v for k, v in _user_snapshot(user).items() if old[k] != v}
    if changed:
        audit_log_record(
            actor=actor,
            action="user.updated",
            resource_type="user",
            resource_id=user.pk,
            old_values={k: old[k] for k in changed},
            new_values=changed,
        )
    return user


@transaction.atomic
def user_password_set(*, user: User, password: str, actor: Any) -> User:
    _password_check(password, user)
    user.set_password(password)
    user.save(update_fields=["password", "updated_at"])
    audit_log_record(actor=actor, action="user.password_changed", resource_type="user", resource_id=user.pk)
    return user


def _outranked_check(actor: Any, user: User) -> None:
    """Nobody changes the standing of a user who holds rights they lack (a tenant admin
    cannot suspend a super admin)."""
    _grantable_check(
        actor,
        sorted(principal_permissions(user)),
        message="You cannot change a user who holds rights you do not.",
        details={"user": str(user.pk)},
    )


def _user_status_set(*, user: User, status: str, actor: Any, action: str) -> User:
    if isinstance(actor, User) and actor.pk == user.pk and status != User.Status.ACTIVE:
        raise PermissionDeniedError("You cannot deactivate yourself.", code="cannot_deactivate_self")
    _outranked_check(actor, user)
    old = user.status
    if old == status:
        return user
    user.status = status
    user.save(update_fields=["status", "updated_at"])
    permissions_cache_clear(user)  # a non-active user holds nothing, from this moment on
    audit_log_record(
        actor=actor,
        action=action,
        resource_type="user",
        resource_id=user.pk,
        old_values={"status": old},
        new_values={"status": status},
    )
    if status != User.Status.ACTIVE:
        from knox.models import AuthToken

        AuthToken.objects.filter(user=user).delete()  # tokens die with the account
    return user


@transaction.atomic
def user_deactivate(*, user: User, actor: Any) -> User:
    return _user_status_set(user=user, status=User.Status.INACTIVE, actor=actor, action="user.deactivated")


@transaction.atomic
def user_suspend(*, user: User, actor: Any) -> User:
    return _user_status_set(user=user, status=User.Status.SUSPENDED, actor=actor, action="user.suspended")


@transaction.atomic
def user_reactivate(*, user: User, actor: Any) -> User:
    return _user_status_set(user=user, status=User.Status.ACTIVE, actor=actor, action="user.reactivated")


@transaction.atomic
def user_role_grant(*, user: User, role_name: str, actor: Any) -> UserRole:
    (role,) = _roles_get([role_name])
    _roles_grantable_check(actor, [role])
    grant, created = UserRole.objects.get_or_create(
        user=user, role=role, defaults={"granted_by": actor if isinstance(actor, User) else None}
    )
    if created:
        audit_log_record(
            actor=actor,
            action="user.role_granted",
            resource_type="user",
            resource_id=user.pk,
            new_values={"role": role.name},
        )
        permissions_cache_clear(user)
    return grant


@transaction.atomic
def user_role_revoke(*, user: User, role_name: str, actor: Any) -> None:
    grant = UserRole.objects.select_related("role").filter(user=user, role__name=role_name).first()
    if grant is not None:
        _grantable_check(
            actor,
            grant.role.permissions,
            message="You cannot revoke a role with rights you do not hold.",
            details={"role": role_name},
        )
    deleted, _ = UserRole.objects.filter(user=user, role__name=role_name).delete()
    if not deleted:
        raise NotFound("The user does not hold this role.", code="role_not_granted")
    audit_log_record(
        actor=actor,
        action="user.role_revoked",
        resource_type="user",
        resource_id=user.pk,
        old_values={"role": role_name},
    )
    permissions_cache_clear(user)


def _permissions_clean(permissions: list[str]) -> list[str]:
    cleaned = []
    for perm in permissions:
        perm = (perm or "").strip()
        if perm != "*" and (perm.count(":") != 1 or not all(perm.split(":"))):
            raise ValidationFailed(
                "Permissions look like 'resource:action' or 'resource:*'.",
                code="invalid_permission",
                details={"permission": perm},
            )
        cleaned.append(perm)
    if "*" in cleaned:
        raise PermissionDeniedError("Only system roles may grant '*'.", code="permission_escalation")
    return sorted(set(cleaned))


@transaction.atomic
def role_create(*, name: str, display_name: str, permissions: list[str], actor: Any, description: str = "") -> Role:
    if Role.objects.filter(name=name).exists():
        raise Conflict("A role with this name already exists.", code="role_exists")
    permissions = _permissions_clean(permissions)
    _grantable_check(actor, permissions, message="You cannot create a role with more rights than you hold.")
    role = Role.objects.create(name=name, display_name=display_name, description=description, permissions=permissions)
    audit_log_record(
        actor=actor,
        action="role.created",
        resource_type="role",
        resource_id=role.pk,
        new_values={"name": name, "permissions": role.permissions},
    )
    return role


@transaction.atomic
def role_update(
    *,
    role: Role,
    actor: Any,
    display_name: str | None = None,
    description: str | None = None,
    permissions: list[str] | None = None,
) -> Role:
    if role.is_system and permissions is not None:
        raise PermissionDeniedError("System roles' permissions cannot be changed.", code="system_role")
    old = {"display_name": role.display_name, "description": role.description, "permissions": role.permissions}
    if display_name is not None:
        role.display_name = display_name
    if description is not None:
        role.description = description
    if permissions is not None:
        permissions = _permissions_clean(permissions)
        _grantable_check(actor, permissions, message="You cannot give a role more rights than you hold.")
        role.permissions = permissions
    role.save()
    new = {"display_name": role.display_name, "description": role.description, "permissions": role.permissions}
    audit_log_record(
        actor=actor, action="role.updated", resource_type="role", resource_id=role.pk, old_values=old, new_values=new
    )
    return role


@transaction.atomic
def role_delete(*, role: Role, actor: Any) -> None:
    if role.is_system:
        raise PermissionDeniedError("System roles cannot be deleted.", code="system_role")
    audit_log_record(
        actor=actor,
        action="role.deleted",
        resource_type="role",
        resource_id=role.pk,
        old_values={"name": role.name, "permissions": role.permissions},
    )
    role.delete()


def api_key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    key: str  # shown once


@transaction.atomic
def api_key_create(*, name: str, roles: list[str], actor: Any, expires_at: datetime | None = None) -> IssuedApiKey:
    """Issue a key ``zk_<prefix>_<secret>`` with the given roles. A person may only hand a
    key roles whose permissions they hold themselves."""
    role_objs = _roles_get(roles)
    if not role_objs:
        raise ValidationFailed("An API key needs at least one role.", code="roles_required")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed("The expiry must be in the future.", details={"expires_at": [str(expires_at)]})
    for role in role_objs:
        _grantable_check(
            actor,
            role.permissions,
            message="You cannot give a key more rights than you hold.",
            details={"role": role.name},
        )
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    key = f"{API_KEY_PREFIX}{prefix}_{secret}"
    api_key = ApiKey.objects.create(
        name=name,
        prefix=prefix,
        key_hash=api_key_hash(key),
        created_by=actor if isinstance(actor, User) else None,
        expires_at=expires_at,
    )
    api_key.roles.set(role_objs)
    audit_log_record(
        actor=actor,
        action="api_key.created",
        resource_type="api_key",
        resource_id=api_key.pk,
        new_values={"name": name, "prefix": prefix, "roles": [r.name for r in role_objs], "expires_at": expires_at},
    )
    return IssuedApiKey(api_key=api_key, key=key)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: Any) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at", "updated_at"])
        audit_log_record(
            actor=actor,
            action="api_key.revoked",
            resource_type="api_key",
            resource_id=api_key.pk,
            new_values={"prefix": api_key.prefix},
        )
    return api_key
